//! GGML block formats: type table, dequantization and CPU dot products.

#[cfg(target_arch = "x86_64")]
mod avx2;
mod dot;
mod float;
mod kquants;
mod legacy;
mod random;
mod types;

pub use dot::{dot_kernel_name, dot_row, dot_row_portable, dot_rows_multi};
pub use random::random_blocks;
pub use types::{GgmlType, supported_type_list, unsupported_type_name};

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum QuantError {
    #[error("{ty}: {bytes} bytes is not a whole number of {block_bytes}-byte blocks")]
    PartialBlock {
        ty: GgmlType,
        bytes: usize,
        block_bytes: usize,
    },
    #[error("{ty}: {bytes} bytes hold {elements} values but the output has room for {out}")]
    LengthMismatch {
        ty: GgmlType,
        bytes: usize,
        elements: usize,
        out: usize,
    },
}

/// Decodes whole blocks of `ty` into f32: `out.len()` must be exactly the number of values
/// `bytes` holds. Values are bit-identical to ggml's `dequantize_row_*`.
pub fn dequantize_row(ty: GgmlType, bytes: &[u8], out: &mut [f32]) -> Result<(), QuantError> {
    let bb = ty.block_bytes();
    if !bytes.len().is_multiple_of(bb) {
        return Err(QuantError::PartialBlock {
            ty,
            bytes: bytes.len(),
            block_bytes: bb,
        });
    }
    let elements = bytes.len() / bb * ty.block_elements();
    if elements != out.len() {
        return Err(QuantError::LengthMismatch {
            ty,
            bytes: bytes.len(),
            elements,
            out: out.len(),
        });
    }
    match ty {
        GgmlType::F32 => elementwise::<4>(bytes, out, f32::from_le_bytes),
        GgmlType::F16 => elementwise::<2>(bytes, out, float::f16_le),
        GgmlType::BF16 => {
            elementwise::<2>(bytes, out, |b| float::bf16_to_f32(u16::from_le_bytes(b)))
        }
        GgmlType::Q4_0 => blockwise(bytes, out, legacy::decode_q4_0),
        GgmlType::Q4_1 => blockwise(bytes, out, legacy::decode_q4_1),
        GgmlType::Q5_0 => blockwise(bytes, out, legacy::decode_q5_0),
        GgmlType::Q5_1 => blockwise(bytes, out, legacy::decode_q5_1),
        GgmlType::Q8_0 => blockwise(bytes, out, legacy::decode_q8_0),
        GgmlType::Q2K => blockwise(bytes, out, kquants::decode_q2_k),
        GgmlType::Q3K => blockwise(bytes, out, kquants::decode_q3_k),
        GgmlType::Q4K => blockwise(bytes, out, kquants::decode_q4_k),
        GgmlType::Q5K => blockwise(bytes, out, kquants::decode_q5_k),
        GgmlType::Q6K => blockwise(bytes, out, kquants::decode_q6_k),
    }
    Ok(())
}

fn elementwise<const S: usize>(bytes: &[u8], out: &mut [f32], f: impl Fn([u8; S]) -> f32) {
    let (elems, _) = bytes.as_chunks::<S>();
    for (o, e) in out.iter_mut().zip(elems) {
        *o = f(*e);
    }
}

fn blockwise<const N: usize, const B: usize>(
    bytes: &[u8],
    out: &mut [f32],
    decode: impl Fn(&[u8; B], &mut [f32; N]),
) {
    let (blocks, _) = bytes.as_chunks::<B>();
    let (outs, _) = out.as_chunks_mut::<N>();
    for (b, o) in blocks.iter().zip(outs) {
        decode(b, o);
    }
}
