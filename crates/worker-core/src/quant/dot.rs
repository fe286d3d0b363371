//! CPU dot products of a quantized weight row with f32 activations: the hot loop of the CPU
//! backend's matmuls.
//!
//! Each block is decoded once into a stack array of its final f32 values (the same values
//! `dequantize_row` gives) and multiplied into independent accumulators. The loops are generic
//! over a [`Kernel`]: a portable one (plain f32 lanes that LLVM may vectorize) and, on x86-64,
//! an AVX2+FMA one written with intrinsics (LLVM's auto-vectorizer split the portable lanes
//! into 2-wide pieces there, 3-4x slower), inside `#[target_feature]` functions chosen at run
//! time so one binary runs everywhere.

use super::GgmlType;
use super::float::{self, FLOAT_CHUNK};
use super::kquants::{self, QK_K};
use super::legacy::{self, QK};
use std::sync::OnceLock;

/// Activation vectors handled per pass in `dot_rows_multi`: each decoded block is used `TILE`
/// times while it is in L1, and `TILE` accumulators fit in the 16 vector registers.
const TILE: usize = 8;

/// The arithmetic the generic loops are written against.
trait Kernel {
    /// `dot_row`'s accumulator: several independent chains, so consecutive multiply-adds do
    /// not wait on each other's latency.
    type Acc: Copy;
    /// One activation vector's accumulator in `dot_rows_multi` (the `TILE` vectors already
    /// give independent chains).
    type Acc1: Copy;
    fn zero() -> Self::Acc;
    fn zero1() -> Self::Acc1;
    fn fma_block<const N: usize>(acc: &mut Self::Acc, vals: &[f32; N], x: &[f32; N]);
    /// `acc[t] += vals · x[t]` for every vector of the tile, each 8 values of `vals` loaded once.
    fn fma_block_tile<const N: usize, const T: usize>(
        acc: &mut [Self::Acc1; T],
        vals: &[f32; N],
        x: [&[f32; N]; T],
    );
    fn hsum(acc: Self::Acc) -> f32;
    fn hsum1(acc: Self::Acc1) -> f32;
    fn decode<const N: usize, const B: usize, D: Decode<N, B>>(b: &[u8; B], out: &mut [f32; N]);
}

/// Plain f32 lanes. `FMA` selects `mul_add`, which is a libm call unless the target has FMA.
struct Portable<const FMA: bool>;

/// Lanes of the portable accumulator: four 8-wide chains.
const LANES: usize = 32;
/// Lanes per vector in the portable multi-vector accumulator.
const LANES1: usize = 8;

#[inline(always)]
fn madd<const FMA: bool>(acc: f32, a: f32, b: f32) -> f32 {
    if FMA { a.mul_add(b, acc) } else { acc + a * b }
}

/// Sum of the lanes: halves added pairwise, the order a vector reduction uses.
#[inline(always)]
fn hsum_lanes<const L: usize>(acc: [f32; L]) -> f32 {
    let mut a = acc;
    let mut n = L;
    while n > 1 {
        n /= 2;
        for i in 0..n {
            a[i] += a[i + n];
        }
    }
    a[0]
}

#[inline(always)]
fn fma_lanes<const N: usize, const L: usize, const FMA: bool>(
    acc: &mut [f32; L],
    vals: &[f32; N],
    x: &[f32; N],
) {
    const {
        assert!(
            N.is_multiple_of(L),
            "a block must be whole accumulator widths"
        )
    };
    let (v, _) = vals.as_chunks::<L>();
    let (x, _) = x.as_chunks::<L>();
    for (v, x) in v.iter().zip(x) {
        for i in 0..L {
            acc[i] = madd::<FMA>(acc[i], v[i], x[i]);
        }
    }
}

