//! `[encryption]`: the age recipients (public keys) every file of a run is encrypted to,
//! checked into [`crate::crypt::Recipients`]. Identities (secret keys) never belong here: they
//! are given to `verify`, `restore` and `list` with `--identity`.

use std::path::{Path, PathBuf};

use serde::Deserialize;

use super::ConfigError;
use crate::crypt::Recipients;

/// `[encryption]` as written in the file.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawEncryption {
    recipients: Option<Vec<String>>,
    recipients_file: Option<PathBuf>,
}

/// Checks `[encryption]`: every recipient parses, and there is at least one.
pub(super) fn check(path: &Path, raw: RawEncryption) -> Result<Recipients, ConfigError> {
    let err = |key: String, msg: String| ConfigError::new(path, key, msg);
    let mut keys = Vec::new();
    for (i, r) in raw.recipients.iter().flatten().enumerate() {
        keys.push(
            Recipients::parse_one(r).map_err(|m| err(format!("encryption.recipients[{i}]"), m))?,
        );
    }
    if let Some(file) = &raw.recipients_file {
        let key = "encryption.recipients_file".to_string();
        let text = std::fs::read_to_string(file)
            .map_err(|e| err(key.clone(), format!("cannot read {}: {e}", file.display())))?;
        let from_file = Recipients::parse_file(&text)
            .map_err(|(n, m)| err(key.clone(), format!("{} line {n}: {m}", file.display())))?;
        if from_file.is_empty() {
            return Err(err(key, format!("{} holds no recipient", file.display())));
        }
        keys.extend(from_file);
    }
    Recipients::new(keys).ok_or_else(|| {
        err(
            "encryption.recipients".into(),
            "[encryption] needs at least one recipient (recipients = [\"age1…\"] or recipients_file)"
                .into(),
        )
    })
}
