//! API keys on the public endpoints, and a request rate limit per key.
//!
//! Clients send `Authorization: Bearer <key>` (HTTP, and gRPC metadata `authorization`), or
//! `x-api-key: <key>`. Keys come from `[auth]` in the gateway's configuration: inline
//! (`api_keys`) or one per line of `api_keys_file`, each `KEY` or `NAME KEY`. Only SHA-256
//! digests are kept, a presented key is compared with every one of them in constant time, and
//! logs and metrics name a key by its `NAME` (or `key-N`), never by the key.
//!
//! With `requests_per_minute` set, each key has a token bucket of `burst` requests refilled at
//! that rate; a request beyond it is answered 429 / `RESOURCE_EXHAUSTED` with the time until a
//! token is back.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::GatewayError;
use crate::config::AuthSection;

/// Shortest key accepted: shorter ones are guessable.
pub const MIN_KEY_LEN: usize = 16;

/// Why `[auth]`'s keys cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ApiKeyError {
    /// `api_keys_file` cannot be read.
    #[error("auth.api_keys_file {}: {source}", path.display())]
    ReadFile {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// A key is short enough to guess, or has spaces.
    #[error("{origin}: key {name:?} must be at least {MIN_KEY_LEN} characters with no spaces")]
    Weak {
        /// Where it is written (`auth.api_keys`, or `FILE:LINE`).
        origin: String,
        /// Its name.
        name: String,
    },
    /// Two keys have one name.
    #[error("{origin}: key name {name:?} is used twice")]
    DuplicateName {
        /// Where the second one is written.
        origin: String,
        /// The name.
        name: String,
    },
}

/// One line of key configuration and where it is written.
#[derive(Debug, Clone, PartialEq, Eq)]
struct KeyLine {
    /// `auth.api_keys`, or `FILE:LINE`.
    origin: String,
    /// `KEY` or `NAME KEY` (or a blank or comment line).
    text: String,
}

/// Why a request was turned away.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Rejection {
    Missing,
    Invalid,
    RateLimited,
}

impl Rejection {
    const ALL: [Rejection; 3] = [Self::Missing, Self::Invalid, Self::RateLimited];

    fn label(self) -> &'static str {
        match self {
            Self::Missing => "missing",
            Self::Invalid => "invalid",
            Self::RateLimited => "rate_limited",
        }
    }
}

/// One key: its name and digest, and its bucket.
#[derive(Debug)]
struct Key {
    name: String,
    digest: [u8; 32],
    bucket: Mutex<Bucket>,
}

/// A token bucket.
#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    updated: Instant,
}

/// Requests per key per second, and the bucket size.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Rate {
    per_second: f64,
    burst: f64,
}

/// The keys the gateway accepts.
#[derive(Debug)]
pub struct ApiKeys {
    keys: Vec<Key>,
    rate: Option<Rate>,
    rejections: [AtomicU64; Rejection::ALL.len()],
}

impl ApiKeys {
    /// The keys `[auth]` names (read from `api_keys_file` too); `None` when it names none, which
    /// leaves the endpoints open.
    pub fn load(section: &AuthSection) -> Result<Option<Self>, ApiKeyError> {
        let mut lines: Vec<KeyLine> = section
            .api_keys
            .iter()
            .map(|l| KeyLine {
                origin: "auth.api_keys".to_string(),
                text: l.clone(),
            })
            .collect();
        if let Some(file) = &section.api_keys_file {
            lines.extend(read_key_file(file)?);
        }
        let mut keys = Vec::new();
        for KeyLine { origin, text } in lines {
            let line = text.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let (name, key) = match line.split_once(char::is_whitespace) {
                Some((name, key)) => (name.to_string(), key.trim()),
                None => (format!("key-{}", keys.len() + 1), line),
            };
            if key.len() < MIN_KEY_LEN || key.contains(char::is_whitespace) {
                return Err(ApiKeyError::Weak { origin, name });
            }
            if keys.iter().any(|k: &Key| k.name == name) {
                return Err(ApiKeyError::DuplicateName { origin, name });
            }
            keys.push(Key {
                name,
                digest: Sha256::digest(key.as_bytes()).into(),
                bucket: Mutex::new(Bucket {
                    tokens: f64::from(section.burst.max(1)),
                    updated: Instant::now(),
                }),
            });
        }
        if keys.is_empty() {
            return Ok(None);
        }
        let rate = (section.requests_per_minute > 0).then(|| Rate {
            per_second: f64::from(section.requests_per_minute) / 60.0,
            burst: f64::from(section.burst.max(1)),
        });
        Ok(Some(Self {
            keys,
            rate,
            rejections: Default::default(),
        }))
    }

