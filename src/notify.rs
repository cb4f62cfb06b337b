//! Mail after a run: `[email]`, the message, and sending it over SMTP (lettre).
//!
//! One plain-text mail per run, sent after the run and its pruning: on failure only (the
//! default) or after every run (`on = "always"`). A run that could not start after the
//! configuration was read (server unreachable, authentication failed, another run holds the
//! lock) is mailed too. `pg_groupdump email-test` sends a test message.
//!
//! Every exchange with the mail server, from the DNS lookup to `QUIT`, is bounded by
//! `email.timeout`, so a dead or silent mail server never hangs a run. The password comes from
//! `password_file` (its first line) or the environment variable named by `password_env`; it is
//! never written to the configuration, a log or a message.

use std::fmt::Write as _;
use std::io;
use std::net::{IpAddr, SocketAddr, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::time::Duration;

use lettre::message::header::{ContentType, HeaderName, HeaderValue};
use lettre::message::Mailbox;
use lettre::transport::smtp::authentication::{Credentials, Mechanism};
use lettre::transport::smtp::client::{
    AsyncSmtpConnection, Certificate, TlsParameters, TlsParametersBuilder,
};
use lettre::transport::smtp::extension::ClientId;
use lettre::transport::smtp::response::Response;
use lettre::transport::smtp::Error as SmtpError;
use lettre::Message;

use crate::config::{is_loopback, EmailConfig, On, PasswordSource, TlsMode};
use crate::report::{GroupReport, Outcome, RunReport, Status};

/// Failed groups described in full in one mail; the rest are listed by name.
const MAX_DETAILED_GROUPS: usize = 50;
/// Table names listed per failed group.
const MAX_TABLES_LISTED: usize = 20;

/// A mail could not be sent. The texts name the setting or the server at fault; each includes
/// the underlying error's text, which is therefore not also given as a `source`.
#[derive(Debug, thiserror::Error)]
pub enum NotifyError {
    #[error("cannot build the mail: {0}")]
    Build(lettre::error::Error),
    #[error("cannot read email.password_file {}: {error}", .path.display())]
    PasswordFile { path: PathBuf, error: io::Error },
    #[error("email.password_env: the environment variable {0} is not set (or not UTF-8)")]
    PasswordEnv(String),
    #[error("cannot read email.ca_file {}: {error}", .path.display())]
    CaFile { path: PathBuf, error: io::Error },
    #[error("email.ca_file {} holds no usable PEM certificate: {error}", .path.display())]
    CaCertificate { path: PathBuf, error: SmtpError },
    #[error("TLS setup for {host}: {error}")]
    TlsSetup { host: String, error: SmtpError },
    /// The exchange with the server (`host:port`) failed.
    #[error("mail server {server}: {error}")]
    Exchange {
        server: String,
        error: ExchangeError,
    },
    /// `email.timeout` ran out before the exchange ended.
    #[error(
        "mail server {server}: no answer within email.timeout ({}); the mail was not sent",
        humantime::format_duration(*.timeout)
    )]
    Timeout { server: String, timeout: Duration },
}

/// What went wrong in the exchange with the mail server, from the DNS lookup to the message.
#[derive(Debug, thiserror::Error)]
pub enum ExchangeError {
    #[error("cannot start the lookup of {host}: {error}")]
    LookupThread { host: String, error: io::Error },
    #[error("cannot resolve {host}: {error}")]
    Resolve { host: String, error: io::Error },
    #[error("{0} has no address")]
    NoAddress(String),
    #[error("the lookup of {0} failed")]
    LookupLost(String),
    #[error("cannot connect: {0}")]
    Connect(SmtpError),
    #[error(
        "the server does not offer STARTTLS (tls = \"starttls\" requires it; \
         use tls = \"tls\" for port 465)"
    )]
    NoStarttls,
    #[error("STARTTLS failed: {0}")]
    Starttls(SmtpError),
    #[error("authentication as {user} failed: {error}")]
    Auth { user: String, error: SmtpError },
    #[error("the message was refused: {0}")]
    Refused(SmtpError),
}

