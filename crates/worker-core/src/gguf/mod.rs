//! GGUF v3 reader: memory-mapped, zero-copy tensor views, typed metadata accessors.
//!
//! Hostile input is expected: every count, length, offset and size is checked against the
//! bytes actually present before anything is allocated, so a truncated or forged file gives a
//! [`GgufError`], never a panic, a hang or a huge allocation.

mod parse;
mod value;
pub mod writer;

pub use value::{Value, ValueType};

use crate::quant::{GgmlType, supported_type_list, unsupported_type_name};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// The magic at the start of every GGUF file.
pub const MAGIC: &[u8; 4] = b"GGUF";
/// Data section alignment when `general.alignment` is absent.
pub const DEFAULT_ALIGNMENT: u64 = 32;
/// ggml tensors have at most four dimensions.
pub const MAX_DIMS: usize = 4;

#[derive(Debug, thiserror::Error)]
pub enum GgufError {
    #[error("cannot open {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("not a GGUF file (magic {found:02x?}, expected \"GGUF\")")]
    BadMagic { found: [u8; 4] },
    #[error("unsupported GGUF version {0} (this reader supports version 3)")]
    UnsupportedVersion(u32),
    #[error(
        "file truncated: needed {needed} bytes at offset {offset} for {what}, file is {len} bytes"
    )]
    Truncated {
        what: String,
        offset: u64,
        needed: u64,
        len: u64,
    },
    #[error("{what}: count {count} is impossible for a file of {len} bytes")]
    AbsurdCount { what: String, count: u64, len: u64 },
    #[error("metadata key {key:?}: unknown value type {code}")]
    UnknownValueType { key: String, code: u32 },
    #[error("metadata key {key:?}: arrays nested deeper than {max}")]
    NestingTooDeep { key: String, max: usize },
    #[error("{what}: string is not valid UTF-8")]
    BadUtf8 { what: String },
    #[error("duplicate {what} {name:?}")]
    Duplicate { what: &'static str, name: String },
    #[error("general.alignment {0} is not a power of two between 1 and 2^30")]
    BadAlignment(u64),
    #[error("tensor {name:?}: {n_dims} dimensions (at most {MAX_DIMS} allowed)")]
    TooManyDims { name: String, n_dims: u32 },
    #[error("tensor {name:?}: dimensions {dims:?} are invalid ({why})")]
    BadShape {
        name: String,
        dims: Vec<u64>,
        why: &'static str,
    },
    #[error(
        "tensor {name:?} has type {type_name} (code {code}), which worker-orcd does not support; supported types: {supported}"
    )]
    UnsupportedType {
        name: String,
        code: u32,
        type_name: &'static str,
        supported: String,
    },
    #[error("tensor {name:?}: offset {offset} is not a multiple of the alignment {alignment}")]
    MisalignedTensor {
        name: String,
        offset: u64,
        alignment: u64,
    },
    #[error("tensor {name:?}: bytes {start}..{end} lie past the end of the file ({len} bytes)")]
    TensorOutOfBounds {
        name: String,
        start: u64,
        end: u64,
        len: u64,
    },
    #[error("tensors {a:?} and {b:?} overlap")]
    OverlappingTensors { a: String, b: String },
    #[error("metadata key {key:?} is missing")]
    MissingKey { key: String },
    #[error("metadata key {key:?} has type {found}, expected {expected}")]
    WrongType {
        key: String,
        expected: &'static str,
        found: String,
    },
}

/// Where one tensor's bytes are, and what they hold.
#[derive(Debug, Clone)]
pub struct TensorInfo {
    pub name: String,
    /// ne0 first: ne0 is the contiguous dimension (a matrix's input width).
    pub dims: Vec<u64>,
    pub ty: GgmlType,
    /// Absolute byte offset in the file (already relative-to-data-section resolved).
    pub offset: u64,
    pub size_bytes: u64,
}

impl TensorInfo {
    pub fn n_elements(&self) -> u64 {
        self.dims.iter().product()
    }
    /// ne0: the contiguous dimension.
    pub fn ne0(&self) -> u64 {
        self.dims.first().copied().unwrap_or(1)
    }
    /// Product of all dimensions after the first: the number of rows.
    pub fn n_rows(&self) -> u64 {
        self.dims.iter().skip(1).product()
    }
}

/// The bytes behind a parsed file: a memory map, or an owned buffer (tests, fuzzing).
enum Storage {
    Mmap(memmap2::Mmap),
    Owned(Vec<u8>),
}

impl Storage {
    fn bytes(&self) -> &[u8] {
        match self {
            Storage::Mmap(m) => m,
            Storage::Owned(v) => v,
        }
    }
}

/// A parsed GGUF file. Cheap to clone (shared bytes); tensor data is borrowed, never copied.
#[derive(Clone)]
pub struct GgufFile {
    storage: Arc<Storage>,
    pub version: u32,
    pub alignment: u64,
    /// Absolute offset of the data section.
    pub data_offset: u64,
    /// Metadata in file order.
    metadata: Arc<Vec<(String, Value)>>,
    index: Arc<HashMap<String, usize>>,
    tensors: Arc<Vec<TensorInfo>>,
    tensor_index: Arc<HashMap<String, usize>>,
}

impl std::fmt::Debug for GgufFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GgufFile")
            .field("version", &self.version)
            .field("metadata", &self.metadata.len())
            .field("tensors", &self.tensors.len())
            .finish()
    }
}

