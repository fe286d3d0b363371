//! CPU dot products of a quantized weight row with f32 activations: the hot loop of the CPU
//! backend's matmuls.
//!
//! Each block is decoded once into a stack array of its final f32 values (the same values
//! `dequantize_row` gives) and multiplied into `LANES` independent accumulators, a shape LLVM
//! turns into packed multiply-adds. The same generic code is compiled twice: portable, and
//! inside `#[target_feature(enable = "avx2,fma")]` functions chosen at run time, so one binary
//! runs everywhere and uses AVX2/FMA where the CPU has them.

use super::GgmlType;
use super::float::{self, FLOAT_CHUNK};
use super::kquants::{self, QK_K};
use super::legacy::{self, QK};
use std::sync::OnceLock;

/// Independent accumulators: one 256-bit register of f32s. More independent chains do not
/// help here: decoding a block takes longer than the multiply-add latency it hides.
const LANES: usize = 8;

/// Activation vectors handled per pass in `dot_rows_multi`: each decoded block is used `TILE`
/// times while it is in registers/L1, and `TILE` accumulators fit in the 16 vector registers.
const TILE: usize = 8;

#[inline(always)]
fn madd<const FMA: bool>(acc: f32, a: f32, b: f32) -> f32 {
    // `mul_add` is a libm call unless the target has FMA; use it only where it is one instruction.
    if FMA { a.mul_add(b, acc) } else { acc + a * b }
}

#[inline(always)]
fn hsum(acc: [f32; LANES]) -> f32 {
    // Pairwise, the same order a vector reduction uses.
    let a: [f32; 4] = std::array::from_fn(|i| acc[i] + acc[i + 4]);
    (a[0] + a[2]) + (a[1] + a[3])
}

/// `acc += vals · x` over one decoded block.
#[inline(always)]
fn fma_block<const N: usize, const FMA: bool>(
    acc: &mut [f32; LANES],
    vals: &[f32; N],
    x: &[f32; N],
) {
    let (v, _) = vals.as_chunks::<LANES>();
    let (x, _) = x.as_chunks::<LANES>();
    for (v, x) in v.iter().zip(x) {
        for i in 0..LANES {
            acc[i] = madd::<FMA>(acc[i], v[i], x[i]);
        }
    }
}

