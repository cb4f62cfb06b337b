//! The bucket of `[storage]`: finished dumps uploaded under the same names as under
//! `backup.dir`, listed, read back and deleted by key.
//!
//! An object appears under its final key only complete: every file goes up as a multipart
//! upload, completed after its last part went up and its bytes were hashed again and found
//! equal to the SHA-256 of the committed file. An upload that fails is aborted. The id of
//! every upload started is recorded first in a small state file in `backup.dir`
//! ([`PENDING_FILE`], written atomically), so that the next run aborts what a killed run left,
//! whether or not the server can list multipart uploads.
//!
//! Every object carries the SHA-256 of its file as user metadata ([`SHA256_METADATA`], the
//! header `x-amz-meta-sha256`), given when its multipart upload is created: it is there from
//! the moment the object exists under its key.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::StreamExt;
use object_store::aws::{AmazonS3, AmazonS3Builder, AwsCredential};
use object_store::client::{
    ClientOptions, HttpClient, HttpConnector, HttpError, HttpRequest, HttpResponse, HttpService,
    ReqwestConnector,
};
use object_store::multipart::{MultipartStore, PartId};
use object_store::path::Path as Key;
use object_store::{
    Attribute, Attributes, BackoffConfig, ObjectStore, PutMultipartOptions, PutPayload,
    RetryConfig, StaticCredentialProvider,
};
use sha2::{Digest, Sha256};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::config::StorageConfig;

/// The state file of the uploads started and not yet completed or aborted.
pub const PENDING_FILE: &str = ".pg_groupdump.uploads";

/// The state file of the committed files not known to be in the bucket (their upload
/// failed), which later runs upload; see [`Unsent`].
pub const UNSENT_FILE: &str = ".pg_groupdump.unsent";

/// The user metadata every object carries: the SHA-256 of its file, in hex
/// (`x-amz-meta-sha256`).
pub const SHA256_METADATA: &str = "sha256";

