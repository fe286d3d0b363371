//! AVX2 decoders for the 32-element block types, used by the AVX2 dot-product kernel.
//!
//! They produce exactly the values of the scalar decoders in `legacy.rs` (same f32
//! operations: integer → f32, `× d`, then `+ m`, never fused), so both kernels agree bit for
//! bit on every decoded value. Every function here is `unsafe`: the caller must have checked
//! that the CPU supports AVX2 (they are only inlined into `#[target_feature(enable = "avx2")]`
//! functions).

use super::float::f16_le;
use super::legacy::QK;
use std::arch::x86_64::*;

/// Writes 16 signed bytes × `d` (+ `m`) as f32 to `out[0..16]`.
#[inline(always)]
unsafe fn store16(q: __m128i, d: __m256, m: Option<__m256>, out: &mut [f32; 16]) {
    // SAFETY: AVX2 per the module contract; the stores write out[0..8] and out[8..16].
    // (Slices rather than `ptr.add`: pointer arithmetic carries run-time precondition checks
    // in debug builds that made the dev-profile kernel 3x slower; these bounds checks are
    // on constant ranges of fixed-size arrays and compile away.)
    unsafe {
        let a = _mm256_mul_ps(_mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(q)), d);
        let b = _mm256_mul_ps(
            _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_srli_si128(q, 8))),
            d,
        );
        let (a, b) = match m {
            Some(m) => (_mm256_add_ps(a, m), _mm256_add_ps(b, m)),
            None => (a, b),
        };
        _mm256_storeu_ps(out[..8].as_mut_ptr(), a);
        _mm256_storeu_ps(out[8..].as_mut_ptr(), b);
    }
}

/// The 16 `qs` bytes at `p` split into low nibbles (elements 0..16) and high nibbles
/// (elements 16..32).
#[inline(always)]
unsafe fn nibbles(qs: &[u8; 16]) -> (__m128i, __m128i) {
    // SAFETY: SSE2/AVX2 per the module contract; reads the 16 bytes of `qs`.
    unsafe {
        let raw = _mm_loadu_si128(qs.as_ptr().cast());
        let low4 = _mm_set1_epi8(0x0f);
        (
            _mm_and_si128(raw, low4),
            _mm_and_si128(_mm_srli_epi16(raw, 4), low4),
        )
    }
}

/// Bytes 0x10 where bit j of `qh` is set, for j in `first..first + 16` (`first` 0 or 16).
#[inline(always)]
unsafe fn fifth_bits(qh: u32, first: usize) -> __m128i {
    // SAFETY: SSE/AVX2 per the module contract.
    unsafe {
        // Spread byte first/8 of qh over lanes 0..8 and byte first/8 + 1 over 8..16...
        let b0 = (first / 8) as i8;
        let shuf = _mm_set_epi8(
            b0 + 1,
            b0 + 1,
            b0 + 1,
            b0 + 1,
            b0 + 1,
            b0 + 1,
            b0 + 1,
            b0 + 1,
            b0,
            b0,
            b0,
            b0,
            b0,
            b0,
            b0,
            b0,
        );
        let bytes = _mm_shuffle_epi8(_mm_set1_epi32(qh as i32), shuf);
        // ...then set every bit except lane i's own: a lane is all-ones iff its bit is set.
        let others = _mm_set1_epi64x(0x7fbf_dfef_f7fb_fdfe);
        let set = _mm_cmpeq_epi8(_mm_or_si128(bytes, others), _mm_set1_epi8(-1));
        _mm_and_si128(set, _mm_set1_epi8(0x10))
    }
}

/// `b[at..at + 16]` as an array (constant offsets: the checks compile away).
#[inline(always)]
fn sub16<const B: usize>(b: &[u8; B], at: usize) -> &[u8; 16] {
    &b[at..at + 16].as_chunks::<16>().0[0]
}

