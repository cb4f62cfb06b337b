//! The command line: argument definitions and what each subcommand does.
//!
//! Every subcommand ends in an [`Outcome`]; [`dispatch`] hands it back to `main`, which turns
//! it into the exit code. Failures are printed here, in one place, so each command only has to
//! say what went wrong.

use std::path::PathBuf;

use clap::{Parser, Subcommand};

use crate::config;
use crate::exit::Outcome;
use crate::failure::Failure;
use crate::run::{self, RunOptions};

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
        /// Instead, propose groups from the live databases: tables tied by foreign keys,
        /// inheritance or views, as [[group]] blocks to paste, and the foreign keys the
        /// configuration dumps apart today.
        #[arg(long)]
        suggest_groups: bool,
    },
    /// Write a starter groups.toml for a database (connection from PGHOST, PGPORT, PGUSER…),
    /// with the groups `plan --suggest-groups` would propose. Never overwrites a file.
    Init(crate::suggest::InitOptions),
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
    /// Per group, its newest good dump (run, age, size, engine), how many are kept, and its
    /// last failed attempt when newer; configured groups with no dump at all.
    List {
        /// Only this group (repeatable).
        #[arg(short, long = "group", value_name = "NAME")]
        groups: Vec<String>,
        /// Only this database (repeatable).
        #[arg(short, long = "database", value_name = "DB")]
        databases: Vec<String>,
        /// Print the listing as JSON on stdout.
        #[arg(long)]
        json: bool,
        /// An age identity (secret key) file that decrypts encrypted run reports, for the
        /// details they hold (snapshot times, engines, failures); may be given several times.
        #[arg(long = "identity", value_name = "FILE")]
        identities: Vec<PathBuf>,
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

/// Runs the parsed command and returns how it ended (its exit code is [`Outcome::code`]).
pub async fn dispatch(cli: Cli) -> Outcome {
    if cli.version {
        print(&version_text(&cli.config).await);
        return Outcome::Ok;
    }
    let Some(command) = cli.command else {
        return Outcome::Config; // clap printed the help (arg_required_else_help)
    };
    // These need no configuration: they work before one exists.
    match &command {
        Command::Completions { shell } => {
            let mut cmd = <Cli as clap::CommandFactory>::command();
            let mut out = Vec::new();
            clap_complete::generate(*shell, &mut cmd, "pg_groupdump", &mut out);
            print_bytes(&out);
            return Outcome::Ok;
        }
        Command::Init(opts) => {
            return match crate::suggest::init(opts).await {
                Ok(outcome) => outcome,
                Err(e) => {
                    crate::say!("pg_groupdump: init: {e}");
                    e.outcome()
                }
            };
        }
        Command::Man => {
            let cmd = <Cli as clap::CommandFactory>::command();
            let mut out = Vec::new();
            if clap_mangen::Man::new(cmd).render(&mut out).is_ok() {
                print_bytes(&out);
            }
            return Outcome::Ok;
        }
        _ => {}
    }
    let config = match config::load(&cli.config) {
        Ok(c) => c,
        Err(e) => {
            crate::say!("pg_groupdump: configuration error: {e}");
            return Outcome::Config;
        }
    };
    crate::store::set_modes(config.backup.file_mode, config.backup.dir_mode);
    let progress = cli.log_format == LogFormat::Text && !cli.quiet && crate::progress::wanted();
    match run_command(&config, command, progress).await {
        Ok(outcome) => outcome,
        Err(e) => report_failure(&config, e).await,
    }
}

/// Runs a command that needs the configuration.
async fn run_command(
    config: &config::Config,
    command: Command,
    progress: bool,
) -> Result<Outcome, Failure> {
    match command {
        Command::Plan {
            json,
            suggest_groups: true,
        } => crate::suggest::command(config, json).await,
        Command::Plan { json, .. } => plan(config, json).await,
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
            backup(config, &opts).await
        }
        Command::Prune { dry_run, json } => prune(config, dry_run, json).await,
        Command::List {
            groups,
            databases,
            json,
            identities,
        } => {
            let filter = crate::list::Filter { databases, groups };
            let config = config.clone();
            tokio::task::spawn_blocking(move || {
                crate::list::command(&config, &filter, &identities, json)
            })
            .await
            .unwrap_or_else(|e| Err(Failure::Start(anyhow::anyhow!("list panicked: {e}"))))
        }
        Command::Verify(opts) => crate::verify::verify(config, &opts).await,
        Command::Restore(opts) => crate::restore::restore(config, &opts).await,
        Command::EmailTest => email_test(config).await,
        Command::Completions { .. } | Command::Man | Command::Init(_) => {
            unreachable!("handled by dispatch")
        }
    }
}