impl<const FMA: bool> Kernel for Portable<FMA> {
    type Acc = [f32; LANES];
    type Acc1 = [f32; LANES1];
    #[inline(always)]
    fn zero() -> Self::Acc {
        [0.0; LANES]
    }
    #[inline(always)]
    fn zero1() -> Self::Acc1 {
        [0.0; LANES1]
    }
    #[inline(always)]
    fn fma_block<const N: usize>(acc: &mut Self::Acc, vals: &[f32; N], x: &[f32; N]) {
        fma_lanes::<N, LANES, FMA>(acc, vals, x)
    }
    #[inline(always)]
    fn fma_block_tile<const N: usize, const T: usize>(
        acc: &mut [Self::Acc1; T],
        vals: &[f32; N],
        x: [&[f32; N]; T],
    ) {
        for t in 0..T {
            fma_lanes::<N, LANES1, FMA>(&mut acc[t], vals, x[t]);
        }
    }
    #[inline(always)]
    fn hsum(acc: Self::Acc) -> f32 {
        hsum_lanes(acc)
    }
    #[inline(always)]
    fn hsum1(acc: Self::Acc1) -> f32 {
        hsum_lanes(acc)
    }
    #[inline(always)]
    fn decode<const N: usize, const B: usize, D: Decode<N, B>>(b: &[u8; B], out: &mut [f32; N]) {
        D::decode(b, out)
    }
}

/// `Σ row · x` over whole blocks; `ES` is the byte size of one element for the float types
/// (whose rows may end in a partial chunk, decoded one element at a time), 0 for quantized
/// types.
#[inline(always)]
fn dot_generic<const N: usize, const B: usize, const ES: usize, K: Kernel, D: Decode<N, B>>(
    row: &[u8],
    x: &[f32],
) -> f32 {
    let (blocks, row_tail) = row.as_chunks::<B>();
    let (xb, x_tail) = x.as_chunks::<N>();
    let mut acc = K::zero();
    let mut vals = [0f32; N];
    for (blk, xs) in blocks.iter().zip(xb) {
        K::decode::<N, B, D>(blk, &mut vals);
        K::fma_block(&mut acc, &vals, xs);
    }
    let mut sum = K::hsum(acc);
    if ES > 0 {
        for (e, &xv) in row_tail.chunks_exact(ES.max(1)).zip(x_tail) {
            sum += D::elem(e) * xv;
        }
    }
    sum
}

/// `out[t] = row · xs[t*k..(t+1)*k]` for `T` vectors at once, decoding each block once.
#[inline(always)]
fn dot_multi_tile<
    const N: usize,
    const B: usize,
    const ES: usize,
    const T: usize,
    K: Kernel,
    D: Decode<N, B>,
>(
    row: &[u8],
    xs: &[f32],
    k: usize,
    out: &mut [f32],
) {
    let (blocks, row_tail) = row.as_chunks::<B>();
    let xrows: [&[f32]; T] = std::array::from_fn(|t| xs.get(t * k..(t + 1) * k).unwrap_or(&[]));
    let xblocks: [&[[f32; N]]; T] = std::array::from_fn(|t| xrows[t].as_chunks::<N>().0);
    let n = xblocks
        .iter()
        .map(|b| b.len())
        .min()
        .unwrap_or(0)
        .min(blocks.len());
    let mut acc = [K::zero1(); T];
    let mut vals = [0f32; N];
    for (bi, blk) in blocks[..n].iter().enumerate() {
        K::decode::<N, B, D>(blk, &mut vals);
        K::fma_block_tile(&mut acc, &vals, std::array::from_fn(|t| &xblocks[t][bi]));
    }
    for t in 0..T {
        let mut sum = K::hsum1(acc[t]);
        if ES > 0 {
            let x_tail = xrows[t].get(n * N..).unwrap_or(&[]);
            for (e, &xv) in row_tail.chunks_exact(ES.max(1)).zip(x_tail) {
                sum += D::elem(e) * xv;
            }
        }
        if let Some(o) = out.get_mut(t) {
            *o = sum;
        }
    }
}

#[inline(always)]
fn dot_multi_generic<
    const N: usize,
    const B: usize,
    const ES: usize,
    K: Kernel,
    D: Decode<N, B>,
>(
    row: &[u8],
    xs: &[f32],
    k: usize,
    out: &mut [f32],
) {
    let mut t0 = 0;
    let n = out.len();
    while t0 + TILE <= n {
        dot_multi_tile::<N, B, ES, TILE, K, D>(row, &xs[t0 * k..], k, &mut out[t0..]);
        t0 += TILE;
    }
    while t0 < n {
        out[t0] = dot_generic::<N, B, ES, K, D>(row, &xs[t0 * k..(t0 + 1) * k]);
        t0 += 1;
    }
}