// ---------------------------------------------------------------------------------------------
// Entry points

/// Sends the run's summary if `on` says so. `Ok(Some(reply))` when sent, `Ok(None)` when
/// there was nothing to send.
pub async fn notify_run(
    cfg: &EmailConfig,
    report: &RunReport,
    report_path: &Path,
) -> Result<Option<String>, NotifyError> {
    let failed = report.failed() > 0 || report.status == Status::Failed;
    if !failed && cfg.on == On::Failure {
        return Ok(None);
    }
    let (subject, body) = run_message(cfg, report, report_path);
    let sent = send(cfg, &subject, body).await?;
    Ok(Some(sent.reply))
}

/// Sends the "run could not start" mail.
pub async fn notify_start_failure(
    cfg: &EmailConfig,
    config_path: &Path,
    error: &str,
) -> Result<String, NotifyError> {
    let machine = crate::report::host_name();
    let target = configured_server(config_path);
    let (subject, body) = start_failure_message(cfg, config_path, error, target, &machine);
    Ok(send(cfg, &subject, body).await?.reply)
}

/// `pg_groupdump email-test`: sends a test message, returns what the server answered.
pub async fn email_test(cfg: &EmailConfig) -> Result<String, NotifyError> {
    let machine = crate::report::host_name();
    let subject = subject(cfg, &format!("{machine}: test message"));
    let mut body = String::new();
    let _ = writeln!(
        body,
        "This is a test message from `pg_groupdump email-test` on {machine}."
    );
    let _ = writeln!(body);
    let _ = writeln!(
        body,
        "If you read this, the [email] settings work: runs are mailed {}.",
        match cfg.on {
            On::Failure => "when a dump fails (on = \"failure\")",
            On::Always => "after every run (on = \"always\")",
        }
    );
    let _ = writeln!(body);
    let _ = writeln!(body, "Sent     {}", crate::report::now_rfc3339());
    let _ = writeln!(body, "Server   {}", describe_server(cfg));
    let _ = writeln!(body, "From     {}", cfg.from);
    let _ = writeln!(body, "To       {}", mailbox_list(&cfg.to));
    let sent = send(cfg, &subject, body).await?;
    Ok(sent.describe())
}

// ---------------------------------------------------------------------------------------------
// The messages

fn subject(cfg: &EmailConfig, text: &str) -> String {
    if cfg.subject_prefix.is_empty() {
        text.to_string()
    } else {
        format!("{} {text}", cfg.subject_prefix)
    }
}

/// The name a run is known by in the subject: the PostgreSQL server's host (with its port
/// unless 5432), or the name of this machine when the server is reached over a unix socket or
/// a loopback address (it then runs here).
pub fn server_label(server: &str, machine: &str) -> String {
    if server.is_empty() || server.starts_with('/') {
        return machine.to_string();
    }
    let (host, port) = match server.rsplit_once(':') {
        Some((h, p)) if p.parse::<u16>().is_ok() => (h, Some(p)),
        _ => (server, None),
    };
    if host.is_empty() || is_loopback(host) {
        return machine.to_string();
    }
    match port {
        None | Some("5432") => host.to_string(),
        Some(p) => format!("{host}:{p}"),
    }
}

