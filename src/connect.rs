//! Connection settings: the `[connection]` table completed from the libpq environment, turned
//! into a tokio-postgres configuration for pg_groupdump's own sessions and into a conninfo
//! string plus environment for the `pg_dump` children.
//!
//! The password never goes on a command line: children get it through `PGPASSWORD` in their
//! environment (readable only by the same user) when it comes from `password_file`; otherwise
//! they read `PGPASSWORD`/`~/.pgpass` themselves, as libpq always does.

use std::path::{Path, PathBuf};

use crate::config::{ConnectionConfig, SslMode};

/// Errors while preparing or opening a connection.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error("cannot read connection.password_file {path}: {source}")]
    PasswordFile {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("PGPORT={0:?} is not a port number")]
    BadPort(String),
    #[error(
        "PGSSLMODE={0:?} is not one of disable, allow, prefer, require, verify-ca, verify-full"
    )]
    BadSslMode(String),
    #[error("cannot read the root certificates {path}: {message}")]
    RootCert { path: PathBuf, message: String },
    #[error("cannot connect to database {database:?} at {target} as user {user:?}: {message}")]
    Connect {
        database: String,
        target: String,
        user: String,
        message: String,
        /// Worth another try later (see [`is_transient`]).
        transient: bool,
    },
}

impl ConnectError {
    /// Whether the connection was refused or lost in a way a later attempt may not meet
    /// (a server restarting, say), rather than for a reason retrying cannot mend.
    pub fn is_transient(&self) -> bool {
        matches!(
            self,
            ConnectError::Connect {
                transient: true,
                ..
            }
        )
    }
}

/// Whether a session's error is the connection going away or being refused — a server
/// restart, a terminated backend, a network failure — rather than something retrying cannot
/// mend (a database that no longer exists, a failed authentication, a permission).
pub fn is_transient(e: &tokio_postgres::Error) -> bool {
    use tokio_postgres::error::SqlState;
    if e.is_closed() {
        return true;
    }
    if let Some(db) = e.as_db_error() {
        let code = db.code();
        return code.code().starts_with("08")
            || [
                SqlState::ADMIN_SHUTDOWN,
                SqlState::CRASH_SHUTDOWN,
                SqlState::CANNOT_CONNECT_NOW,
            ]
            .contains(code);
    }
    // No answer from a server at all: refused, reset, timed out.
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        if s.is::<std::io::Error>() {
            return true;
        }
        source = s.source();
    }
    false
}

/// Resolved connection parameters, shared by every session and child of a run.
#[derive(Clone)]
pub struct ConnParams {
    /// Host name, address, or unix socket directory (starts with '/').
    pub host: String,
    pub port: u16,
    pub user: String,
    password: Option<String>,
    /// True when the password came from `password_file` and children must be given it.
    password_for_children: bool,
    pub sslmode: SslMode,
    /// CAs for verify-ca / verify-full.
    pub sslrootcert: Option<PathBuf>,
    pub maintenance_database: String,
}

impl std::fmt::Debug for ConnParams {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConnParams")
            .field("host", &self.host)
            .field("port", &self.port)
            .field("user", &self.user)
            .field("password", &self.password.as_ref().map(|_| "<hidden>"))
            .field("sslmode", &self.sslmode)
            .finish()
    }
}

impl ConnParams {
    /// Completes the configuration from the environment, the way libpq would.
    pub fn resolve(cfg: &ConnectionConfig) -> Result<ConnParams, ConnectError> {
        let env = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
        let host = cfg
            .host
            .clone()
            .or_else(|| env("PGHOST"))
            .map(|h| h.split(',').next().unwrap_or("").to_string())
            .filter(|h| !h.is_empty())
            .unwrap_or_else(default_host);
        let port = match cfg.port {
            Some(p) => p,
            None => match env("PGPORT") {
                Some(p) => p.parse().map_err(|_| ConnectError::BadPort(p))?,
                None => 5432,
            },
        };
        let user = cfg
            .user
            .clone()
            .or_else(|| env("PGUSER"))
            .unwrap_or_else(os_user_name);
        let sslmode = match cfg.sslmode {
            Some(m) => m,
            None => match env("PGSSLMODE") {
                Some(m) => SslMode::parse(&m).ok_or(ConnectError::BadSslMode(m))?,
                None => SslMode::Prefer,
            },
        };
        let sslrootcert = cfg
            .sslrootcert
            .clone()
            .or_else(|| env("PGSSLROOTCERT").map(PathBuf::from))
            .or_else(|| {
                let p = PathBuf::from(std::env::var_os("HOME")?).join(".postgresql/root.crt");
                p.is_file().then_some(p)
            });
        let (password, password_for_children) = match &cfg.password_file {
            Some(path) => (Some(read_password_file(path)?), true),
            None => (env("PGPASSWORD"), false),
        };
        Ok(ConnParams {
            host,
            port,
            user,
            password,
            password_for_children,
            sslmode,
            sslrootcert,
            maintenance_database: cfg.maintenance_database.clone(),
        })
    }

