//! The header of one safetensors file, read without reading the tensor data.

use std::collections::HashMap;
use std::fs::File;
use std::io::Read;
use std::path::{Path, PathBuf};

use safetensors::tensor::Metadata;

use crate::error::CheckpointError;

/// Largest header accepted (safetensors itself limits headers to 100 MB).
const MAX_HEADER_BYTES: u64 = 100 * 1024 * 1024;

/// Where one tensor lies in one file.
#[derive(Debug, Clone)]
pub(crate) struct Entry {
    pub dtype: safetensors::Dtype,
    pub shape: Vec<usize>,
    /// Absolute byte offset of the data in the file.
    pub offset: u64,
}

/// The tensors of one safetensors file.
#[derive(Debug)]
pub(crate) struct FileHeader {
    pub path: PathBuf,
    pub entries: HashMap<String, Entry>,
}

impl FileHeader {
    /// Reads the header of `path` and checks that every tensor lies inside the file.
    pub fn read(path: &Path) -> Result<Self, CheckpointError> {
        let io = |source| CheckpointError::Io {
            path: path.to_path_buf(),
            source,
        };
        let invalid = |message: String| CheckpointError::InvalidFile {
            path: path.to_path_buf(),
            message,
        };
        let mut file = File::open(path).map_err(io)?;
        let file_len = file.metadata().map_err(io)?.len();
        let mut len_bytes = [0u8; 8];
        file.read_exact(&mut len_bytes)
            .map_err(|_| invalid("shorter than its 8-byte header length".into()))?;
        let header_len = u64::from_le_bytes(len_bytes);
        if header_len > MAX_HEADER_BYTES || 8 + header_len > file_len {
            return Err(invalid(format!(
                "header length {header_len} does not fit the file of {file_len} bytes"
            )));
        }
        let mut buffer = vec![0u8; 8 + header_len as usize];
        buffer[..8].copy_from_slice(&len_bytes);
        file.read_exact(&mut buffer[8..]).map_err(io)?;
        let text =
            std::str::from_utf8(&buffer[8..]).map_err(|_| invalid("header is not UTF-8".into()))?;
        let metadata: Metadata =
            serde_json::from_str(text).map_err(|e| invalid(format!("header: {e}")))?;
        let data_start = 8 + header_len;
        let data_len = file_len - data_start;
        let mut entries = HashMap::new();
        for (name, info) in metadata.tensors() {
            let (begin, end) = info.data_offsets;
            if begin > end || end as u64 > data_len {
                return Err(invalid(format!(
                    "tensor {name:?} lies outside the file (bytes {begin}..{end} of {data_len})"
                )));
            }
            let elements: usize = info.shape.iter().product();
            let expected = elements
                .checked_mul(info.dtype.bitsize())
                .map(|bits| bits / 8);
            if expected != Some(end - begin) {
                return Err(invalid(format!(
                    "tensor {name:?} has {} bytes for shape {:?} of {:?}",
                    end - begin,
                    info.shape,
                    info.dtype
                )));
            }
            entries.insert(
                name,
                Entry {
                    dtype: info.dtype,
                    shape: info.shape.clone(),
                    offset: data_start + begin as u64,
                },
            );
        }
        Ok(Self {
            path: path.to_path_buf(),
            entries,
        })
    }
}
