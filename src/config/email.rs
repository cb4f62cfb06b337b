//! `[email]`: where run summaries are mailed, checked into [`EmailConfig`].
//!
//! The checks live with the rest of the configuration so that one pass over `groups.toml`
//! reports every mistake before anything runs; `notify` only receives the checked settings.
//! Settings that are legal but risky (a password file others can read, certificates not
//! checked, a password sent in clear) are warned about here, once, when the file is read.

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use lettre::message::Mailbox;
use serde::Deserialize;

use super::{parse_duration, ConfigError};

/// The default `email.timeout`: one bound for the whole exchange with the mail server.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);
/// The default `email.subject_prefix`.
pub const DEFAULT_SUBJECT_PREFIX: &str = "[pg_groupdump]";

/// `[email]` as written in the file.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawEmail {
    host: Option<String>,
    port: Option<i64>,
    tls: Option<String>,
    username: Option<String>,
    password_file: Option<PathBuf>,
    password_env: Option<String>,
    from: Option<String>,
    to: Option<Vec<String>>,
    on: Option<String>,
    subject_prefix: Option<String>,
    timeout: Option<String>,
    ca_file: Option<PathBuf>,
    tls_insecure_skip_verify: Option<bool>,
}

/// How the connection to the mail server is secured.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TlsMode {
    /// Plain TCP, then `STARTTLS`, which the server must offer (default port 587).
    Starttls,
    /// TLS from the first byte, "SMTPS" (default port 465).
    Tls,
    /// No encryption at all (default port 25): only for a relay on the same host or network.
    None,
}

impl TlsMode {
    pub fn as_str(self) -> &'static str {
        match self {
            TlsMode::Starttls => "starttls",
            TlsMode::Tls => "tls",
            TlsMode::None => "none",
        }
    }

    fn default_port(self) -> u16 {
        match self {
            TlsMode::Starttls => 587,
            TlsMode::Tls => 465,
            TlsMode::None => 25,
        }
    }
}

/// When a run is mailed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum On {
    /// Only runs with a failed dump (and runs that could not start).
    Failure,
    /// Every run.
    Always,
}

/// Where the SMTP password comes from (the password itself is read only when sending).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PasswordSource {
    /// The first line of this file.
    File(PathBuf),
    /// This environment variable.
    Env(String),
}

/// The checked `[email]` settings.
#[derive(Debug, Clone)]
pub struct EmailConfig {
    pub host: String,
    pub port: u16,
    pub tls: TlsMode,
    /// SMTP AUTH user; `None`: no authentication.
    pub username: Option<String>,
    /// Set exactly when `username` is.
    pub password: Option<PasswordSource>,
    pub from: Mailbox,
    pub to: Vec<Mailbox>,
    pub on: On,
    /// Put in front of every subject (may be empty).
    pub subject_prefix: String,
    /// Bounds the whole exchange with the mail server: connection, TLS, AUTH, sending, QUIT.
    pub timeout: Duration,
    /// PEM certificates trusted (besides the built-in web PKI roots) for the server's certificate.
    pub ca_file: Option<PathBuf>,
    /// Accept any certificate and host name. Dangerous; warned about at every start.
    pub tls_insecure_skip_verify: bool,
}

