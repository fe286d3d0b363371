//! The 256-element "K" block types: Q2_K, Q3_K, Q4_K, Q5_K, Q6_K.
//!
//! Layouts and arithmetic follow ggml's `dequantize_row_q{2,3,4,5,6}_K` (ggml-quants.c): each
//! value is computed with the same f32 operations in the same order, so results match the
//! reference exactly.

use super::float::f16_le;

pub(crate) const QK_K: usize = 256;

#[inline(always)]
fn f16_at(b: &[u8], i: usize) -> f32 {
    f16_le([b[i], b[i + 1]])
}

/// Scale and min of sub-block `j` (0..8) from Q4_K/Q5_K's 12 packed 6-bit scale bytes
/// (ggml's `get_scale_min_k4`).
#[inline(always)]
pub(crate) fn scale_min_k4(j: usize, s: &[u8; 12]) -> (u8, u8) {
    if j < 4 {
        (s[j] & 63, s[j + 4] & 63)
    } else {
        (
            (s[j + 4] & 0x0f) | ((s[j - 4] >> 6) << 4),
            (s[j + 4] >> 4) | ((s[j] >> 6) << 4),
        )
    }
}

/// Q2_K, 84 bytes: 16 scale bytes (low nibble scale, high nibble min), 64 bytes of 2-bit
/// quants, f16 d, f16 dmin. y = d·sc·q − dmin·m.
#[inline(always)]
pub(crate) fn decode_q2_k(b: &[u8; 84], out: &mut [f32; QK_K]) {
    let scales = &b[0..16];
    let qs = &b[16..80];
    let d = f16_at(b, 80);
    let dmin = f16_at(b, 82);
    for n in 0..2 {
        let q = &qs[32 * n..32 * n + 32];
        for j in 0..4 {
            let shift = 2 * j;
            for half in 0..2 {
                let sc = scales[8 * n + 2 * j + half];
                let dl = d * f32::from(sc & 0x0f);
                let ml = dmin * f32::from(sc >> 4);
                let base = 128 * n + 32 * j + 16 * half;
                for l in 0..16 {
                    out[base + l] = dl * f32::from((q[16 * half + l] >> shift) & 3) - ml;
                }
            }
        }
    }
}

/// Q3_K, 110 bytes: 32 bytes of high bits (hmask), 64 bytes of low 2 bits, 12 bytes of packed
/// 6-bit scales, f16 d. q = low2 − (high bit set ? 0 : 4); y = d·(scale − 32)·q.
#[inline(always)]
pub(crate) fn decode_q3_k(b: &[u8; 110], out: &mut [f32; QK_K]) {
    let hm = &b[0..32];
    let qs = &b[32..96];
    let s = &b[96..108];
    let d = f16_at(b, 108);
    // Unpack the sixteen 6-bit scales: low 4 bits from bytes 0..8 (low then high nibbles),
    // high 2 bits from bytes 8..12.
    let mut sc = [0i32; 16];
    for (j, v) in sc.iter_mut().enumerate() {
        let low = if j < 8 { s[j] & 0x0f } else { s[j - 8] >> 4 };
        let high = (s[8 + j % 4] >> (2 * (j / 4))) & 3;
        *v = i32::from(low | (high << 4)) - 32;
    }
    for n in 0..2 {
        let q = &qs[32 * n..32 * n + 32];
        for j in 0..4 {
            let shift = 2 * j;
            let mask = 1u8 << (4 * n + j);
            for half in 0..2 {
                let dl = d * sc[8 * n + 2 * j + half] as f32;
                let base = 128 * n + 32 * j + 16 * half;
                for l in 0..16 {
                    let i = 16 * half + l;
                    let low = i32::from((q[i] >> shift) & 3);
                    let sub = if hm[i] & mask != 0 { 0 } else { 4 };
                    out[base + l] = dl * (low - sub) as f32;
                }
            }
        }
    }
}

