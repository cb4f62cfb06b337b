//! A real S3 server on loopback for the `[storage]` tests: `s3s-fs`, which serves S3
//! (signatures checked, multipart uploads, aborts, deletes) on a directory. scripts/test.sh
//! installs it (scripts/lib/s3server.sh) and exports PG_GROUPDUMP_S3S_FS; one server per test,
//! so a test may stop or freeze its own.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use super::{free_port, list_files, wait_until, Env};

/// The bucket every test uses.
pub const BUCKET: &str = "backups";
const ACCESS_KEY: &str = "AKIDTESTPGGROUPDUMP";
/// Never printed by pg_groupdump: tests assert it is absent from its output.
pub const SECRET_KEY: &str = "s3cr3t-never-printed-7f0c2e";

/// One s3s-fs process serving a temporary directory.
pub struct S3 {
    pub port: u16,
    /// The server's root: `<root>/<bucket>/<key>` is an object, `<root>/.upload-<id>.json` a
    /// multipart upload in progress.
    pub root: tempfile::TempDir,
    child: Option<Child>,
}

/// The s3s-fs binary (PG_GROUPDUMP_S3S_FS, as scripts/test.sh exports it).
fn binary() -> PathBuf {
    let path = std::env::var_os("PG_GROUPDUMP_S3S_FS")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/var/cache/pg_groupdump/s3s-fs/bin/s3s-fs"));
    assert!(
        path.is_file(),
        "this test needs s3s-fs at {} (PG_GROUPDUMP_S3S_FS); scripts/test.sh installs it",
        path.display()
    );
    path
}

impl S3 {
    /// Starts a server with an empty bucket.
    pub fn start() -> S3 {
        let root = tempfile::Builder::new()
            .prefix("pg_groupdump-s3-")
            .tempdir()
            .expect("tempdir");
        fs::create_dir(root.path().join(BUCKET)).expect("bucket dir");
        let mut s = S3 {
            port: free_port(),
            root,
            child: None,
        };
        s.spawn();
        s
    }

    fn spawn(&mut self) {
        let child = Command::new(binary())
            .args(["--host", "127.0.0.1", "--port", &self.port.to_string()])
            .args(["--access-key", ACCESS_KEY, "--secret-key", SECRET_KEY])
            .arg(self.root.path())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn s3s-fs");
        self.child = Some(child);
        let port = self.port;
        wait_until("s3s-fs listens", Duration::from_secs(20), || {
            std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
        });
    }

    /// Kills the server (SIGKILL): every request from now on fails.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Holds the server still (SIGSTOP): requests wait.
    pub fn freeze(&self) {
        self.signal("STOP");
    }

    /// Lets it go on (SIGCONT).
    pub fn thaw(&self) {
        self.signal("CONT");
    }

    fn signal(&self, sig: &str) {
        let pid = self.child.as_ref().expect("server running").id();
        let ok = Command::new("kill")
            .args([&format!("-{sig}"), &pid.to_string()])
            .status()
            .expect("run kill")
            .success();
        assert!(ok, "kill -{sig} s3s-fs");
    }

    /// Starts it again on the same port and directory.
    pub fn restart(&mut self) {
        self.kill();
        self.spawn();
    }

    /// `[storage]` for this server under `prefix`, its credentials in a file (mode 0600) in
    /// the test's workspace; `secret` replaces the right secret key when given.
    pub fn storage(&self, env: &Env, prefix: &str, secret: Option<&str>, extra: &str) -> String {
        let creds = env.path().join("s3-credentials");
        fs::write(
            &creds,
            format!(
                "[default]\naws_access_key_id = {ACCESS_KEY}\naws_secret_access_key = {}\n",
                secret.unwrap_or(SECRET_KEY)
            ),
        )
        .expect("write credentials");
        use std::os::unix::fs::PermissionsExt;
        fs::set_permissions(&creds, fs::Permissions::from_mode(0o600)).unwrap();
        format!(
            "[storage]\nurl = \"s3://{BUCKET}/{prefix}\"\nendpoint = \"http://127.0.0.1:{}\"\n\
             path_style = true\ncredentials_file = \"{}\"\n{extra}\n",
            self.port,
            creds.display()
        )
    }

    /// The bucket's objects below `prefix`, by key relative to it.
    pub fn objects(&self, prefix: &str) -> Vec<PathBuf> {
        list_files(&self.root.path().join(BUCKET).join(prefix))
    }

    /// The file of the object `prefix/relative`.
    pub fn object(&self, prefix: &str, relative: &Path) -> PathBuf {
        self.root.path().join(BUCKET).join(prefix).join(relative)
    }

    /// The file in which s3s-fs keeps the attributes of the object `prefix/relative` (its
    /// user metadata among them): `<root>/.bucket-<b64 bucket>.object-<b64 key>.metadata.json`.
    pub fn metadata_file(&self, prefix: &str, relative: &Path) -> PathBuf {
        let key = format!("{prefix}/{}", relative.display());
        self.root.path().join(format!(
            ".bucket-{}.object-{}.metadata.json",
            base64_url(BUCKET.as_bytes()),
            base64_url(key.as_bytes())
        ))
    }

    /// The object's user metadata `name` (`x-amz-meta-<name>`), as the server keeps it.
    pub fn user_metadata(&self, prefix: &str, relative: &Path, name: &str) -> Option<String> {
        let file = self.metadata_file(prefix, relative);
        let json: serde_json::Value = serde_json::from_slice(&fs::read(file).ok()?).ok()?;
        json["user_metadata"][name].as_str().map(str::to_string)
    }

    /// Sets the object's user metadata `name` to `value`, behind the server's back.
    pub fn set_user_metadata(&self, prefix: &str, relative: &Path, name: &str, value: &str) {
        let file = self.metadata_file(prefix, relative);
        let mut json: serde_json::Value = match fs::read(&file) {
            Ok(b) => serde_json::from_slice(&b).expect("metadata json"),
            Err(_) => serde_json::json!({}),
        };
        json["user_metadata"][name] = value.into();
        fs::write(&file, serde_json::to_vec(&json).unwrap()).expect("write metadata");
    }

    /// Multipart uploads in progress (neither completed nor aborted).
    pub fn open_uploads(&self) -> Vec<String> {
        fs::read_dir(self.root.path())
            .expect("read s3 root")
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| n.starts_with(".upload-") && n.ends_with(".json"))
            .collect()
    }
}

impl Drop for S3 {
    fn drop(&mut self) {
        self.kill();
    }
}

/// URL-safe base64 without padding, as s3s-fs names its metadata files.
fn base64_url(data: &[u8]) -> String {
    const ABC: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut out = String::new();
    for chunk in data.chunks(3) {
        let n = chunk.iter().fold(0u32, |n, b| n << 8 | u32::from(*b)) << (8 * (3 - chunk.len()));
        for i in 0..=chunk.len() {
            out.push(char::from(ABC[(n >> (18 - 6 * i) & 63) as usize]));
        }
    }
    out
}

#[test]
fn base64_url_matches_the_rfc_4648_vectors() {
    for (plain, coded) in [
        ("", ""),
        ("f", "Zg"),
        ("fo", "Zm8"),
        ("foo", "Zm9v"),
        ("foob", "Zm9vYg"),
        ("fooba", "Zm9vYmE"),
        ("foobar", "Zm9vYmFy"),
    ] {
        assert_eq!(base64_url(plain.as_bytes()), coded);
    }
    assert_eq!(base64_url(&[0xfb, 0xff]), "-_8");
}