/// Checks `[email]`; errors name the key (`email.port`).
pub(super) fn check(path: &Path, raw: RawEmail) -> Result<EmailConfig, ConfigError> {
    let err = |key: &str, msg: String| ConfigError::new(path, key, msg);

    let (host, tls, port) = check_server(path, raw.host, raw.tls, raw.port)?;
    let (username, password) = check_auth(path, raw.username, raw.password_file, raw.password_env)?;
    let (from, to) = check_addresses(path, raw.from, raw.to)?;
    let on = match raw.on.as_deref() {
        None | Some("failure") => On::Failure,
        Some("always") => On::Always,
        Some(o) => {
            return Err(err(
                "email.on",
                format!("{o:?} is not \"failure\" or \"always\""),
            ))
        }
    };
    let subject_prefix = match raw.subject_prefix {
        None => DEFAULT_SUBJECT_PREFIX.to_string(),
        Some(p) if p.chars().any(char::is_control) => {
            return Err(err(
                "email.subject_prefix",
                format!("{p:?}: control characters are not allowed in a subject"),
            ))
        }
        Some(p) => p.trim().to_string(),
    };
    let timeout = match raw.timeout {
        None => DEFAULT_TIMEOUT,
        Some(s) => parse_duration(&s).filter(|d| !d.is_zero()).ok_or_else(|| {
            err(
                "email.timeout",
                format!("{s:?} is not a positive duration such as \"30s\""),
            )
        })?,
    };
    let tls_insecure_skip_verify = raw.tls_insecure_skip_verify.unwrap_or(false);
    check_certificates(path, tls, raw.ca_file.as_deref(), tls_insecure_skip_verify)?;

    let cfg = EmailConfig {
        host,
        port,
        tls,
        username,
        password,
        from,
        to,
        on,
        subject_prefix,
        timeout,
        ca_file: raw.ca_file,
        tls_insecure_skip_verify,
    };
    for w in warnings(path, &cfg) {
        tracing::warn!("{w}");
    }
    Ok(cfg)
}

/// `host`, `tls` and `port` (whose default depends on `tls`).
fn check_server(
    path: &Path,
    host: Option<String>,
    tls: Option<String>,
    port: Option<i64>,
) -> Result<(String, TlsMode, u16), ConfigError> {
    let err = |key: &str, msg: String| ConfigError::new(path, key, msg);
    let host = host.ok_or_else(|| {
        err(
            "email.host",
            "is required: the SMTP server to send through".into(),
        )
    })?;
    if host.trim().is_empty() || host.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(err(
            "email.host",
            format!("{host:?} is not a host name or address"),
        ));
    }
    let tls = match tls.as_deref() {
        None | Some("starttls") => TlsMode::Starttls,
        Some("tls") => TlsMode::Tls,
        Some("none") => TlsMode::None,
        Some(t) => {
            return Err(err(
                "email.tls",
                format!("{t:?} is not one of \"starttls\", \"tls\", \"none\""),
            ))
        }
    };
    let port = match port {
        None => tls.default_port(),
        Some(p) if (1..=65535).contains(&p) => p as u16,
        Some(p) => {
            return Err(err(
                "email.port",
                format!("{p} is not a port number (1 to 65535)"),
            ))
        }
    };
    Ok((host, tls, port))
}

/// `username` and where its password comes from: both or neither, and the password only from
/// a file or the environment, never written in the configuration.
fn check_auth(
    path: &Path,
    username: Option<String>,
    password_file: Option<PathBuf>,
    password_env: Option<String>,
) -> Result<(Option<String>, Option<PasswordSource>), ConfigError> {
    let err = |key: &str, msg: String| ConfigError::new(path, key, msg);
    let username = match username {
        Some(u) if u.is_empty() => {
            return Err(err(
                "email.username",
                "must not be empty (leave it out for no authentication)".into(),
            ))
        }
        u => u,
    };
    let password = match (password_file, password_env) {
        (Some(_), Some(_)) => {
            return Err(err(
                "email.password_env",
                "give either password_file or password_env, not both".into(),
            ))
        }
        (Some(f), None) => {
            if f.as_os_str().is_empty() {
                return Err(err("email.password_file", "must not be empty".into()));
            }
            Some(PasswordSource::File(f))
        }
        (None, Some(v)) => {
            if v.is_empty() || v.contains('=') || v.contains('\0') {
                return Err(err(
                    "email.password_env",
                    format!("{v:?} is not an environment variable name"),
                ));
            }
            Some(PasswordSource::Env(v))
        }
        (None, None) => None,
    };
    match (&username, &password) {
        (Some(u), None) => {
            return Err(err(
                "email.username",
                format!("{u:?} needs a password: set password_file or password_env (the password is never written in this file)"),
            ))
        }
        (None, Some(PasswordSource::File(_))) => {
            return Err(err(
                "email.password_file",
                "is set but email.username is not".into(),
            ))
        }
        (None, Some(PasswordSource::Env(_))) => {
            return Err(err(
                "email.password_env",
                "is set but email.username is not".into(),
            ))
        }
        _ => {}
    }
    Ok((username, password))
}

