//! Encryption at rest with [age](https://age-encryption.org): `[encryption] recipients` (X25519
//! public keys) to write, `--identity FILE` (secret keys, as `age-keygen` writes them) to read.
//!
//! Everything a run writes goes through [`Recipients::seal`] before it reaches a file, so no
//! byte of a dump, schema dump, globals dump or report is ever on disk (or in the bucket) in
//! the clear; the stock `age -d -i key FILE` decrypts any of them. An encrypted file's name is
//! its plain name with [`SUFFIX`] ([`sealed_path`] decides it, [`plain_name`] reads it back).
//!
//! Reading back: [`Identities::open`] and [`Identities::reader`] decrypt a stream (which
//! `restore::Archive` pipes into pg_restore); [`Identities::plain_file`] gives a path a
//! seeking `pg_restore -j` can read — the file itself when it is not encrypted, else a
//! decrypted copy (mode 0600, beside the encrypted file, in the backup directory) removed when
//! dropped.

use std::fs::{self, File, OpenOptions};
use std::io::{self, BufReader, Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use age::x25519;

/// Appended to the name of every encrypted file.
pub const SUFFIX: &str = ".age";

/// Marks the decrypted copies [`Identities::plain_file`] makes (hidden files, `.<name>.<pid>`
/// then this), so that a copy left by a killed process is recognised and removed.
const DECRYPTED: &str = ".decrypted";

/// The path an encrypted file is written to: `path` with [`SUFFIX`].
pub fn sealed_path(path: &Path) -> PathBuf {
    let mut s = path.as_os_str().to_owned();
    s.push(SUFFIX);
    PathBuf::from(s)
}

/// The path a run writes the file `plain` to: encrypted (and so named) when `seal` is given.
pub fn written_path(plain: PathBuf, seal: Option<&Recipients>) -> PathBuf {
    match seal {
        Some(_) => sealed_path(&plain),
        None => plain,
    }
}

/// Whether `path` names an encrypted file.
pub fn is_sealed(path: &Path) -> bool {
    path.as_os_str().to_string_lossy().ends_with(SUFFIX)
}

/// A file name without [`SUFFIX`], and whether it had it.
pub fn plain_name(name: &str) -> (&str, bool) {
    match name.strip_suffix(SUFFIX) {
        Some(n) => (n, true),
        None => (name, false),
    }
}

/// The file `plain` names as it is on disk: itself, or its encrypted form. `None` if neither
/// exists.
pub fn existing(plain: &Path) -> Option<PathBuf> {
    if plain.is_file() {
        return Some(plain.to_path_buf());
    }
    let sealed = sealed_path(plain);
    sealed.is_file().then_some(sealed)
}

/// Why a recipient or identity could not be used, or a file not decrypted.
#[derive(Debug, thiserror::Error)]
pub enum CryptError {
    /// The file is encrypted and no `--identity` was given.
    #[error("{} is encrypted: give the age identity (secret key) file that decrypts it with --identity FILE", file.display())]
    NoIdentity { file: PathBuf },
    /// None of the identities given is one of the file's recipients.
    #[error("no identity given with --identity matches the recipients of {}", file.display())]
    NoMatch { file: PathBuf },
    /// The file is not a valid age file, or it is damaged.
    #[error("cannot decrypt {}: {message}", file.display())]
    Damaged { file: PathBuf, message: String },
    /// An identity file could not be read or holds no usable identity.
    #[error("--identity {}: {message}", file.display())]
    Identity { file: PathBuf, message: String },
    #[error("{}: {source}", file.display())]
    Io {
        file: PathBuf,
        #[source]
        source: io::Error,
    },
}

impl CryptError {
    /// Whether the operator must give (other) keys: a usage error, not a broken file.
    pub fn is_about_keys(&self) -> bool {
        matches!(
            self,
            CryptError::NoIdentity { .. }
                | CryptError::NoMatch { .. }
                | CryptError::Identity { .. }
        )
    }
}

// ---------------------------------------------------------------------------------------------
// Writing

/// The public keys every file of a run is encrypted to (`[encryption]`).
#[derive(Clone)]
pub struct Recipients(Arc<Vec<x25519::Recipient>>);

impl std::fmt::Debug for Recipients {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let keys: Vec<String> = self.0.iter().map(|r| r.to_string()).collect();
        f.debug_tuple("Recipients").field(&keys).finish()
    }
}