/// Why the bucket could not be used.
#[derive(Debug, thiserror::Error)]
pub enum BucketError {
    #[error("storage.credentials_file {}: {message}", path.display())]
    Credentials { path: PathBuf, message: String },
    #[error("storage.url {url}: {message}")]
    Open { url: String, message: String },
    #[error("{path} is not below backup.dir, or not a valid object key", path = path.display())]
    Key { path: PathBuf },
    #[error("cannot read {}: {source}", path.display())]
    Local {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("upload of {key} to {url} failed: {message}")]
    Upload {
        url: String,
        key: String,
        message: String,
    },
    #[error("storage.url {url}: {key}: {message}")]
    Object {
        url: String,
        key: String,
        message: String,
    },
    #[error("cannot record the pending uploads in {}: {source}", path.display())]
    State {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// Uploads at once: each holds a part in memory (`part_size`), however many groups finish
/// while others are still going up.
const UPLOADS_AT_ONCE: usize = 4;

/// Parts of one upload in flight at once.
const PARTS_AT_ONCE: usize = 2;

/// The parts of an upload being sent, in order, and those sent. Parts still in flight when it
/// is dropped (an upload that failed) are cancelled.
#[derive(Default)]
struct Flight {
    sending: std::collections::VecDeque<tokio::task::JoinHandle<object_store::Result<PartId>>>,
    sent: Vec<PartId>,
}

impl Flight {
    /// Waits for the oldest part in flight.
    async fn land_one(&mut self) -> Result<(), String> {
        let Some(part) = self.sending.pop_front() else {
            return Ok(());
        };
        match part.await {
            Ok(Ok(id)) => {
                self.sent.push(id);
                Ok(())
            }
            Ok(Err(e)) => Err(describe(&e)),
            Err(e) => Err(format!("the part's task failed: {e}")),
        }
    }
}

impl Drop for Flight {
    fn drop(&mut self) {
        for part in &self.sending {
            part.abort();
        }
    }
}

/// An upload started and not yet completed or aborted.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, serde::Serialize, serde::Deserialize)]
struct Pending {
    key: String,
    id: String,
}

/// What [`UNSENT_FILE`] holds: the files whose upload failed, and whether a run is under way.
/// A run that finds no such file (lost, or never written) or one a run left under way (it was
/// killed: a file it committed may never have had its upload started) compares the bucket
/// with `backup.dir` once, so that no kept file is forgotten; other runs list nothing.
#[derive(Debug, Default, serde::Serialize, serde::Deserialize)]
struct Unsent {
    run_in_progress: bool,
    /// Relative to `backup.dir` (and to the prefix).
    files: BTreeSet<PathBuf>,
    /// A write of the state file failed in this run (not saved): the run does not clear
    /// `run_in_progress`, and the next one compares again.
    #[serde(skip)]
    unsaved: bool,
}

/// The files recorded in [`UNSENT_FILE`] of `root` as not in the bucket (relative to it);
/// prune keeps them.
pub fn unsent_files(root: &Path) -> BTreeSet<PathBuf> {
    std::fs::read(root.join(UNSENT_FILE))
        .ok()
        .and_then(|b| serde_json::from_slice::<Unsent>(&b).ok())
        .map(|u| u.files)
        .unwrap_or_default()
}

/// A file of an earlier run uploaded again by [`Bucket::retry_unsent`].
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct RetriedUpload {
    pub file: String,
    /// `s3://bucket/key`.
    pub object: String,
    pub ok: bool,
    /// What went up.
    #[serde(default)]
    pub bytes: Option<u64>,
    #[serde(default)]
    pub error: Option<String>,
}

/// An object in the bucket, by its path relative to the prefix (the same as below
/// `backup.dir`).
#[derive(Debug, Clone)]
pub struct Object {
    pub relative: PathBuf,
    pub size: u64,
}

/// What went up.
#[derive(Debug, Clone)]
pub struct Uploaded {
    /// `s3://bucket/key`.
    pub url: String,
    pub bytes: u64,
}

/// The bucket, and where the local copies live.
pub struct Bucket {
    s3: Arc<AmazonS3>,
    cfg: StorageConfig,
    root: PathBuf,
    pending: Mutex<BTreeSet<Pending>>,
    unsent: Mutex<Unsent>,
    uploads: tokio::sync::Semaphore,
}

impl Bucket {
    /// Opens the bucket of `cfg` for the backup directory `root` (nothing is sent yet).
    pub fn open(cfg: &StorageConfig, root: &Path) -> Result<Bucket, BucketError> {
        let mut b = AmazonS3Builder::from_env()
            .with_bucket_name(&cfg.bucket)
            .with_region(&cfg.region)
            .with_virtual_hosted_style_request(!cfg.path_style)
            .with_http_connector(ReadsUploadIds)
            .with_retry(RetryConfig {
                backoff: BackoffConfig {
                    init_backoff: Duration::from_millis(200),
                    max_backoff: Duration::from_secs(5),
                    base: 2.0,
                },
                max_retries: 3,
                retry_timeout: Duration::from_secs(30),
            });
        if let Some(e) = &cfg.endpoint {
            b = b.with_endpoint(e).with_allow_http(cfg.insecure);
        }
        if let Some(file) = &cfg.credentials_file {
            let c = read_credentials(file, &cfg.profile)?;
            b = b.with_credentials(Arc::new(StaticCredentialProvider::new(c)));
        }
        let s3 = b.build().map_err(|e| BucketError::Open {
            url: cfg.url.clone(),
            message: describe(&e),
        })?;
        Ok(Bucket {
            s3: Arc::new(s3),
            cfg: cfg.clone(),
            root: root.to_path_buf(),
            pending: Mutex::new(BTreeSet::new()),
            unsent: Mutex::new(Unsent::default()),
            uploads: tokio::sync::Semaphore::new(UPLOADS_AT_ONCE),
        })
    }

    /// `storage.url`, for messages.
    pub fn url(&self) -> &str {
        &self.cfg.url
    }

    /// Whether local copies are kept once uploaded.
    pub fn keep_local(&self) -> bool {
        self.cfg.keep_local
    }

    /// Lists one page under the prefix: the credentials and the bucket work.
    pub async fn check(&self) -> Result<(), BucketError> {
        let prefix = self.prefix();
        let mut list = self.s3.list(prefix.as_ref());
        match list.next().await {
            Some(Err(source)) => Err(self.object_error(&self.cfg.prefix, source)),
            _ => Ok(()),
        }
    }

    fn prefix(&self) -> Option<Key> {
        (!self.cfg.prefix.is_empty())
            .then(|| Key::parse(&self.cfg.prefix).ok())
            .flatten()
    }

    fn object_error(&self, key: &str, e: object_store::Error) -> BucketError {
        BucketError::Object {
            url: self.cfg.url.clone(),
            key: key.to_string(),
            message: describe(&e),
        }
    }

    /// The key of a path relative to the prefix.
    fn key_of_relative(&self, relative: &Path) -> Result<Key, BucketError> {
        let bad = || BucketError::Key {
            path: relative.to_path_buf(),
        };
        let rel = relative.to_str().ok_or_else(bad)?;
        let full = match self.cfg.prefix.as_str() {
            "" => rel.to_string(),
            p => format!("{p}/{rel}"),
        };
        Key::parse(full).map_err(|_| bad())
    }

    /// The key of a file below `backup.dir`.
    fn key_of(&self, local: &Path) -> Result<Key, BucketError> {
        let rel = local
            .strip_prefix(&self.root)
            .map_err(|_| BucketError::Key {
                path: local.to_path_buf(),
            })?;
        self.key_of_relative(rel)
    }

    /// `s3://bucket/key`.
    fn url_of(&self, key: &Key) -> String {
        format!("s3://{}/{key}", self.cfg.bucket)
    }

    /// Uploads a committed file whose SHA-256 is `sha256`; the object appears under its key
    /// only complete and checked. Without `keep_local`, the local file is removed once up. A
    /// file whose upload fails is recorded in [`UNSENT_FILE`] for later runs.
    pub async fn upload(&self, local: &Path, sha256: &str) -> Result<Uploaded, BucketError> {
        let key = self.key_of(local)?;
        let result = self.upload_to(&key, local, sha256).await;
        let rel = local.strip_prefix(&self.root).unwrap_or(local);
        self.change_unsent(|u| match result.is_ok() {
            true => u.files.remove(rel),
            false => u.files.insert(rel.to_path_buf()),
        });
        result
    }

    /// [`Bucket::upload`] to `key`.
    async fn upload_to(
        &self,
        key: &Key,
        local: &Path,
        sha256: &str,
    ) -> Result<Uploaded, BucketError> {
        let key = key.clone();
        let _turn = self.uploads.acquire().await.expect("never closed");
        let fail = |message: String| BucketError::Upload {
            url: self.cfg.url.clone(),
            key: key.to_string(),
            message,
        };
        let id = self.create_multipart(&key, sha256).await.map_err(fail)?;
        let pending = Pending {
            key: key.to_string(),
            id: id.clone(),
        };
        self.record(|p| {
            p.insert(pending.clone());
        })?;
        let sent = self.send_parts(&key, &id, local, sha256).await;
        let result = match sent {
            Ok((parts, bytes)) => match self.s3.complete_multipart(&key, &id, parts).await {
                Ok(_) => Ok(bytes),
                Err(e) => Err(fail(describe(&e))),
            },
            Err(e) => Err(e),
        };
        let forget = |p: &mut BTreeSet<Pending>| {
            p.remove(&pending);
        };
        let bytes = match result {
            Ok(bytes) => bytes,
            Err(e) => {
                // An abort that fails too stays recorded: the next run retries it.
                if self.s3.abort_multipart(&key, &id).await.is_ok() {
                    self.record(forget)?;
                }
                return Err(e);
            }
        };
        self.record(forget)?;
        if !self.cfg.keep_local {
            std::fs::remove_file(local).map_err(|source| BucketError::Local {
                path: local.to_path_buf(),
                source,
            })?;
        }
        Ok(Uploaded {
            url: self.url_of(&key),
            bytes,
        })
    }

    /// Starts a multipart upload whose object will carry `sha256` as its metadata; returns its
    /// id. (object_store's `MultipartStore::create_multipart` takes no metadata, and
    /// `put_multipart_opts`, which does, keeps the id to itself: [`ReadsUploadIds`] reads it
    /// from the server's answer, so the upload can be recorded, and aborted by a later run.)
    async fn create_multipart(&self, key: &Key, sha256: &str) -> Result<String, String> {
        let slot = UploadIdSlot::default();
        let mut opts = PutMultipartOptions {
            attributes: Attributes::from_iter([(
                Attribute::Metadata(SHA256_METADATA.into()),
                sha256.to_string(),
            )]),
            ..Default::default()
        };
        opts.extensions.insert(slot.clone());
        // Its parts, completion and abort go through `MultipartStore`, by id.
        let _upload = self
            .s3
            .put_multipart_opts(key, opts)
            .await
            .map_err(|e| describe(&e))?;
        slot.take()
            .ok_or_else(|| "the server's answer to CreateMultipartUpload has no UploadId".into())
    }

    /// Sends the file in parts ([`PARTS_AT_ONCE`] in flight while the next is read), hashing
    /// it again on the way: the bytes that went up must be the committed file's.
    async fn send_parts(
        &self,
        key: &Key,
        id: &str,
        local: &Path,
        sha256: &str,
    ) -> Result<(Vec<PartId>, u64), BucketError> {
        let io = |source| BucketError::Local {
            path: local.to_path_buf(),
            source,
        };
        let fail = |message: String| BucketError::Upload {
            url: self.cfg.url.clone(),
            key: key.to_string(),
            message,
        };
        let mut file = tokio::fs::File::open(local).await.map_err(io)?;
        let mut hash = Sha256::new();
        let mut flight = Flight::default();
        let mut bytes = 0u64;
        for index in 0.. {
            let mut buf = Vec::with_capacity(self.cfg.part_size as usize);
            let n = (&mut file)
                .take(self.cfg.part_size)
                .read_to_end(&mut buf)
                .await
                .map_err(io)?;
            if n == 0 && index > 0 {
                break;
            }
            hash.update(&buf);
            bytes += n as u64;
            let (s3, key, id) = (self.s3.clone(), key.clone(), id.to_string());
            flight.sending.push_back(tokio::spawn(async move {
                s3.put_part(&key, &id, index, PutPayload::from(buf)).await
            }));
            if flight.sending.len() >= PARTS_AT_ONCE {
                flight.land_one().await.map_err(fail)?;
            }
            if (n as u64) < self.cfg.part_size {
                break;
            }
        }
        while !flight.sending.is_empty() {
            flight.land_one().await.map_err(fail)?;
        }
        let got = hex::encode(hash.finalize());
        if got != sha256 {
            return Err(fail(format!(
                "{} changed after it was written (sha256 {got}, expected {sha256})",
                local.display()
            )));
        }
        Ok((std::mem::take(&mut flight.sent), bytes))
    }

    /// Changes the set of pending uploads and writes it to the state file.
    fn record(&self, change: impl FnOnce(&mut BTreeSet<Pending>)) -> Result<(), BucketError> {
        let mut p = self.pending.lock().unwrap_or_else(|e| e.into_inner());
        change(&mut p);
        let json = serde_json::to_vec(&*p).expect("serializes");
        let path = self.root.join(PENDING_FILE);
        super::write_atomic(&path, &json).map_err(|source| BucketError::State { path, source })
    }

    /// Changes the files not in the bucket; writes [`UNSENT_FILE`] when `change` says it
    /// changed something. A write that fails is logged, and makes the next run compare the
    /// bucket with `backup.dir`.
    fn change_unsent(&self, change: impl FnOnce(&mut Unsent) -> bool) {
        let mut u = self.unsent.lock().unwrap_or_else(|e| e.into_inner());
        if change(&mut u) {
            save_unsent(&self.root, &mut u);
        }
    }

    /// Starts a run's use of the bucket: reads [`UNSENT_FILE`] and, when it is missing or a
    /// killed run left it, adds the files of `committed()` (the complete files of
    /// `backup.dir`, relative to it: never `.ing`) that are not in the bucket; then records
    /// the run as under way. Returns the files that wait for upload, for
    /// [`Bucket::retry_unsent`].
    pub async fn begin_run(
        &self,
        committed: impl FnOnce() -> Vec<PathBuf>,
    ) -> Result<Vec<PathBuf>, BucketError> {
        let path = self.root.join(UNSENT_FILE);
        let found: Option<Unsent> = match std::fs::read(&path) {
            Ok(b) => serde_json::from_slice(&b).ok(),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(source) => return Err(BucketError::State { path, source }),
        };
        let mut unsent = match found {
            Some(u) if !u.run_in_progress => u,
            found => {
                let mut u = found.unwrap_or_default();
                u.files.extend(self.missing_from_bucket(committed()).await?);
                u
            }
        };
        unsent.run_in_progress = true;
        let json = serde_json::to_vec(&unsent).expect("serializes");
        super::write_atomic(&path, &json).map_err(|source| BucketError::State { path, source })?;
        let waiting = unsent.files.iter().cloned().collect();
        *self.unsent.lock().unwrap_or_else(|e| e.into_inner()) = unsent;
        Ok(waiting)
    }

    /// Ends a run's use of the bucket: [`UNSENT_FILE`] no longer says a run is under way
    /// (unless one of its writes failed).
    pub fn end_run(&self) {
        self.change_unsent(|u| {
            u.run_in_progress = u.unsaved;
            true
        });
    }

    /// Those of `committed` (relative to `backup.dir`) that are not in the bucket. Lists the
    /// whole prefix.
    async fn missing_from_bucket(
        &self,
        committed: Vec<PathBuf>,
    ) -> Result<Vec<PathBuf>, BucketError> {
        let there: std::collections::HashSet<PathBuf> =
            self.list().await?.into_iter().map(|o| o.relative).collect();
        Ok(committed
            .into_iter()
            .filter(|rel| !there.contains(rel))
            .collect())
    }

    /// Uploads `files` (relative to `backup.dir`), those [`Bucket::begin_run`] found not in
    /// the bucket, one after the other (each as [`Bucket::upload`] does). A file no longer in
    /// `backup.dir` is forgotten, and reported as an error.
    pub async fn retry_unsent(&self, files: Vec<PathBuf>) -> Vec<RetriedUpload> {
        let mut done = Vec::new();
        for rel in files {
            let local = self.root.join(&rel);
            let object = match self.key_of_relative(&rel) {
                Ok(key) => self.url_of(&key),
                Err(e) => e.to_string(),
            };
            let mut r = RetriedUpload {
                file: local.display().to_string(),
                object,
                ok: false,
                bytes: None,
                error: None,
            };
            match self.retry_one(&local).await {
                Ok(up) => {
                    tracing::info!(
                        "uploaded {} ({}), whose upload had failed in an earlier run",
                        up.url,
                        crate::text::human_bytes(up.bytes)
                    );
                    (r.ok, r.bytes) = (true, Some(up.bytes));
                }
                Err(e) => {
                    tracing::error!("FAILED the upload of {}, retried: {e}", local.display());
                    r.error = Some(e.to_string());
                }
            }
            done.push(r);
        }
        done
    }

    /// Hashes a file of an earlier run and uploads it; one that is gone is forgotten.
    async fn retry_one(&self, local: &Path) -> Result<Uploaded, BucketError> {
        let path = local.to_path_buf();
        let hashed = tokio::task::spawn_blocking(move || super::hash_file(&path)).await;
        let io = |source| BucketError::Local {
            path: local.to_path_buf(),
            source,
        };
        match hashed {
            Ok(Ok((_, sha256))) => self.upload(local, &sha256).await,
            Ok(Err(e)) => {
                if e.kind() == std::io::ErrorKind::NotFound {
                    let rel = local.strip_prefix(&self.root).unwrap_or(local);
                    self.change_unsent(|u| u.files.remove(rel));
                }
                Err(io(e))
            }
            Err(e) => Err(io(std::io::Error::other(e))),
        }
    }

    /// Aborts the uploads a killed run left (read from the state file); returns their keys.
    /// An abort that fails stays recorded for the next run.
    pub async fn abort_stale(&self) -> Result<Vec<String>, BucketError> {
        let path = self.root.join(PENDING_FILE);
        let stale: BTreeSet<Pending> = match std::fs::read(&path) {
            Ok(b) => serde_json::from_slice(&b).unwrap_or_default(),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => BTreeSet::new(),
            Err(source) => return Err(BucketError::State { path, source }),
        };
        let mut aborted = Vec::new();
        let mut left = BTreeSet::new();
        for p in stale {
            let key = Key::parse(&p.key);
            match key {
                Ok(k) if self.s3.abort_multipart(&k, &p.id).await.is_ok() => {
                    aborted.push(p.key.clone())
                }
                Ok(_) => {
                    left.insert(p);
                }
                Err(_) => {}
            }
        }
        self.record(|p| *p = left)?;
        Ok(aborted)
    }

    /// Every object under the prefix, by its path relative to the prefix.
    pub async fn list(&self) -> Result<Vec<Object>, BucketError> {
        let prefix = self.prefix();
        let mut stream = self.s3.list(prefix.as_ref());
        let mut out = Vec::new();
        while let Some(meta) = stream.next().await {
            let meta = meta.map_err(|e| self.object_error(&self.cfg.prefix, e))?;
            let key = meta.location.as_ref();
            let rel = match self.cfg.prefix.as_str() {
                "" => Some(key),
                p => key.strip_prefix(p).and_then(|k| k.strip_prefix('/')),
            };
            if let Some(rel) = rel {
                out.push(Object {
                    relative: PathBuf::from(rel),
                    size: meta.size,
                });
            }
        }
        Ok(out)
    }

    /// Deletes the object at `relative`.
    pub async fn delete(&self, relative: &Path) -> Result<(), BucketError> {
        let key = self.key_of_relative(relative)?;
        self.s3
            .delete(&key)
            .await
            .map_err(|e| self.object_error(key.as_ref(), e))
    }

    /// Downloads the object at `relative` to `to` (created with the file mode), streamed.
    pub async fn download(&self, relative: &Path, to: &Path) -> Result<Downloaded, BucketError> {
        let key = self.key_of_relative(relative)?;
        let err = |e| self.object_error(key.as_ref(), e);
        let io = |source| BucketError::Local {
            path: to.to_path_buf(),
            source,
        };
        let got = self.s3.get(&key).await.map_err(err)?;
        let sha256 = got
            .attributes
            .get(&Attribute::Metadata(SHA256_METADATA.into()))
            .map(|v| v.to_string());
        if let Some(parent) = to.parent() {
            super::create_dir_all(parent).map_err(io)?;
        }
        let mut file = tokio::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(to)
            .await
            .map_err(io)?;
        let mut stream = got.into_stream();
        let mut bytes = 0u64;
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.map_err(err)?;
            bytes += chunk.len() as u64;
            file.write_all(&chunk).await.map_err(io)?;
        }
        file.sync_all().await.map_err(io)?;
        Ok(Downloaded { bytes, sha256 })
    }
}

/// An object copied from the bucket.
#[derive(Debug, Clone)]
pub struct Downloaded {
    pub bytes: u64,
    /// Its [`SHA256_METADATA`]; `None` for an object uploaded by a version that set none.
    pub sha256: Option<String>,
}

/// Where [`ReadsUploadIds`] puts the id of the multipart upload a request creates; carried by
/// the request as an extension.
#[derive(Debug, Clone, Default)]
struct UploadIdSlot(Arc<Mutex<Option<String>>>);

impl UploadIdSlot {
    fn take(&self) -> Option<String> {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).take()
    }
}