/// `from` and `to`: required, and each a mail address.
fn check_addresses(
    path: &Path,
    from: Option<String>,
    to: Option<Vec<String>>,
) -> Result<(Mailbox, Vec<Mailbox>), ConfigError> {
    let err = |key: &str, msg: String| ConfigError::new(path, key, msg);
    let from_text = from.ok_or_else(|| {
        err(
            "email.from",
            "is required: the sender address, e.g. \"pg_groupdump <backup@example.com>\"".into(),
        )
    })?;
    let from: Mailbox = from_text.parse().map_err(|e| {
        err(
            "email.from",
            format!("{from_text:?} is not a mail address: {e}"),
        )
    })?;
    let to_list = to.ok_or_else(|| {
        err(
            "email.to",
            "is required: a list of recipient addresses".into(),
        )
    })?;
    if to_list.is_empty() {
        return Err(err(
            "email.to",
            "is empty: give at least one recipient".into(),
        ));
    }
    let mut to = Vec::with_capacity(to_list.len());
    for (i, t) in to_list.iter().enumerate() {
        let m: Mailbox = t.parse().map_err(|e| {
            err(
                &format!("email.to[{i}]"),
                format!("{t:?} is not a mail address: {e}"),
            )
        })?;
        to.push(m);
    }
    Ok((from, to))
}

/// `ca_file` and `tls_insecure_skip_verify` only mean something with TLS.
fn check_certificates(
    path: &Path,
    tls: TlsMode,
    ca_file: Option<&Path>,
    insecure: bool,
) -> Result<(), ConfigError> {
    let err = |key: &str, msg: String| ConfigError::new(path, key, msg);
    if tls == TlsMode::None {
        if ca_file.is_some() {
            return Err(err(
                "email.ca_file",
                "has no use with tls = \"none\"".into(),
            ));
        }
        if insecure {
            return Err(err(
                "email.tls_insecure_skip_verify",
                "has no use with tls = \"none\"".into(),
            ));
        }
    }
    if let Some(f) = ca_file {
        if f.as_os_str().is_empty() {
            return Err(err("email.ca_file", "must not be empty".into()));
        }
    }
    Ok(())
}

/// What is risky about these settings (printed when the configuration is read).
fn warnings(path: &Path, cfg: &EmailConfig) -> Vec<String> {
    let mut out = Vec::new();
    if let Some(PasswordSource::File(f)) = &cfg.password {
        use std::os::unix::fs::PermissionsExt;
        match std::fs::metadata(f) {
            Ok(m) if m.permissions().mode() & 0o077 != 0 => out.push(format!(
                "{}: email.password_file {} is readable by group or others (mode {:03o}): chmod 600 it",
                path.display(),
                f.display(),
                m.permissions().mode() & 0o777
            )),
            Ok(_) => {}
            Err(e) => out.push(format!(
                "{}: email.password_file {}: {e}; mail cannot be sent",
                path.display(),
                f.display()
            )),
        }
    }
    if cfg.tls_insecure_skip_verify {
        out.push(format!(
            "{}: email.tls_insecure_skip_verify = true: the certificate of {} is not checked, so \
             anyone on the way can read the mail{}",
            path.display(),
            cfg.host,
            if cfg.username.is_some() {
                " and the SMTP password"
            } else {
                ""
            }
        ));
    }
    if cfg.tls == TlsMode::None && cfg.username.is_some() && !is_loopback(&cfg.host) {
        out.push(format!(
            "{}: email.tls = \"none\" with a username: the SMTP password goes to {} unencrypted",
            path.display(),
            cfg.host
        ));
    }
    out
}