/// A stream being encrypted; [`Sealing::finish`] writes its last chunk.
pub type Sealing<W> = age::stream::StreamWriter<W>;

impl Recipients {
    /// At least one recipient.
    pub fn new(keys: Vec<x25519::Recipient>) -> Option<Recipients> {
        (!keys.is_empty()).then(|| Recipients(Arc::new(keys)))
    }

    /// Parses one `age1…` recipient.
    pub fn parse_one(s: &str) -> Result<x25519::Recipient, String> {
        let s = s.trim();
        if s.starts_with("AGE-SECRET-KEY-") {
            return Err("is a secret key (an identity): only public keys (age1…) belong here, keep identities off this host".into());
        }
        s.parse::<x25519::Recipient>()
            .map_err(|e| format!("{s:?} is not an age X25519 recipient (age1…): {e}"))
    }

    /// Reads a recipients file (one `age1…` per line, `#` comments, blank lines): the keys,
    /// or the 1-based line number and what is wrong with it.
    pub fn parse_file(text: &str) -> Result<Vec<x25519::Recipient>, (usize, String)> {
        text.lines()
            .enumerate()
            .map(|(i, l)| (i + 1, l.trim()))
            .filter(|(_, l)| !l.is_empty() && !l.starts_with('#'))
            .map(|(n, l)| Self::parse_one(l).map_err(|e| (n, e)))
            .collect()
    }

    /// Starts encrypting into `out` (the age header is written at once).
    pub fn seal<W: Write>(&self, out: W) -> io::Result<Sealing<W>> {
        let keys = self.0.iter().map(|r| r as &dyn age::Recipient);
        let encryptor = age::Encryptor::with_recipients(keys)
            .map_err(|e| io::Error::other(format!("age: {e}")))?;
        encryptor.wrap_output(out)
    }

    /// `data` encrypted, in memory.
    pub fn seal_bytes(&self, data: &[u8]) -> io::Result<Vec<u8>> {
        let mut w = self.seal(Vec::with_capacity(data.len() + 256))?;
        w.write_all(data)?;
        w.finish()
    }
}

// ---------------------------------------------------------------------------------------------
// Reading

/// The secret keys given with `--identity` (none: encrypted files cannot be read).
#[derive(Clone, Default)]
pub struct Identities(Arc<Vec<x25519::Identity>>);

impl Identities {
    /// Reads identity files as `age-keygen` writes them: `AGE-SECRET-KEY-1…` lines, `#`
    /// comments, blank lines.
    pub fn load(files: &[PathBuf]) -> Result<Identities, CryptError> {
        let mut keys = Vec::new();
        for file in files {
            let bad = |message: String| CryptError::Identity {
                file: file.clone(),
                message,
            };
            let text = fs::read_to_string(file).map_err(|e| bad(e.to_string()))?;
            let before = keys.len();
            for (n, line) in text.lines().enumerate() {
                let line = line.trim();
                if line.is_empty() || line.starts_with('#') {
                    continue;
                }
                let key = line.parse::<x25519::Identity>().map_err(|_| {
                    bad(format!(
                        "line {}: not an age X25519 identity (AGE-SECRET-KEY-1…)",
                        n + 1
                    ))
                })?;
                keys.push(key);
            }
            if keys.len() == before {
                return Err(bad("holds no identity".into()));
            }
        }
        Ok(Identities(Arc::new(keys)))
    }

    /// These keys (for tests, and callers that hold keys in memory).
    pub fn from_keys(keys: Vec<x25519::Identity>) -> Identities {
        Identities(Arc::new(keys))
    }

