//! The embedded demo model (`models/dvd-demo`, trained by `tools/demo/train.py`): what `dvd up`,
//! `dvd generate` and `dvd demo eval` use when no `--model` is given. Its files are compiled
//! into the binary and written once to a cache directory, from which it loads like any other
//! checkpoint.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

/// The checkpoint's files, as committed: every file transformers' `AutoProcessor` and
/// `InternVLForConditionalGeneration` read, so the cached directory loads there too.
const FILES: [(&str, &[u8]); 9] = [
    (
        "config.json",
        include_bytes!("../../../models/dvd-demo/config.json"),
    ),
    (
        "generation_config.json",
        include_bytes!("../../../models/dvd-demo/generation_config.json"),
    ),
    (
        "preprocessor_config.json",
        include_bytes!("../../../models/dvd-demo/preprocessor_config.json"),
    ),
    (
        "processor_config.json",
        include_bytes!("../../../models/dvd-demo/processor_config.json"),
    ),
    (
        "chat_template.jinja",
        include_bytes!("../../../models/dvd-demo/chat_template.jinja"),
    ),
    (
        "tokenizer.json",
        include_bytes!("../../../models/dvd-demo/tokenizer.json"),
    ),
    (
        "tokenizer_config.json",
        include_bytes!("../../../models/dvd-demo/tokenizer_config.json"),
    ),
    (
        "model.safetensors",
        include_bytes!("../../../models/dvd-demo/model.safetensors"),
    ),
    (
        "README.md",
        include_bytes!("../../../models/dvd-demo/README.md"),
    ),
];

/// The name the model is served under.
pub const NAME: &str = "dvd-demo";

/// The demo model's directory, written under the cache directory on first use:
/// `$DVD_CACHE_DIR`, else `$XDG_CACHE_HOME/dvd`, else `~/.cache/dvd`, else the temp directory.
pub fn path() -> Result<PathBuf> {
    install(&cache_root())
}

/// A server's `--model` argument with the demo model's name (`dvd-demo`, when no such directory
/// exists here) replaced by its directory; anything else unchanged.
pub fn resolve_name(model: &str) -> Result<String> {
    if model == NAME && !Path::new(model).exists() {
        return Ok(path()?.display().to_string());
    }
    Ok(model.to_string())
}

/// `model` resolved (a directory, or a hub id in the local Hugging Face cache), or the demo
/// model when it is `None`.
pub fn or_default(model: Option<&str>) -> Result<PathBuf> {
    match model {
        Some(model) => Ok(dvd_checkpoint::resolve_model_dir(model)?),
        None => path(),
    }
}

/// Writes the model under `root` unless it is already there; returns its directory.
fn install(root: &Path) -> Result<PathBuf> {
    let dir = root
        .join("models")
        .join(format!("{:016x}", fingerprint()))
        .join(NAME);
    if complete(&dir) {
        return Ok(dir);
    }
    let parent = dir.parent().context("cache directory")?;
    std::fs::create_dir_all(parent)
        .with_context(|| format!("creating the model cache {}", parent.display()))?;
    // Write beside, then rename: a concurrent `dvd` never sees half a checkpoint.
    let staging = parent.join(format!("{NAME}.tmp-{}", std::process::id()));
    std::fs::create_dir_all(&staging)?;
    for (name, bytes) in FILES {
        std::fs::write(staging.join(name), bytes)
            .with_context(|| format!("writing {}", staging.join(name).display()))?;
    }
    if complete(&dir) {
        std::fs::remove_dir_all(&staging)?;
    } else {
        if dir.exists() {
            std::fs::remove_dir_all(&dir)?;
        }
        if let Err(e) = std::fs::rename(&staging, &dir) {
            // Another process may have won the race; theirs is as good as ours.
            std::fs::remove_dir_all(&staging)?;
            if !complete(&dir) {
                return Err(e).with_context(|| format!("installing {}", dir.display()));
            }
        }
    }
    Ok(dir)
}

/// Whether `dir` holds every file with its embedded size.
fn complete(dir: &Path) -> bool {
    FILES.iter().all(|(name, bytes)| {
        std::fs::metadata(dir.join(name)).is_ok_and(|m| m.len() == bytes.len() as u64)
    })
}

fn cache_root() -> PathBuf {
    let var = |name| {
        std::env::var_os(name)
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
    };
    var("DVD_CACHE_DIR")
        .or_else(|| var("XDG_CACHE_HOME").map(|d| d.join("dvd")))
        .or_else(|| var("HOME").map(|d| d.join(".cache/dvd")))
        .unwrap_or_else(|| std::env::temp_dir().join("dvd"))
}

/// FNV-1a over every file: a new model gets a new directory.
fn fingerprint() -> u64 {
    let mut hash = 0xcbf2_9ce4_8422_2325_u64;
    for (name, bytes) in FILES {
        for &b in name.as_bytes().iter().chain(bytes) {
            hash = (hash ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
        }
    }
    hash
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_model_is_written_once_and_found_again() {
        let cache = tempfile::tempdir().unwrap();
        let dir = install(cache.path()).unwrap();
        assert!(dir.ends_with(NAME) && complete(&dir));
        let config = std::fs::read_to_string(dir.join("config.json")).unwrap();
        assert!(config.contains("InternVLForConditionalGeneration"));
        // A truncated file is rewritten.
        std::fs::write(dir.join("model.safetensors"), b"x").unwrap();
        assert_eq!(install(cache.path()).unwrap(), dir);
        assert!(complete(&dir));
    }

    /// What transformers' InternVLProcessor reads agrees with the model (tools/demo/check_hf.py
    /// checks it with transformers itself).
    #[test]
    fn the_processor_files_match_the_model() {
        let cache = tempfile::tempdir().unwrap();
        let dir = install(cache.path()).unwrap();
        let json = |name: &str| -> serde_json::Value {
            serde_json::from_slice(&std::fs::read(dir.join(name)).unwrap()).unwrap()
        };
        let config = json("config.json");
        let processor = json("processor_config.json");
        assert_eq!(processor["processor_class"], "InternVLProcessor");
        assert_eq!(processor["image_seq_length"], config["image_seq_length"]);
        let tokenizer = dvd_language_server::text::Tokenizer::from_dir(&dir).unwrap();
        let vocab = config["text_config"]["vocab_size"].as_u64().unwrap();
        assert_eq!(tokenizer.vocab_size() as u64, vocab);
        let names = json("tokenizer_config.json")["extra_special_tokens"].clone();
        let id = |name: &str| {
            tokenizer
                .require_token_id(names[name].as_str().unwrap())
                .unwrap()
        };
        for name in ["start_image_token", "end_image_token", "video_token"] {
            assert!(
                u64::from(id(name)) < vocab && tokenizer.is_special(id(name)),
                "{name}"
            );
        }
        assert_eq!(
            u64::from(id("context_image_token")),
            config["image_token_id"].as_u64().unwrap()
        );
    }
}
