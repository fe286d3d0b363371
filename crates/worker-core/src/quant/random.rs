//! Valid random blocks of every type, for synthetic models and tests.
//!
//! "Valid" means every scale is a finite f16 of modest size and the quant bits are uniformly
//! random, so dequantized values look like real weights (magnitudes around 0.01–0.2) rather
//! than the NaNs and 60,000s that random bytes in the scale fields would give.

use super::GgmlType;

/// `n_blocks` random blocks of `ty` (for the float types a block is one value).
///
/// The quantization step of the legacy types (`d`) is drawn with |d| in [1e-3, 2e-2]; the
/// K-types' super-block scales are divided by the typical size of their per-sub-block scale so
/// that the effective step lands in the same range.
pub fn random_blocks(ty: GgmlType, n_blocks: usize, rng: &mut impl rand::Rng) -> Vec<u8> {
    let mut out = Vec::with_capacity(n_blocks * ty.block_bytes());
    for _ in 0..n_blocks {
        push_block(ty, rng, &mut out);
    }
    out
}

/// A random quantization step: |s| in [1e-3, 2e-2], sign random when `signed`.
fn step(rng: &mut impl rand::Rng, signed: bool) -> f32 {
    let s = rng.random_range(1e-3f32..=2e-2);
    if signed && rng.random::<bool>() {
        -s
    } else {
        s
    }
}

fn f16_bytes(v: f32) -> [u8; 2] {
    half::f16::from_f32(v).to_le_bytes()
}

fn random_bytes(rng: &mut impl rand::Rng, n: usize, out: &mut Vec<u8>) {
    out.extend((0..n).map(|_| rng.random::<u8>()));
}

fn push_block(ty: GgmlType, rng: &mut impl rand::Rng, out: &mut Vec<u8>) {
    match ty {
        GgmlType::F32 => out.extend_from_slice(&rng.random_range(-0.2f32..0.2).to_le_bytes()),
        GgmlType::F16 => out.extend_from_slice(&f16_bytes(rng.random_range(-0.2f32..0.2))),
        GgmlType::BF16 => {
            let bits = rng.random_range(-0.2f32..0.2).to_bits();
            out.extend_from_slice(&((bits >> 16) as u16).to_le_bytes());
        }
        GgmlType::Q4_0 => {
            out.extend_from_slice(&f16_bytes(step(rng, true)));
            random_bytes(rng, 16, out);
        }
        GgmlType::Q4_1 | GgmlType::Q5_1 => {
            let d = step(rng, false);
            let levels = if ty == GgmlType::Q4_1 { 15.0 } else { 31.0 };
            // The min is the block's smallest value: roughly half the range below zero.
            let m = -d * levels * rng.random_range(0.3f32..0.7);
            out.extend_from_slice(&f16_bytes(d));
            out.extend_from_slice(&f16_bytes(m));
            random_bytes(rng, if ty == GgmlType::Q4_1 { 16 } else { 4 + 16 }, out);
        }
        GgmlType::Q5_0 => {
            out.extend_from_slice(&f16_bytes(step(rng, true)));
            random_bytes(rng, 4 + 16, out);
        }
        GgmlType::Q8_0 => {
            // Q8_0 steps are ~16× finer than 4-bit ones for the same weights.
            out.extend_from_slice(&f16_bytes(step(rng, false) / 16.0));
            random_bytes(rng, 32, out);
        }
        GgmlType::Q2K => {
            // 4-bit scales (typical 8) and mins, then 2-bit quants.
            random_bytes(rng, 16 + 64, out);
            out.extend_from_slice(&f16_bytes(step(rng, false) * 2.0 / 8.0));
            out.extend_from_slice(&f16_bytes(step(rng, false) * 2.0 / 8.0));
        }
        GgmlType::Q3K => {
            // 6-bit scales centred on 32 (signed, typical magnitude 16), 3-bit quants.
            random_bytes(rng, 32 + 64 + 12, out);
            out.extend_from_slice(&f16_bytes(step(rng, true) * 2.0 / 16.0));
        }
        GgmlType::Q4K | GgmlType::Q5K => {
            // 6-bit scales and mins (typical 32); the mins pull values down by about half
            // the range so they centre on zero.
            let d = step(rng, false) / 32.0;
            let levels = if ty == GgmlType::Q4K { 15.0 } else { 31.0 };
            out.extend_from_slice(&f16_bytes(d));
            out.extend_from_slice(&f16_bytes(d * levels / 2.0));
            random_bytes(
                rng,
                12 + if ty == GgmlType::Q4K { 128 } else { 32 + 128 },
                out,
            );
        }
        GgmlType::Q6K => {
            // i8 scales (typical magnitude 64) and 6-bit quants centred by the −32.
            random_bytes(rng, 128 + 64 + 16, out);
            out.extend_from_slice(&f16_bytes(step(rng, true) / 64.0));
        }
    }
}
