//! The command line: argument definitions and what each subcommand does.

use std::path::PathBuf;

use clap::{Parser, Subcommand};

use crate::config;
use crate::exit;
use crate::run::{self, RunOptions};
use crate::Failure;

/// Back up PostgreSQL group by group: each group of related tables in its own short snapshot
/// and lock window, each dump written atomically.
#[derive(Debug, Parser)]
#[command(
    name = "pg_groupdump",
    about,
    max_term_width = 100,
    disable_version_flag = true,
    subcommand_required = false,
    arg_required_else_help = true
)]
pub struct Cli {
    /// Print the version, and the pg_dump a run would use.
    #[arg(short = 'V', long)]
    pub version: bool,
    /// Configuration file.
    #[arg(
        short,
        long,
        global = true,
        default_value = "groups.toml",
        value_name = "FILE"
    )]
    pub config: PathBuf,
    /// More detail in the log (-v: debug, -vv: trace).
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    pub verbose: u8,
    /// Only warnings and errors in the log.
    #[arg(short, long, global = true, conflicts_with = "verbose")]
    pub quiet: bool,
    /// Log format: plain text lines, or one JSON object per line.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
    #[command(subcommand)]
    pub command: Option<Command>,
}

/// `--log-format`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Show, per database, the groups and their tables, without dumping anything.
    Plan {
        /// Print the plan as JSON on stdout.
        #[arg(long)]
        json: bool,
    },
    /// Dump every selected group.
    Run {
        /// Dumps running at once (overrides backup.jobs).
        #[arg(short, long, value_parser = clap::value_parser!(u16).range(1..=256))]
        jobs: Option<u16>,
        /// Dump only this group (repeatable); the schema and globals dumps are skipped.
        #[arg(short, long = "group", value_name = "NAME")]
        groups: Vec<String>,
        /// Dump only this database (repeatable); the globals dump is skipped.
        #[arg(short, long = "database", value_name = "DB")]
        databases: Vec<String>,
        /// Write the run report here instead of <dir>/reports/<run id>.json.
        #[arg(long, value_name = "FILE")]
        report: Option<PathBuf>,
    },
    /// Delete dumps older than the retention rules allow (never a group's newest good dump).
    Prune {
        /// Show what would be deleted, delete nothing.
        #[arg(long)]
        dry_run: bool,
        /// Print the decisions as JSON on stdout.
        #[arg(long)]
        json: bool,
    },
    /// Send a test mail with the [email] settings and print the server's reply.
    EmailTest,
    /// Check a run's dumps against its report: files, sizes, sha256, tables; with --restore,
    /// restore each group into a scratch database and compare row counts.
    Verify(crate::verify::VerifyOptions),
    /// Restore one group's newest (or --run's) dump, or a whole database from one run.
    Restore(crate::restore::RestoreOptions),
    /// Print a shell completion script.
    Completions {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Print the manual page (roff).
    Man,
}

/// Runs the parsed command and returns the process exit code.
pub async fn dispatch(cli: Cli) -> i32 {
    use std::io::Write as _;
    if cli.version {
        let _ = std::io::stdout().write_all(version_text(&cli.config).await.as_bytes());
        return exit::OK;
    }
    let Some(command) = cli.command else {
        return exit::CONFIG; // clap printed the help (arg_required_else_help)
    };
    match &command {
        Command::Completions { shell } => {
            let mut cmd = <Cli as clap::CommandFactory>::command();
            let mut out = Vec::new();
            clap_complete::generate(*shell, &mut cmd, "pg_groupdump", &mut out);
            let _ = std::io::stdout().write_all(&out);
            return exit::OK;
        }
        Command::Man => {
            let cmd = <Cli as clap::CommandFactory>::command();
            let mut out = Vec::new();
            if clap_mangen::Man::new(cmd).render(&mut out).is_ok() {
                let _ = std::io::stdout().write_all(&out);
            }
            return exit::OK;
        }
        _ => {}
    }
    let config = match config::load(&cli.config) {
        Ok(c) => c,
        Err(e) => {
            crate::say!("pg_groupdump: configuration error: {e}");
            return exit::CONFIG;
        }
    };
    crate::store::set_modes(config.backup.file_mode, config.backup.dir_mode);
    let progress = cli.log_format == LogFormat::Text && !cli.quiet && crate::progress::wanted();
    let result = match command {
        Command::Plan { json } => plan(&config, json).await,
        Command::Run {
            jobs,
            groups,
            databases,
            report,
        } => {
            let opts = RunOptions {
                jobs: jobs.map(usize::from),
                groups,
                databases,
                report,
                progress,
            };
            match run::run(&config, &opts).await {
                Ok((mut report, path)) => {
                    crate::say_raw!(report.summary(&path.display().to_string()));
                    let code = report.exit_code();
                    let mailed = mail_report(&config, &mut report, &path).await;
                    let code = if code == exit::OK && !mailed {
                        exit::NOT_REPORTED
                    } else {
                        code
                    };
                    write_metrics(&config, Some(&report), code);
                    Ok(code)
                }
                Err(e) => {
                    mail_start_failure(&config, &e).await;
                    if !matches!(e, Failure::Config(_) | Failure::Usage(_)) {
                        let report = match &e {
                            Failure::Report(_, r) => Some(r.as_ref()),
                            _ => None,
                        };
                        write_metrics(&config, report, e.exit_code());
                    }
                    Err(e)
                }
            }
        }
        Command::Prune { dry_run, json } => {
            let config = config.clone();
            tokio::task::spawn_blocking(move || crate::prune::command(&config, dry_run, json))
                .await
                .unwrap_or_else(|e| Err(Failure::Start(anyhow::anyhow!("prune panicked: {e}"))))
        }
        Command::Verify(opts) => crate::verify::verify(&config, &opts).await,
        Command::Restore(opts) => crate::restore::restore(&config, &opts).await,
        Command::Completions { .. } | Command::Man => unreachable!("handled above"),
        Command::EmailTest => match &config.email {
            None => Err(Failure::Usage(format!(
                "{} has no [email] table",
                config.path.display()
            ))),
            Some(email) => match crate::notify::email_test(email).await {
                Ok(reply) => {
                    {
                        use std::io::Write as _;
                        let _ = writeln!(std::io::stdout(), "sent; the server answered: {reply}");
                    }
                    Ok(exit::OK)
                }
                Err(e) => {
                    crate::say!("pg_groupdump: email-test: {e}");
                    Ok(exit::NOT_REPORTED)
                }
            },
        },
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            let what = match &e {
                Failure::Config(_) => "configuration error: ",
                Failure::Usage(_) => "usage: ",
                _ => "",
            };
            crate::say!("pg_groupdump: {what}{e}");
            if let Failure::Report(_, report) = &e {
                crate::say_raw!(report.summary("(not written)"));
                if let Some(email) = &config.email {
                    let path = std::path::Path::new("(not written)");
                    if let Err(e) = crate::notify::notify_run(email, report, path).await {
                        crate::say!("pg_groupdump: could not send the run's mail: {e}");
                    }
                }
                if report.failed() > 0 {
                    return exit::SOME_FAILED;
                }
            }
            e.exit_code()
        }
    }
}