/// Subject and body of a run's mail.
pub fn run_message(cfg: &EmailConfig, report: &RunReport, report_path: &Path) -> (String, String) {
    let label = server_label(&report.server, &report.host);
    let total = report.groups.len();
    let failed: Vec<&GroupReport> = report
        .groups
        .iter()
        .filter(|g| g.status == Status::Failed)
        .collect();
    let bytes = crate::text::human_bytes(report.bytes());
    let subject_text = if failed.is_empty() {
        format!("{label}: all {total} groups ok ({bytes})")
    } else {
        format!("{label}: {} of {total} groups failed", failed.len(),)
    };

    let mut b = String::new();
    if failed.is_empty() {
        let _ = writeln!(
            b,
            "pg_groupdump backed up {} from {}: every dump succeeded.",
            crate::text::plural(total, "group"),
            report.server
        );
    } else {
        let _ = writeln!(
            b,
            "pg_groupdump: {} of {total} groups FAILED in the backup of {}; {} ok (written and kept).",
            failed.len(),
            report.server,
            total - failed.len()
        );
    }
    let _ = writeln!(b);
    let _ = writeln!(b, "Run       {}", report.run_id);
    let _ = writeln!(b, "Server    {}", report.server);
    let _ = writeln!(b, "Host      {}", report.host);
    let _ = writeln!(b, "Report    {}", report_path.display());
    let _ = writeln!(b, "Config    {}", report.config);

    write_failed_groups(&mut b, &failed);
    write_totals(&mut b, report, failed.len());
    if !report.warnings.is_empty() {
        let _ = writeln!(b);
        let _ = writeln!(b, "WARNINGS");
        for w in &report.warnings {
            let _ = writeln!(b, "  - {}", indent_rest(w, 4));
        }
    }
    let _ = writeln!(b);
    let _ = writeln!(
        b,
        "-- \npg_groupdump {} on {}",
        env!("CARGO_PKG_VERSION"),
        report.host
    );
    (subject(cfg, &subject_text), b)
}

/// The mail's FAILED GROUPS section: the first failed groups in full, the rest by name.
fn write_failed_groups(b: &mut String, failed: &[&GroupReport]) {
    if failed.is_empty() {
        return;
    }
    let _ = writeln!(b);
    let _ = writeln!(b, "FAILED GROUPS");
    for g in failed.iter().take(MAX_DETAILED_GROUPS) {
        let _ = writeln!(b);
        write_failed_group(b, g);
    }
    if failed.len() > MAX_DETAILED_GROUPS {
        let _ = writeln!(b);
        let _ = writeln!(
            b,
            "{} more failed groups (details in the report):",
            failed.len() - MAX_DETAILED_GROUPS
        );
        for g in failed.iter().skip(MAX_DETAILED_GROUPS) {
            let _ = writeln!(b, "  {}", group_name(g));
        }
    }
}

/// The mail's TOTALS section: groups, bytes, duration, and what the prune did.
fn write_totals(b: &mut String, report: &RunReport, failed: usize) {
    let total = report.groups.len();
    let bytes = crate::text::human_bytes(report.bytes());
    let _ = writeln!(b);
    let _ = writeln!(b, "TOTALS");
    let _ = writeln!(
        b,
        "  groups    {total} in all: {} ok, {} failed",
        total - failed,
        failed
    );
    let _ = writeln!(b, "  written   {bytes} ({} bytes)", report.bytes());
    let _ = writeln!(
        b,
        "  duration  {} (from {} to {})",
        duration_between(&report.started_at, &report.finished_at),
        report.started_at,
        report.finished_at
    );
    if let Some(p) = &report.prune {
        let _ = writeln!(
            b,
            "  pruned    {}, {} freed{}",
            crate::text::plural(p.deleted_files as usize, "file"),
            crate::text::human_bytes(p.freed_bytes),
            if p.errors.is_empty() {
                String::new()
            } else {
                format!(", {}", crate::text::plural(p.errors.len(), "error"))
            }
        );
        for e in &p.errors {
            let _ = writeln!(b, "            {}", indent_rest(e, 12));
        }
    }
}

fn group_name(g: &GroupReport) -> String {
    format!(
        "{} / {}",
        g.database.as_deref().unwrap_or("(cluster)"),
        crate::text::printable(&g.group)
    )
}