/// object_store's reqwest client, reading the `UploadId` of a CreateMultipartUpload answer
/// into the request's [`UploadIdSlot`]. Requests are signed before they get here; nothing is
/// changed in them.
#[derive(Debug)]
struct ReadsUploadIds;

impl HttpConnector for ReadsUploadIds {
    fn connect(&self, options: &ClientOptions) -> object_store::Result<HttpClient> {
        let inner = ReqwestConnector::default().connect(options)?;
        Ok(HttpClient::new(ReadingUploadIds(inner)))
    }
}

#[derive(Debug)]
struct ReadingUploadIds(HttpClient);

type Answer<'a> = std::pin::Pin<
    Box<dyn std::future::Future<Output = Result<HttpResponse, HttpError>> + Send + 'a>,
>;

impl HttpService for ReadingUploadIds {
    fn call<'s, 'a>(&'s self, req: HttpRequest) -> Answer<'a>
    where
        's: 'a,
        Self: 'a,
    {
        Box::pin(async move {
            let slot = req.extensions().get::<UploadIdSlot>().cloned();
            let answer = self.0.execute(req).await?;
            let Some(slot) = slot.filter(|_| answer.status().is_success()) else {
                return Ok(answer);
            };
            let (parts, body) = answer.into_parts();
            let body = body.bytes().await?;
            *slot.0.lock().unwrap_or_else(|e| e.into_inner()) = upload_id_in(&body);
            Ok(HttpResponse::from_parts(parts, body.into()))
        })
    }
}

/// The `<UploadId>` of an InitiateMultipartUploadResult.
fn upload_id_in(xml: &[u8]) -> Option<String> {
    let text = std::str::from_utf8(xml).ok()?;
    let start = text.find("<UploadId>")? + "<UploadId>".len();
    let end = text[start..].find("</UploadId>")? + start;
    let id = text[start..end]
        .replace("&lt;", "<")
        .replace("&gt;", ">")
        .replace("&quot;", "\"")
        .replace("&apos;", "'")
        .replace("&amp;", "&");
    (!id.is_empty()).then_some(id)
}

/// Writes [`UNSENT_FILE`]; a failure is logged and remembered in `u.unsaved`.
fn save_unsent(root: &Path, u: &mut Unsent) {
    let path = root.join(UNSENT_FILE);
    let json = serde_json::to_vec(&*u).expect("serializes");
    if let Err(e) = super::write_atomic(&path, &json) {
        tracing::error!(
            "cannot record the files not in the bucket in {}: {e}; the next run compares the bucket with {}",
            path.display(),
            root.display()
        );
        u.unsaved = true;
    }
}

/// An object store error in one line: what was tried (its first line, without the URL's
/// query) and the root cause, without the repetitions of the error chain.
fn describe(e: &object_store::Error) -> String {
    let mut root: &dyn std::error::Error = e;
    while let Some(next) = root.source() {
        root = next;
    }
    let root = root.to_string();
    let what = match e {
        object_store::Error::NotFound { .. } => "not found",
        object_store::Error::PermissionDenied { .. }
        | object_store::Error::Unauthenticated { .. } => "access denied",
        _ => "request failed",
    };
    let code = ["<Code>", "<Message>"]
        .iter()
        .filter_map(|tag| {
            let start = root.find(tag)? + tag.len();
            let end = root[start..].find('<')? + start;
            Some(root[start..end].to_string())
        })
        .collect::<Vec<_>>();
    match root.find(": <?xml") {
        Some(i) if !code.is_empty() => format!("{what}: {} ({})", &root[..i], code.join(": ")),
        _ => format!("{what}: {root}"),
    }
}

/// The key id and secret of `profile` in a file in the AWS shared-credentials format
/// (`[profile]`, `aws_access_key_id = …`, `aws_secret_access_key = …`, optional
/// `aws_session_token`). The file must not be readable by others.
fn read_credentials(path: &Path, profile: &str) -> Result<AwsCredential, BucketError> {
    use std::os::unix::fs::PermissionsExt;
    let fail = |message: String| BucketError::Credentials {
        path: path.to_path_buf(),
        message,
    };
    let meta = std::fs::metadata(path).map_err(|e| fail(e.to_string()))?;
    if meta.permissions().mode() & 0o077 != 0 {
        return Err(fail(
            "is readable by group or others; chmod 600 it".to_string(),
        ));
    }
    let text = std::fs::read_to_string(path).map_err(|e| fail(e.to_string()))?;
    let (mut key_id, mut secret_key, mut token) = (None, None, None);
    let mut section = String::new();
    for line in text.lines().map(str::trim) {
        if let Some(s) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            section = s.trim().trim_start_matches("profile ").to_string();
            continue;
        }
        let Some((k, v)) = line.split_once('=') else {
            continue;
        };
        if section != profile {
            continue;
        }
        let v = Some(v.trim().to_string());
        match k.trim() {
            "aws_access_key_id" => key_id = v,
            "aws_secret_access_key" => secret_key = v,
            "aws_session_token" => token = v,
            _ => {}
        }
    }
    match (key_id, secret_key) {
        (Some(key_id), Some(secret_key)) => Ok(AwsCredential {
            key_id,
            secret_key,
            token,
        }),
        _ => Err(fail(format!(
            "no aws_access_key_id and aws_secret_access_key in profile [{profile}]"
        ))),
    }
}

