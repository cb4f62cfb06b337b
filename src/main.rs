//! The `pg_groupdump` binary: logging and the runtime around [`pg_groupdump::cli::dispatch`].

use std::io::IsTerminal;
use std::process::ExitCode;

use clap::Parser;
use pg_groupdump::cli::{dispatch, Cli, LogFormat};
use pg_groupdump::progress::LogWriterMaker;

fn main() -> ExitCode {
    limit_malloc_arenas();
    let cli = Cli::parse();
    let level = match (cli.quiet, cli.verbose) {
        (true, _) => "warn",
        (false, 0) => "info",
        (false, 1) => "debug",
        _ => "trace",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_env("PG_GROUPDUMP_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(format!("pg_groupdump={level}")));
    let builder = tracing_subscriber::fmt()
        .with_writer(LogWriterMaker)
        .with_env_filter(filter)
        .with_target(false)
        // A lost terminal must not turn a log line into a panic: drop what cannot be written.
        .log_internal_errors(false);
    match cli.log_format {
        LogFormat::Json => builder.json().init(),
        LogFormat::Text => builder.with_ansi(std::io::stderr().is_terminal()).init(),
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    let code = runtime.block_on(dispatch(cli)).code();
    // A blocking task still stuck (a hung DNS lookup, say) must not delay the exit.
    runtime.shutdown_timeout(std::time::Duration::from_secs(2));
    ExitCode::from(code.clamp(0, 255) as u8)
}

/// glibc gives each thread that allocates its own malloc arena (up to 8 per core), and
/// memory freed in one is not returned while others hold on: the writer and compression
/// threads, each allocating and freeing a file's buffers in turn, grew the resident set with
/// the number of groups. Two arenas are enough for a program whose threads mostly wait.
fn limit_malloc_arenas() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only sets an allocator parameter; called before any other thread runs.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 2);
        // A fixed threshold (glibc raises it as large blocks are freed): a file's 64 KiB
        // buffers are mapped and unmapped, never left scattered in an arena.
        libc::mallopt(libc::M_MMAP_THRESHOLD, 64 * 1024);
    }
}
