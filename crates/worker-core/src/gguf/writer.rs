//! GGUF v3 writer: metadata and tensors in, a file the reader (and llama.cpp) accepts out.
//!
//! Used by tests (round trips, hostile inputs made by corrupting a valid file) and to build
//! synthetic models. Layout: header, metadata, tensor infos, zero padding up to
//! `general.alignment` (default 32), then each tensor's bytes padded to the alignment, so every
//! tensor offset (relative to the data section) is a multiple of the alignment.

use super::{DEFAULT_ALIGNMENT, MAGIC, MAX_DIMS, Value, ValueType};
use crate::quant::GgmlType;
use std::collections::HashSet;
use std::io::Write;

#[derive(Debug, thiserror::Error)]
pub enum GgufWriteError {
    #[error("write failed: {0}")]
    Io(#[from] std::io::Error),
    #[error("duplicate tensor name {0:?}")]
    DuplicateTensor(String),
    #[error("tensor {name:?}: dimensions {dims:?} are invalid ({why})")]
    BadShape {
        name: String,
        dims: Vec<u64>,
        why: &'static str,
    },
    #[error("tensor {name:?}: {ty} data of shape {dims:?} takes {expected} bytes, got {got}")]
    SizeMismatch {
        name: String,
        ty: GgmlType,
        dims: Vec<u64>,
        expected: u64,
        got: usize,
    },
    #[error("metadata key {key:?}: array elements have different types ({first} and {other})")]
    MixedArray {
        key: String,
        first: &'static str,
        other: &'static str,
    },
    #[error("general.alignment must be an integer power of two between 1 and 2^30, got {0}")]
    BadAlignment(String),
}

struct PendingTensor {
    name: String,
    dims: Vec<u64>,
    ty: GgmlType,
    bytes: Vec<u8>,
}

/// Builds a GGUF v3 file in memory, then writes it in one pass.
#[derive(Default)]
pub struct GgufWriter {
    metadata: Vec<(String, Value)>,
    tensors: Vec<PendingTensor>,
    names: HashSet<String>,
}

impl std::fmt::Debug for GgufWriter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GgufWriter")
            .field("metadata", &self.metadata.len())
            .field("tensors", &self.tensors.len())
            .finish()
    }
}

impl GgufWriter {
    pub fn new() -> Self {
        Self::default()
    }

    /// Sets a metadata value. Keys keep their first-insertion order; setting a key again
    /// replaces its value (GGUF forbids duplicate keys, so the writer never emits one).
    pub fn add_metadata(&mut self, key: impl Into<String>, value: Value) -> &mut Self {
        let key = key.into();
        match self.metadata.iter_mut().find(|(k, _)| *k == key) {
            Some((_, v)) => *v = value,
            None => self.metadata.push((key, value)),
        }
        self
    }

    /// Adds a tensor; `dims` is ne0 first (ne0 = the contiguous dimension) and `bytes` must be
    /// exactly the tensor's size for `ty`.
    pub fn add_tensor(
        &mut self,
        name: impl Into<String>,
        dims: &[u64],
        ty: GgmlType,
        bytes: Vec<u8>,
    ) -> Result<&mut Self, GgufWriteError> {
        let name = name.into();
        let bad = |why| GgufWriteError::BadShape {
            name: name.clone(),
            dims: dims.to_vec(),
            why,
        };
        if dims.is_empty() || dims.len() > MAX_DIMS {
            return Err(bad("a tensor has 1 to 4 dimensions"));
        }
        if dims.contains(&0) {
            return Err(bad("a dimension is zero"));
        }
        if !dims[0].is_multiple_of(ty.block_elements() as u64) {
            return Err(bad(
                "the first dimension is not a whole number of quant blocks",
            ));
        }
        let n = dims
            .iter()
            .try_fold(1u64, |acc, &d| acc.checked_mul(d))
            .ok_or_else(|| bad("element count overflows"))?;
        let expected = ty.bytes_for(n).ok_or_else(|| bad("byte size overflows"))?;
        if expected != bytes.len() as u64 {
            return Err(GgufWriteError::SizeMismatch {
                name,
                ty,
                dims: dims.to_vec(),
                expected,
                got: bytes.len(),
            });
        }
        if !self.names.insert(name.clone()) {
            return Err(GgufWriteError::DuplicateTensor(name));
        }
        self.tensors.push(PendingTensor {
            name,
            dims: dims.to_vec(),
            ty,
            bytes,
        });
        Ok(self)
    }

    /// The data alignment: `general.alignment` if set, else 32.
    pub fn alignment(&self) -> Result<u64, GgufWriteError> {
        match self.metadata.iter().find(|(k, _)| k == "general.alignment") {
            None => Ok(DEFAULT_ALIGNMENT),
            Some((_, v)) => match v.as_u64() {
                Some(a) if a.is_power_of_two() && a <= 1 << 30 => Ok(a),
                _ => Err(GgufWriteError::BadAlignment(v.to_string())),
            },
        }
    }

