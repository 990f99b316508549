//! A checkpoint: the tensors of one or more safetensors files, read on demand.

use std::collections::HashMap;
use std::fs::File;
use std::ops::Range;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};

use crate::error::CheckpointError;
use crate::header::{Entry, FileHeader};
use crate::read_json;

/// Name of the shard index written by `save_pretrained` for sharded checkpoints.
pub const INDEX_FILE: &str = "model.safetensors.index.json";
/// Name of a single-file checkpoint.
pub const SINGLE_FILE: &str = "model.safetensors";

/// Dtype and shape of a stored tensor.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TensorInfo {
    /// The stored dtype, as safetensors names it (`F32`, `BF16`...).
    pub dtype: String,
    /// The stored shape.
    pub shape: Vec<usize>,
}

/// The tensors of a model directory. Opening reads only the headers.
#[derive(Debug)]
pub struct Checkpoint {
    dir: PathBuf,
    files: Vec<FileHeader>,
    /// Tensor name -> index into `files`.
    locations: HashMap<String, usize>,
}

impl Checkpoint {
    /// Opens the checkpoint in `dir`: the shards named by `model.safetensors.index.json` when it
    /// exists, else `model.safetensors`, else every `*.safetensors` file in the directory.
    pub fn open(dir: &Path) -> Result<Self, CheckpointError> {
        let paths = shard_paths(dir)?;
        let mut files = Vec::with_capacity(paths.len());
        let mut locations = HashMap::new();
        for (index, path) in paths.iter().enumerate() {
            let header = FileHeader::read(path)?;
            for name in header.entries.keys() {
                if locations.insert(name.clone(), index).is_some() {
                    return Err(CheckpointError::InvalidFile {
                        path: path.clone(),
                        message: format!("tensor {name:?} is stored in more than one file"),
                    });
                }
            }
            files.push(header);
        }
        Ok(Self {
            dir: dir.to_path_buf(),
            files,
            locations,
        })
    }

    /// Opens one safetensors file on its own (a reference output, a single shard).
    pub fn open_file(path: &Path) -> Result<Self, CheckpointError> {
        let header = FileHeader::read(path)?;
        let locations = header.entries.keys().map(|n| (n.clone(), 0)).collect();
        Ok(Self {
            dir: path.parent().unwrap_or(Path::new(".")).to_path_buf(),
            files: vec![header],
            locations,
        })
    }

    /// The directory the checkpoint was opened from.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Whether the checkpoint stores `name`.
    pub fn contains(&self, name: &str) -> bool {
        self.locations.contains_key(name)
    }