fn write_failed_group(b: &mut String, g: &GroupReport) {
    let _ = writeln!(b, "{}", group_name(g));
    let _ = writeln!(
        b,
        "  database  {}",
        g.database.as_deref().unwrap_or("(cluster: globals)")
    );
    let _ = writeln!(b, "  group     {}", crate::text::printable(&g.group));
    if !g.tables.is_empty() {
        let mut tables: Vec<String> = g
            .tables
            .iter()
            .take(MAX_TABLES_LISTED)
            .map(|t| crate::text::printable(t))
            .collect();
        if g.tables.len() > MAX_TABLES_LISTED {
            tables.push(format!("and {} more", g.tables.len() - MAX_TABLES_LISTED));
        }
        let _ = writeln!(b, "  tables    {}", tables.join(", "));
    }
    let _ = writeln!(b, "  attempts  {}", g.attempts.len());
    let _ = writeln!(
        b,
        "  error     {}",
        indent_rest(g.error.as_deref().unwrap_or("(no error recorded)"), 12)
    );
    for a in &g.attempts {
        let outcome = match a.outcome {
            Outcome::Ok => "ok",
            Outcome::LockTimeout => "lock wait timed out",
            Outcome::Yielded => "yielded to a waiting session",
            Outcome::ConnectionLost => "lost its connection to the server",
            Outcome::Interrupted => "interrupted",
            Outcome::TableChanged => "a table was dropped or renamed as it was locked",
            Outcome::Gone => "every table was dropped",
            Outcome::Failed => "failed",
        };
        let _ = writeln!(
            b,
            "  attempt {} at {}: {outcome} after {}",
            a.number,
            a.started_at,
            short_duration(Duration::from_millis(a.duration_ms))
        );
        // With one attempt its error is the group's, printed above.
        if g.attempts.len() > 1 {
            if let Some(e) = &a.error {
                let _ = writeln!(b, "    error: {}", indent_rest(e, 11));
            }
        }
        for s in &a.blockers {
            let _ = writeln!(b, "    blocked by {}", indent_rest(&s.describe(), 15));
        }
        if let Some(s) = &a.yielded_to {
            let _ = writeln!(b, "    yielded to {}", indent_rest(&s.describe(), 15));
        }
    }
}

/// Subject and body of the "run could not start" mail. `target` is the PostgreSQL server as
/// configured (host, port), if known.
fn start_failure_message(
    cfg: &EmailConfig,
    config_path: &Path,
    error: &str,
    target: Option<String>,
    machine: &str,
) -> (String, String) {
    let label = server_label(target.as_deref().unwrap_or(""), machine);
    let mut b = String::new();
    let _ = writeln!(
        b,
        "pg_groupdump could not start a backup run: nothing was dumped."
    );
    let _ = writeln!(b);
    let _ = writeln!(b, "Error     {}", indent_rest(error, 10));
    let _ = writeln!(b);
    if let Some(t) = &target {
        let _ = writeln!(b, "Server    {t}");
    }
    let _ = writeln!(b, "Host      {machine}");
    let _ = writeln!(
        b,
        "Config    {}",
        std::path::absolute(config_path)
            .unwrap_or_else(|_| config_path.to_path_buf())
            .display()
    );
    let _ = writeln!(b, "Time      {}", crate::report::now_rfc3339());
    let _ = writeln!(b);
    let _ = writeln!(
        b,
        "-- \npg_groupdump {} on {machine}",
        env!("CARGO_PKG_VERSION")
    );
    (
        subject(cfg, &format!("{label}: the run could not start")),
        b,
    )
}

/// `host:port` of the PostgreSQL server as the configuration file (or libpq's environment)
/// names it, for the "could not start" mail. Reads only `[connection]` again.
fn configured_server(config_path: &Path) -> Option<String> {
    let env = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
    let text = std::fs::read_to_string(config_path).ok();
    let conn = text
        .as_deref()
        .and_then(|t| t.parse::<toml::Table>().ok())
        .and_then(|t| t.get("connection").and_then(|c| c.as_table()).cloned());
    let host = conn
        .as_ref()
        .and_then(|c| c.get("host"))
        .and_then(|h| h.as_str())
        .map(str::to_string)
        .or_else(|| env("PGHOST"))
        .map(|h| h.split(',').next().unwrap_or("").to_string())
        .filter(|h| !h.is_empty())?;
    let port = conn
        .as_ref()
        .and_then(|c| c.get("port"))
        .and_then(|p| p.as_integer())
        .map(|p| p.to_string())
        .or_else(|| env("PGPORT"))
        .unwrap_or_else(|| "5432".to_string());
    Some(if host.starts_with('/') {
        format!("{}/.s.PGSQL.{port}", host.trim_end_matches('/'))
    } else {
        format!("{host}:{port}")
    })
}