impl GgufFile {
    /// Memory-maps and parses a file.
    pub fn open(path: impl AsRef<Path>) -> Result<Self, GgufError> {
        let path = path.as_ref();
        let io = |source| GgufError::Io {
            path: path.to_owned(),
            source,
        };
        let file = std::fs::File::open(path).map_err(io)?;
        // SAFETY: the map is read-only. Another process truncating the file while it is
        // mapped would fault; that is the usual, accepted hazard of mapping model files.
        let mmap = unsafe { memmap2::Mmap::map(&file) }.map_err(io)?;
        Self::from_storage(Storage::Mmap(mmap))
    }

    /// Parses a file held in memory.
    pub fn from_bytes(bytes: Vec<u8>) -> Result<Self, GgufError> {
        Self::from_storage(Storage::Owned(bytes))
    }

    fn from_storage(storage: Storage) -> Result<Self, GgufError> {
        let parsed = parse::parse(storage.bytes())?;
        let index = parsed
            .metadata
            .iter()
            .enumerate()
            .map(|(i, (k, _))| (k.clone(), i))
            .collect();
        let tensor_index = parsed
            .tensors
            .iter()
            .enumerate()
            .map(|(i, t)| (t.name.clone(), i))
            .collect();
        Ok(GgufFile {
            storage: Arc::new(storage),
            version: parsed.version,
            alignment: parsed.alignment,
            data_offset: parsed.data_offset,
            metadata: Arc::new(parsed.metadata),
            index: Arc::new(index),
            tensors: Arc::new(parsed.tensors),
            tensor_index: Arc::new(tensor_index),
        })
    }

    /// The whole file's bytes.
    pub fn bytes(&self) -> &[u8] {
        self.storage.bytes()
    }

    pub fn metadata(&self) -> impl Iterator<Item = (&str, &Value)> {
        self.metadata.iter().map(|(k, v)| (k.as_str(), v))
    }

    pub fn get(&self, key: &str) -> Option<&Value> {
        self.index.get(key).map(|&i| &self.metadata[i].1)
    }

    fn require(&self, key: &str) -> Result<&Value, GgufError> {
        self.get(key).ok_or_else(|| GgufError::MissingKey {
            key: key.to_owned(),
        })
    }

    fn wrong(key: &str, expected: &'static str, v: &Value) -> GgufError {
        GgufError::WrongType {
            key: key.to_owned(),
            expected,
            found: v.type_name().to_owned(),
        }
    }

    /// An unsigned integer of any width.
    pub fn get_u64(&self, key: &str) -> Result<u64, GgufError> {
        let v = self.require(key)?;
        v.as_u64()
            .ok_or_else(|| Self::wrong(key, "unsigned integer", v))
    }

    pub fn get_usize(&self, key: &str) -> Result<usize, GgufError> {
        let v = self.get_u64(key)?;
        usize::try_from(v)
            .map_err(|_| Self::wrong(key, "integer that fits in usize", &Value::U64(v)))
    }

    pub fn get_f32(&self, key: &str) -> Result<f32, GgufError> {
        let v = self.require(key)?;
        v.as_f64()
            .map(|x| x as f32)
            .ok_or_else(|| Self::wrong(key, "number", v))
    }

    pub fn get_bool(&self, key: &str) -> Result<bool, GgufError> {
        let v = self.require(key)?;
        v.as_bool().ok_or_else(|| Self::wrong(key, "bool", v))
    }

    pub fn get_str(&self, key: &str) -> Result<&str, GgufError> {
        let v = self.require(key)?;
        v.as_str().ok_or_else(|| Self::wrong(key, "string", v))
    }

    pub fn get_array(&self, key: &str) -> Result<&[Value], GgufError> {
        let v = self.require(key)?;
        v.as_array().ok_or_else(|| Self::wrong(key, "array", v))
    }

    /// An array of strings.
    pub fn get_str_array(&self, key: &str) -> Result<Vec<&str>, GgufError> {
        self.get_array(key)?
            .iter()
            .map(|v| {
                v.as_str()
                    .ok_or_else(|| Self::wrong(key, "array of strings", v))
            })
            .collect()
    }

    /// An array of integers, as i64.
    pub fn get_int_array(&self, key: &str) -> Result<Vec<i64>, GgufError> {
        self.get_array(key)?
            .iter()
            .map(|v| {
                v.as_i64()
                    .ok_or_else(|| Self::wrong(key, "array of integers", v))
            })
            .collect()
    }

    /// `Ok(None)` when the key is absent, an error when it is present with the wrong type.
    pub fn opt<'a, T>(
        &'a self,
        key: &str,
        get: impl FnOnce(&'a Self, &str) -> Result<T, GgufError>,
    ) -> Result<Option<T>, GgufError> {
        if self.get(key).is_none() {
            Ok(None)
        } else {
            get(self, key).map(Some)
        }
    }

    pub fn tensors(&self) -> &[TensorInfo] {
        &self.tensors
    }

    pub fn tensor(&self, name: &str) -> Option<&TensorInfo> {
        self.tensor_index.get(name).map(|&i| &self.tensors[i])
    }

    /// The bytes of one tensor (bounds were checked at parse time).
    pub fn tensor_data(&self, t: &TensorInfo) -> &[u8] {
        &self.bytes()[t.offset as usize..(t.offset + t.size_bytes) as usize]
    }
}

pub(crate) fn unsupported_type(name: &str, code: u32) -> GgufError {
    GgufError::UnsupportedType {
        name: name.to_owned(),
        code,
        type_name: unsupported_type_name(code),
        supported: supported_type_list(),
    }
}
