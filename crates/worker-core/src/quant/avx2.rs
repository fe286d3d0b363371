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

// Vector loads and stores go through `transmute` of plain arrays rather than
// `_mm256_loadu_ps`/`_mm256_storeu_ps`: those are implemented with `ptr::copy_nonoverlapping`,
// whose overlap precondition check (on in debug-assertion builds, i.e. every test run) forced
// each vector through the stack and made the dev-profile kernel 3-4x slower. The transmutes
// compile to the same unaligned vector moves and are sound: the types have equal sizes and
// every bit pattern is valid for both.

/// 8 floats → a vector register.
#[inline(always)]
pub(crate) fn ld8(a: &[f32; 8]) -> __m256 {
    // SAFETY: see above.
    unsafe { std::mem::transmute::<[f32; 8], __m256>(*a) }
}

/// A vector register → 8 floats.
#[inline(always)]
pub(crate) fn st8(out: &mut [f32; 8], v: __m256) {
    // SAFETY: see above.
    *out = unsafe { std::mem::transmute::<__m256, [f32; 8]>(v) };
}

/// 16 bytes → a vector register.
#[inline(always)]
fn ld16b(a: &[u8; 16]) -> __m128i {
    // SAFETY: see above.
    unsafe { std::mem::transmute::<[u8; 16], __m128i>(*a) }
}

/// Writes 16 signed bytes × `d` (+ `m`) as f32 to `out[0..16]`.
#[inline(always)]
unsafe fn store16(q: __m128i, d: __m256, m: Option<__m256>, out: &mut [f32; 16]) {
    // SAFETY: AVX2 per the module contract.
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
        let (halves, _) = out.as_chunks_mut::<8>();
        st8(&mut halves[0], a);
        st8(&mut halves[1], b);
    }
}

/// The 16 `qs` bytes at `p` split into low nibbles (elements 0..16) and high nibbles
/// (elements 16..32).
#[inline(always)]
unsafe fn nibbles(qs: &[u8; 16]) -> (__m128i, __m128i) {
    // SAFETY: SSE2/AVX2 per the module contract; reads the 16 bytes of `qs`.
    unsafe {
        let raw = ld16b(qs);
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
        store16(ld16b(sub16(b, 2)), d, None, half(out, 0));
        store16(ld16b(sub16(b, 18)), d, None, half(out, 1));
    }
}

// ---- K-quants -------------------------------------------------------------------------------

use super::kquants::{QK_K, scale_min_k4};

/// 32 bytes → a vector register.
#[inline(always)]
fn ld32b(a: &[u8; 32]) -> __m256i {
    // SAFETY: as for `ld8`.
    unsafe { std::mem::transmute::<[u8; 32], __m256i>(*a) }
}

/// `b[at..at + 32]` as an array (constant offsets: the checks compile away).
#[inline(always)]
fn sub32<const B: usize>(b: &[u8; B], at: usize) -> &[u8; 32] {
    &b[at..at + 32].as_chunks::<32>().0[0]
}

/// Writes 8 signed bytes (the low 8 of `q`) as `q · scale` (− `min`) to `out`, the same f32
/// operations as the scalar decoders: an integer converted exactly, one rounding for the
/// product and one for the subtraction.
#[inline(always)]
unsafe fn store8(q: __m128i, scale: __m256, min: Option<__m256>, out: &mut [f32; 8]) {
    // SAFETY: AVX2 per the module contract.
    unsafe {
        let v = _mm256_mul_ps(_mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(q)), scale);
        st8(out, min.map_or(v, |m| _mm256_sub_ps(v, m)));
    }
}

/// Writes 32 signed bytes: elements 0..16 with `s0`, 16..32 with `s1` (and `min`).
#[inline(always)]
unsafe fn store32(q: __m256i, s0: __m256, s1: __m256, min: Option<__m256>, out: &mut [f32]) {
    // SAFETY: AVX2 per the module contract.
    unsafe {
        let (o, _) = out.as_chunks_mut::<8>();
        let lo = _mm256_castsi256_si128(q);
        let hi = _mm256_extracti128_si256::<1>(q);
        store8(lo, s0, min, &mut o[0]);
        store8(_mm_srli_si128::<8>(lo), s0, min, &mut o[1]);
        store8(hi, s1, min, &mut o[2]);
        store8(_mm_srli_si128::<8>(hi), s1, min, &mut o[3]);
    }
}