    /// Whether any identity was given.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// A reader of the plaintext of `input`, the encrypted file `file` (named in errors).
    pub fn open<R: Read>(
        &self,
        file: &Path,
        input: R,
    ) -> Result<age::stream::StreamReader<R>, CryptError> {
        if self.is_empty() {
            return Err(CryptError::NoIdentity {
                file: file.to_path_buf(),
            });
        }
        let damaged = |e: age::DecryptError| CryptError::Damaged {
            file: file.to_path_buf(),
            message: e.to_string(),
        };
        let decryptor = age::Decryptor::new(input).map_err(damaged)?;
        decryptor
            .decrypt(self.0.iter().map(|i| i as &dyn age::Identity))
            .map_err(|e| match e {
                age::DecryptError::NoMatchingKeys => CryptError::NoMatch {
                    file: file.to_path_buf(),
                },
                e => damaged(e),
            })
    }

    /// A reader of the plaintext of the encrypted `file`; the identities are checked against
    /// its recipients at once.
    pub fn reader(
        &self,
        file: &Path,
    ) -> Result<age::stream::StreamReader<BufReader<File>>, CryptError> {
        let input = File::open(file).map_err(|source| CryptError::Io {
            file: file.to_path_buf(),
            source,
        })?;
        self.open(file, BufReader::with_capacity(1 << 16, input))
    }

    /// The whole content of `file`, decrypted if it is encrypted.
    pub fn read(&self, file: &Path) -> Result<Vec<u8>, CryptError> {
        let io = |source: io::Error| CryptError::Io {
            file: file.to_path_buf(),
            source,
        };
        let f = File::open(file).map_err(io)?;
        let mut out = Vec::new();
        if is_sealed(file) {
            self.open(file, BufReader::new(f))?
                .read_to_end(&mut out)
                .map_err(|e| CryptError::Damaged {
                    file: file.to_path_buf(),
                    message: e.to_string(),
                })?;
        } else {
            BufReader::new(f).read_to_end(&mut out).map_err(io)?;
        }
        Ok(out)
    }

    /// Decrypts `file` to the end without keeping anything: whether it decrypts (age
    /// authenticates every chunk, and the last one as the last).
    pub fn check(&self, file: &Path) -> Result<(), CryptError> {
        let input = File::open(file).map_err(|source| CryptError::Io {
            file: file.to_path_buf(),
            source,
        })?;
        let mut reader = self.open(file, BufReader::with_capacity(1 << 16, input))?;
        io::copy(&mut reader, &mut io::sink())
            .map(|_| ())
            .map_err(|e| CryptError::Damaged {
                file: file.to_path_buf(),
                message: e.to_string(),
            })
    }

    /// A path to the plaintext of `file` that pg_restore can read (and seek in): `file`
    /// itself when it is not encrypted; else a decrypted copy beside it, mode 0600, removed
    /// when the [`PlainFile`] is dropped.
    pub fn plain_file(&self, file: &Path) -> Result<PlainFile, CryptError> {
        if !is_sealed(file) {
            return Ok(PlainFile {
                path: file.to_path_buf(),
                temporary: false,
            });
        }
        let io = |source: io::Error| CryptError::Io {
            file: file.to_path_buf(),
            source,
        };
        let input = File::open(file).map_err(io)?;
        let mut reader = self.open(file, BufReader::with_capacity(1 << 16, input))?;
        let copy = decrypted_copy_path(file);
        let out = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&copy)
            .map_err(|source| CryptError::Io {
                file: copy.clone(),
                source,
            })?;
        // From here on the copy is removed whatever happens.
        let plain = PlainFile {
            path: copy,
            temporary: true,
        };
        let mut out = io::BufWriter::with_capacity(1 << 16, out);
        io::copy(&mut reader, &mut out)
            .and_then(|_| out.flush())
            .map_err(|e| CryptError::Damaged {
                file: file.to_path_buf(),
                message: e.to_string(),
            })?;
        Ok(plain)
    }
}

/// `<dir>/.<name>.<pid>.<n>.decrypted` beside `file`.
fn decrypted_copy_path(file: &Path) -> PathBuf {
    let name = file.file_name().unwrap_or_default().to_string_lossy();
    scratch_path(file, plain_name(&name).0)
}