    /// Keys loaded.
    pub fn len(&self) -> usize {
        self.keys.len()
    }

    /// Whether no key is loaded (never true for a loaded set).
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// Checks the key a request presented and takes one request from its bucket; the key's
    /// name.
    pub fn authorize(&self, presented: Option<&str>) -> Result<&str, GatewayError> {
        let Some(presented) = presented.filter(|k| !k.is_empty()) else {
            self.reject(Rejection::Missing);
            return Err(GatewayError::Unauthenticated(
                "an API key is required: send `Authorization: Bearer <key>`".into(),
            ));
        };
        let digest: [u8; 32] = Sha256::digest(presented.as_bytes()).into();
        // Every key is compared, match or not, so the time does not tell which one matched.
        let mut found = None;
        for (i, key) in self.keys.iter().enumerate() {
            if bool::from(key.digest.ct_eq(&digest)) {
                found = Some(i);
            }
        }
        let Some(key) = found.map(|i| &self.keys[i]) else {
            self.reject(Rejection::Invalid);
            return Err(GatewayError::Unauthenticated(
                "the API key is not valid".into(),
            ));
        };
        if let Some(rate) = self.rate {
            let mut bucket = key.bucket.lock().unwrap_or_else(PoisonError::into_inner);
            if let Err(wait) = take(&mut bucket, rate, Instant::now()) {
                drop(bucket);
                self.reject(Rejection::RateLimited);
                tracing::debug!(key = %key.name, "rate limit reached");
                return Err(GatewayError::Overloaded {
                    message: format!(
                        "key {:?} is over its limit of {} requests per minute",
                        key.name,
                        (rate.per_second * 60.0).round()
                    ),
                    retry_after: wait,
                });
            }
        }
        Ok(&key.name)
    }

    fn reject(&self, why: Rejection) {
        self.rejections[why as usize].fetch_add(1, Ordering::Relaxed);
    }

    /// `dvd_gateway_auth_rejections_total{reason=...}`, Prometheus text.
    pub fn render(&self, out: &mut String) {
        let name = "dvd_gateway_auth_rejections_total";
        let _ = writeln!(
            out,
            "# HELP {name} Requests turned away by API key checks.\n# TYPE {name} counter"
        );
        for why in Rejection::ALL {
            let n = self.rejections[why as usize].load(Ordering::Relaxed);
            let _ = writeln!(out, "{name}{{reason=\"{}\"}} {n}", why.label());
        }
    }
}

/// Takes a token at `now`, or says how long until one is back.
fn take(bucket: &mut Bucket, rate: Rate, now: Instant) -> Result<(), Duration> {
    let elapsed = now.saturating_duration_since(bucket.updated).as_secs_f64();
    bucket.tokens = (bucket.tokens + elapsed * rate.per_second).min(rate.burst);
    bucket.updated = now;
    if bucket.tokens >= 1.0 {
        bucket.tokens -= 1.0;
        Ok(())
    } else {
        Err(Duration::from_secs_f64(
            (1.0 - bucket.tokens) / rate.per_second,
        ))
    }
}

fn read_key_file(file: &Path) -> Result<Vec<KeyLine>, ApiKeyError> {
    let text = std::fs::read_to_string(file).map_err(|source| ApiKeyError::ReadFile {
        path: file.to_owned(),
        source,
    })?;
    Ok(text
        .lines()
        .enumerate()
        .map(|(i, l)| KeyLine {
            origin: format!("{}:{}", file.display(), i + 1),
            text: l.to_string(),
        })
        .collect())
}