/// Q4_K: y = (d·sc)·q − dmin·m per sub-block of 32.
#[inline(always)]
pub(crate) unsafe fn decode_q4_k(b: &[u8; 144], out: &mut [f32; QK_K]) {
    let d = f16_at(b, 0);
    let dmin = f16_at(b, 2);
    let s: [u8; 12] = std::array::from_fn(|i| b[4 + i]);
    // SAFETY: AVX2 per the module contract.
    unsafe {
        let low4 = _mm256_set1_epi8(0x0f);
        for c in 0..4 {
            let (sc1, m1) = scale_min_k4(2 * c, &s);
            let (sc2, m2) = scale_min_k4(2 * c + 1, &s);
            let q = ld32b(sub32(b, 16 + 32 * c));
            let lo = _mm256_and_si256(q, low4);
            let hi = _mm256_and_si256(_mm256_srli_epi16::<4>(q), low4);
            let (d1, d2) = (
                _mm256_set1_ps(d * f32::from(sc1)),
                _mm256_set1_ps(d * f32::from(sc2)),
            );
            let min1 = Some(_mm256_set1_ps(dmin * f32::from(m1)));
            let min2 = Some(_mm256_set1_ps(dmin * f32::from(m2)));
            store32(lo, d1, d1, min1, &mut out[64 * c..64 * c + 32]);
            store32(hi, d2, d2, min2, &mut out[64 * c + 32..64 * c + 64]);
        }
    }
}

/// Q5_K: as Q4_K with a fifth bit per value from qh (bit 2c for sub-block 2c, 2c+1 for 2c+1).
#[inline(always)]
pub(crate) unsafe fn decode_q5_k(b: &[u8; 176], out: &mut [f32; QK_K]) {
    let d = f16_at(b, 0);
    let dmin = f16_at(b, 2);
    let s: [u8; 12] = std::array::from_fn(|i| b[4 + i]);
    // SAFETY: AVX2 per the module contract.
    unsafe {
        let low4 = _mm256_set1_epi8(0x0f);
        let bit4 = _mm256_set1_epi8(0x10);
        let qh = ld32b(sub32(b, 16));
        // Bytes 0x10 where bit `bit` of qh is set.
        let fifth = |bit: usize| {
            let m = _mm256_set1_epi8(1 << bit);
            _mm256_and_si256(_mm256_cmpeq_epi8(_mm256_and_si256(qh, m), m), bit4)
        };
        for c in 0..4 {
            let (sc1, m1) = scale_min_k4(2 * c, &s);
            let (sc2, m2) = scale_min_k4(2 * c + 1, &s);
            let q = ld32b(sub32(b, 48 + 32 * c));
            let lo = _mm256_or_si256(_mm256_and_si256(q, low4), fifth(2 * c));
            let hi = _mm256_or_si256(
                _mm256_and_si256(_mm256_srli_epi16::<4>(q), low4),
                fifth(2 * c + 1),
            );
            let (d1, d2) = (
                _mm256_set1_ps(d * f32::from(sc1)),
                _mm256_set1_ps(d * f32::from(sc2)),
            );
            let min1 = Some(_mm256_set1_ps(dmin * f32::from(m1)));
            let min2 = Some(_mm256_set1_ps(dmin * f32::from(m2)));
            store32(lo, d1, d1, min1, &mut out[64 * c..64 * c + 32]);
            store32(hi, d2, d2, min2, &mut out[64 * c + 32..64 * c + 64]);
        }
    }
}

/// Q6_K: y = (d·scale)·(q − 32), q = 4 low bits from ql | 2 high bits from qh.
#[inline(always)]
pub(crate) unsafe fn decode_q6_k(b: &[u8; 210], out: &mut [f32; QK_K]) {
    let d = f16_at(b, 208);
    // SAFETY: AVX2 per the module contract.
    unsafe {
        let low4 = _mm256_set1_epi8(0x0f);
        let m2 = _mm256_set1_epi8(0x03);
        let m30 = _mm256_set1_epi8(0x30);
        let m0c = _mm256_set1_epi8(0x0c);
        let off = _mm256_set1_epi8(32);
        for h in 0..2 {
            let la = ld32b(sub32(b, 64 * h));
            let lb = ld32b(sub32(b, 64 * h + 32));
            let hv = ld32b(sub32(b, 128 + 32 * h));
            // Shifts are 16-bit but every value is masked to bits that stay inside its byte.
            let q1 = _mm256_or_si256(
                _mm256_and_si256(la, low4),
                _mm256_slli_epi16::<4>(_mm256_and_si256(hv, m2)),
            );
            let q2 = _mm256_or_si256(
                _mm256_and_si256(lb, low4),
                _mm256_slli_epi16::<2>(_mm256_and_si256(hv, m0c)),
            );
            let q3 = _mm256_or_si256(
                _mm256_and_si256(_mm256_srli_epi16::<4>(la), low4),
                _mm256_and_si256(hv, m30),
            );
            let q4 = _mm256_or_si256(
                _mm256_and_si256(_mm256_srli_epi16::<4>(lb), low4),
                _mm256_and_si256(_mm256_srli_epi16::<2>(hv), m30),
            );
            let sc = |i: usize| _mm256_set1_ps(d * f32::from(b[192 + 8 * h + i] as i8));
            let y = &mut out[128 * h..128 * h + 128];
            for (k, q) in [q1, q2, q3, q4].into_iter().enumerate() {
                let q = _mm256_sub_epi8(q, off);
                store32(
                    q,
                    sc(2 * k),
                    sc(2 * k + 1),
                    None,
                    &mut y[32 * k..32 * k + 32],
                );
            }
        }
    }
}
