//! The `pg_groupdump` binary: logging and the runtime around [`pg_groupdump::cli::dispatch`].

use std::io::IsTerminal;
use std::process::ExitCode;

use clap::Parser;
use pg_groupdump::cli::{dispatch, Cli, LogFormat};
use pg_groupdump::progress::LogWriterMaker;

fn main() -> ExitCode {
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
