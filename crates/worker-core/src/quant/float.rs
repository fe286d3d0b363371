//! The unquantized element types: F32, F16 and BF16 (little-endian, one value per "block").
//!
//! The conversions are branch-free integer code so that LLVM vectorizes them inside the dot
//! product loops; `half`'s own conversion checks for F16C at run time on every call.

/// IEEE half → single, exact for every bit pattern (normals, subnormals, ±0, ±inf, NaN).
///
/// Fabian Giesen's "magic number" conversion, written with selects instead of branches.
#[inline(always)]
pub(crate) fn f16_to_f32(h: u16) -> f32 {
    const SHIFTED_EXP: u32 = 0x7c00 << 13; // the f16 exponent mask, moved to f32's exponent
    const MAGIC: f32 = f32::from_bits(113 << 23); // 2^-14, the smallest f16 normal
    let h = u32::from(h);
    let o = (h & 0x7fff) << 13;
    let exp = o & SHIFTED_EXP;
    // Rebias the exponent from 15 to 127.
    let normal = o + ((127 - 15) << 23);
    // Inf/NaN: move the exponent all the way to f32's 255.
    let infnan = normal + ((128 - 16) << 23);
    // Subnormal: let the FPU normalize it: (bits with exponent 2^-14) - 2^-14.
    let sub = f32::from_bits(normal + (1 << 23)) - MAGIC;
    let bits = if exp == SHIFTED_EXP {
        infnan
    } else if exp == 0 {
        sub.to_bits()
    } else {
        normal
    };
    f32::from_bits(bits | ((h & 0x8000) << 16))
}

/// A little-endian f16 at `b[0..2]`.
#[inline(always)]
pub(crate) fn f16_le(b: [u8; 2]) -> f32 {
    f16_to_f32(u16::from_le_bytes(b))
}

/// bfloat16 is the top half of an f32.
#[inline(always)]
pub(crate) fn bf16_to_f32(h: u16) -> f32 {
    f32::from_bits(u32::from(h) << 16)
}

/// Values per decoded chunk of a float tensor in the dot product loops (one "block" there).
pub(crate) const FLOAT_CHUNK: usize = 32;

#[inline(always)]
pub(crate) fn decode_f32(b: &[u8; 4 * FLOAT_CHUNK], out: &mut [f32; FLOAT_CHUNK]) {
    let (words, _) = b.as_chunks::<4>();
    for (o, w) in out.iter_mut().zip(words) {
        *o = f32::from_le_bytes(*w);
    }
}

#[inline(always)]
pub(crate) fn decode_f16(b: &[u8; 2 * FLOAT_CHUNK], out: &mut [f32; FLOAT_CHUNK]) {
    let (halves, _) = b.as_chunks::<2>();
    for (o, h) in out.iter_mut().zip(halves) {
        *o = f16_le(*h);
    }
}

#[inline(always)]
pub(crate) fn decode_bf16(b: &[u8; 2 * FLOAT_CHUNK], out: &mut [f32; FLOAT_CHUNK]) {
    let (halves, _) = b.as_chunks::<2>();
    for (o, h) in out.iter_mut().zip(halves) {
        *o = bf16_to_f32(u16::from_le_bytes(*h));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn f16_conversion_matches_half_for_every_bit_pattern() {
        for bits in 0..=u16::MAX {
            let want = half::f16::from_bits(bits).to_f32();
            let got = f16_to_f32(bits);
            if want.is_nan() {
                assert!(got.is_nan(), "{bits:#06x}: {got} is not NaN");
            } else {
                assert_eq!(
                    got.to_bits(),
                    want.to_bits(),
                    "{bits:#06x}: {got} vs {want}"
                );
            }
        }
    }

    #[test]
    fn bf16_is_the_top_half_of_f32() {
        assert_eq!(bf16_to_f32(0x3f80), 1.0);
        assert_eq!(bf16_to_f32(0xc040), -3.0);
    }
}
