//! Running one contender and measuring it: wall time, CPU time of its whole process tree, the
//! peak RSS of the process itself (not of its children), and the CPU the server's backends used.
//!
//! Peak RSS of the process itself: `wait4`'s `ru_maxrss` is the maximum over the process *and*
//! its reaped children (Linux folds `cmaxrss` in), so for pg_groupdump it would report its
//! largest `pg_dump`; and it counts the memory the child had before `exec`, a copy of the
//! benchmark's own. Instead the child is attached with `PTRACE_SEIZE` and
//! `PTRACE_O_TRACEEXIT`: it stops once more on its way out, before its memory is released, and
//! its `VmHWM` (the high-water mark of its resident set) is read from `/proc/<pid>/status`.
//! Nothing else is traced (no `TRACEFORK`/`TRACECLONE`: its threads and children run freely);
//! signals that stop the traced thread are passed on unchanged. Where ptrace is not allowed,
//! `VmHWM` is polled every 10 ms instead (the last few milliseconds before exit can be missed;
//! the result says which method was used).

use std::fs;
use std::io;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// What one run of a contender cost.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct Measured {
    pub wall_s: f64,
    /// User + system CPU of the process and every descendant it waited for.
    pub cpu_s: f64,
    /// User + system CPU of the process itself (all its threads, none of its children), read
    /// at its exit stop; `None` without ptrace.
    pub self_cpu_s: Option<f64>,
    /// `VmHWM` of the process itself, in KiB.
    pub self_rss_kib: Option<u64>,
    /// "ptrace-exit" or "polled".
    pub self_rss_method: &'static str,

    /// Exit code, or 128 + signal.
    pub exit_code: i32,
}

fn clk_tck() -> f64 {
    // SAFETY: sysconf has no preconditions.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if t > 0 {
        t as f64
    } else {
        100.0
    }
}

fn tv(t: libc::timeval) -> f64 {
    t.tv_sec as f64 + t.tv_usec as f64 / 1e6
}

/// `VmHWM` of a live process, in KiB.
pub fn vm_hwm_kib(pid: i32) -> Option<u64> {
    let s = fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    s.lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}

/// Runs `cmd` (stdout to /dev/null, stderr to `stderr_file`) to its end and measures it.
pub fn run(cmd: &mut Command, stderr_file: &Path) -> io::Result<Measured> {
    let err = fs::File::create(stderr_file)?;
    cmd.stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::from(err));
    let start = Instant::now();
    let child = cmd.spawn()?;
    let pid = child.id() as libc::pid_t;
    // From here on the child is reaped by wait4 below, never by `child`.
    drop(child);

    // SAFETY: plain ptrace request on our own child; failure is handled.
    let traced = unsafe {
        libc::ptrace(
            libc::PTRACE_SEIZE,
            pid,
            std::ptr::null_mut::<libc::c_void>(),
            libc::PTRACE_O_TRACEEXIT as usize as *mut libc::c_void,
        )
    } == 0;

    // A VmHWM poller, as a fallback (and a cross-check) for the exit-stop reading.
    let stop = Arc::new(AtomicBool::new(false));
    let polled = Arc::new(AtomicU64::new(0));
    let poller = {
        let (stop, polled) = (stop.clone(), polled.clone());
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                if let Some(v) = vm_hwm_kib(pid) {
                    polled.fetch_max(v, Ordering::Relaxed);
                }
                std::thread::sleep(Duration::from_millis(10));
            }
        })
    };

    let mut at_exit: Option<u64> = None;
    let mut self_cpu_s: Option<f64> = None;
    let (status, usage) = loop {
        let mut status = 0;
        // SAFETY: zeroed rusage is a valid value to be overwritten.
        let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
        // SAFETY: wait4 on our own child with valid out-pointers.
        let r = unsafe { libc::wait4(pid, &mut status, libc::__WALL, &mut usage) };
        if r < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            stop.store(true, Ordering::Relaxed);
            let _ = poller.join();
            return Err(e);
        }
        if libc::WIFSTOPPED(status) {
            let sig = libc::WSTOPSIG(status);
            let event = (status >> 16) & 0xff;
            let deliver = if event == libc::PTRACE_EVENT_EXIT {
                at_exit = vm_hwm_kib(pid);
                self_cpu_s = process_cpu_s(pid);
                0
            } else if event != 0 {
                0 // PTRACE_EVENT_STOP (group stop under SEIZE): just go on
            } else {
                sig // signal-delivery stop: deliver it unchanged
            };
            // SAFETY: the tracee is stopped; continuing it is always valid.
            unsafe {
                libc::ptrace(
                    libc::PTRACE_CONT,
                    pid,
                    std::ptr::null_mut::<libc::c_void>(),
                    deliver as usize as *mut libc::c_void,
                );
            }
            continue;
        }
        break (status, usage);
    };
    let wall = start.elapsed();
    stop.store(true, Ordering::Relaxed);
    let _ = poller.join();
    let polled = polled.load(Ordering::Relaxed);
    let exit_code = if libc::WIFEXITED(status) {
        libc::WEXITSTATUS(status)
    } else if libc::WIFSIGNALED(status) {
        128 + libc::WTERMSIG(status)
    } else {
        -1
    };
    let (self_rss_kib, self_rss_method) = match at_exit {
        Some(v) if traced => (Some(v.max(polled)), "ptrace-exit"),
        _ => ((polled > 0).then_some(polled), "polled"),
    };
    Ok(Measured {
        wall_s: wall.as_secs_f64(),
        cpu_s: tv(usage.ru_utime) + tv(usage.ru_stime),
        self_cpu_s,
        self_rss_kib,
        self_rss_method,

        exit_code,
    })
}