/// A private file beside `file` for something derived from its plaintext (`what` names it):
/// `.<what>.<pid>.<n>.decrypted`, which the next run removes if this process is killed
/// before it does. Never in a shared temporary directory.
pub fn scratch_path(file: &Path, what: &str) -> PathBuf {
    static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    file.with_file_name(format!(".{what}.{}.{n}{DECRYPTED}", std::process::id()))
}

/// Whether `name` is a decrypted copy made by a process that is no longer running (a
/// `restore` or `verify` that was killed): plaintext to remove.
pub fn is_stale_decrypted_copy(name: &str) -> bool {
    let Some(rest) = name
        .strip_prefix('.')
        .and_then(|n| n.strip_suffix(DECRYPTED))
    else {
        return false;
    };
    let mut parts = rest.rsplitn(3, '.');
    let (Some(n), Some(pid), Some(_)) = (parts.next(), parts.next(), parts.next()) else {
        return false;
    };
    let Ok(pid) = pid.parse::<i32>() else {
        return false;
    };
    if n.parse::<u32>().is_err() || pid <= 0 {
        return false;
    }
    // SAFETY: kill with signal 0 only checks whether the process exists.
    (unsafe { libc::kill(pid, 0) }) != 0
        && io::Error::last_os_error().raw_os_error() == Some(libc::ESRCH)
}

/// A plaintext archive pg_restore reads: the file itself, or a decrypted temporary copy that
/// is removed on drop.
#[derive(Debug)]
pub struct PlainFile {
    path: PathBuf,
    temporary: bool,
}

impl PlainFile {
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for PlainFile {
    fn drop(&mut self) {
        if self.temporary {
            let _ = fs::remove_file(&self.path);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_wrong_key_and_names() {
        let id = x25519::Identity::generate();
        let other = x25519::Identity::generate();
        let r = Recipients::new(vec![id.to_public()]).unwrap();
        let sealed = r.seal_bytes(b"PGDMP secret rows").unwrap();
        assert!(!sealed.windows(5).any(|w| w == b"PGDMP"));
        let dir = tempfile::tempdir().unwrap();
        let f = sealed_path(&dir.path().join("x.dump"));
        assert!(f.to_string_lossy().ends_with("x.dump.age"));
        fs::write(&f, &sealed).unwrap();
        let ids = Identities(Arc::new(vec![other.clone(), id]));
        assert_eq!(ids.read(&f).unwrap(), b"PGDMP secret rows");
        let plain = ids.plain_file(&f).unwrap();
        let copy = plain.path().to_path_buf();
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(
            fs::metadata(&copy).unwrap().permissions().mode() & 0o777,
            0o600
        );
        assert_eq!(fs::read(&copy).unwrap(), b"PGDMP secret rows");
        drop(plain);
        assert!(!copy.exists());
        let wrong = Identities(Arc::new(vec![other]));
        assert!(matches!(wrong.read(&f), Err(CryptError::NoMatch { .. })));
        assert!(matches!(
            Identities::default().read(&f),
            Err(CryptError::NoIdentity { .. })
        ));
        assert_eq!(plain_name("a.dump.age"), ("a.dump", true));
        assert!(!is_stale_decrypted_copy(".a.dump.1.0.decrypted.x"));
        assert!(!is_stale_decrypted_copy(&format!(
            ".a.dump.{}.0.decrypted",
            std::process::id()
        )));
    }

    #[test]
    fn recipients_files() {
        let a = x25519::Identity::generate().to_public().to_string();
        let text = format!("# ops\n\n  {a}\n");
        assert_eq!(Recipients::parse_file(&text).unwrap().len(), 1);
        assert_eq!(Recipients::parse_file("age1nope\n").unwrap_err().0, 1);
        let secret = x25519::Identity::generate();
        use age::secrecy::ExposeSecret;
        let s = secret.to_string();
        assert!(Recipients::parse_one(s.expose_secret())
            .unwrap_err()
            .contains("secret key"));
    }
}