/// A block format for the generic loops. Implemented on marker types and called as
/// `D::decode` so the `#[inline(always)]` decoders are inlined into the AVX2 functions
/// (a function pointer or `Fn` value would be called out of line, compiled without AVX2).
trait Decode<const N: usize, const B: usize> {
    fn decode(b: &[u8; B], out: &mut [f32; N]);
    /// The decoder for the AVX2 kernel: the same values, hand-vectorized where the
    /// auto-vectorized one is slow.
    #[cfg(target_arch = "x86_64")]
    #[inline(always)]
    fn decode_avx2(b: &[u8; B], out: &mut [f32; N]) {
        Self::decode(b, out)
    }
    /// One element of a float row's partial last chunk (never called for quantized types).
    #[inline(always)]
    fn elem(_: &[u8]) -> f32 {
        0.0
    }
}

macro_rules! block_format {
    ($name:ident, $n:expr, $b:expr, $decode:path $(, avx2 = $avx2:path)? $(, elem = $elem:expr)?) => {
        pub(super) struct $name;
        impl Decode<{ $n }, { $b }> for $name {
            #[inline(always)]
            fn decode(b: &[u8; $b], out: &mut [f32; $n]) {
                $decode(b, out)
            }
            $(
            #[cfg(target_arch = "x86_64")]
            #[inline(always)]
            fn decode_avx2(b: &[u8; $b], out: &mut [f32; $n]) {
                // SAFETY: `decode_avx2` is only called by the AVX2 kernel, which only runs
                // after run-time detection of AVX2 and FMA.
                unsafe { $avx2(b, out) }
            }
            )?
            $(
            #[inline(always)]
            fn elem(e: &[u8]) -> f32 {
                ($elem)(e)
            }
            )?
        }
    };
}

#[rustfmt::skip]
mod formats {
    use super::*;
    #[cfg(target_arch = "x86_64")]
    use super::super::avx2;
    block_format!(F32Fmt, FLOAT_CHUNK, 4 * FLOAT_CHUNK, float::decode_f32,
        elem = |e: &[u8]| f32::from_le_bytes([e[0], e[1], e[2], e[3]]));
    block_format!(F16Fmt, FLOAT_CHUNK, 2 * FLOAT_CHUNK, float::decode_f16,
        elem = |e: &[u8]| float::f16_le([e[0], e[1]]));
    block_format!(Bf16Fmt, FLOAT_CHUNK, 2 * FLOAT_CHUNK, float::decode_bf16,
        elem = |e: &[u8]| float::bf16_to_f32(u16::from_le_bytes([e[0], e[1]])));
    block_format!(Q4_0Fmt, QK, 18, legacy::decode_q4_0, avx2 = avx2::decode_q4_0);
    block_format!(Q4_1Fmt, QK, 20, legacy::decode_q4_1, avx2 = avx2::decode_q4_1);
    block_format!(Q5_0Fmt, QK, 22, legacy::decode_q5_0, avx2 = avx2::decode_q5_0);
    block_format!(Q5_1Fmt, QK, 24, legacy::decode_q5_1, avx2 = avx2::decode_q5_1);
    block_format!(Q8_0Fmt, QK, 34, legacy::decode_q8_0, avx2 = avx2::decode_q8_0);
    block_format!(Q2KFmt, QK_K, 84, kquants::decode_q2_k);
    block_format!(Q3KFmt, QK_K, 110, kquants::decode_q3_k);
    block_format!(Q4KFmt, QK_K, 144, kquants::decode_q4_k, avx2 = avx2::decode_q4_k);
    block_format!(Q5KFmt, QK_K, 176, kquants::decode_q5_k, avx2 = avx2::decode_q5_k);
    block_format!(Q6KFmt, QK_K, 210, kquants::decode_q6_k, avx2 = avx2::decode_q6_k);
}
use formats::*;