/// Which objects [`Mirror::fetch`] copies: those of one run, database or group (each `None`:
/// any). The schema dumps of the selected databases come with a group, and a run's report
/// with the run.
#[derive(Debug, Clone, Default)]
pub struct Want<'a> {
    pub run: Option<&'a str>,
    pub database: Option<&'a str>,
    pub group: Option<&'a str>,
}

impl Want<'_> {
    fn wants(&self, f: &super::StoredFile) -> bool {
        use super::{DirName, FileKind};
        let named = |d: &DirName, want: &str| matches!(d, DirName::Name(n) if n == want);
        let run = self.run.is_none_or(|r| f.run_id.as_str() == r);
        let database = match (&f.database, self.database) {
            (_, None) => true,
            (Some(d), Some(w)) => named(d, w),
            (None, Some(_)) => f.kind == FileKind::Report,
        };
        let group = match self.group {
            None => true,
            Some(g) => named(&f.group, g) || f.kind == FileKind::Schema,
        };
        run && database && group && !f.partial
    }
}

/// The objects of a selection copied from the bucket into a private directory laid out like
/// `backup.dir`, for `verify` and `restore` (pg_restore needs to seek in an archive); removed
/// when dropped.
pub struct Mirror {
    /// The configuration with `backup.dir` set to the copy.
    pub config: crate::config::Config,
    dir: PathBuf,
    /// Each copied object's [`SHA256_METADATA`], by its path relative to the prefix.
    sha256: std::collections::HashMap<PathBuf, Option<String>>,
}