/// Prints a command's failure and returns its outcome. A run whose report could not be
/// written still has its summary printed and mailed, since nobody could read it otherwise.
async fn report_failure(config: &config::Config, e: Failure) -> Outcome {
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
        // Failed dumps matter more to the caller than the missing report.
        if report.failed() > 0 {
            return Outcome::SomeFailed;
        }
    }
    e.outcome()
}

/// `pg_groupdump run`: the run, its summary, its mail and its metrics.
async fn backup(config: &config::Config, opts: &RunOptions) -> Result<Outcome, Failure> {
    match run::run(config, opts).await {
        Ok((mut report, path)) => {
            crate::say_raw!(report.summary(&path.display().to_string()));
            let outcome = report.outcome();
            let mailed = mail_report(config, &mut report, &path).await;
            // A clean run whose mail could not go out has not been reported.
            let outcome = if outcome == Outcome::Ok && !mailed {
                Outcome::NotReported
            } else {
                outcome
            };
            write_metrics(config, Some(&report), outcome);
            Ok(outcome)
        }
        Err(e) => {
            mail_start_failure(config, &e).await;
            // A configuration mistake is no run: it leaves the last run's metrics alone. The
            // metrics record the failure itself (a report not written: 5), whatever the
            // dumps did.
            if !matches!(e, Failure::Config(_) | Failure::Usage(_)) {
                let report = match &e {
                    Failure::Report(_, r) => Some(r.as_ref()),
                    _ => None,
                };
                write_metrics(config, report, e.outcome());
            }
            Err(e)
        }
    }
}

/// `pg_groupdump prune`, on a blocking thread: it walks and deletes files.
async fn prune(config: &config::Config, dry_run: bool, json: bool) -> Result<Outcome, Failure> {
    let config = config.clone();
    tokio::task::spawn_blocking(move || crate::prune::command(&config, dry_run, json))
        .await
        .unwrap_or_else(|e| Err(Failure::Start(anyhow::anyhow!("prune panicked: {e}"))))
}

/// `pg_groupdump email-test`: a mail that cannot be sent is "not reported" (5), as for a run.
async fn email_test(config: &config::Config) -> Result<Outcome, Failure> {
    let Some(email) = &config.email else {
        return Err(Failure::Usage(format!(
            "{} has no [email] table",
            config.path.display()
        )));
    };
    match crate::notify::email_test(email).await {
        Ok(reply) => {
            print(&format!("sent; the server answered: {reply}\n"));
            Ok(Outcome::Ok)
        }
        Err(e) => {
            crate::say!("pg_groupdump: email-test: {e}");
            Ok(Outcome::NotReported)
        }
    }
}

/// Writes to stdout, ignoring errors: output piped into `head` must not panic the command.
fn print(text: &str) {
    print_bytes(text.as_bytes());
}

fn print_bytes(bytes: &[u8]) {
    use std::io::Write as _;
    let _ = std::io::stdout().write_all(bytes);
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
    if let Err(e) = report.write(path, config.encryption.as_ref()) {
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
fn write_metrics(
    config: &config::Config,
    report: Option<&crate::report::RunReport>,
    outcome: Outcome,
) {
    if let Some(path) = &config.metrics_textfile {
        if let Err(e) = crate::metrics::write(path, report, outcome.code()) {
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

/// `pg_groupdump plan`: the groups of every database, as text or JSON, warnings on stderr.
async fn plan(config: &config::Config, json: bool) -> Result<Outcome, Failure> {
    let planned = run::build_plan(config, &[], false).await?;
    for w in &planned.plan.warnings {
        crate::say!("warning: {w}");
    }
    let text = if json {
        serde_json::to_string_pretty(&planned.plan).expect("plan serializes") + "\n"
    } else {
        crate::plan::render_text(&planned.plan)
    };
    print(&text);
    Ok(Outcome::Ok)
}