/// Expands `$f::<N, B, ES, $k, Format>($args..)` for the block format of `$ty`.
macro_rules! per_type {
    ($ty:expr, $f:ident, $k:ty, ($($arg:expr),*)) => {
        match $ty {
            GgmlType::F32 => $f::<FLOAT_CHUNK, { 4 * FLOAT_CHUNK }, 4, $k, F32Fmt>($($arg),*),
            GgmlType::F16 => $f::<FLOAT_CHUNK, { 2 * FLOAT_CHUNK }, 2, $k, F16Fmt>($($arg),*),
            GgmlType::BF16 => $f::<FLOAT_CHUNK, { 2 * FLOAT_CHUNK }, 2, $k, Bf16Fmt>($($arg),*),
            GgmlType::Q4_0 => $f::<QK, 18, 0, $k, Q4_0Fmt>($($arg),*),
            GgmlType::Q4_1 => $f::<QK, 20, 0, $k, Q4_1Fmt>($($arg),*),
            GgmlType::Q5_0 => $f::<QK, 22, 0, $k, Q5_0Fmt>($($arg),*),
            GgmlType::Q5_1 => $f::<QK, 24, 0, $k, Q5_1Fmt>($($arg),*),
            GgmlType::Q8_0 => $f::<QK, 34, 0, $k, Q8_0Fmt>($($arg),*),
            GgmlType::Q2K => $f::<QK_K, 84, 0, $k, Q2KFmt>($($arg),*),
            GgmlType::Q3K => $f::<QK_K, 110, 0, $k, Q3KFmt>($($arg),*),
            GgmlType::Q4K => $f::<QK_K, 144, 0, $k, Q4KFmt>($($arg),*),
            GgmlType::Q5K => $f::<QK_K, 176, 0, $k, Q5KFmt>($($arg),*),
            GgmlType::Q6K => $f::<QK_K, 210, 0, $k, Q6KFmt>($($arg),*),
        }
    };
}

/// Whether the portable build may use `mul_add` (aarch64 always has FMA).
type PortableKernel = Portable<{ cfg!(target_arch = "aarch64") }>;

fn dot_portable(ty: GgmlType, row: &[u8], x: &[f32]) -> f32 {
    per_type!(ty, dot_generic, PortableKernel, (row, x))
}