/// CPU seconds of the postmaster's reaped children (the backends that have exited), from
/// `/proc/<pid>/stat` (`cutime` + `cstime`).
pub fn reaped_children_cpu_s(postmaster: i32) -> Option<f64> {
    let s = fs::read_to_string(format!("/proc/{postmaster}/stat")).ok()?;
    // Fields after the command name, which is in parentheses and may contain spaces.
    let rest = &s[s.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    // rest[0] is field 3 (state); cutime is field 16, cstime field 17.
    let cutime: f64 = f.get(13)?.parse().ok()?;
    let cstime: f64 = f.get(14)?.parse().ok()?;
    Some((cutime + cstime) / clk_tck())
}

/// CPU seconds (user + system) a live process has used so far.
pub fn process_cpu_s(pid: i32) -> Option<f64> {
    let s = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &s[s.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    // utime is field 14, stime field 15.
    let utime: f64 = f.get(11)?.parse().ok()?;
    let stime: f64 = f.get(12)?.parse().ok()?;
    Some((utime + stime) / clk_tck())
}

/// The parent pid of a process.
pub fn parent_pid(pid: i32) -> Option<i32> {
    let s = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &s[s.rfind(')')? + 2..];
    rest.split_whitespace().nth(1)?.parse().ok()
}

/// Bytes and number of the regular files under `dir`, leaving out pg_groupdump's run reports
/// and lock file (bookkeeping, not backup data).
pub fn output_size(dir: &Path) -> (u64, u64, u64) {
    let (mut bytes, mut files, mut report_bytes) = (0u64, 0u64, 0u64);
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(rd) = fs::read_dir(&d) else { continue };
        for e in rd.flatten() {
            let Ok(md) = e.metadata() else { continue };
            let p = e.path();
            if md.is_dir() {
                stack.push(p);
            } else if md.is_file() {
                let name = e.file_name();
                let in_reports = p
                    .parent()
                    .and_then(|p| p.file_name())
                    .is_some_and(|n| n == "reports");
                if name == ".pg_groupdump.lock" {
                    continue;
                }
                if in_reports {
                    report_bytes += md.len();
                    continue;
                }
                bytes += md.len();
                files += 1;
            }
        }
    }
    (bytes, files, report_bytes)
}

/// From the newest pg_groupdump run report under `dir/reports`: the time from the first table
/// dump's start to the last one's end, and how long the schema dump took, in seconds.
pub fn report_spans(dir: &Path) -> (Option<f64>, Option<f64>) {
    let newest = fs::read_dir(dir.join("reports"))
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "json"))
        .max();
    let Some(v) = newest
        .and_then(|p| fs::read(p).ok())
        .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
    else {
        return (None, None);
    };
    let time = |g: &serde_json::Value, k: &str| {
        g.get(k)
            .and_then(|t| t.as_str())
            .and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok())
    };
    let groups = v
        .get("groups")
        .and_then(|g| g.as_array())
        .cloned()
        .unwrap_or_default();
    let tables: Vec<&serde_json::Value> = groups
        .iter()
        .filter(|g| g.get("kind").and_then(|k| k.as_str()) == Some("tables"))
        .collect();
    // A group's own started_at is when its task was queued; its first attempt's is when its
    // dump started.
    let first = tables
        .iter()
        .filter_map(|g| g.get("attempts")?.as_array()?.first())
        .filter_map(|a| time(a, "started_at"))
        .min();
    let last = tables.iter().filter_map(|g| time(g, "finished_at")).max();
    let span = first
        .zip(last)
        .map(|(a, b)| (b - a).num_milliseconds() as f64 / 1000.0);
    let schema = groups
        .iter()
        .find(|g| g.get("kind").and_then(|k| k.as_str()) == Some("schema"))
        .and_then(|g| g.get("duration_ms"))
        .and_then(|d| d.as_f64())
        .map(|ms| ms / 1000.0);
    (span, schema)
}

