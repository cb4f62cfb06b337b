//! How archive data is compressed: the method a configuration names (`gzip`, `gzip:6`,
//! `zstd`, `zstd:3`, `lz4`, `none` — pg_dump's `-Z` spelling), what `pg_dump` is told, and
//! what an archive records. A leaf: the configuration, both engines and the archive format
//! share this one type.

use std::fmt;

/// A compression method and, if given, its level.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    None,
    /// zlib (pg_dump's "gzip"), at level 1–9 or zlib's default. pg_dump's own default.
    Gzip(Option<u32>),
    /// LZ4, at level 1–12 or the default (pg_dump 16 and later).
    Lz4(Option<u32>),
    /// Zstandard, at level 1–22 or the default (pg_dump 16 and later).
    Zstd(Option<i32>),
}

/// Why a compression setting cannot be used.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CompressionError {
    #[error("{0:?} is not a compression method: write gzip, gzip:N (1-9), zstd, zstd:N (1-22), lz4, lz4:N (1-12) or none")]
    Unknown(String),
    #[error("{given:?}: level {level} is not between {min} and {max}")]
    Level {
        given: String,
        level: i64,
        min: i64,
        max: i64,
    },
}

impl Default for Compression {
    /// pg_dump's default: gzip at zlib's default level.
    fn default() -> Self {
        Compression::Gzip(None)
    }
}

impl Compression {
    /// Parses pg_dump's `-Z` spelling: `gzip`, `gzip:6`, `gzip:level=6`, `lz4`, `zstd:3`,
    /// `none`, or a bare level 0–9 (0 none, else gzip at that level).
    pub fn parse(s: &str) -> Result<Compression, CompressionError> {
        let unknown = || CompressionError::Unknown(s.to_string());
        let given = s.trim();
        if let Ok(n) = given.parse::<i64>() {
            return match n {
                0 => Ok(Compression::None),
                1..=9 => Ok(Compression::Gzip(Some(n as u32))),
                _ => Err(CompressionError::Level {
                    given: s.to_string(),
                    level: n,
                    min: 0,
                    max: 9,
                }),
            };
        }
        let (name, level) = match given.split_once(':') {
            Some((name, level)) => {
                let level = level.strip_prefix("level=").unwrap_or(level);
                (name, Some(level.parse::<i64>().map_err(|_| unknown())?))
            }
            None => (given, None),
        };
        let ranged = |min: i64, max: i64| -> Result<Option<i64>, CompressionError> {
            match level {
                Some(l) if !(min..=max).contains(&l) => Err(CompressionError::Level {
                    given: s.to_string(),
                    level: l,
                    min,
                    max,
                }),
                l => Ok(l),
            }
        };
        match name {
            "none" if level.is_none() => Ok(Compression::None),
            "gzip" => Ok(Compression::Gzip(ranged(1, 9)?.map(|l| l as u32))),
            "lz4" => Ok(Compression::Lz4(ranged(1, 12)?.map(|l| l as u32))),
            "zstd" => Ok(Compression::Zstd(ranged(1, 22)?.map(|l| l as i32))),
            _ => Err(unknown()),
        }
    }

    /// Whether a pg_dump older than 16 can write it (zlib only).
    pub fn before_pg16(self) -> bool {
        matches!(self, Compression::None | Compression::Gzip(_))
    }

    /// pg_dump's `--compress` value for a pg_dump of this major version; `None` when pg_dump's
    /// default is meant. Methods other than gzip need pg_dump 16 ([`before_pg16`]).
    pub fn pg_dump_arg(self, pg_dump_major: u32) -> Option<String> {
        match self {
            Compression::Gzip(None) => None,
            Compression::Gzip(Some(l)) if pg_dump_major < 16 => Some(l.to_string()),
            Compression::None if pg_dump_major < 16 => Some("0".into()),
            other => Some(other.to_string()),
        }
    }
}

impl fmt::Display for Compression {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (name, level) = match self {
            Compression::None => return f.write_str("none"),
            Compression::Gzip(l) => ("gzip", l.map(i64::from)),
            Compression::Lz4(l) => ("lz4", l.map(i64::from)),
            Compression::Zstd(l) => ("zstd", l.map(i64::from)),
        };
        match level {
            Some(l) => write!(f, "{name}:{l}"),
            None => f.write_str(name),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pg_dump_spellings_parse_and_print_back() {
        for (text, c) in [
            ("gzip", Compression::Gzip(None)),
            ("gzip:6", Compression::Gzip(Some(6))),
            ("zstd", Compression::Zstd(None)),
            ("zstd:19", Compression::Zstd(Some(19))),
            ("lz4", Compression::Lz4(None)),
            ("lz4:3", Compression::Lz4(Some(3))),
            ("none", Compression::None),
        ] {
            assert_eq!(Compression::parse(text), Ok(c), "{text}");
            assert_eq!(c.to_string(), text);
        }
        assert_eq!(
            Compression::parse("zstd:level=3"),
            Ok(Compression::Zstd(Some(3)))
        );
        assert_eq!(Compression::parse("0"), Ok(Compression::None));
        assert_eq!(Compression::parse("5"), Ok(Compression::Gzip(Some(5))));
    }

    #[test]
    fn bad_settings_say_what_is_allowed() {
        assert!(matches!(
            Compression::parse("brotli"),
            Err(CompressionError::Unknown(_))
        ));
        assert!(matches!(
            Compression::parse("gzip:10"),
            Err(CompressionError::Level { max: 9, .. })
        ));
        assert!(matches!(
            Compression::parse("zstd:0"),
            Err(CompressionError::Level { min: 1, .. })
        ));
        assert!(Compression::parse("none:3").is_err());
        assert!(Compression::parse("12").is_err());
    }

    #[test]
    fn pg_dump_gets_what_its_version_understands() {
        assert_eq!(Compression::Gzip(None).pg_dump_arg(15), None);
        assert_eq!(
            Compression::Gzip(Some(6)).pg_dump_arg(15).as_deref(),
            Some("6")
        );
        assert_eq!(Compression::None.pg_dump_arg(14).as_deref(), Some("0"));
        assert_eq!(
            Compression::Gzip(Some(6)).pg_dump_arg(16).as_deref(),
            Some("gzip:6")
        );
        assert_eq!(Compression::None.pg_dump_arg(17).as_deref(), Some("none"));
        assert_eq!(
            Compression::Zstd(Some(3)).pg_dump_arg(18).as_deref(),
            Some("zstd:3")
        );
        assert!(!Compression::Lz4(None).before_pg16());
    }
}
