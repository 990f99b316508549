//! Typed, defaulted access to `config.json`-style files.

use std::path::{Path, PathBuf};

use serde_json::{Map, Value};

use crate::error::CheckpointError;

/// Typed access to one JSON object of a configuration file, with errors naming the file and
/// the key path; absent and `null` fields take the caller's default.
#[derive(Debug, Clone)]
pub struct ConfigFields<'a> {
    map: &'a Map<String, Value>,
    path: &'a Path,
    prefix: String,
}

impl<'a> ConfigFields<'a> {
    /// Typed access to the object `json`; `prefix` (e.g. `"vision_config."`) starts every key in
    /// error messages, `path` names the file.
    pub fn new(json: &'a Value, path: &'a Path, prefix: &str) -> Result<Self, CheckpointError> {
        let map = json.as_object().ok_or_else(|| CheckpointError::Config {
            path: path.to_path_buf(),
            message: format!("{} is not a JSON object", display_prefix(prefix)),
        })?;
        Ok(Self {
            map,
            path,
            prefix: prefix.to_string(),
        })
    }

    /// A configuration error at this object.
    pub fn error(&self, message: String) -> CheckpointError {
        CheckpointError::Config {
            path: PathBuf::from(self.path),
            message,
        }
    }

    /// `key` with this object's prefix.
    pub fn key(&self, key: &str) -> String {
        format!("{}{key}", self.prefix)
    }

    /// The raw value of `key`.
    pub fn get(&self, key: &str) -> Option<&'a Value> {
        self.map.get(key)
    }

    /// The nested object `key` (missing is an error).
    pub fn object(&self, key: &str) -> Result<ConfigFields<'a>, CheckpointError> {
        match self.map.get(key) {
            Some(v) => ConfigFields::new(v, self.path, &format!("{}.", self.key(key))),
            None => Err(self.error(format!("missing {}", self.key(key)))),
        }
    }

    /// `read` applied to `key`, `default` when absent or null; `what` describes the expected
    /// type in errors.
    pub fn typed<T>(
        &self,
        key: &str,
        default: T,
        what: &str,
        read: impl Fn(&Value) -> Option<T>,
    ) -> Result<T, CheckpointError> {
        match self.map.get(key) {
            None | Some(Value::Null) => Ok(default),
            Some(v) => read(v)
                .ok_or_else(|| self.error(format!("{} must be {what}, found {v}", self.key(key)))),
        }
    }

    /// A non-negative integer, `default` when absent or null.
    pub fn usize_or(&self, key: &str, default: usize) -> Result<usize, CheckpointError> {
        self.typed(key, default, "a non-negative integer", |v| {
            v.as_u64().and_then(|n| usize::try_from(n).ok())
        })
    }

    /// A square side: an integer or an `[h, w]` pair with `h == w`.
    pub fn side_or(&self, key: &str, default: usize) -> Result<usize, CheckpointError> {
        self.typed(
            key,
            default,
            "an integer or a square [h, w] pair",
            |v| match v {
                Value::Array(items) => match items.as_slice() {
                    [h, w] if h == w => h.as_u64().and_then(|n| usize::try_from(n).ok()),
                    _ => None,
                },
                _ => v.as_u64().and_then(|n| usize::try_from(n).ok()),
            },
        )
    }

    /// A number, `default` when absent or null.
    pub fn f64_or(&self, key: &str, default: f64) -> Result<f64, CheckpointError> {
        self.typed(key, default, "a number", Value::as_f64)
    }

    /// A number, if present.
    pub fn opt_f64(&self, key: &str) -> Result<Option<f64>, CheckpointError> {
        self.typed(key, None, "a number", |v| v.as_f64().map(Some))
    }

    /// A boolean, `default` when absent or null.
    pub fn bool_or(&self, key: &str, default: bool) -> Result<bool, CheckpointError> {
        self.typed(key, default, "true or false", Value::as_bool)
    }

    /// A string, `default` when absent or null.
    pub fn str_or(&self, key: &str, default: &str) -> Result<String, CheckpointError> {
        self.typed(key, default.to_string(), "a string", |v| {
            v.as_str().map(str::to_string)
        })
    }
}

fn display_prefix(prefix: &str) -> &str {
    if prefix.is_empty() {
        "the file"
    } else {
        prefix.trim_end_matches('.')
    }
}