/// The key in an `Authorization: Bearer <key>` value (scheme case-insensitive).
pub fn bearer(value: &str) -> Option<&str> {
    let (scheme, key) = value.trim().split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| key.trim())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn section(keys: &[&str], per_minute: u32, burst: u32) -> AuthSection {
        AuthSection {
            api_keys: keys.iter().map(|k| k.to_string()).collect(),
            api_keys_file: None,
            requests_per_minute: per_minute,
            burst,
        }
    }

    #[test]
    fn only_listed_keys_pass_and_are_named() {
        let keys = ApiKeys::load(&section(
            &[
                "alice 0123456789abcdef-alice",
                "0123456789abcdef-anon",
                "# a comment",
            ],
            0,
            1,
        ))
        .unwrap()
        .unwrap();
        assert_eq!(keys.len(), 2);
        assert_eq!(
            keys.authorize(Some("0123456789abcdef-alice")).unwrap(),
            "alice"
        );
        assert_eq!(
            keys.authorize(Some("0123456789abcdef-anon")).unwrap(),
            "key-2"
        );
        for bad in [
            None,
            Some(""),
            Some("0123456789abcdef-alicE"),
            Some("alice"),
        ] {
            let e = keys.authorize(bad).unwrap_err();
            assert_eq!(e.http_status(), 401, "{bad:?}");
        }
        let mut text = String::new();
        keys.render(&mut text);
        assert!(text.contains("dvd_gateway_auth_rejections_total{reason=\"missing\"} 2"));
        assert!(text.contains("dvd_gateway_auth_rejections_total{reason=\"invalid\"} 2"));
        assert!(
            !text.contains("0123456789abcdef"),
            "a key leaked into metrics"
        );
    }

    #[test]
    fn weak_or_duplicate_keys_and_empty_sets() {
        assert!(ApiKeys::load(&section(&["short"], 0, 1)).is_err());
        assert!(
            ApiKeys::load(&section(
                &["a 0123456789abcdef", "a 0123456789abcdeg"],
                0,
                1
            ))
            .is_err()
        );
        assert!(ApiKeys::load(&section(&[], 0, 1)).unwrap().is_none());
    }

    #[test]
    fn the_bucket_refills_at_the_rate() {
        let rate = Rate {
            per_second: 2.0,
            burst: 3.0,
        };
        let t0 = Instant::now();
        let mut b = Bucket {
            tokens: 3.0,
            updated: t0,
        };
        for _ in 0..3 {
            assert!(take(&mut b, rate, t0).is_ok());
        }
        let wait = take(&mut b, rate, t0).unwrap_err();
        assert_eq!(wait, Duration::from_millis(500));
        assert!(take(&mut b, rate, t0 + Duration::from_millis(500)).is_ok());
        // Never more than the burst, however long it rested.
        let later = t0 + Duration::from_secs(3600);
        for _ in 0..3 {
            assert!(take(&mut b, rate, later).is_ok());
        }
        assert!(take(&mut b, rate, later).is_err());
    }

    #[test]
    fn rate_limited_keys_get_429_with_a_wait() {
        let keys = ApiKeys::load(&section(&["0123456789abcdef"], 60, 2))
            .unwrap()
            .unwrap();
        assert!(keys.authorize(Some("0123456789abcdef")).is_ok());
        assert!(keys.authorize(Some("0123456789abcdef")).is_ok());
        match keys.authorize(Some("0123456789abcdef")) {
            Err(GatewayError::Overloaded { retry_after, .. }) => {
                assert!(retry_after <= Duration::from_secs(1), "{retry_after:?}")
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn bearer_values() {
        assert_eq!(bearer("Bearer abc"), Some("abc"));
        assert_eq!(bearer("bearer  abc "), Some("abc"));
        assert_eq!(bearer("Basic abc"), None);
        assert_eq!(bearer("abc"), None);
    }
}