    /// Every stored tensor name, in no particular order.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.locations.keys().map(String::as_str)
    }

    /// Dtype and shape of `name`, if stored.
    pub fn info(&self, name: &str) -> Option<TensorInfo> {
        self.entry(name).map(|(_, entry)| TensorInfo {
            dtype: format!("{:?}", entry.dtype),
            shape: entry.shape.clone(),
        })
    }

    fn entry(&self, name: &str) -> Option<(&FileHeader, &Entry)> {
        let file = &self.files[*self.locations.get(name)?];
        Some((file, file.entries.get(name)?))
    }

    /// Reads `name`, converts it to `dtype` and places it on `device`.
    pub fn load(
        &self,
        name: &str,
        dtype: DType,
        device: &Device,
    ) -> Result<Tensor, CheckpointError> {
        let (_, entry) = self
            .entry(name)
            .ok_or_else(|| CheckpointError::MissingTensor {
                name: name.to_string(),
            })?;
        let whole: Vec<Range<usize>> = entry.shape.iter().map(|&d| 0..d).collect();
        self.load_block(name, &entry.shape, &whole, dtype, device)
    }

    /// The block `ranges` (one range per dimension) of `name`, which must have shape `shape`,
    /// converted to `dtype` on `device`. Only the block's bytes are read from the file (one read
    /// per contiguous run), so a rank of a sharded model never holds the whole tensor.
    pub fn load_block(
        &self,
        name: &str,
        shape: &[usize],
        ranges: &[Range<usize>],
        dtype: DType,
        device: &Device,
    ) -> Result<Tensor, CheckpointError> {
        self.check_shape(name, shape)?;
        let (file, entry) = self
            .entry(name)
            .ok_or_else(|| CheckpointError::MissingTensor {
                name: name.to_string(),
            })?;
        let stored =
            candle_dtype(entry.dtype).ok_or_else(|| CheckpointError::UnsupportedDtype {
                name: name.to_string(),
                dtype: format!("{:?}", entry.dtype),
            })?;
        let bad_block = ranges.len() != shape.len()
            || ranges
                .iter()
                .zip(shape)
                .any(|(r, &dim)| r.start > r.end || r.end > dim);
        if bad_block {
            return Err(CheckpointError::BadBlock {
                name: name.to_string(),
                shape: shape.to_vec(),
                block: ranges.iter().map(|r| (r.start, r.end)).collect(),
            });
        }
        let bytes = read_block(
            &file.path,
            entry.offset,
            shape,
            ranges,
            stored.size_in_bytes(),
        )?;
        let block_shape: Vec<usize> = ranges.iter().map(|r| r.len()).collect();
        Tensor::from_raw_buffer(&bytes, stored, &block_shape, &Device::Cpu)
            .and_then(|t| t.to_dtype(dtype))
            .and_then(|t| t.to_device(device))
            .map_err(|source| CheckpointError::Tensor {
                name: name.to_string(),
                source,
            })
    }

    /// Like [`Checkpoint::load`], and fails with [`CheckpointError::ShapeMismatch`] unless the
    /// stored shape is `shape`.
    pub fn load_shaped(
        &self,
        name: &str,
        shape: &[usize],
        dtype: DType,
        device: &Device,
    ) -> Result<Tensor, CheckpointError> {
        self.check_shape(name, shape)?;
        self.load(name, dtype, device)
    }

    /// Fails unless `name` is stored with shape `shape`.
    pub fn check_shape(&self, name: &str, shape: &[usize]) -> Result<(), CheckpointError> {
        let (_, entry) = self
            .entry(name)
            .ok_or_else(|| CheckpointError::MissingTensor {
                name: name.to_string(),
            })?;
        if entry.shape != shape {
            return Err(CheckpointError::ShapeMismatch {
                name: name.to_string(),
                expected: shape.to_vec(),
                found: entry.shape.clone(),
            });
        }
        Ok(())
    }
}

/// The safetensors files that make up the checkpoint in `dir`.
fn shard_paths(dir: &Path) -> Result<Vec<PathBuf>, CheckpointError> {
    let index = dir.join(INDEX_FILE);
    if index.is_file() {
        let json = read_json(&index)?;
        let map = json
            .get("weight_map")
            .and_then(|m| m.as_object())
            .ok_or_else(|| CheckpointError::Json {
                path: index.clone(),
                message: "no \"weight_map\" object".into(),
            })?;
        let mut shards: Vec<String> = Vec::new();
        for (name, file) in map {
            let file = file.as_str().ok_or_else(|| CheckpointError::Json {
                path: index.clone(),
                message: format!("weight_map entry {name:?} is not a file name"),
            })?;
            if file.contains('/') || file.contains('\\') || file.starts_with('.') {
                return Err(CheckpointError::Json {
                    path: index.clone(),
                    message: format!("weight_map names a file outside the directory: {file:?}"),
                });
            }
            if !shards.iter().any(|s| s == file) {
                shards.push(file.to_string());
            }
        }
        shards.sort();
        return Ok(shards.into_iter().map(|s| dir.join(s)).collect());
    }
    let single = dir.join(SINGLE_FILE);
    if single.is_file() {
        return Ok(vec![single]);
    }
    let entries = std::fs::read_dir(dir).map_err(|source| CheckpointError::Io {
        path: dir.to_path_buf(),
        source,
    })?;
    let mut paths: Vec<PathBuf> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "safetensors"))
        .collect();
    paths.sort();
    if paths.is_empty() {
        return Err(CheckpointError::NotFound {
            spec: dir.display().to_string(),
            reason: format!("no {INDEX_FILE}, {SINGLE_FILE} or other *.safetensors file"),
        });
    }
    Ok(paths)
}