/// Continuation lines of `s` indented by `n` spaces (so multi-line errors stay readable).
fn indent_rest(s: &str, n: usize) -> String {
    let s = s.trim_end();
    s.replace('\n', &format!("\n{}", " ".repeat(n)))
}

fn short_duration(d: Duration) -> String {
    if d < Duration::from_secs(60) {
        format!("{:.1}s", d.as_secs_f64())
    } else {
        humantime::format_duration(Duration::from_secs(d.as_secs())).to_string()
    }
}

fn duration_between(start: &str, end: &str) -> String {
    let parse = |s: &str| chrono::DateTime::parse_from_rfc3339(s).ok();
    match (parse(start), parse(end)) {
        (Some(a), Some(b)) => short_duration((b - a).to_std().unwrap_or_default()),
        _ => "unknown".to_string(),
    }
}

fn mailbox_list(list: &[Mailbox]) -> String {
    list.iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}

fn describe_server(cfg: &EmailConfig) -> String {
    format!(
        "{}:{} (tls = \"{}\"{}{})",
        cfg.host,
        cfg.port,
        cfg.tls.as_str(),
        match &cfg.username {
            Some(u) => format!(", user {u}"),
            None => String::new(),
        },
        if cfg.tls_insecure_skip_verify {
            ", certificate NOT checked"
        } else {
            ""
        }
    )
}

// ---------------------------------------------------------------------------------------------
// Sending

/// What happened when a mail went out.
#[derive(Debug)]
struct Sent {
    /// The server's reply to the message (e.g. `250 2.0.0 Ok: queued as 4XyZ`).
    reply: String,
    /// The server's name from its EHLO reply.
    server_name: String,
    encrypted: bool,
    /// The reply to AUTH, when authenticated.
    auth: Option<String>,
}

impl Sent {
    fn describe(&self) -> String {
        let mut s = format!("{} (server {}", self.reply, self.server_name);
        s.push_str(if self.encrypted {
            ", encrypted"
        } else {
            ", not encrypted"
        });
        if let Some(a) = &self.auth {
            s.push_str(&format!(", AUTH: {a}"));
        }
        s.push(')');
        s
    }
}

fn reply_text(r: &Response) -> String {
    let lines: Vec<&str> = r.message().collect();
    if lines.is_empty() {
        r.code().to_string()
    } else {
        format!("{} {}", r.code(), lines.join(" / "))
    }
}

fn build_message(cfg: &EmailConfig, subject: &str, body: String) -> Result<Message, NotifyError> {
    let mut m = Message::builder()
        .from(cfg.from.clone())
        .subject(subject)
        .message_id(None)
        .user_agent(format!("pg_groupdump/{}", env!("CARGO_PKG_VERSION")))
        .raw_header(HeaderValue::new(
            HeaderName::new_from_ascii_str("Auto-Submitted"),
            "auto-generated".to_string(),
        ))
        .header(ContentType::TEXT_PLAIN);
    for t in &cfg.to {
        m = m.to(t.clone());
    }
    m.body(body).map_err(NotifyError::Build)
}

fn read_password(src: &PasswordSource) -> Result<String, NotifyError> {
    match src {
        PasswordSource::File(f) => std::fs::read_to_string(f)
            .map(|t| t.lines().next().unwrap_or("").to_string())
            .map_err(|error| NotifyError::PasswordFile {
                path: f.clone(),
                error,
            }),
        PasswordSource::Env(v) => std::env::var(v).map_err(|_| NotifyError::PasswordEnv(v.clone())),
    }
}