/// A block format as seen by the generic loops: `N` values per `B` bytes. `ES` is the byte
/// size of one element for the float types (whose rows may end in a partial chunk, decoded
/// one element at a time by `elem`), 0 for the block-quantized types.
#[inline(always)]
fn dot_generic<const N: usize, const B: usize, const ES: usize, const FMA: bool>(
    row: &[u8],
    x: &[f32],
    decode: impl Fn(&[u8; B], &mut [f32; N]),
    elem: impl Fn(&[u8]) -> f32,
) -> f32 {
    let (blocks, row_tail) = row.as_chunks::<B>();
    let (xb, x_tail) = x.as_chunks::<N>();
    let mut acc = [0f32; LANES];
    let mut vals = [0f32; N];
    for (blk, xs) in blocks.iter().zip(xb) {
        decode(blk, &mut vals);
        fma_block::<N, FMA>(&mut acc, &vals, xs);
    }
    let mut sum = hsum(acc);
    if ES > 0 {
        for (e, &xv) in row_tail.chunks_exact(ES.max(1)).zip(x_tail) {
            sum += elem(e) * xv;
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
    const FMA: bool,
    const T: usize,
>(
    row: &[u8],
    xs: &[f32],
    k: usize,
    out: &mut [f32],
    decode: &impl Fn(&[u8; B], &mut [f32; N]),
    elem: &impl Fn(&[u8]) -> f32,
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
    let mut acc = [[0f32; LANES]; T];
    let mut vals = [0f32; N];
    for (bi, blk) in blocks[..n].iter().enumerate() {
        decode(blk, &mut vals);
        for t in 0..T {
            fma_block::<N, FMA>(&mut acc[t], &vals, &xblocks[t][bi]);
        }
    }
    for t in 0..T {
        let mut sum = hsum(acc[t]);
        if ES > 0 {
            let x_tail = xrows[t].get(n * N..).unwrap_or(&[]);
            for (e, &xv) in row_tail.chunks_exact(ES.max(1)).zip(x_tail) {
                sum += elem(e) * xv;
            }
        }
        if let Some(o) = out.get_mut(t) {
            *o = sum;
        }
    }
}

#[inline(always)]
fn dot_multi_generic<const N: usize, const B: usize, const ES: usize, const FMA: bool>(
    row: &[u8],
    xs: &[f32],
    k: usize,
    out: &mut [f32],
    decode: impl Fn(&[u8; B], &mut [f32; N]),
    elem: impl Fn(&[u8]) -> f32,
) {
    let mut t0 = 0;
    let n = out.len();
    while t0 + TILE <= n {
        dot_multi_tile::<N, B, ES, FMA, TILE>(
            row,
            &xs[t0 * k..],
            k,
            &mut out[t0..],
            &decode,
            &elem,
        );
        t0 += TILE;
    }
    while t0 < n {
        out[t0] = dot_generic::<N, B, ES, FMA>(row, &xs[t0 * k..(t0 + 1) * k], &decode, &elem);
        t0 += 1;
    }
}

fn no_elem(_: &[u8]) -> f32 {
    0.0
}
fn elem_f32(e: &[u8]) -> f32 {
    f32::from_le_bytes([e[0], e[1], e[2], e[3]])
}
fn elem_f16(e: &[u8]) -> f32 {
    float::f16_le([e[0], e[1]])
}
fn elem_bf16(e: &[u8]) -> f32 {
    float::bf16_to_f32(u16::from_le_bytes([e[0], e[1]]))
}

/// Expands `$f::<N, B, ES, $fma>($args.., decode, elem)` for the block format of `$ty`.
macro_rules! per_type {
    ($ty:expr, $f:ident, $fma:expr, ($($arg:expr),*)) => {
        match $ty {
            GgmlType::F32 => $f::<FLOAT_CHUNK, { 4 * FLOAT_CHUNK }, 4, $fma>($($arg,)* float::decode_f32, elem_f32),
            GgmlType::F16 => $f::<FLOAT_CHUNK, { 2 * FLOAT_CHUNK }, 2, $fma>($($arg,)* float::decode_f16, elem_f16),
            GgmlType::BF16 => $f::<FLOAT_CHUNK, { 2 * FLOAT_CHUNK }, 2, $fma>($($arg,)* float::decode_bf16, elem_bf16),
            GgmlType::Q4_0 => $f::<QK, 18, 0, $fma>($($arg,)* legacy::decode_q4_0, no_elem),
            GgmlType::Q4_1 => $f::<QK, 20, 0, $fma>($($arg,)* legacy::decode_q4_1, no_elem),
            GgmlType::Q5_0 => $f::<QK, 22, 0, $fma>($($arg,)* legacy::decode_q5_0, no_elem),
            GgmlType::Q5_1 => $f::<QK, 24, 0, $fma>($($arg,)* legacy::decode_q5_1, no_elem),
            GgmlType::Q8_0 => $f::<QK, 34, 0, $fma>($($arg,)* legacy::decode_q8_0, no_elem),
            GgmlType::Q2K => $f::<QK_K, 84, 0, $fma>($($arg,)* kquants::decode_q2_k, no_elem),
            GgmlType::Q3K => $f::<QK_K, 110, 0, $fma>($($arg,)* kquants::decode_q3_k, no_elem),
            GgmlType::Q4K => $f::<QK_K, 144, 0, $fma>($($arg,)* kquants::decode_q4_k, no_elem),
            GgmlType::Q5K => $f::<QK_K, 176, 0, $fma>($($arg,)* kquants::decode_q5_k, no_elem),
            GgmlType::Q6K => $f::<QK_K, 210, 0, $fma>($($arg,)* kquants::decode_q6_k, no_elem),
        }
    };
}

/// Whether the portable build may use `mul_add` (aarch64 always has FMA).
const PORTABLE_FMA: bool = cfg!(target_arch = "aarch64");

fn dot_portable(ty: GgmlType, row: &[u8], x: &[f32]) -> f32 {
    per_type!(ty, dot_generic, PORTABLE_FMA, (row, x))
}

fn multi_portable(ty: GgmlType, row: &[u8], xs: &[f32], k: usize, out: &mut [f32]) {
    per_type!(ty, dot_multi_generic, PORTABLE_FMA, (row, xs, k, out))
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use super::*;

    /// # Safety
    /// The CPU must support AVX2 and FMA.
    #[target_feature(enable = "avx2,fma")]
    unsafe fn dot_avx2(ty: GgmlType, row: &[u8], x: &[f32]) -> f32 {
        per_type!(ty, dot_generic, true, (row, x))
    }

    /// # Safety
    /// The CPU must support AVX2 and FMA.
    #[target_feature(enable = "avx2,fma")]
    unsafe fn multi_avx2(ty: GgmlType, row: &[u8], xs: &[f32], k: usize, out: &mut [f32]) {
        per_type!(ty, dot_multi_generic, true, (row, xs, k, out))
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