/// Whether a host name or address (IPv6 possibly in brackets) means this machine. A password
/// sent in clear to it never crosses a network; `notify` also uses it to name a PostgreSQL
/// server reached on this machine by the machine's own name.
pub fn is_loopback(host: &str) -> bool {
    let h = host.trim_start_matches('[').trim_end_matches(']');
    h.eq_ignore_ascii_case("localhost")
        || h.parse::<IpAddr>()
            .map(|a| a.is_loopback())
            .unwrap_or(false)
}

/// Configurations with an `[email]` section, for the tests of this module and of the mail.
#[cfg(test)]
pub(crate) mod testing {
    use std::path::Path;

    use crate::config::{Config, ConfigError, EmailConfig};

    pub fn cfg(email: &str) -> Result<Config, ConfigError> {
        crate::config::parse(
            Path::new("groups.toml"),
            &format!("[backup]\ndir = \"/b\"\n[email]\n{email}\n"),
        )
    }

    pub const MINIMAL: &str =
        "host = \"smtp.example.com\"\nfrom = \"backup@example.com\"\nto = [\"ops@example.com\"]";

    /// MINIMAL with the keys of `extra` replaced or added.
    pub fn with(extra: &str) -> String {
        let key = |l: &str| l.split('=').next().unwrap_or("").trim().to_string();
        let given: Vec<String> = extra.lines().map(key).collect();
        let mut lines: Vec<&str> = MINIMAL
            .lines()
            .filter(|l| !given.contains(&key(l)))
            .collect();
        lines.extend(extra.lines());
        lines.join("\n")
    }

    pub fn email(extra: &str) -> EmailConfig {
        cfg(&with(extra)).unwrap().email.expect("[email] parsed")
    }
}

#[cfg(test)]
mod tests {
    use super::testing::*;
    use super::*;

    fn key_of(extra: &str) -> String {
        let e = cfg(&with(extra)).unwrap_err();
        e.key
    }

    #[test]
    fn defaults() {
        let e = email("");
        assert_eq!(e.host, "smtp.example.com");
        assert_eq!(e.port, 587);
        assert_eq!(e.tls, TlsMode::Starttls);
        assert_eq!(e.on, On::Failure);
        assert_eq!(e.timeout, DEFAULT_TIMEOUT);
        assert_eq!(e.subject_prefix, DEFAULT_SUBJECT_PREFIX);
        assert!(e.username.is_none() && e.password.is_none());
        assert!(!e.tls_insecure_skip_verify);
        assert_eq!(email("tls = \"tls\"").port, 465);
        assert_eq!(email("tls = \"none\"").port, 25);
        assert_eq!(email("tls = \"none\"\nport = 2525").port, 2525);
        let e = email("to = [\"a@example.com\", \"Ops Team <ops@example.com>\"]\non = \"always\"\ntimeout = \"2s\"\nsubject_prefix = \"\"");
        assert_eq!(e.to.len(), 2);
        assert_eq!(e.on, On::Always);
        assert_eq!(e.timeout, Duration::from_secs(2));
        assert_eq!(e.subject_prefix, "");
    }