    /// Everything before the data section (header, metadata, tensor infos, padding).
    fn header(&self, alignment: u64) -> Result<Vec<u8>, GgufWriteError> {
        let mut h = Vec::new();
        h.extend_from_slice(MAGIC);
        h.extend_from_slice(&3u32.to_le_bytes());
        h.extend_from_slice(&(self.tensors.len() as u64).to_le_bytes());
        h.extend_from_slice(&(self.metadata.len() as u64).to_le_bytes());
        for (key, value) in &self.metadata {
            put_str(&mut h, key);
            h.extend_from_slice(&(value_type(value) as u32).to_le_bytes());
            put_value(&mut h, key, value)?;
        }
        let mut offset = 0u64;
        for t in &self.tensors {
            put_str(&mut h, &t.name);
            h.extend_from_slice(&(t.dims.len() as u32).to_le_bytes());
            for d in &t.dims {
                h.extend_from_slice(&d.to_le_bytes());
            }
            h.extend_from_slice(&t.ty.code().to_le_bytes());
            h.extend_from_slice(&offset.to_le_bytes());
            offset = (offset + t.bytes.len() as u64).next_multiple_of(alignment);
        }
        h.resize((h.len() as u64).next_multiple_of(alignment) as usize, 0);
        Ok(h)
    }

    /// Writes the file; returns the number of bytes written.
    pub fn write_to(&self, mut w: impl Write) -> Result<u64, GgufWriteError> {
        let alignment = self.alignment()?;
        let header = self.header(alignment)?;
        w.write_all(&header)?;
        let mut written = header.len() as u64;
        let zeros = vec![0u8; alignment as usize];
        for t in &self.tensors {
            w.write_all(&t.bytes)?;
            let len = t.bytes.len() as u64;
            let pad = len.next_multiple_of(alignment) - len;
            w.write_all(&zeros[..pad as usize])?;
            written += len + pad;
        }
        w.flush()?;
        Ok(written)
    }

    /// The whole file in memory.
    pub fn to_bytes(&self) -> Result<Vec<u8>, GgufWriteError> {
        let mut out = Vec::new();
        self.write_to(&mut out)?;
        Ok(out)
    }
}

fn put_str(out: &mut Vec<u8>, s: &str) {
    out.extend_from_slice(&(s.len() as u64).to_le_bytes());
    out.extend_from_slice(s.as_bytes());
}

fn value_type(v: &Value) -> ValueType {
    match v {
        Value::U8(_) => ValueType::U8,
        Value::I8(_) => ValueType::I8,
        Value::U16(_) => ValueType::U16,
        Value::I16(_) => ValueType::I16,
        Value::U32(_) => ValueType::U32,
        Value::I32(_) => ValueType::I32,
        Value::F32(_) => ValueType::F32,
        Value::Bool(_) => ValueType::Bool,
        Value::String(_) => ValueType::String,
        Value::Array(_) => ValueType::Array,
        Value::U64(_) => ValueType::U64,
        Value::I64(_) => ValueType::I64,
        Value::F64(_) => ValueType::F64,
    }
}

/// The value's payload (its type code is written by the caller).
fn put_value(out: &mut Vec<u8>, key: &str, v: &Value) -> Result<(), GgufWriteError> {
    match v {
        Value::U8(x) => out.push(*x),
        Value::I8(x) => out.extend_from_slice(&x.to_le_bytes()),
        Value::U16(x) => out.extend_from_slice(&x.to_le_bytes()),
        Value::I16(x) => out.extend_from_slice(&x.to_le_bytes()),
        Value::U32(x) => out.extend_from_slice(&x.to_le_bytes()),
        Value::I32(x) => out.extend_from_slice(&x.to_le_bytes()),
        Value::F32(x) => out.extend_from_slice(&x.to_le_bytes()),
        Value::Bool(x) => out.push(u8::from(*x)),
        Value::String(s) => put_str(out, s),
        Value::U64(x) => out.extend_from_slice(&x.to_le_bytes()),
        Value::I64(x) => out.extend_from_slice(&x.to_le_bytes()),
        Value::F64(x) => out.extend_from_slice(&x.to_le_bytes()),
        Value::Array(items) => {
            // GGUF arrays are homogeneous: one element type for all. An empty array is
            // written with element type u8 (readers see an empty array either way).
            let elem = items.first().map(value_type).unwrap_or(ValueType::U8);
            if let Some(other) = items.iter().find(|i| value_type(i) != elem) {
                return Err(GgufWriteError::MixedArray {
                    key: key.to_owned(),
                    first: items[0].type_name(),
                    other: other.type_name(),
                });
            }
            out.extend_from_slice(&(elem as u32).to_le_bytes());
            out.extend_from_slice(&(items.len() as u64).to_le_bytes());
            // Elements are bare payloads; a nested array's payload carries its own element
            // type and count.
            for item in items {
                put_value(out, key, item)?;
            }
        }
    }
    Ok(())
}
