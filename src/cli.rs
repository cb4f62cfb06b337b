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
#[command(name = "pg_groupdump", version, about, max_term_width = 100)]
pub struct Cli {
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
    #[command(subcommand)]
    pub command: Command,
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
}

/// Runs the parsed command and returns the process exit code.
pub async fn dispatch(cli: Cli) -> i32 {
    let config = match config::load(&cli.config) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("pg_groupdump: configuration error: {e}");
            return exit::CONFIG;
        }
    };
    let result = match cli.command {
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
            };
            match run::run(&config, &opts).await {
                Ok((report, path)) => {
                    eprint!("{}", report.summary(&path.display().to_string()));
                    Ok(if report.failed() > 0 {
                        exit::SOME_FAILED
                    } else {
                        exit::OK
                    })
                }
                Err(e) => Err(e),
            }
        }
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            let what = match &e {
                Failure::Config(_) => "configuration error: ",
                Failure::Usage(_) => "usage: ",
                _ => "",
            };
            eprintln!("pg_groupdump: {what}{e}");
            if let Failure::Report(_, report) = &e {
                eprint!("{}", report.summary("(not written)"));
                if report.failed() > 0 {
                    return exit::SOME_FAILED;
                }
            }
            e.exit_code()
        }
    }
}

async fn plan(config: &config::Config, json: bool) -> Result<i32, Failure> {
    let planned = run::build_plan(config, &[], false).await?;
    for w in &planned.plan.warnings {
        eprintln!("warning: {w}");
    }
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(&planned.plan).expect("plan serializes")
        );
    } else {
        print!("{}", crate::plan::render_text(&planned.plan));
    }
    Ok(exit::OK)
}
