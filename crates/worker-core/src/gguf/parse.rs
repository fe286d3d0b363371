//! The byte-level GGUF parser. Every read is bounds-checked; counts are checked against the
//! bytes left before any allocation sized by them.

use super::{DEFAULT_ALIGNMENT, GgufError, MAGIC, MAX_DIMS, TensorInfo, Value, ValueType};
use crate::quant::GgmlType;
use std::collections::HashSet;

/// Arrays inside arrays are legal GGUF but never used by real models; bound the recursion.
const MAX_ARRAY_DEPTH: usize = 4;

pub(super) struct Parsed {
    pub version: u32,
    pub alignment: u64,
    pub data_offset: u64,
    pub metadata: Vec<(String, Value)>,
    pub tensors: Vec<TensorInfo>,
}

struct Cursor<'a> {
    bytes: &'a [u8],
    pos: usize,
}

impl<'a> Cursor<'a> {
    fn remaining(&self) -> u64 {
        (self.bytes.len() - self.pos) as u64
    }

    fn take(&mut self, n: u64, what: &dyn Fn() -> String) -> Result<&'a [u8], GgufError> {
        if n > self.remaining() {
            return Err(GgufError::Truncated {
                what: what(),
                offset: self.pos as u64,
                needed: n,
                len: self.bytes.len() as u64,
            });
        }
        let s = &self.bytes[self.pos..self.pos + n as usize];
        self.pos += n as usize;
        Ok(s)
    }

    fn array<const N: usize>(&mut self, what: &dyn Fn() -> String) -> Result<[u8; N], GgufError> {
        Ok(self
            .take(N as u64, what)?
            .try_into()
            .expect("take returned N bytes"))
    }

    fn u32(&mut self, what: &dyn Fn() -> String) -> Result<u32, GgufError> {
        Ok(u32::from_le_bytes(self.array(what)?))
    }

    fn u64(&mut self, what: &dyn Fn() -> String) -> Result<u64, GgufError> {
        Ok(u64::from_le_bytes(self.array(what)?))
    }

    /// A count of items each taking at least `min_item_len` bytes: rejected when the rest of
    /// the file could not hold that many.
    fn count(&mut self, min_item_len: u64, what: &dyn Fn() -> String) -> Result<u64, GgufError> {
        let n = self.u64(what)?;
        if n.saturating_mul(min_item_len.max(1)) > self.remaining() {
            return Err(GgufError::AbsurdCount {
                what: what(),
                count: n,
                len: self.bytes.len() as u64,
            });
        }
        Ok(n)
    }

    fn string(&mut self, what: &dyn Fn() -> String) -> Result<String, GgufError> {
        let len = self.u64(what)?;
        let raw = self.take(len, what)?;
        String::from_utf8(raw.to_vec()).map_err(|_| GgufError::BadUtf8 { what: what() })
    }
}