fn multi_portable(ty: GgmlType, row: &[u8], xs: &[f32], k: usize, out: &mut [f32]) {
    per_type!(ty, dot_multi_generic, PortableKernel, (row, xs, k, out))
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use super::super::avx2;
    use super::*;
    use std::arch::x86_64::*;

    /// The AVX2+FMA kernel. Its methods use AVX2 intrinsics, so it must only be used inside
    /// `dot_avx2`/`multi_avx2`, which run only after run-time feature detection; the type is
    /// private to this module to keep it that way.
    struct Avx2;

    impl Kernel for Avx2 {
        type Acc = [__m256; 4];
        type Acc1 = __m256;
        #[inline(always)]
        fn zero() -> Self::Acc {
            // SAFETY (all methods): only reached from the `target_feature` functions below.
            unsafe { [_mm256_setzero_ps(); 4] }
        }
        #[inline(always)]
        fn zero1() -> Self::Acc1 {
            unsafe { _mm256_setzero_ps() }
        }
        #[inline(always)]
        fn fma_block<const N: usize>(acc: &mut Self::Acc, vals: &[f32; N], x: &[f32; N]) {
            const { assert!(N.is_multiple_of(32)) };
            let (v, _) = vals.as_chunks::<8>();
            let (x, _) = x.as_chunks::<8>();
            // Four named accumulators and constant indices: with an iterator and `acc[i % 4]`
            // the debug-assertion build kept the accumulators in memory.
            let [mut a0, mut a1, mut a2, mut a3] = *acc;
            for c in 0..N / 32 {
                let i = 4 * c;
                // SAFETY: AVX2 (see `zero`).
                unsafe {
                    a0 = _mm256_fmadd_ps(avx2::ld8(&v[i]), avx2::ld8(&x[i]), a0);
                    a1 = _mm256_fmadd_ps(avx2::ld8(&v[i + 1]), avx2::ld8(&x[i + 1]), a1);
                    a2 = _mm256_fmadd_ps(avx2::ld8(&v[i + 2]), avx2::ld8(&x[i + 2]), a2);
                    a3 = _mm256_fmadd_ps(avx2::ld8(&v[i + 3]), avx2::ld8(&x[i + 3]), a3);
                }
            }
            *acc = [a0, a1, a2, a3];
        }
        #[inline(always)]
        fn fma_block_tile<const N: usize, const T: usize>(
            acc: &mut [Self::Acc1; T],
            vals: &[f32; N],
            x: [&[f32; N]; T],
        ) {
            const { assert!(N.is_multiple_of(8)) };
            let (v, _) = vals.as_chunks::<8>();
            let x: [&[[f32; 8]]; T] = std::array::from_fn(|t| x[t].as_chunks::<8>().0);
            for (c, v) in v.iter().enumerate() {
                let v = avx2::ld8(v);
                for t in 0..T {
                    // SAFETY: AVX2 (see `zero`).
                    acc[t] = unsafe { _mm256_fmadd_ps(v, avx2::ld8(&x[t][c]), acc[t]) };
                }
            }
        }
        #[inline(always)]
        fn hsum(acc: Self::Acc) -> f32 {
            unsafe {
                let a = _mm256_add_ps(_mm256_add_ps(acc[0], acc[1]), _mm256_add_ps(acc[2], acc[3]));
                Self::hsum1(a)
            }
        }
        #[inline(always)]
        fn hsum1(a: Self::Acc1) -> f32 {
            unsafe {
                let s = _mm_add_ps(_mm256_castps256_ps128(a), _mm256_extractf128_ps(a, 1));
                let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
                let s = _mm_add_ss(s, _mm_shuffle_ps(s, s, 1));
                _mm_cvtss_f32(s)
            }
        }
        #[inline(always)]
        fn decode<const N: usize, const B: usize, D: Decode<N, B>>(
            b: &[u8; B],
            out: &mut [f32; N],
        ) {
            D::decode_avx2(b, out)
        }
    }

    /// # Safety
    /// The CPU must support AVX2 and FMA.
    #[target_feature(enable = "avx2,fma")]
    unsafe fn dot_avx2(ty: GgmlType, row: &[u8], x: &[f32]) -> f32 {
        per_type!(ty, dot_generic, Avx2, (row, x))
    }

    /// # Safety
    /// The CPU must support AVX2 and FMA.
    #[target_feature(enable = "avx2,fma")]
    unsafe fn multi_avx2(ty: GgmlType, row: &[u8], xs: &[f32], k: usize, out: &mut [f32]) {
        per_type!(ty, dot_multi_generic, Avx2, (row, xs, k, out))
    }

    // Only installed by `kernels()` after `is_x86_feature_detected!` confirmed both features.
    pub(super) fn dot_avx2_checked(ty: GgmlType, row: &[u8], x: &[f32]) -> f32 {
        // SAFETY: see above; this function is only reachable when AVX2 and FMA are present.
        unsafe { dot_avx2(ty, row, x) }
    }

    pub(super) fn multi_avx2_checked(
        ty: GgmlType,
        row: &[u8],
        xs: &[f32],
        k: usize,
        out: &mut [f32],
    ) {
        // SAFETY: as for `dot_avx2_checked`.
        unsafe { multi_avx2(ty, row, xs, k, out) }
    }

    pub(super) fn has_avx2_fma() -> bool {
        std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma")
    }
}

struct Kernels {
    dot: fn(GgmlType, &[u8], &[f32]) -> f32,
    multi: fn(GgmlType, &[u8], &[f32], usize, &mut [f32]),
    name: &'static str,
}

static KERNELS: OnceLock<Kernels> = OnceLock::new();

fn kernels() -> &'static Kernels {
    KERNELS.get_or_init(|| {
        #[cfg(target_arch = "x86_64")]
        if x86::has_avx2_fma() {
            return Kernels {
                dot: x86::dot_avx2_checked,
                multi: x86::multi_avx2_checked,
                name: "avx2+fma",
            };
        }
        Kernels {
            dot: dot_portable,
            multi: multi_portable,
            name: "portable",
        }
    })
}

/// Which dot-product implementation this CPU runs: `"avx2+fma"` or `"portable"`.
pub fn dot_kernel_name() -> &'static str {
    kernels().name
}

