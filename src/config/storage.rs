//! `[storage]`: an S3-compatible bucket the finished dumps go to, checked into
//! [`StorageConfig`].
//!
//! Credentials are never part of the configuration text: they come from the provider's
//! chain (environment, web identity, instance metadata) or from `credentials_file`, a file in
//! the AWS shared-credentials format that only its owner may read.

use std::path::{Path, PathBuf};

use serde::Deserialize;

use super::ConfigError;

/// The smallest part S3 accepts (every part but the last).
pub const MIN_PART_SIZE: u64 = 5 * 1024 * 1024;
/// `part_size` when not set.
const DEFAULT_PART_SIZE: u64 = 16 * 1024 * 1024;
/// The largest part S3 accepts.
const MAX_PART_SIZE: u64 = 5 * 1024 * 1024 * 1024;

/// `[storage]` as written in the file.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawStorage {
    url: Option<String>,
    endpoint: Option<String>,
    region: Option<String>,
    path_style: Option<bool>,
    credentials_file: Option<PathBuf>,
    profile: Option<String>,
    keep_local: Option<bool>,
    part_size: Option<String>,
}

/// The checked `[storage]` settings.
#[derive(Debug, Clone)]
pub struct StorageConfig {
    /// `url` as written, for messages (`s3://bucket/prefix`).
    pub url: String,
    pub bucket: String,
    /// The key prefix, without leading or trailing `/` (may be empty).
    pub prefix: String,
    /// `endpoint`: an S3-compatible server (MinIO, Ceph, …); `None`: AWS.
    pub endpoint: Option<String>,
    /// Whether `endpoint` is plain http (accepted, with a warning at each run).
    pub insecure: bool,
    pub region: String,
    /// Path-style addressing (`endpoint/bucket/key`), which MinIO and Ceph need.
    pub path_style: bool,
    /// Credentials in the AWS shared-credentials format; `None`: the provider's chain.
    pub credentials_file: Option<PathBuf>,
    /// The profile of `credentials_file` (default `default`).
    pub profile: String,
    /// Keep the local copy of every dump once it is in the bucket.
    pub keep_local: bool,
    /// Bytes per uploaded part.
    pub part_size: u64,
}

/// Checks `[storage]`.
pub(super) fn check(path: &Path, raw: RawStorage) -> Result<StorageConfig, ConfigError> {
    let err = |key: &str, msg: String| ConfigError::new(path, format!("storage.{key}"), msg);
    let url = raw
        .url
        .ok_or_else(|| err("url", "is required in [storage]".into()))?;
    let (bucket, prefix) = parse_url(&url).map_err(|m| err("url", format!("{url:?}: {m}")))?;
    let endpoint = raw.endpoint.map(|e| e.trim_end_matches('/').to_string());
    let insecure = match endpoint.as_deref() {
        None => false,
        Some(e) if e.starts_with("https://") => false,
        Some(e) if e.starts_with("http://") => true,
        Some(e) => {
            return Err(err(
                "endpoint",
                format!("{e:?}: must start with https:// (or http://)"),
            ))
        }
    };
    let part_size = match raw.part_size.as_deref() {
        None => DEFAULT_PART_SIZE,
        Some(s) => parse_size(s)
            .filter(|n| (MIN_PART_SIZE..=MAX_PART_SIZE).contains(n))
            .ok_or_else(|| {
                err(
                    "part_size",
                    format!("{s:?} is not a size between 5MiB and 5GiB (e.g. \"16MiB\")"),
                )
            })?,
    };
    if let Some(f) = &raw.credentials_file {
        if !f.is_absolute() {
            return Err(err(
                "credentials_file",
                format!("{}: must be an absolute path", f.display()),
            ));
        }
    }
    Ok(StorageConfig {
        url,
        bucket,
        prefix,
        endpoint,
        insecure,
        region: raw.region.unwrap_or_else(|| "us-east-1".into()),
        path_style: raw.path_style.unwrap_or(false),
        credentials_file: raw.credentials_file,
        profile: raw.profile.unwrap_or_else(|| "default".into()),
        keep_local: raw.keep_local.unwrap_or(true),
        part_size,
    })
}

/// `s3://bucket/prefix` → (bucket, prefix).
fn parse_url(url: &str) -> Result<(String, String), String> {
    let rest = url
        .strip_prefix("s3://")
        .ok_or("only s3:// URLs are supported")?;
    let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
    let valid = |c: char| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '.';
    if bucket.len() < 3 || bucket.len() > 63 || !bucket.chars().all(valid) {
        return Err(format!("{bucket:?} is not a bucket name"));
    }
    let prefix = prefix.trim_matches('/');
    if prefix
        .split('/')
        .any(|p| p == "." || p == ".." || (p.is_empty() && !prefix.is_empty()))
    {
        return Err(format!("prefix {prefix:?} has an empty, . or .. segment"));
    }
    Ok((bucket.to_string(), prefix.to_string()))
}

/// "16MiB", "8MB", "5242880" → bytes.
fn parse_size(s: &str) -> Option<u64> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (n, unit) = s.split_at(split);
    let mult = match unit.trim() {
        "" | "B" => 1,
        "KiB" => 1 << 10,
        "MiB" => 1 << 20,
        "GiB" => 1 << 30,
        "kB" | "KB" => 1_000,
        "MB" => 1_000_000,
        "GB" => 1_000_000_000,
        _ => return None,
    };
    n.parse::<u64>().ok()?.checked_mul(mult)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_and_sizes() {
        assert_eq!(
            parse_url("s3://backups/db/host1/").unwrap(),
            ("backups".into(), "db/host1".into())
        );
        assert_eq!(
            parse_url("s3://backups").unwrap(),
            ("backups".into(), "".into())
        );
        for bad in [
            "gs://x/y",
            "s3://B/x",
            "s3://ab/x",
            "s3://bucket/a//b",
            "s3://bucket/../x",
        ] {
            assert!(parse_url(bad).is_err(), "{bad}");
        }
        assert_eq!(parse_size("16MiB"), Some(16 << 20));
        assert_eq!(parse_size("5242880"), Some(5242880));
        assert_eq!(parse_size("1 parsec"), None);
    }
}