/// A table group's dump as the newest run report under `dir/reports` records it.
#[derive(Debug, Clone)]
pub struct ReportedGroup {
    pub group: String,
    pub status: String,
    /// `engine` ("pg_dump", "native"), absent in reports of binaries before the native engine.
    pub engine: Option<String>,
    /// Why the native engine handed the group to pg_dump.
    pub fallback: Option<String>,
    /// The tables its last attempt copied with several sessions (`backup.split_above`): how
    /// many sessions each.
    pub split: Vec<u64>,
}

/// The table groups (kind "tables") of the newest run report under `dir/reports`, with the
/// engine each was dumped with; `Err` when there is no readable report.
pub fn report_groups(dir: &Path) -> Result<Vec<ReportedGroup>, String> {
    let newest = fs::read_dir(dir.join("reports"))
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "json"))
        .max()
        .ok_or_else(|| format!("no run report in {}", dir.join("reports").display()))?;
    let bytes = fs::read(&newest).map_err(|e| format!("{}: {e}", newest.display()))?;
    let v: serde_json::Value =
        serde_json::from_slice(&bytes).map_err(|e| format!("{}: {e}", newest.display()))?;
    let text = |g: &serde_json::Value, k: &str| g.get(k).and_then(|t| t.as_str()).map(String::from);
    Ok(v.get("groups")
        .and_then(|g| g.as_array())
        .map(|a| a.as_slice())
        .unwrap_or_default()
        .iter()
        .filter(|g| g.get("kind").and_then(|k| k.as_str()) == Some("tables"))
        .map(|g| ReportedGroup {
            group: text(g, "group").unwrap_or_default(),
            status: text(g, "status").unwrap_or_default(),
            engine: text(g, "engine"),
            // Present (any value, even null) means the group fell back.
            fallback: g.get("fallback").map(|f| match f.as_str() {
                Some(s) => s.to_string(),
                None => f.to_string(),
            }),
            split: g
                .get("attempts")
                .and_then(|a| a.as_array())
                .and_then(|a| a.last())
                .and_then(|a| a.get("split"))
                .and_then(|s| s.as_array())
                .map(|s| {
                    s.iter()
                        .filter_map(|t| t.get("sessions").and_then(|n| n.as_u64()))
                        .collect()
                })
                .unwrap_or_default(),
        })
        .collect())
}

/// The last `n` bytes of a file, as text.
pub fn tail(path: &Path, n: usize) -> String {
    let b = fs::read(path).unwrap_or_default();
    let s = String::from_utf8_lossy(&b[b.len().saturating_sub(n)..]).to_string();
    s.trim().to_string()
}

/// The server's io workers (PostgreSQL 18 with `io_method = worker`): the postmaster's
/// children whose process title says `io worker`. None before 18.
pub fn io_workers(postmaster: i32) -> Vec<i32> {
    let Ok(rd) = fs::read_dir("/proc") else {
        return Vec::new();
    };
    rd.flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter(|&pid| parent_pid(pid) == Some(postmaster))
        .filter(|pid| {
            fs::read(format!("/proc/{pid}/cmdline"))
                .is_ok_and(|c| String::from_utf8_lossy(&c).contains("io worker"))
        })
        .collect()
}

/// CPU seconds the processes have used so far, together (None if one of them is gone).
pub fn processes_cpu_s(pids: &[i32]) -> Option<f64> {
    pids.iter().map(|&p| process_cpu_s(p)).sum()
}
