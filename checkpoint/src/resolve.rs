//! Finding a model: a local directory, or a hub id (`owner/name[@revision]`) already present in
//! the local Hugging Face cache. Nothing is downloaded.

use std::path::{Path, PathBuf};

use crate::error::CheckpointError;

/// The Hugging Face hub cache directory: `$HF_HUB_CACHE`, else `$HF_HOME/hub`, else
/// `$XDG_CACHE_HOME/huggingface/hub`, else `~/.cache/huggingface/hub`.
pub fn hf_hub_cache_dir() -> Option<PathBuf> {
    let var = |name: &str| std::env::var_os(name).filter(|v| !v.is_empty());
    if let Some(dir) = var("HF_HUB_CACHE") {
        return Some(PathBuf::from(dir));
    }
    if let Some(home) = var("HF_HOME") {
        return Some(PathBuf::from(home).join("hub"));
    }
    if let Some(cache) = var("XDG_CACHE_HOME") {
        return Some(PathBuf::from(cache).join("huggingface").join("hub"));
    }
    var("HOME").map(|home| {
        PathBuf::from(home)
            .join(".cache")
            .join("huggingface")
            .join("hub")
    })
}

/// Resolves `spec` to a model directory: an existing directory is used as is; otherwise `spec`
/// is read as a hub id `owner/name` with an optional `@revision` (branch, tag or commit; default
/// `main`) and looked up in [`hf_hub_cache_dir`].
pub fn resolve_model_dir(spec: &str) -> Result<PathBuf, CheckpointError> {
    resolve_model_dir_in(spec, hf_hub_cache_dir().as_deref())
}

/// [`resolve_model_dir`] with an explicit hub cache directory.
pub fn resolve_model_dir_in(spec: &str, cache: Option<&Path>) -> Result<PathBuf, CheckpointError> {
    let path = Path::new(spec);
    if path.is_dir() {
        return Ok(path.to_path_buf());
    }
    let not_found = |reason: String| CheckpointError::NotFound {
        spec: spec.to_string(),
        reason,
    };
    let (id, revision) = spec.split_once('@').unwrap_or((spec, "main"));
    let valid_part = |p: &str| {
        !p.is_empty()
            && p != "."
            && p != ".."
            && p.chars()
                .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
    };
    let Some((owner, name)) = id.split_once('/') else {
        return Err(not_found("not a directory, nor a hub id owner/name".into()));
    };
    if !valid_part(owner) || !valid_part(name) || !valid_part(revision) {
        return Err(not_found("not a directory, nor a hub id owner/name".into()));
    }
    let cache = cache
        .ok_or_else(|| not_found("no Hugging Face cache directory (set HF_HUB_CACHE)".into()))?;
    let repo = cache.join(format!("models--{owner}--{name}"));
    if !repo.is_dir() {
        return Err(not_found(format!(
            "not a directory, and not in the Hugging Face cache at {}",
            repo.display()
        )));
    }
    // A branch or tag name resolves through refs/; a commit hash names its snapshot directly.
    let commit = match std::fs::read_to_string(repo.join("refs").join(revision)) {
        Ok(commit) => commit.trim().to_string(),
        Err(_) => revision.to_string(),
    };
    let snapshot = repo.join("snapshots").join(&commit);
    if !valid_part(&commit) || !snapshot.is_dir() {
        return Err(not_found(format!(
            "revision {revision:?} has no snapshot in {}",
            repo.display()
        )));
    }
    Ok(snapshot)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn fake_cache() -> tempfile::TempDir {
        let cache = tempfile::tempdir().unwrap();
        let repo = cache.path().join("models--OpenGVLab--InternVL3_5-1B");
        std::fs::create_dir_all(repo.join("refs")).unwrap();
        std::fs::create_dir_all(repo.join("snapshots/abc123")).unwrap();
        std::fs::create_dir_all(repo.join("snapshots/def456")).unwrap();
        std::fs::write(repo.join("refs/main"), "abc123\n").unwrap();
        cache
    }

    #[test]
    fn hub_id_resolves_through_refs() {
        let cache = fake_cache();
        let dir = resolve_model_dir_in("OpenGVLab/InternVL3_5-1B", Some(cache.path())).unwrap();
        assert!(dir.ends_with("snapshots/abc123"));
        let dir =
            resolve_model_dir_in("OpenGVLab/InternVL3_5-1B@def456", Some(cache.path())).unwrap();
        assert!(dir.ends_with("snapshots/def456"));
    }

    #[test]
    fn unknown_ids_and_revisions_are_clear_errors() {
        let cache = fake_cache();
        for spec in [
            "OpenGVLab/Missing",
            "OpenGVLab/InternVL3_5-1B@nope",
            "../etc",
            "OpenGVLab/../x",
            "plainname",
        ] {
            let err = resolve_model_dir_in(spec, Some(cache.path())).unwrap_err();
            assert!(
                matches!(err, CheckpointError::NotFound { .. }),
                "{spec}: {err}"
            );
            assert!(err.to_string().contains(spec), "{err}");
        }
    }

    #[test]
    fn directories_are_used_as_they_are() {
        let cache = fake_cache();
        let path = cache.path().to_str().unwrap();
        assert_eq!(resolve_model_dir_in(path, None).unwrap(), cache.path());
    }
}
