//! The live progress display on a terminal, and the log writer that keeps it readable.
//!
//! On a terminal a run shows one line with the dumps done and the bytes written, and one line
//! per dump in flight with its elapsed time; log lines are printed above them. Anywhere else
//! (systemd, cron, a pipe) nothing but plain one-line-per-event logs is written, with no escape
//! codes.

use std::collections::HashMap;
use std::io::{IsTerminal, Write};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};

/// The display in use, if any: the log writer draws around it.
static ACTIVE: OnceLock<MultiProgress> = OnceLock::new();

/// Whether a progress display makes sense: stderr is a terminal that can draw.
pub fn wanted() -> bool {
    std::io::stderr().is_terminal() && std::env::var("TERM").map(|t| t != "dumb").unwrap_or(false)
}

/// Progress of one run; a no-op when not on a terminal.
pub struct Progress {
    inner: Option<Inner>,
}

struct Inner {
    mp: MultiProgress,
    overall: ProgressBar,
    bytes: AtomicU64,
    failed: AtomicU64,
    next: AtomicU64,
    bars: Mutex<HashMap<u64, ProgressBar>>,
}

impl Progress {
    /// A display for `total` dumps when `enabled`, else a silent one.
    pub fn new(total: u64, enabled: bool) -> Progress {
        if !enabled {
            return Progress { inner: None };
        }
        let mp = ACTIVE
            .get_or_init(|| MultiProgress::with_draw_target(ProgressDrawTarget::stderr_with_hz(10)))
            .clone();
        let overall = mp.add(ProgressBar::new(total));
        overall.set_style(
            ProgressStyle::with_template(
                "{bar:30.cyan/blue} {pos}/{len} dumps, {msg} [{elapsed_precise}]",
            )
            .expect("valid template")
            .progress_chars("=> "),
        );
        overall.set_message("0 B written");
        overall.enable_steady_tick(Duration::from_millis(250));
        Progress {
            inner: Some(Inner {
                mp,
                overall,
                bytes: AtomicU64::new(0),
                failed: AtomicU64::new(0),
                next: AtomicU64::new(0),
                bars: Mutex::new(HashMap::new()),
            }),
        }
    }

    /// A dump (attempt) started; returns a handle for [`Progress::finished`].
    pub fn started(&self, label: &str) -> u64 {
        let Some(i) = &self.inner else { return 0 };
        let id = i.next.fetch_add(1, Ordering::Relaxed);
        let bar = i.mp.add(ProgressBar::new_spinner());
        bar.set_style(
            ProgressStyle::with_template("  {spinner} {msg} {elapsed}").expect("valid template"),
        );
        bar.set_message(label.to_string());
        bar.enable_steady_tick(Duration::from_millis(200));
        i.bars.lock().expect("progress bars").insert(id, bar);
        id
    }

    /// The attempt `id` ended; `done` when the dump will not be tried again.
    pub fn finished(&self, id: u64, done: bool, ok: bool, bytes: u64) {
        let Some(i) = &self.inner else { return };
        if let Some(bar) = i.bars.lock().expect("progress bars").remove(&id) {
            bar.finish_and_clear();
            i.mp.remove(&bar);
        }
        if done {
            let total = i.bytes.fetch_add(bytes, Ordering::Relaxed) + bytes;
            let failed = if ok {
                i.failed.load(Ordering::Relaxed)
            } else {
                i.failed.fetch_add(1, Ordering::Relaxed) + 1
            };
            i.overall.inc(1);
            i.overall.set_message(format!(
                "{} written{}",
                crate::text::human_bytes(total),
                if failed > 0 {
                    format!(", {failed} failed")
                } else {
                    String::new()
                }
            ));
        }
    }

    /// Leaves the final state on screen.
    pub fn finish(&self) {
        if let Some(i) = &self.inner {
            for (_, bar) in i.bars.lock().expect("progress bars").drain() {
                bar.finish_and_clear();
            }
            i.overall.finish();
        }
    }
}

/// stderr for the log: while a progress display is active, lines are printed above it.
pub struct LogWriter;

/// Write errors are swallowed: a run whose terminal went away (SIGHUP) keeps working, and its
/// report and mail still tell what happened.
impl Write for LogWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        match ACTIVE.get() {
            Some(mp) if !mp.is_hidden() => mp.suspend(|| {
                let _ = std::io::stderr().write_all(buf);
            }),
            _ => {
                let _ = std::io::stderr().write_all(buf);
            }
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        let _ = std::io::stderr().flush();
        Ok(())
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for LogWriterMaker {
    type Writer = LogWriter;
    fn make_writer(&'a self) -> LogWriter {
        LogWriter
    }
}

/// Makes [`LogWriter`]s for the tracing subscriber.
pub struct LogWriterMaker;