fn tls_parameters(cfg: &EmailConfig) -> Result<TlsParameters, NotifyError> {
    let mut b = TlsParametersBuilder::new(cfg.host.clone());
    if let Some(ca) = &cfg.ca_file {
        let pem = std::fs::read(ca).map_err(|error| NotifyError::CaFile {
            path: ca.clone(),
            error,
        })?;
        let cert = Certificate::from_pem(&pem).map_err(|error| NotifyError::CaCertificate {
            path: ca.clone(),
            error,
        })?;
        b = b.add_root_certificate(cert);
    }
    if cfg.tls_insecure_skip_verify {
        b = b
            .dangerous_accept_invalid_certs(true)
            .dangerous_accept_invalid_hostnames(true);
    }
    b.build_rustls().map_err(|error| NotifyError::TlsSetup {
        host: cfg.host.clone(),
        error,
    })
}

/// Sends one message, the whole exchange bounded by `cfg.timeout`.
async fn send(cfg: &EmailConfig, subject: &str, body: String) -> Result<Sent, NotifyError> {
    let message = build_message(cfg, subject, body)?;
    let credentials = match (&cfg.username, &cfg.password) {
        (Some(u), Some(p)) => Some(Credentials::new(u.clone(), read_password(p)?)),
        _ => None,
    };
    let tls = match cfg.tls {
        TlsMode::None => None,
        _ => Some(tls_parameters(cfg)?),
    };
    let server = format!("{}:{}", cfg.host, cfg.port);
    let exchange = exchange(cfg, &message, credentials.as_ref(), tls);
    match tokio::time::timeout(cfg.timeout, exchange).await {
        Ok(Ok(sent)) => {
            tracing::info!("mail sent through {server}: {}", sent.reply);
            Ok(sent)
        }
        Ok(Err(error)) => Err(NotifyError::Exchange { server, error }),
        Err(_) => Err(NotifyError::Timeout {
            server,
            timeout: cfg.timeout,
        }),
    }
}

/// The addresses of the mail server. The lookup runs on a thread of its own, not tokio's
/// blocking pool: a resolver that hangs past `email.timeout` is then simply abandoned, instead
/// of holding up the runtime's shutdown at the end of the process.
async fn resolve(host: &str, port: u16) -> Result<Vec<SocketAddr>, ExchangeError> {
    let literal = host.trim_start_matches('[').trim_end_matches(']');
    if let Ok(ip) = literal.parse::<IpAddr>() {
        return Ok(vec![SocketAddr::new(ip, port)]);
    }
    let (tx, rx) = tokio::sync::oneshot::channel();
    let name = host.to_string();
    std::thread::Builder::new()
        .name("smtp-resolve".into())
        .spawn(move || {
            let _ = tx.send(
                (name.as_str(), port)
                    .to_socket_addrs()
                    .map(|a| a.collect::<Vec<_>>()),
            );
        })
        .map_err(|error| ExchangeError::LookupThread {
            host: host.to_string(),
            error,
        })?;
    match rx.await {
        Ok(Ok(addrs)) if !addrs.is_empty() => Ok(addrs),
        Ok(Ok(_)) => Err(ExchangeError::NoAddress(host.to_string())),
        Ok(Err(error)) => Err(ExchangeError::Resolve {
            host: host.to_string(),
            error,
        }),
        Err(_) => Err(ExchangeError::LookupLost(host.to_string())),
    }
}