    #[test]
    fn errors_name_the_key() {
        assert_eq!(key_of("port = 0"), "email.port");
        assert_eq!(key_of("port = 70000"), "email.port");
        assert_eq!(key_of("tls = \"ssl\""), "email.tls");
        assert_eq!(key_of("on = \"never\""), "email.on");
        assert_eq!(key_of("timeout = \"soon\""), "email.timeout");
        assert_eq!(key_of("timeout = \"0s\""), "email.timeout");
        assert_eq!(key_of("username = \"u\""), "email.username");
        assert_eq!(key_of("password_env = \"X\""), "email.password_env");
        assert_eq!(key_of("password_file = \"/x\""), "email.password_file");
        assert_eq!(
            key_of("username = \"u\"\npassword_env = \"X\"\npassword_file = \"/x\""),
            "email.password_env"
        );
        assert_eq!(
            key_of("tls = \"none\"\nca_file = \"/ca.pem\""),
            "email.ca_file"
        );
        assert_eq!(
            key_of("tls = \"none\"\ntls_insecure_skip_verify = true"),
            "email.tls_insecure_skip_verify"
        );
        // an inline password is no key at all
        let e = cfg(&format!(
            "{MINIMAL}\nusername = \"u\"\npassword = \"hunter2\""
        ))
        .unwrap_err();
        assert!(e.key.starts_with("email"), "{e}");
        assert!(e.to_string().contains("password"), "{e}");
        for (text, key) in [
            (
                "from = \"backup@example.com\"\nto = [\"a@x\"]",
                "email.host",
            ),
            ("host = \"h\"\nto = [\"a@x\"]", "email.from"),
            ("host = \"h\"\nfrom = \"a@x\"", "email.to"),
            ("host = \"h\"\nfrom = \"a@x\"\nto = []", "email.to"),
            (
                "host = \"h\"\nfrom = \"not an address\"\nto = [\"a@x\"]",
                "email.from",
            ),
            (
                "host = \"h\"\nfrom = \"a@x\"\nto = [\"a@x\", \"nope\"]",
                "email.to[1]",
            ),
        ] {
            let e = cfg(text).unwrap_err();
            assert_eq!(e.key, key, "{text}: {e}");
        }
        let e = cfg("host = \"h\"\nfrom = \"a@x\"\nto = [\"a@x\", \"nope\"]").unwrap_err();
        assert!(e.to_string().contains("nope"), "{e}");
        let e = cfg(&format!("{MINIMAL}\nport = 0")).unwrap_err();
        assert!(e.to_string().contains('0'), "{e}");
    }

    /// The block given for the README.
    const README_BLOCK: &str = r#"[email]
host = "smtp.example.com"
port = 587                          # default: 587 with starttls, 465 with tls, 25 with none
tls = "starttls"                    # "starttls" (default) | "tls" (SMTPS, TLS from the start) | "none"
username = "pg_groupdump"           # optional; if set, password_file or password_env is required
password_file = "/etc/pg_groupdump/smtp-password"   # its first line; keep it mode 600 (warned otherwise)
# password_env = "PG_GROUPDUMP_SMTP_PASSWORD"       # or: the password is in this environment variable
from = "pg_groupdump <backup@example.com>"
to = ["dba@example.com", "oncall@example.com"]
on = "failure"                      # "failure" (default): runs with a failed group | "always": every run
subject_prefix = "[pg_groupdump]"   # the default
timeout = "30s"                     # bounds the whole exchange (connect, TLS, AUTH, send); default 30s
# ca_file = "/etc/pg_groupdump/mail-ca.pem"   # PEM CA to trust for a mail server with a private CA
# tls_insecure_skip_verify = true             # no certificate checks at all: last resort, warned at every run
"#;

    #[test]
    fn readme_block_parses() {
        let c = crate::config::parse(
            Path::new("groups.toml"),
            &format!("[backup]\ndir = \"/b\"\n{README_BLOCK}"),
        )
        .unwrap();
        let e = c.email.unwrap();
        assert_eq!((e.port, e.tls, e.on), (587, TlsMode::Starttls, On::Failure));
        assert_eq!(e.to.len(), 2);
        assert_eq!(e.username.as_deref(), Some("pg_groupdump"));
        assert_eq!(
            e.password,
            Some(PasswordSource::File(
                "/etc/pg_groupdump/smtp-password".into()
            ))
        );
    }
}