pub(super) fn parse(bytes: &[u8]) -> Result<Parsed, GgufError> {
    let mut c = Cursor { bytes, pos: 0 };
    let magic: [u8; 4] = c.array(&|| "the magic".into())?;
    if &magic != MAGIC {
        return Err(GgufError::BadMagic { found: magic });
    }
    let version = c.u32(&|| "the version".into())?;
    if version != 3 {
        return Err(GgufError::UnsupportedVersion(version));
    }
    // Minimum sizes: a tensor info is name length (8) + n_dims (4) + type (4) + offset (8);
    // a metadata entry is key length (8) + type (4) + the smallest value (1).
    let n_tensors = c.u64(&|| "the tensor count".into())?;
    let n_kv = c.count(13, &|| "the metadata count".into())?;
    if n_tensors.saturating_mul(24) > c.remaining() {
        return Err(GgufError::AbsurdCount {
            what: "the tensor count".into(),
            count: n_tensors,
            len: bytes.len() as u64,
        });
    }

    let mut metadata = Vec::with_capacity(n_kv as usize);
    let mut keys = HashSet::new();
    for i in 0..n_kv {
        let key = c.string(&|| format!("metadata key #{i}"))?;
        let code = c.u32(&|| format!("the type of metadata key {key:?}"))?;
        let ty = ValueType::from_code(code).ok_or_else(|| GgufError::UnknownValueType {
            key: key.clone(),
            code,
        })?;
        let value = read_value(&mut c, ty, &key, 0)?;
        if !keys.insert(key.clone()) {
            return Err(GgufError::Duplicate {
                what: "metadata key",
                name: key,
            });
        }
        metadata.push((key, value));
    }

    let alignment = match metadata.iter().find(|(k, _)| k == "general.alignment") {
        None => DEFAULT_ALIGNMENT,
        Some((_, v)) => {
            let a = v.as_u64().unwrap_or(0);
            if a == 0 || !a.is_power_of_two() || a > 1 << 30 {
                return Err(GgufError::BadAlignment(a));
            }
            a
        }
    };

    let mut raw = Vec::with_capacity(n_tensors as usize);
    let mut names = HashSet::new();
    for i in 0..n_tensors {
        let name = c.string(&|| format!("tensor name #{i}"))?;
        let n_dims = c.u32(&|| format!("the dimension count of tensor {name:?}"))?;
        if n_dims as usize > MAX_DIMS {
            return Err(GgufError::TooManyDims { name, n_dims });
        }
        let mut dims = Vec::with_capacity(n_dims as usize);
        for _ in 0..n_dims {
            dims.push(c.u64(&|| format!("the dimensions of tensor {name:?}"))?);
        }
        let code = c.u32(&|| format!("the type of tensor {name:?}"))?;
        let offset = c.u64(&|| format!("the offset of tensor {name:?}"))?;
        if !names.insert(name.clone()) {
            return Err(GgufError::Duplicate {
                what: "tensor",
                name,
            });
        }
        raw.push((name, dims, code, offset));
    }

    let data_offset = (c.pos as u64).next_multiple_of(alignment);
    let len = bytes.len() as u64;
    let mut tensors = Vec::with_capacity(raw.len());
    for (name, dims, code, offset) in raw {
        let ty = GgmlType::from_code(code).ok_or_else(|| super::unsupported_type(&name, code))?;
        let bad = |why| GgufError::BadShape {
            name: name.clone(),
            dims: dims.clone(),
            why,
        };
        if dims.contains(&0) {
            return Err(bad("a dimension is zero"));
        }
        let n = dims
            .iter()
            .try_fold(1u64, |acc, &d| acc.checked_mul(d))
            .ok_or_else(|| bad("element count overflows"))?;
        if dims.first().copied().unwrap_or(1) % ty.block_elements() as u64 != 0 {
            return Err(bad(
                "the first dimension is not a whole number of quant blocks",
            ));
        }
        let size_bytes = ty.bytes_for(n).ok_or_else(|| bad("byte size overflows"))?;
        if offset % alignment != 0 {
            return Err(GgufError::MisalignedTensor {
                name,
                offset,
                alignment,
            });
        }
        let start = data_offset.checked_add(offset);
        let end = start.and_then(|s| s.checked_add(size_bytes));
        match (start, end) {
            (Some(start), Some(end)) if end <= len => tensors.push(TensorInfo {
                name,
                dims,
                ty,
                offset: start,
                size_bytes,
            }),
            _ => {
                return Err(GgufError::TensorOutOfBounds {
                    name,
                    start: start.unwrap_or(u64::MAX),
                    end: end.unwrap_or(u64::MAX),
                    len,
                });
            }
        }
    }

    let mut by_offset: Vec<&TensorInfo> = tensors.iter().collect();
    by_offset.sort_by_key(|t| t.offset);
    for w in by_offset.windows(2) {
        if w[0].offset + w[0].size_bytes > w[1].offset {
            return Err(GgufError::OverlappingTensors {
                a: w[0].name.clone(),
                b: w[1].name.clone(),
            });
        }
    }

    Ok(Parsed {
        version,
        alignment,
        data_offset,
        metadata,
        tensors,
    })
}

fn read_value(
    c: &mut Cursor<'_>,
    ty: ValueType,
    key: &str,
    depth: usize,
) -> Result<Value, GgufError> {
    let what = || format!("the value of metadata key {key:?}");
    Ok(match ty {
        ValueType::U8 => Value::U8(c.array::<1>(&what)?[0]),
        ValueType::I8 => Value::I8(c.array::<1>(&what)?[0] as i8),
        ValueType::U16 => Value::U16(u16::from_le_bytes(c.array(&what)?)),
        ValueType::I16 => Value::I16(i16::from_le_bytes(c.array(&what)?)),
        ValueType::U32 => Value::U32(c.u32(&what)?),
        ValueType::I32 => Value::I32(i32::from_le_bytes(c.array(&what)?)),
        ValueType::F32 => Value::F32(f32::from_le_bytes(c.array(&what)?)),
        ValueType::Bool => match c.array::<1>(&what)?[0] {
            0 => Value::Bool(false),
            1 => Value::Bool(true),
            b => {
                return Err(GgufError::WrongType {
                    key: key.into(),
                    expected: "bool (0 or 1)",
                    found: format!("byte {b}"),
                });
            }
        },
        ValueType::String => Value::String(c.string(&what)?),
        ValueType::U64 => Value::U64(c.u64(&what)?),
        ValueType::I64 => Value::I64(i64::from_le_bytes(c.array(&what)?)),
        ValueType::F64 => Value::F64(f64::from_le_bytes(c.array(&what)?)),
        ValueType::Array => {
            if depth >= MAX_ARRAY_DEPTH {
                return Err(GgufError::NestingTooDeep {
                    key: key.into(),
                    max: MAX_ARRAY_DEPTH,
                });
            }
            let code = c.u32(&what)?;
            let elem = ValueType::from_code(code).ok_or_else(|| GgufError::UnknownValueType {
                key: key.into(),
                code,
            })?;
            let n = c.count(elem.min_encoded_len(), &what)?;
            let mut items = Vec::with_capacity(n as usize);
            for _ in 0..n {
                items.push(read_value(c, elem, key, depth + 1)?);
            }
            Value::Array(items)
        }
    })
}