/// Connects, secures, authenticates, sends, quits.
async fn exchange(
    cfg: &EmailConfig,
    message: &Message,
    credentials: Option<&Credentials>,
    tls: Option<TlsParameters>,
) -> Result<Sent, ExchangeError> {
    let hello = ClientId::default();
    let (wrapper, starttls) = match cfg.tls {
        TlsMode::Tls => (tls, None),
        TlsMode::Starttls => (None, tls),
        TlsMode::None => (None, None),
    };
    let addrs = resolve(&cfg.host, cfg.port).await?;
    let mut conn =
        AsyncSmtpConnection::connect_tokio1(&addrs[..], Some(cfg.timeout), &hello, wrapper, None)
            .await
            .map_err(ExchangeError::Connect)?;
    let mut usable = true;
    let result = async {
        let usable = &mut usable;
        if let Some(params) = starttls {
            if !conn.can_starttls() {
                return Err(ExchangeError::NoStarttls);
            }
            if let Err(e) = conn.starttls(params, &hello).await {
                // After a failed TLS handshake the connection has no stream left: lettre
                // panics on any further write, so it must not even be sent QUIT.
                *usable = false;
                return Err(ExchangeError::Starttls(e));
            }
        }
        let auth = match credentials {
            Some(c) => Some(
                conn.auth(&[Mechanism::Plain, Mechanism::Login], c)
                    .await
                    .map(|r| reply_text(&r))
                    .map_err(|error| ExchangeError::Auth {
                        user: cfg.username.clone().unwrap_or_default(),
                        error,
                    })?,
            ),
            None => None,
        };
        let reply = conn
            .send(message.envelope(), &message.formatted())
            .await
            .map_err(ExchangeError::Refused)?;
        Ok(Sent {
            reply: reply_text(&reply),
            server_name: conn.server_info().name().to_string(),
            encrypted: conn.is_encrypted(),
            auth,
        })
    }
    .await;
    match &result {
        Ok(_) => {
            let _ = conn.quit().await;
        }
        Err(_) if usable => conn.abort().await,
        Err(_) => {}
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::Session;
    use crate::report::{Attempt, Kind};

    use crate::config::email::testing::email;

    #[test]
    fn labels() {
        assert_eq!(
            server_label("db1.example.com:5432", "backup1"),
            "db1.example.com"
        );
        assert_eq!(
            server_label("db1.example.com:6432", "backup1"),
            "db1.example.com:6432"
        );
        assert_eq!(server_label("127.0.0.1:5432", "backup1"), "backup1");
        assert_eq!(server_label("localhost:5433", "backup1"), "backup1");
        assert_eq!(server_label("::1:5432", "backup1"), "backup1");
        assert_eq!(
            server_label("/var/run/postgresql/.s.PGSQL.5432", "db9"),
            "db9"
        );
        assert_eq!(server_label("", "db9"), "db9");
    }

    fn group(name: &str, status: Status) -> GroupReport {
        let mut g = GroupReport::new(
            Kind::Tables,
            Some("shop".into()),
            name.into(),
            vec!["public.orders".into(), "public.order_items".into()],
            "2026-01-01T00:00:00.000Z".into(),
        );
        g.status = status;
        if status == Status::Ok {
            g.bytes = Some(2048);
        }
        g
    }

    fn report(groups: Vec<GroupReport>) -> RunReport {
        RunReport {
            run_id: "20260101T000000Z".into(),
            started_at: "2026-01-01T00:00:00.000Z".into(),
            finished_at: "2026-01-01T01:02:03.000Z".into(),
            status: if groups.iter().any(|g| g.status == Status::Failed) {
                Status::Failed
            } else {
                Status::Ok
            },
            host: "backup1".into(),
            server: "db1.example.com:5432".into(),
            dir: "/b".into(),
            config: "/etc/groups.toml".into(),
            pg_dump_version: "17.0".into(),
            groups,
            warnings: vec![],
            prune: None,
            notification: None,
            signal: None,
            new_since_plan: Vec::new(),
            retried_uploads: Vec::new(),
        }
    }

    #[test]
    fn failure_mail_names_group_error_and_blocker() {
        let mut bad = group("orders", Status::Failed);
        let mut a = Attempt::new(1, "2026-01-01T00:00:01.000Z".into());
        a.outcome = Outcome::LockTimeout;
        a.duration_ms = 500;
        a.error = Some("could not lock the tables within 500ms".into());
        a.blockers.push(Session {
            pid: 4242,
            user: Some("app".into()),
            application_name: Some("psql".into()),
            client_addr: None,
            state: Some("idle in transaction".into()),
            xact_age_s: Some(75.0),
            waited_s: None,
            lock_mode: Some("AccessExclusiveLock".into()),
            query: Some("ALTER TABLE orders ADD COLUMN x int".into()),
        });
        bad.attempts.push(a);
        bad.error = Some("could not lock the tables within 500ms\nsecond line".into());
        let r = report(vec![bad, group("audit", Status::Ok)]);
        let (subject, body) = run_message(&email(""), &r, Path::new("/b/reports/x.json"));
        assert_eq!(
            subject,
            "[pg_groupdump] db1.example.com: 1 of 2 groups failed"
        );
        for want in [
            "shop / orders",
            "public.orders, public.order_items",
            "attempts  1",
            "could not lock the tables within 500ms",
            "\n            second line",
            "blocked by pid 4242 user app",
            "ALTER TABLE orders ADD COLUMN x int",
            "/b/reports/x.json",
            "backup1",
            "2 in all: 1 ok, 1 failed",
            "1h 2m 3s",
        ] {
            assert!(body.contains(want), "{want:?} not in:\n{body}");
        }
        assert!(!body.contains("shop / audit"), "{body}");
    }

    #[test]
    fn success_mail_subject() {
        let r = report(vec![group("a", Status::Ok), group("b", Status::Ok)]);
        let (subject, body) = run_message(
            &email("subject_prefix = \"[db]\""),
            &r,
            Path::new("/r.json"),
        );
        assert_eq!(subject, "[db] db1.example.com: all 2 groups ok (4.0 KiB)");
        assert!(body.contains("every dump succeeded"), "{body}");
        assert!(!body.contains("FAILED"), "{body}");
    }

    #[test]
    fn nothing_to_send_when_ok_and_on_failure() {
        let r = report(vec![group("a", Status::Ok)]);
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        // host is never contacted
        let sent = rt
            .block_on(notify_run(&email(""), &r, Path::new("/r.json")))
            .unwrap();
        assert!(sent.is_none());
    }

    #[test]
    fn message_is_plain_text_to_every_recipient() {
        let e = email("to = [\"a@example.com\", \"b@example.com\"]");
        let m = build_message(&e, "[pg_groupdump] x: ü", "body ü\n".into()).unwrap();
        assert_eq!(m.envelope().to().len(), 2);
        let text = String::from_utf8(m.formatted()).unwrap();
        assert!(
            text.contains("Content-Type: text/plain; charset=utf-8"),
            "{text}"
        );
        assert!(text.contains("Auto-Submitted: auto-generated"), "{text}");
        assert!(text.is_ascii(), "encoded for any server: {text}");
    }

    #[test]
    fn error_texts_name_the_setting_or_server() {
        let timeout = NotifyError::Timeout {
            server: "smtp.example.com:587".into(),
            timeout: Duration::from_secs(30),
        };
        assert_eq!(
            timeout.to_string(),
            "mail server smtp.example.com:587: no answer within email.timeout (30s); the mail \
             was not sent"
        );
        let starttls = NotifyError::Exchange {
            server: "h:25".into(),
            error: ExchangeError::NoStarttls,
        };
        assert_eq!(
            starttls.to_string(),
            "mail server h:25: the server does not offer STARTTLS (tls = \"starttls\" requires \
             it; use tls = \"tls\" for port 465)"
        );
        assert_eq!(
            NotifyError::PasswordEnv("PW".into()).to_string(),
            "email.password_env: the environment variable PW is not set (or not UTF-8)"
        );
        assert_eq!(
            ExchangeError::NoAddress("mail.invalid".into()).to_string(),
            "mail.invalid has no address"
        );
    }
}
