//! The 32-element block types: Q4_0, Q4_1, Q5_0, Q5_1, Q8_0 (ggml's `dequantize_row_q*_0/1`).
//!
//! In the 4- and 5-bit types the low nibbles of the 16 `qs` bytes are elements 0..16 and the
//! high nibbles elements 16..32. Each function decodes one block into its final f32 values,
//! computing each value exactly as ggml does (`q as f32 * d`, then `+ m`) so results match the
//! reference bit for bit.

use super::float::f16_le;

pub(crate) const QK: usize = 32;

#[inline(always)]
fn f16_at(b: &[u8], i: usize) -> f32 {
    f16_le([b[i], b[i + 1]])
}

/// Q4_0, 18 bytes: f16 d, 16 bytes of nibbles; y = d·(q − 8).
#[inline(always)]
pub(crate) fn decode_q4_0(b: &[u8; 18], out: &mut [f32; QK]) {
    let d = f16_at(b, 0);
    let qs = &b[2..18];
    let (lo, hi) = out.split_at_mut(16);
    for j in 0..16 {
        lo[j] = (i32::from(qs[j] & 0x0f) - 8) as f32 * d;
        hi[j] = (i32::from(qs[j] >> 4) - 8) as f32 * d;
    }
}

/// Q4_1, 20 bytes: f16 d, f16 m, 16 bytes of nibbles; y = d·q + m.
#[inline(always)]
pub(crate) fn decode_q4_1(b: &[u8; 20], out: &mut [f32; QK]) {
    let d = f16_at(b, 0);
    let m = f16_at(b, 2);
    let qs = &b[4..20];
    let (lo, hi) = out.split_at_mut(16);
    for j in 0..16 {
        lo[j] = f32::from(qs[j] & 0x0f) * d + m;
        hi[j] = f32::from(qs[j] >> 4) * d + m;
    }
}

/// Q5_0, 22 bytes: f16 d, u32 qh (the fifth bits: bit j for element j), 16 bytes of nibbles;
/// y = d·(q − 16).
#[inline(always)]
pub(crate) fn decode_q5_0(b: &[u8; 22], out: &mut [f32; QK]) {
    let d = f16_at(b, 0);
    let qh = u32::from_le_bytes([b[2], b[3], b[4], b[5]]);
    let qs = &b[6..22];
    let (lo, hi) = out.split_at_mut(16);
    for j in 0..16 {
        let h0 = ((qh >> j) << 4) & 0x10;
        let h1 = (qh >> (j + 12)) & 0x10;
        lo[j] = ((u32::from(qs[j] & 0x0f) | h0) as i32 - 16) as f32 * d;
        hi[j] = ((u32::from(qs[j] >> 4) | h1) as i32 - 16) as f32 * d;
    }
}

/// Q5_1, 24 bytes: f16 d, f16 m, u32 qh, 16 bytes of nibbles; y = d·q + m.
#[inline(always)]
pub(crate) fn decode_q5_1(b: &[u8; 24], out: &mut [f32; QK]) {
    let d = f16_at(b, 0);
    let m = f16_at(b, 2);
    let qh = u32::from_le_bytes([b[4], b[5], b[6], b[7]]);
    let qs = &b[8..24];
    let (lo, hi) = out.split_at_mut(16);
    for j in 0..16 {
        let h0 = ((qh >> j) << 4) & 0x10;
        let h1 = (qh >> (j + 12)) & 0x10;
        lo[j] = (u32::from(qs[j] & 0x0f) | h0) as f32 * d + m;
        hi[j] = (u32::from(qs[j] >> 4) | h1) as f32 * d + m;
    }
}

/// Q8_0, 34 bytes: f16 d, 32 × i8; y = d·q.
#[inline(always)]
pub(crate) fn decode_q8_0(b: &[u8; 34], out: &mut [f32; QK]) {
    let d = f16_at(b, 0);
    for (o, &q) in out.iter_mut().zip(&b[2..34]) {
        *o = f32::from(q as i8) * d;
    }
}