/// `Σ dequant(row)[i] · x[i]`, in f32, without allocating.
///
/// `row` is one row of whole blocks of type `ty` and `x` holds as many values as the row
/// (`row.len() / ty.block_bytes() * ty.block_elements()`). This is a hot-path contract, not
/// validated input: a length mismatch is a caller bug, caught by a debug assertion; in release
/// builds the product runs over the shorter of the two and never reads out of bounds.
pub fn dot_row(ty: GgmlType, row: &[u8], x: &[f32]) -> f32 {
    debug_assert_eq!(
        row.len() % ty.block_bytes(),
        0,
        "{ty} row of {} bytes",
        row.len()
    );
    debug_assert_eq!(
        row.len() / ty.block_bytes() * ty.block_elements(),
        x.len(),
        "{ty} row vs x length"
    );
    (kernels().dot)(ty, row, x)
}

/// `out[t] = Σ dequant(row)[i] · xs[t·k + i]` for `t` in `0..out.len()`: one weight row against
/// several activation vectors of length `k` (the row's element count), decoding each block
/// once per group of vectors rather than once per vector (the prompt/prefill path).
///
/// Same contract as [`dot_row`]; additionally `xs.len()` must be at least `out.len() · k`.
pub fn dot_rows_multi(ty: GgmlType, row: &[u8], xs: &[f32], k: usize, out: &mut [f32]) {
    debug_assert_eq!(
        row.len() / ty.block_bytes() * ty.block_elements(),
        k,
        "{ty} row vs k"
    );
    debug_assert!(
        xs.len() >= out.len() * k,
        "xs holds {} values, need {}",
        xs.len(),
        out.len() * k
    );
    if xs.len() < out.len().saturating_mul(k) {
        // Release builds: never index past `xs`; give the vectors that are present.
        let n = xs.len().checked_div(k).unwrap_or(0).min(out.len());
        out[n..].fill(0.0);
        return (kernels().multi)(ty, row, xs, k, &mut out[..n]);
    }
    (kernels().multi)(ty, row, xs, k, out)
}

/// The portable kernels, bypassing run-time dispatch (tests compare both paths).
pub fn dot_row_portable(ty: GgmlType, row: &[u8], x: &[f32]) -> f32 {
    dot_portable(ty, row, x)
}

#[cfg(all(test, target_arch = "x86_64"))]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};

    /// The hand-vectorized decoders must give exactly the scalar decoders' values on any bytes
    /// at all, including scale fields that decode to NaN, infinity or subnormals.
    fn same_as_scalar<const N: usize, const B: usize, D: Decode<N, B>>(name: &str) {
        if !x86::has_avx2_fma() {
            eprintln!("SKIPPED: no AVX2+FMA on this CPU");
            return;
        }
        let mut r = rand_chacha::ChaCha8Rng::seed_from_u64(B as u64);
        for i in 0..2000 {
            let mut b = [0u8; B];
            r.fill(&mut b[..]);
            let (mut want, mut got) = ([0f32; N], [0f32; N]);
            D::decode(&b, &mut want);
            D::decode_avx2(&b, &mut got);
            for j in 0..N {
                assert!(
                    want[j].to_bits() == got[j].to_bits() || (want[j].is_nan() && got[j].is_nan()),
                    "{name} block {i} element {j}: scalar {} vs avx2 {}",
                    want[j],
                    got[j]
                );
            }
        }
    }

    #[test]
    fn avx2_decoders_are_bit_exact() {
        same_as_scalar::<QK, 18, Q4_0Fmt>("Q4_0");
        same_as_scalar::<QK, 20, Q4_1Fmt>("Q4_1");
        same_as_scalar::<QK, 22, Q5_0Fmt>("Q5_0");
        same_as_scalar::<QK, 24, Q5_1Fmt>("Q5_1");
        same_as_scalar::<QK, 34, Q8_0Fmt>("Q8_0");
        same_as_scalar::<QK_K, 144, Q4KFmt>("Q4_K");
        same_as_scalar::<QK_K, 176, Q5KFmt>("Q5_K");
        same_as_scalar::<QK_K, 210, Q6KFmt>("Q6_K");
    }
}