    /// "host:port" or the socket path, for messages.
    pub fn target(&self) -> String {
        if self.is_socket() {
            format!("{}/.s.PGSQL.{}", self.host.trim_end_matches('/'), self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }

    fn is_socket(&self) -> bool {
        self.host.starts_with('/')
    }

    /// The password for `database`: the configured one, else `PGPASSWORD`, else the password file.
    fn password_for(&self, database: &str) -> Option<String> {
        if self.password.is_some() {
            return self.password.clone();
        }
        let host = if self.is_socket() {
            "localhost"
        } else {
            &self.host
        };
        pgpass_lookup(host, self.port, database, &self.user)
    }

    /// Opens a session on `database`, tagged with `application_name`. The connection task is
    /// spawned on the current runtime.
    pub async fn connect(
        &self,
        database: &str,
        application_name: &str,
    ) -> Result<tokio_postgres::Client, ConnectError> {
        let mut c = tokio_postgres::Config::new();
        if self.is_socket() {
            c.host_path(&self.host);
        } else {
            c.host(&self.host);
        }
        c.port(self.port)
            .user(&self.user)
            .dbname(database)
            .application_name(application_name)
            .connect_timeout(std::time::Duration::from_secs(15))
            .ssl_mode(match self.sslmode {
                // A unix socket never speaks TLS (libpq ignores sslmode there too).
                _ if self.is_socket() => tokio_postgres::config::SslMode::Disable,
                SslMode::Disable => tokio_postgres::config::SslMode::Disable,
                SslMode::Allow | SslMode::Prefer => tokio_postgres::config::SslMode::Prefer,
                SslMode::Require | SslMode::VerifyCa | SslMode::VerifyFull => {
                    tokio_postgres::config::SslMode::Require
                }
            });
        if let Some(pw) = self.password_for(database) {
            c.password(pw);
        }
        let tls = tokio_postgres_rustls::MakeRustlsConnect::new(tls::client_config(
            self.sslmode,
            self.sslrootcert.as_deref(),
        )?);
        let (client, connection) = c.connect(tls).await.map_err(|e| ConnectError::Connect {
            database: database.to_string(),
            target: self.target(),
            user: self.user.clone(),
            message: crate::text::pg_error_text(&e),
            transient: is_transient(&e),
        })?;
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                tracing::debug!("connection closed: {}", crate::text::pg_error_text(&e));
            }
        });
        Ok(client)
    }

    /// A libpq conninfo string for a child process (no password in it). Every value is quoted,
    /// so a database called `a=b` or `x y` is never taken for more settings.
    pub fn conninfo(&self, database: &str, application_name: &str) -> String {
        let mut s = String::new();
        for (k, v) in [
            ("host", self.host.as_str()),
            ("port", &self.port.to_string()),
            ("user", self.user.as_str()),
            ("dbname", database),
            ("application_name", application_name),
            ("sslmode", self.sslmode.as_str()),
            (
                "sslrootcert",
                self.sslrootcert
                    .as_deref()
                    .and_then(Path::to_str)
                    .unwrap_or(""),
            ),
        ] {
            if v.is_empty() && k == "sslrootcert" {
                continue;
            }
            if !s.is_empty() {
                s.push(' ');
            }
            s.push_str(k);
            s.push_str("='");
            for ch in v.chars() {
                if ch == '\'' || ch == '\\' {
                    s.push('\\');
                }
                s.push(ch);
            }
            s.push('\'');
        }
        s
    }

    /// Environment for child processes: the password, when it is pg_groupdump's to give.
    pub fn child_env(&self) -> Vec<(&'static str, String)> {
        match (&self.password, self.password_for_children) {
            (Some(pw), true) => vec![("PGPASSWORD", pw.clone())],
            _ => Vec::new(),
        }
    }
}

/// TLS for pg_groupdump's own sessions, with libpq's `sslmode` semantics: `allow`, `prefer`
/// and `require` encrypt without checking the certificate (as libpq does when no root
/// certificate is configured), `verify-ca` checks the chain, `verify-full` also the host name.
mod tls {
    use std::path::Path;
    use std::sync::Arc;