/// The bytes of block `ranges` of a row-major tensor of `shape` stored at `offset`, elements of
/// `element` bytes: the dimensions after the last partial one are whole, so each block row is one
/// contiguous run.
fn read_block(
    path: &Path,
    offset: u64,
    shape: &[usize],
    ranges: &[Range<usize>],
    element: usize,
) -> Result<Vec<u8>, CheckpointError> {
    let io = |source| CheckpointError::Io {
        path: path.to_path_buf(),
        source,
    };
    // Dimensions `split..` form one run; the outer ones are walked.
    let split = (0..shape.len())
        .rev()
        .find(|&d| ranges[d].len() != shape[d])
        .unwrap_or(0);
    let inner: usize = shape.get(split + 1..).map_or(1, |s| s.iter().product());
    let run = ranges.get(split).map_or(1, |r| r.len()) * inner * element;
    let runs: usize = ranges[..split].iter().map(|r| r.len()).product();
    let mut bytes = vec![0u8; run * runs];
    if bytes.is_empty() {
        return Ok(bytes);
    }
    let file = File::open(path).map_err(io)?;
    let strides: Vec<usize> = (0..shape.len())
        .map(|d| shape[d + 1..].iter().product())
        .collect();
    let mut index: Vec<usize> = ranges[..split].iter().map(|r| r.start).collect();
    for chunk in bytes.chunks_mut(run) {
        let start: usize = index
            .iter()
            .zip(&strides)
            .map(|(i, s)| i * s)
            .sum::<usize>()
            + ranges.get(split).map_or(0, |r| r.start) * strides.get(split).copied().unwrap_or(1);
        file.read_exact_at(chunk, offset + (start * element) as u64)
            .map_err(io)?;
        // The next index of the outer dimensions, last one fastest.
        for d in (0..split).rev() {
            index[d] += 1;
            if index[d] < ranges[d].end {
                break;
            }
            index[d] = ranges[d].start;
        }
    }
    Ok(bytes)
}

fn candle_dtype(dtype: safetensors::Dtype) -> Option<DType> {
    use safetensors::Dtype as S;
    Some(match dtype {
        S::F32 => DType::F32,
        S::F16 => DType::F16,
        S::BF16 => DType::BF16,
        S::F64 => DType::F64,
        S::I64 => DType::I64,
        S::U32 => DType::U32,
        S::U8 => DType::U8,
        _ => return None,
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn blocks_read_only_their_elements_and_match_the_whole_tensor() {
        let dir = tempfile::tempdir().unwrap();
        let values: Vec<f32> = (0..3 * 4 * 5).map(|v| v as f32).collect();
        let bytes: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
        let view =
            safetensors::tensor::TensorView::new(safetensors::Dtype::F32, vec![3, 4, 5], &bytes)
                .unwrap();
        safetensors::serialize_to_file([("t", view)], None, &dir.path().join(SINGLE_FILE)).unwrap();
        let checkpoint = Checkpoint::open(dir.path()).unwrap();
        let whole = checkpoint.load("t", DType::F32, &Device::Cpu).unwrap();
        let blocks: [[Range<usize>; 3]; 5] = [
            [0..3, 0..4, 0..5],
            [1..3, 0..4, 0..5],
            [0..3, 1..3, 0..5],
            [0..3, 0..4, 2..4],
            [2..3, 1..4, 0..0],
        ];
        for block in blocks {
            let got = checkpoint
                .load_block("t", &[3, 4, 5], &block, DType::F32, &Device::Cpu)
                .unwrap();
            let mut want = whole.clone();
            for (d, r) in block.iter().enumerate() {
                want = want.narrow(d, r.start, r.len()).unwrap();
            }
            assert_eq!(got.dims(), want.dims());
            assert_eq!(
                got.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
                want.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
                "block {block:?}"
            );
        }
        let outside = [0..3, 0..5, 0..5];
        assert!(matches!(
            checkpoint.load_block("t", &[3, 4, 5], &outside, DType::F32, &Device::Cpu),
            Err(CheckpointError::BadBlock { .. })
        ));
    }
}