impl Mirror {
    /// With `[storage]`, copies the wanted objects (of the newest run in the bucket when
    /// `want.run` is `None` and `newest` is set) and returns the mirror; `None` without
    /// `[storage]`.
    pub async fn fetch(
        config: &crate::config::Config,
        want: Want<'_>,
        newest: bool,
    ) -> Result<Option<Mirror>, BucketError> {
        let Some(cfg) = &config.storage else {
            return Ok(None);
        };
        let bucket = Bucket::open(cfg, &config.backup.dir)?;
        let objects = bucket.list().await?;
        let parsed: Vec<(Object, super::StoredFile)> = objects
            .into_iter()
            .filter_map(|o| Some((super::parse_path(&o.relative)?, o)))
            .map(|(f, o)| (o, f))
            .collect();
        let newest_run = parsed
            .iter()
            .filter(|(_, f)| f.kind == super::FileKind::Report)
            .map(|(_, f)| f.run_id.as_str().to_string())
            .max();
        let run = match (want.run, newest) {
            (None, true) => newest_run.as_deref(),
            (r, _) => r,
        };
        let want = Want { run, ..want };
        let dir = config
            .backup
            .dir
            .join(format!(".from-bucket.{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        super::create_dir_all(&dir).map_err(|source| BucketError::Local {
            path: dir.clone(),
            source,
        })?;
        let mut mirror = Mirror {
            config: config.clone(),
            dir: dir.clone(),
            sha256: Default::default(),
        };
        mirror.config.backup.dir = dir.clone();
        for (o, _) in parsed.iter().filter(|(_, f)| want.wants(f)) {
            let got = bucket.download(&o.relative, &dir.join(&o.relative)).await?;
            mirror.sha256.insert(o.relative.clone(), got.sha256);
        }
        Ok(Some(mirror))
    }