    use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
    use rustls::client::WebPkiServerVerifier;
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
    use rustls::{DigitallySignedStruct, Error, RootCertStore, SignatureScheme};

    use super::ConnectError;
    use crate::config::SslMode;

    pub fn client_config(
        mode: SslMode,
        rootcert: Option<&Path>,
    ) -> Result<rustls::ClientConfig, ConnectError> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .expect("ring supports the default protocol versions");
        let verifier: Arc<dyn ServerCertVerifier> = match mode {
            SslMode::VerifyCa | SslMode::VerifyFull => {
                let mut roots = RootCertStore::empty();
                match rootcert {
                    Some(path) => {
                        let certs = CertificateDer::pem_file_iter(path).map_err(|e| {
                            ConnectError::RootCert {
                                path: path.to_path_buf(),
                                message: e.to_string(),
                            }
                        })?;
                        for c in certs {
                            let c = c.map_err(|e| ConnectError::RootCert {
                                path: path.to_path_buf(),
                                message: e.to_string(),
                            })?;
                            roots.add(c).map_err(|e| ConnectError::RootCert {
                                path: path.to_path_buf(),
                                message: e.to_string(),
                            })?;
                        }
                    }
                    None => roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned()),
                }
                let webpki =
                    WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider.clone())
                        .build()
                        .map_err(|e| ConnectError::RootCert {
                            path: rootcert.map(Path::to_path_buf).unwrap_or_default(),
                            message: e.to_string(),
                        })?;
                Arc::new(Verifier {
                    webpki: Some(webpki),
                    check_name: mode == SslMode::VerifyFull,
                    provider,
                })
            }
            _ => Arc::new(Verifier {
                webpki: None,
                check_name: false,
                provider,
            }),
        };
        Ok(builder
            .dangerous()
            .with_custom_certificate_verifier(verifier)
            .with_no_client_auth())
    }

    #[derive(Debug)]
    struct Verifier {
        /// None: no certificate check (sslmode require and below).
        webpki: Option<Arc<WebPkiServerVerifier>>,
        check_name: bool,
        provider: Arc<rustls::crypto::CryptoProvider>,
    }

    impl ServerCertVerifier for Verifier {
        fn verify_server_cert(
            &self,
            end_entity: &CertificateDer<'_>,
            intermediates: &[CertificateDer<'_>],
            server_name: &ServerName<'_>,
            ocsp: &[u8],
            now: UnixTime,
        ) -> Result<ServerCertVerified, Error> {
            let Some(webpki) = &self.webpki else {
                return Ok(ServerCertVerified::assertion());
            };
            match webpki.verify_server_cert(end_entity, intermediates, server_name, ocsp, now) {
                Err(Error::InvalidCertificate(rustls::CertificateError::NotValidForName))
                | Err(Error::InvalidCertificate(
                    rustls::CertificateError::NotValidForNameContext { .. },
                )) if !self.check_name => Ok(ServerCertVerified::assertion()),
                other => other,
            }
        }

        fn verify_tls12_signature(
            &self,
            message: &[u8],
            cert: &CertificateDer<'_>,
            dss: &DigitallySignedStruct,
        ) -> Result<HandshakeSignatureValid, Error> {
            rustls::crypto::verify_tls12_signature(
                message,
                cert,
                dss,
                &self.provider.signature_verification_algorithms,
            )
        }

        fn verify_tls13_signature(
            &self,
            message: &[u8],
            cert: &CertificateDer<'_>,
            dss: &DigitallySignedStruct,
        ) -> Result<HandshakeSignatureValid, Error> {
            rustls::crypto::verify_tls13_signature(
                message,
                cert,
                dss,
                &self.provider.signature_verification_algorithms,
            )
        }

        fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
            self.provider
                .signature_verification_algorithms
                .supported_schemes()
        }
    }
}

/// `application_name` for a session working on `what`, within PostgreSQL's 63-byte limit.
pub fn application_name(what: &str) -> String {
    let mut s = format!("pg_groupdump/{what}");
    let mut end = s.len().min(63);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    s.truncate(end);
    // Control characters would be replaced by '?' by the server anyway; keep the name printable.
    s.chars()
        .map(|c| if c.is_control() { '?' } else { c })
        .collect()
}

fn read_password_file(path: &Path) -> Result<String, ConnectError> {
    warn_if_readable_by_others(path, "connection.password_file");
    let text = std::fs::read_to_string(path).map_err(|source| ConnectError::PasswordFile {
        path: path.to_path_buf(),
        source,
    })?;
    Ok(text.lines().next().unwrap_or("").to_string())
}