/// Half `h` (0 or 1) of a decoded block.
#[inline(always)]
fn half(out: &mut [f32; QK], h: usize) -> &mut [f32; 16] {
    &mut out.as_chunks_mut::<16>().0[h]
}

#[inline(always)]
fn f16_at(b: &[u8], i: usize) -> f32 {
    f16_le([b[i], b[i + 1]])
}

/// Q4_0: y = d·(q − 8).
#[inline(always)]
pub(crate) unsafe fn decode_q4_0(b: &[u8; 18], out: &mut [f32; QK]) {
    // SAFETY: AVX2 per the module contract; qs is b[2..18].
    unsafe {
        let d = _mm256_set1_ps(f16_at(b, 0));
        let (lo, hi) = nibbles(sub16(b, 2));
        let eight = _mm_set1_epi8(8);
        store16(_mm_sub_epi8(lo, eight), d, None, half(out, 0));
        store16(_mm_sub_epi8(hi, eight), d, None, half(out, 1));
    }
}

/// Q4_1: y = d·q + m.
#[inline(always)]
pub(crate) unsafe fn decode_q4_1(b: &[u8; 20], out: &mut [f32; QK]) {
    // SAFETY: AVX2 per the module contract; qs is b[4..20].
    unsafe {
        let d = _mm256_set1_ps(f16_at(b, 0));
        let m = Some(_mm256_set1_ps(f16_at(b, 2)));
        let (lo, hi) = nibbles(sub16(b, 4));
        store16(lo, d, m, half(out, 0));
        store16(hi, d, m, half(out, 1));
    }
}

/// Q5_0: q = nibble | fifth bit << 4; y = d·(q − 16).
#[inline(always)]
pub(crate) unsafe fn decode_q5_0(b: &[u8; 22], out: &mut [f32; QK]) {
    // SAFETY: AVX2 per the module contract; qh is b[2..6], qs is b[6..22].
    unsafe {
        let d = _mm256_set1_ps(f16_at(b, 0));
        let qh = u32::from_le_bytes([b[2], b[3], b[4], b[5]]);
        let (lo, hi) = nibbles(sub16(b, 6));
        let sixteen = _mm_set1_epi8(16);
        let lo = _mm_sub_epi8(_mm_or_si128(lo, fifth_bits(qh, 0)), sixteen);
        let hi = _mm_sub_epi8(_mm_or_si128(hi, fifth_bits(qh, 16)), sixteen);
        store16(lo, d, None, half(out, 0));
        store16(hi, d, None, half(out, 1));
    }
}

/// Q5_1: q = nibble | fifth bit << 4; y = d·q + m.
#[inline(always)]
pub(crate) unsafe fn decode_q5_1(b: &[u8; 24], out: &mut [f32; QK]) {
    // SAFETY: AVX2 per the module contract; qh is b[4..8], qs is b[8..24].
    unsafe {
        let d = _mm256_set1_ps(f16_at(b, 0));
        let m = Some(_mm256_set1_ps(f16_at(b, 2)));
        let qh = u32::from_le_bytes([b[4], b[5], b[6], b[7]]);
        let (lo, hi) = nibbles(sub16(b, 8));
        store16(_mm_or_si128(lo, fifth_bits(qh, 0)), d, m, half(out, 0));
        store16(_mm_or_si128(hi, fifth_bits(qh, 16)), d, m, half(out, 1));
    }
}

/// Q8_0: y = d·q.
#[inline(always)]
pub(crate) unsafe fn decode_q8_0(b: &[u8; 34], out: &mut [f32; QK]) {
    // SAFETY: AVX2 per the module contract; qs is b[2..34].
    unsafe {
        let d = _mm256_set1_ps(f16_at(b, 0));
        store16(
            _mm_loadu_si128(sub16(b, 2).as_ptr().cast()),
            d,
            None,
            half(out, 0),
        );
        store16(
            _mm_loadu_si128(sub16(b, 18).as_ptr().cast()),
            d,
            None,
            half(out, 1),
        );
    }
}