    /// Where the copy of `file`, a path below `original_root`, is.
    pub fn local(&self, original_root: &Path, file: &Path) -> PathBuf {
        match file.strip_prefix(original_root) {
            Ok(rel) => self.dir.join(rel),
            Err(_) => file.to_path_buf(),
        }
    }

    /// The [`SHA256_METADATA`] of the object of `file`, a path below `original_root`: `None`
    /// when it was not copied, `Some(None)` when the object has none.
    pub fn sha256_metadata(&self, original_root: &Path, file: &Path) -> Option<Option<&str>> {
        let rel = file.strip_prefix(original_root).ok()?;
        self.sha256.get(rel).map(Option::as_deref)
    }
}

impl Drop for Mirror {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_upload_id_is_read_from_the_answer() {
        let xml = br#"<?xml version="1.0" encoding="UTF-8"?>
<InitiateMultipartUploadResult xmlns="http://s3.amazonaws.com/doc/2006-03-01/"><Bucket>b</Bucket><Key>k</Key><UploadId>VXBsb2Fk&amp;x.y-z</UploadId></InitiateMultipartUploadResult>"#;
        assert_eq!(upload_id_in(xml).as_deref(), Some("VXBsb2Fk&x.y-z"));
        assert_eq!(upload_id_in(b"<UploadId></UploadId>"), None);
        assert_eq!(upload_id_in(b"<Error><Code>X</Code></Error>"), None);
    }

    #[test]
    fn unsent_files_reads_the_state_file_and_is_empty_without_one() {
        let dir = tempfile::tempdir().unwrap();
        assert!(unsent_files(dir.path()).is_empty());
        let u = Unsent {
            run_in_progress: false,
            files: [PathBuf::from("db/g/db.g.20260101T000000Z.dump")].into(),
            unsaved: true,
        };
        std::fs::write(
            dir.path().join(UNSENT_FILE),
            serde_json::to_vec(&u).unwrap(),
        )
        .unwrap();
        assert_eq!(unsent_files(dir.path()), u.files);
    }
}