/// Q4_K, 144 bytes: f16 d, f16 dmin, 12 bytes of 6-bit scales/mins, 128 bytes of nibbles.
/// Bytes 32c..32c+32 hold sub-block 2c (low nibbles) and 2c+1 (high). y = d·sc·q − dmin·m.
#[inline(always)]
pub(crate) fn decode_q4_k(b: &[u8; 144], out: &mut [f32; QK_K]) {
    let d = f16_at(b, 0);
    let dmin = f16_at(b, 2);
    let s: [u8; 12] = std::array::from_fn(|i| b[4 + i]);
    let qs = &b[16..144];
    for c in 0..4 {
        let (sc1, m1) = scale_min_k4(2 * c, &s);
        let (sc2, m2) = scale_min_k4(2 * c + 1, &s);
        let (d1, min1) = (d * f32::from(sc1), dmin * f32::from(m1));
        let (d2, min2) = (d * f32::from(sc2), dmin * f32::from(m2));
        let q = &qs[32 * c..32 * c + 32];
        let (lo, hi) = out[64 * c..64 * c + 64].split_at_mut(32);
        for l in 0..32 {
            lo[l] = d1 * f32::from(q[l] & 0x0f) - min1;
            hi[l] = d2 * f32::from(q[l] >> 4) - min2;
        }
    }
}

/// Q5_K, 176 bytes: f16 d, f16 dmin, 12 scale bytes, 32 bytes of fifth bits (qh), 128 bytes of
/// nibbles. Sub-block 2c takes bit 2c of qh[l], sub-block 2c+1 bit 2c+1. y = d·sc·q − dmin·m.
#[inline(always)]
pub(crate) fn decode_q5_k(b: &[u8; 176], out: &mut [f32; QK_K]) {
    let d = f16_at(b, 0);
    let dmin = f16_at(b, 2);
    let s: [u8; 12] = std::array::from_fn(|i| b[4 + i]);
    let qh = &b[16..48];
    let qs = &b[48..176];
    for c in 0..4 {
        let (sc1, m1) = scale_min_k4(2 * c, &s);
        let (sc2, m2) = scale_min_k4(2 * c + 1, &s);
        let (d1, min1) = (d * f32::from(sc1), dmin * f32::from(m1));
        let (d2, min2) = (d * f32::from(sc2), dmin * f32::from(m2));
        let q = &qs[32 * c..32 * c + 32];
        let (lo, hi) = out[64 * c..64 * c + 64].split_at_mut(32);
        for l in 0..32 {
            let h1 = ((qh[l] >> (2 * c)) & 1) << 4;
            let h2 = ((qh[l] >> (2 * c + 1)) & 1) << 4;
            lo[l] = d1 * f32::from((q[l] & 0x0f) | h1) - min1;
            hi[l] = d2 * f32::from((q[l] >> 4) | h2) - min2;
        }
    }
}

/// Q6_K, 210 bytes: 128 bytes of low 4 bits, 64 bytes of high 2 bits, 16 × i8 scales, f16 d.
/// y = d·scale·(q − 32).
#[inline(always)]
pub(crate) fn decode_q6_k(b: &[u8; 210], out: &mut [f32; QK_K]) {
    let d = f16_at(b, 208);
    for h in 0..2 {
        let ql = &b[64 * h..64 * h + 64];
        let qh = &b[128 + 32 * h..128 + 32 * h + 32];
        let sc = &b[192 + 8 * h..192 + 8 * h + 8];
        let y = &mut out[128 * h..128 * h + 128];
        for l in 0..32 {
            let is = l / 16;
            let q1 = i32::from((ql[l] & 0x0f) | ((qh[l] & 3) << 4)) - 32;
            let q2 = i32::from((ql[l + 32] & 0x0f) | (((qh[l] >> 2) & 3) << 4)) - 32;
            let q3 = i32::from((ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4)) - 32;
            let q4 = i32::from((ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4)) - 32;
            y[l] = d * f32::from(sc[is] as i8) * q1 as f32;
            y[l + 32] = d * f32::from(sc[is + 2] as i8) * q2 as f32;
            y[l + 64] = d * f32::from(sc[is + 4] as i8) * q3 as f32;
            y[l + 96] = d * f32::from(sc[is + 6] as i8) * q4 as f32;
        }
    }
}