/// Mails the run's summary when `[email]` asks for it and records the outcome in the report
/// (rewritten in place). Returns false when a mail was due and could not be sent.
async fn mail_report(
    config: &config::Config,
    report: &mut crate::report::RunReport,
    path: &std::path::Path,
) -> bool {
    let Some(email) = &config.email else {
        return true;
    };
    let outcome = crate::notify::notify_run(email, report, path).await;
    let (ok, notification) = match outcome {
        Ok(None) => return true,
        Ok(Some(reply)) => (
            true,
            crate::report::Notification {
                sent: true,
                reply: Some(reply),
                error: None,
            },
        ),
        Err(e) => {
            crate::say!("pg_groupdump: could not send the run's mail: {e}");
            (
                false,
                crate::report::Notification {
                    sent: false,
                    reply: None,
                    error: Some(e.to_string()),
                },
            )
        }
    };
    report.notification = Some(notification);
    let json = serde_json::to_vec_pretty(report).expect("report serializes");
    if let Err(e) = crate::store::write_atomic(path, &json) {
        crate::say!(
            "pg_groupdump: cannot rewrite the run report {}: {e}",
            path.display()
        );
    }
    ok
}

/// `--version`: ours, and the pg_dump a run with this configuration would use.
async fn version_text(config_path: &std::path::Path) -> String {
    let (pg_dump, pg_dumpall) = match config::load(config_path) {
        Ok(c) => (c.backup.pg_dump, c.backup.pg_dumpall),
        Err(_) => (None, None),
    };
    let dump = match crate::tools::locate(pg_dump.as_deref(), pg_dumpall.as_deref()) {
        Err(e) => format!("pg_dump: {e}"),
        Ok((path, _)) => match crate::tools::binary_version(&path).await {
            Ok((v, _)) => format!("pg_dump: {} (PostgreSQL {v})", path.display()),
            Err(e) => format!("pg_dump: {e}"),
        },
    };
    format!("pg_groupdump {}\n{dump}\n", env!("CARGO_PKG_VERSION"))
}

/// Writes the Prometheus textfile, if configured; a failure is reported, not fatal.
fn write_metrics(config: &config::Config, report: Option<&crate::report::RunReport>, code: i32) {
    if let Some(path) = &config.metrics_textfile {
        if let Err(e) = crate::metrics::write(path, report, code) {
            crate::say!(
                "pg_groupdump: cannot write the metrics file {}: {e}",
                path.display()
            );
        }
    }
}

/// Mails "the run could not start" (configuration problems are the operator's own, at the
/// terminal, and get no mail).
async fn mail_start_failure(config: &config::Config, failure: &Failure) {
    let Some(email) = &config.email else { return };
    if matches!(
        failure,
        Failure::Config(_) | Failure::Usage(_) | Failure::Report(..)
    ) {
        return;
    }
    if let Err(e) =
        crate::notify::notify_start_failure(email, &config.path, &failure.to_string()).await
    {
        crate::say!("pg_groupdump: could not send the failure mail: {e}");
    }
}

async fn plan(config: &config::Config, json: bool) -> Result<i32, Failure> {
    let planned = run::build_plan(config, &[], false).await?;
    for w in &planned.plan.warnings {
        crate::say!("warning: {w}");
    }
    let text = if json {
        serde_json::to_string_pretty(&planned.plan).expect("plan serializes") + "\n"
    } else {
        crate::plan::render_text(&planned.plan)
    };
    use std::io::Write as _;
    let _ = std::io::stdout().write_all(text.as_bytes());
    Ok(exit::OK)
}