/// Warns when a file holding a secret can be read by other users.
pub fn warn_if_readable_by_others(path: &Path, key: &str) {
    use std::os::unix::fs::PermissionsExt;
    if let Ok(m) = std::fs::metadata(path) {
        if m.permissions().mode() & 0o044 != 0 {
            tracing::warn!(
                "{key} {} is readable by other users (mode {:04o}); chmod 600 it",
                path.display(),
                m.permissions().mode() & 0o777
            );
        }
    }
}

fn default_host() -> String {
    for dir in ["/var/run/postgresql", "/run/postgresql", "/tmp"] {
        if Path::new(dir).is_dir() {
            let has_socket = std::fs::read_dir(dir)
                .map(|rd| {
                    rd.flatten()
                        .any(|e| e.file_name().to_string_lossy().starts_with(".s.PGSQL."))
                })
                .unwrap_or(false);
            if has_socket {
                return dir.to_string();
            }
        }
    }
    "localhost".to_string()
}

fn os_user_name() -> String {
    if let Ok(u) = std::env::var("USER") {
        if !u.is_empty() {
            return u;
        }
    }
    // SAFETY: getpwuid returns a pointer into static storage or null; we copy the name at once.
    unsafe {
        let pw = libc::getpwuid(libc::geteuid());
        if !pw.is_null() && !(*pw).pw_name.is_null() {
            return std::ffi::CStr::from_ptr((*pw).pw_name)
                .to_string_lossy()
                .into_owned();
        }
    }
    "postgres".to_string()
}

/// Looks a password up in `PGPASSFILE` or `~/.pgpass`, as libpq does.
fn pgpass_lookup(host: &str, port: u16, database: &str, user: &str) -> Option<String> {
    let path = match std::env::var_os("PGPASSFILE") {
        Some(p) => PathBuf::from(p),
        None => PathBuf::from(std::env::var_os("HOME")?).join(".pgpass"),
    };
    let text = std::fs::read_to_string(&path).ok()?;
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&path).ok()?.permissions().mode();
        if mode & 0o077 != 0 {
            tracing::warn!(
                "password file {} has group or world access; ignored (as libpq does)",
                path.display()
            );
            return None;
        }
    }
    pgpass_match(&text, host, &port.to_string(), database, user)
}

fn pgpass_match(text: &str, host: &str, port: &str, database: &str, user: &str) -> Option<String> {
    for line in text.lines() {
        if line.starts_with('#') || line.trim().is_empty() {
            continue;
        }
        let fields = split_pgpass(line);
        if fields.len() < 5 {
            continue;
        }
        let ok = |f: &str, v: &str| f == "*" || f == v;
        if ok(&fields[0], host)
            && ok(&fields[1], port)
            && ok(&fields[2], database)
            && ok(&fields[3], user)
        {
            return Some(fields[4].clone());
        }
    }
    None
}

fn split_pgpass(line: &str) -> Vec<String> {
    let mut out = vec![String::new()];
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => {
                if let Some(n) = chars.next() {
                    out.last_mut().unwrap().push(n);
                }
            }
            ':' if out.len() < 5 => out.push(String::new()),
            c => out.last_mut().unwrap().push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pgpass_rules() {
        let text = "# comment\nother:5432:*:u:nope\n*:5432:db\\:1:u:pw\\:x\n*:*:*:*:fallback\n";
        assert_eq!(
            pgpass_match(text, "h", "5432", "db:1", "u").as_deref(),
            Some("pw:x")
        );
        assert_eq!(
            pgpass_match(text, "h", "5433", "db", "u").as_deref(),
            Some("fallback")
        );
        assert_eq!(pgpass_match("h:1:d:u\n", "h", "1", "d", "u"), None);
    }

    #[test]
    fn conninfo_quotes_every_value() {
        let p = ConnParams {
            host: "/tmp/s d".into(),
            port: 5433,
            user: "o'brien".into(),
            password: Some("secret".into()),
            password_for_children: true,
            sslmode: SslMode::Prefer,
            sslrootcert: None,
            maintenance_database: "postgres".into(),
        };
        let ci = p.conninfo("a=b \\ c", "pg_groupdump/x");
        assert!(ci.contains("dbname='a=b \\\\ c'"), "{ci}");
        assert!(ci.contains("user='o\\'brien'"), "{ci}");
        assert!(!ci.contains("secret"));
        assert!(!format!("{p:?}").contains("secret"));
    }

    #[test]
    fn application_name_fits() {
        let n = application_name(&"é".repeat(60));
        assert!(n.len() <= 63);
        assert!(n.starts_with("pg_groupdump/"));
        assert_eq!(application_name("a\nb"), "pg_groupdump/a?b");
    }
}
