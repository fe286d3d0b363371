//! Every CUDA kernel against the CPU backend's math on fresh random inputs of several sizes.
//!
//! Runs only with `--features cuda`, and skips (with a message on stderr) when the machine has no
//! CUDA driver or GPU, so CI without a GPU passes. The random seed is printed; set
//! `WORKER_ORCD_TEST_SEED` to replay a run.
//!
//! Error measures (thresholds are written next to each check):
//! - `rel_l2(a, ref) = ||a - ref||_2 / ||ref||_2`;
//! - `max_rel(a, ref) = max |a - ref| / max |ref|`.
#![cfg(feature = "cuda")]

use cudarc::driver::CudaSlice;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use worker_core::cpu::ops;
use worker_core::cuda::device::{self, Gpu};
use worker_core::cuda::kernels::{self as k, Heads, SampleOut, SampleSettings};
use worker_core::cuda::kv::{KvIndex, LayerCache};
use worker_core::cuda::weights::dtype;
use worker_core::model::RopeStyle;
use worker_core::quant::{self, GgmlType};
use worker_core::sampling::{self, SamplingParams};

fn gpu() -> Option<Gpu> {
    if let Some(why) = device::unavailable_reason(0) {
        eprintln!("SKIPPED (no CUDA GPU here: {why})");
        return None;
    }
    Some(Gpu::open(0).expect("opening cuda:0"))
}

fn rng(test: &str) -> ChaCha8Rng {
    let seed = std::env::var("WORKER_ORCD_TEST_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| rand::rng().random::<u64>());
    eprintln!("[{test}] seed {seed} (WORKER_ORCD_TEST_SEED={seed} replays it)");
    ChaCha8Rng::seed_from_u64(seed)
}

fn rand_vec(r: &mut impl Rng, n: usize, scale: f32) -> Vec<f32> {
    (0..n).map(|_| r.random_range(-scale..scale)).collect()
}

fn rel_l2(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    let num: f64 = a.iter().zip(b).map(|(x, y)| ((x - y) as f64).powi(2)).sum();
    let den: f64 = b.iter().map(|y| (*y as f64).powi(2)).sum();
    (num.sqrt() / den.sqrt().max(1e-30)) as f32
}

fn max_rel(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    let num = a
        .iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0f32, f32::max);
    let den = b.iter().map(|y| y.abs()).fold(0.0f32, f32::max);
    num / den.max(1e-30)
}

fn up<T: cudarc::driver::DeviceRepr>(g: &Gpu, v: &[T]) -> CudaSlice<T> {
    g.upload(v).expect("upload")
}

fn down<T: cudarc::driver::DeviceRepr>(g: &Gpu, b: &CudaSlice<T>) -> Vec<T> {
    g.download(b).expect("download")
}

fn zeros<T: cudarc::driver::DeviceRepr + cudarc::driver::ValidAsZeroBits>(
    g: &Gpu,
    n: usize,
) -> CudaSlice<T> {
    g.zeros(n).expect("alloc")
}

const QUANT_TYPES: [GgmlType; 8] = [
    GgmlType::Q4_0,
    GgmlType::Q4_1,
    GgmlType::Q5_0,
    GgmlType::Q5_1,
    GgmlType::Q8_0,
    GgmlType::Q4K,
    GgmlType::Q5K,
    GgmlType::Q6K,
];
const FLOAT_TYPES: [GgmlType; 3] = [GgmlType::F32, GgmlType::F16, GgmlType::BF16];

/// (N rows, K columns) shapes used for a type: K a multiple of its block, 896 where possible.
fn shapes(ty: GgmlType) -> Vec<(usize, usize)> {
    if ty.block_elements() == 256 {
        vec![(1, 256), (37, 1024), (130, 4864), (896, 256)]
    } else {
        vec![(1, 32), (37, 896), (130, 4864), (896, 128)]
    }
}

fn random_matrix(r: &mut impl Rng, ty: GgmlType, n: usize, kk: usize) -> Vec<u8> {
    quant::random_blocks(ty, n * kk / ty.block_elements(), r)
}

/// Host reference: `out[t, n] = dot(row n, x[t]) (+ bias) (+ prev)`.
#[allow(clippy::too_many_arguments)]
fn ref_matvec(
    ty: GgmlType,
    w: &[u8],
    x: &[f32],
    bias: Option<&[f32]>,
    prev: Option<&[f32]>,
    n: usize,
    kk: usize,
    t: usize,
) -> Vec<f32> {
    let rb = w.len() / n;
    let mut out = vec![0.0; t * n];
    for ti in 0..t {
        for ni in 0..n {
            let mut v = quant::dot_row(ty, &w[ni * rb..(ni + 1) * rb], &x[ti * kk..(ti + 1) * kk]);
            if let Some(b) = bias {
                v += b[ni];
            }
            if let Some(p) = prev {
                v += p[ti * n + ni];
            }
            out[ti * n + ni] = v;
        }
    }
    out
}

/// The activations as the device's q8_1 blocks represent them: per 32 values
/// `d = max|x| / 127`, `q = round_ties_even(x / d)`, value `f16(d) * q` (cuda-sys norm.cu).
fn q8_1_values(x: &[f32]) -> Vec<f32> {
    let mut out = Vec::with_capacity(x.len());
    for b in x.chunks(32) {
        let amax = b.iter().fold(0.0f32, |m, v| m.max(v.abs()));
        let d = amax / 127.0;
        let d16 = half::f16::from_f32(d).to_f32();
        out.extend(b.iter().map(|&v| {
            if amax == 0.0 {
                0.0
            } else {
                (v / d).round_ties_even() * d16
            }
        }));
    }
    out
}

#[test]
fn matvec_matches_cpu_dot_for_every_type() {
    let Some(g) = gpu() else { return };
    let mut r = rng("matvec");
    let s = g.stream.clone();
    for ty in QUANT_TYPES.into_iter().chain(FLOAT_TYPES) {
        let dt = dtype(ty).unwrap_or_else(|| panic!("{ty} has no CUDA type"));
        for (n, kk) in shapes(ty) {
            for t in [1usize, 3, 8, 11] {
                let w = random_matrix(&mut r, ty, n, kk);
                let x = rand_vec(&mut r, t * kk, 1.0);
                let bias = rand_vec(&mut r, n, 0.5);
                let prev = rand_vec(&mut r, t * n, 0.5);
                let (dw, dx, db) = (up(&g, &w), up(&g, &x), up(&g, &bias));
                let mut out = up(&g, &prev);
                let accumulate = t % 2 == 1;
                if ty.is_quantized() {
                    let mut q8 = zeros::<u8>(&g, k::q8_bytes(t, kk));
                    k::quantize_q8_1(&s, &dx, &mut q8, t, kk).unwrap();
                    k::matvec_q(&s, dt, &dw, &q8, Some(&db), &mut out, n, kk, t, accumulate)
                        .unwrap();
                } else {
                    k::matvec_f(&s, dt, &dw, &dx, Some(&db), &mut out, n, kk, t, accumulate)
                        .unwrap();
                }
                let got = down(&g, &out);
                let label = format!("{ty} N={n} K={kk} T={t} acc={accumulate}");
                // 1. Exact kernel math: against the CPU dot product of the weights with the
                //    activations as the device sees them (q8_1 values for quantized W, f32
                //    otherwise), per output, relative to sum |w_k x_k| (no cancellation).
                let xs = if ty.is_quantized() {
                    q8_1_values(&x)
                } else {
                    x.clone()
                };
                let rb = w.len() / n;
                let mut wrow = vec![0.0f32; kk];
                for ni in 0..n {
                    quant::dequantize_row(ty, &w[ni * rb..(ni + 1) * rb], &mut wrow).unwrap();
                    for ti in 0..t {
                        let xt = &xs[ti * kk..(ti + 1) * kk];
                        let dot = quant::dot_row(ty, &w[ni * rb..(ni + 1) * rb], xt);
                        let mag: f32 = wrow.iter().zip(xt).map(|(a, b)| (a * b).abs()).sum();
                        let base = bias[ni] + if accumulate { prev[ti * n + ni] } else { 0.0 };
                        let (gv, wv) = (got[ti * n + ni], dot + base);
                        // f32 sums in another order, the f16 activation sums used for offsets/mins:
                        // 4e-3 of the magnitude (a wrong kernel is off by O(magnitude)).
                        let tol = 4e-3 * mag + 1e-5 * (1.0 + base.abs());
                        assert!(
                            (gv - wv).abs() <= tol,
                            "{label} out[{ti},{ni}]: device {gv}, CPU {wv} (tolerance {tol:.2e})"
                        );
                    }
                }
                // 2. Against the exact f32 activations (what the CPU backend computes), in
                //    aggregate: q8_1 rounding costs ~0.4% in L2; 1.5% allowed.
                if n * t >= 32 {
                    let want = ref_matvec(
                        ty,
                        &w,
                        &x,
                        Some(&bias),
                        accumulate.then_some(&prev[..]),
                        n,
                        kk,
                        t,
                    );
                    let e2 = rel_l2(&got, &want);
                    let l2_max = if ty.is_quantized() { 0.015 } else { 1e-5 };
                    assert!(
                        e2 <= l2_max,
                        "{label}: rel_l2 vs exact activations {e2:.2e} > {l2_max}"
                    );
                }
            }
        }
        eprintln!("matvec {ty}: ok");
    }
}

#[test]
fn matvec_rejects_wrong_sizes() {
    let Some(g) = gpu() else { return };
    let s = g.stream.clone();
    let dt = dtype(GgmlType::Q8_0).unwrap();
    let w = zeros::<u8>(&g, 34 * 4); // 4 rows of K=32
    let q8 = zeros::<u8>(&g, k::q8_bytes(1, 32));
    let mut out = zeros::<f32>(&g, 3);
    let err = k::matvec_q(&s, dt, &w, &q8, None, &mut out, 4, 32, 1, false).unwrap_err();
    assert!(err.message.contains("out"), "{err}");
    let mut out = zeros::<f32>(&g, 8);
    assert!(
        k::matvec_q(&s, dt, &w, &q8, None, &mut out, 8, 32, 1, false).is_err(),
        "W too small must fail"
    );
    assert!(k::matvec_q(&s, dt, &w, &q8, None, &mut out, 4, 32, 1, false).is_ok());
}

#[test]
fn dequantize_and_get_rows_match_cpu() {
    let Some(g) = gpu() else { return };
    let mut r = rng("dequantize");
    let s = g.stream.clone();
    for ty in QUANT_TYPES.into_iter().chain(FLOAT_TYPES) {
        let dt = dtype(ty).unwrap();
        for (n, kk) in shapes(ty) {
            let w = random_matrix(&mut r, ty, n, kk);
            let rb = w.len() / n;
            let mut want = vec![0.0f32; n * kk];
            for i in 0..n {
                quant::dequantize_row(
                    ty,
                    &w[i * rb..(i + 1) * rb],
                    &mut want[i * kk..(i + 1) * kk],
                )
                .unwrap();
            }
            let dw = up(&g, &w);
            // To f32: bit-exact up to f32 rounding of d*q.
            let mut out = zeros::<f32>(&g, n * kk);
            k::dequantize(&s, dt, &dw, &mut out, dtype(GgmlType::F32).unwrap(), n, kk).unwrap();
            let got = down(&g, &out);
            let e = max_rel(&got, &want);
            assert!(
                e <= 1e-6,
                "dequantize {ty} {n}x{kk} to f32: max_rel {e:.2e} > 1e-6"
            );
            // To f16: within f16 rounding (2^-11 relative).
            let mut out16 = zeros::<u16>(&g, n * kk);
            k::dequantize(
                &s,
                dt,
                &dw,
                &mut out16,
                dtype(GgmlType::F16).unwrap(),
                n,
                kk,
            )
            .unwrap();
            let got16: Vec<f32> = down(&g, &out16)
                .into_iter()
                .map(|b| half::f16::from_bits(b).to_f32())
                .collect();
            let e = max_rel(&got16, &want);
            assert!(
                e <= 1e-3,
                "dequantize {ty} {n}x{kk} to f16: max_rel {e:.2e} > 1e-3"
            );
            // get_rows: gather random rows (with repeats), exact.
            let t = 7;
            let ids: Vec<i32> = (0..t).map(|_| r.random_range(0..n as i32)).collect();
            let mut rows = zeros::<f32>(&g, t * kk);
            k::get_rows(&s, dt, &dw, &up(&g, &ids), &mut rows, t, n, kk).unwrap();
            let got = down(&g, &rows);
            for (ti, &id) in ids.iter().enumerate() {
                let w_row = &want[id as usize * kk..(id as usize + 1) * kk];
                let e = max_rel(&got[ti * kk..(ti + 1) * kk], w_row);
                assert!(e <= 1e-6, "get_rows {ty} row {id}: max_rel {e:.2e}");
            }
        }
        eprintln!("dequantize/get_rows {ty}: ok");
    }
}

#[test]
fn get_rows_out_of_range_id_gives_nan_not_a_crash() {
    let Some(g) = gpu() else { return };
    let s = g.stream.clone();
    let mut r = rng("get_rows_oob");
    let ty = GgmlType::Q5_0;
    let w = random_matrix(&mut r, ty, 4, 64);
    let mut out = zeros::<f32>(&g, 2 * 64);
    k::get_rows(
        &s,
        dtype(ty).unwrap(),
        &up(&g, &w),
        &up(&g, &[1i32, 4]),
        &mut out,
        2,
        4,
        64,
    )
    .unwrap();
    let got = down(&g, &out);
    assert!(got[..64].iter().all(|v| v.is_finite()));
    assert!(
        got[64..].iter().all(|v| v.is_nan()),
        "id 4 of 4 rows must give NaN"
    );
}

/// Decodes q8_1 blocks: (d, s, qs) per 32 values.
fn decode_q8_1(bytes: &[u8]) -> Vec<(f32, f32, [i8; 32])> {
    bytes
        .chunks_exact(36)
        .map(|b| {
            let d = half::f16::from_le_bytes([b[0], b[1]]).to_f32();
            let s = half::f16::from_le_bytes([b[2], b[3]]).to_f32();
            let mut qs = [0i8; 32];
            for (q, &v) in qs.iter_mut().zip(&b[4..36]) {
                *q = v as i8;
            }
            (d, s, qs)
        })
        .collect()
}

fn check_q8_1(bytes: &[u8], x: &[f32], label: &str) {
    for (bi, (d, s, qs)) in decode_q8_1(bytes).into_iter().enumerate() {
        let xb = &x[bi * 32..(bi + 1) * 32];
        let amax = xb.iter().fold(0.0f32, |m, v| m.max(v.abs()));
        // d = amax / 127 (stored in f16).
        assert!(
            (d - amax / 127.0).abs() <= 1e-3 * amax / 127.0 + 1e-7,
            "{label} block {bi}: d {d} vs {}",
            amax / 127.0
        );
        for (j, (&q, &v)) in qs.iter().zip(xb).enumerate() {
            // Each value within half a step (plus the f16 rounding of d).
            assert!(
                (q as f32 * d - v).abs() <= 0.5 * d + 2e-3 * amax,
                "{label} block {bi} elem {j}: {q}*{d} vs {v}"
            );
        }
        let sum: i32 = qs.iter().map(|&q| q as i32).sum();
        let want_s = d * sum as f32;
        assert!(
            (s - want_s).abs() <= 1e-3 * want_s.abs() + 1e-3 * d,
            "{label} block {bi}: s {s} vs {want_s}"
        );
    }
}

#[test]
fn rmsnorm_and_q8_1_quantization_match_cpu() {
    let Some(g) = gpu() else { return };
    let mut r = rng("rmsnorm");
    let s = g.stream.clone();
    for (t, kk) in [(1usize, 896usize), (5, 896), (3, 4864), (17, 64)] {
        let x = rand_vec(&mut r, t * kk, 3.0);
        let w = rand_vec(&mut r, kk, 2.0);
        let mut want = vec![0.0; t * kk];
        ops::rmsnorm(&x, &w, 1e-6, &mut want);
        let (dx, dw) = (up(&g, &x), up(&g, &w));
        let mut out = zeros::<f32>(&g, t * kk);
        k::rmsnorm(&s, &dx, &dw, &mut out, t, kk, 1e-6).unwrap();
        let got = down(&g, &out);
        let e = max_rel(&got, &want);
        assert!(e <= 1e-5, "rmsnorm T={t} K={kk}: max_rel {e:.2e} > 1e-5");

        let mut q8 = zeros::<u8>(&g, k::q8_bytes(t, kk));
        k::quantize_q8_1(&s, &dx, &mut q8, t, kk).unwrap();
        check_q8_1(&down(&g, &q8), &x, &format!("quantize_q8_1 T={t} K={kk}"));
        let mut q8n = zeros::<u8>(&g, k::q8_bytes(t, kk));
        k::rmsnorm_quantize_q8_1(&s, &dx, &dw, &mut q8n, t, kk, 1e-6).unwrap();
        check_q8_1(
            &down(&g, &q8n),
            &want,
            &format!("rmsnorm_quantize_q8_1 T={t} K={kk}"),
        );
    }
}

#[test]
fn elementwise_ops_match_cpu() {
    let Some(g) = gpu() else { return };
    let mut r = rng("elementwise");
    let s = g.stream.clone();
    for n in [1usize, 1000, 4864 * 3 + 7] {
        let a = rand_vec(&mut r, n, 8.0);
        let b = rand_vec(&mut r, n, 2.0);
        // silu_mul
        let mut want = a.clone();
        ops::silu_mul(&mut want, &b);
        let mut da = up(&g, &a);
        k::silu_mul_inplace(&s, &mut da, &up(&g, &b), n).unwrap();
        let e = max_rel(&down(&g, &da), &want);
        assert!(e <= 1e-6, "silu_mul n={n}: max_rel {e:.2e} > 1e-6");
        // add
        let mut want = a.clone();
        ops::add_in_place(&mut want, &b);
        let mut da = up(&g, &a);
        k::add_inplace(&s, &mut da, &up(&g, &b), n).unwrap();
        assert_eq!(down(&g, &da), want, "add n={n}");
    }
    // add_bias
    let (t, nn) = (6, 896);
    let x = rand_vec(&mut r, t * nn, 1.0);
    let bias = rand_vec(&mut r, nn, 1.0);
    let mut want = x.clone();
    ops::add_bias(&mut want, &bias);
    let mut dx = up(&g, &x);
    k::add_bias(&s, &mut dx, &up(&g, &bias), t, nn).unwrap();
    assert_eq!(down(&g, &dx), want, "add_bias");
}

fn heads_small() -> [Heads; 3] {
    [
        Heads {
            n_heads: 14,
            n_kv_heads: 2,
            head_dim: 64,
        },
        Heads {
            n_heads: 8,
            n_kv_heads: 8,
            head_dim: 128,
        },
        Heads {
            n_heads: 4,
            n_kv_heads: 1,
            head_dim: 256,
        },
    ]
}

const BS: usize = 16;

fn f16s(v: &[u16]) -> Vec<f32> {
    v.iter()
        .map(|&b| half::f16::from_bits(b).to_f32())
        .collect()
}

/// A shuffled block table for `n_blocks` blocks out of a pool of `pool`.
fn shuffled_table(
    r: &mut impl Rng,
    pool: usize,
    n_blocks: usize,
    taken: &mut Vec<u32>,
) -> Vec<u32> {
    let mut out = Vec::new();
    while out.len() < n_blocks {
        let b = r.random_range(0..pool as u32);
        if !taken.contains(&b) {
            taken.push(b);
            out.push(b);
        }
    }
    out
}

#[test]
fn rope_and_kv_write_match_cpu_for_both_pairings() {
    let Some(g) = gpu() else { return };
    let mut r = rng("rope");
    let s = g.stream.clone();
    for h in heads_small() {
        for (style, neox) in [(RopeStyle::Neox, true), (RopeStyle::Adjacent, false)] {
            for (start, t) in [(0usize, 1usize), (0, 37), (1000, 5), (3000, 20)] {
                let base = if neox { 1_000_000.0 } else { 10_000.0 };
                let pool = (start + t).div_ceil(BS) + 3;
                let table = shuffled_table(&mut r, pool, (start + t).div_ceil(BS), &mut Vec::new());
                let mut cache = LayerCache::new(&s, pool, BS, h.n_kv_heads, h.head_dim).unwrap();
                let mut idx = KvIndex::new(&s, t, pool).unwrap();
                idx.set_prefill(&s, start, t, &table, pool, BS).unwrap();
                let q = rand_vec(&mut r, t * h.q_dim(), 2.0);
                let kk = rand_vec(&mut r, t * h.kv_dim(), 2.0);
                let v = rand_vec(&mut r, t * h.kv_dim(), 2.0);
                let (mut dq, mut dk) = (up(&g, &q), up(&g, &kk));
                k::rope_kv_write(
                    &s,
                    &mut dq,
                    &mut dk,
                    &up(&g, &v),
                    &idx,
                    &mut cache,
                    h,
                    base,
                    neox,
                )
                .unwrap();
                let inv = ops::rope_inv_freq(base, h.head_dim);
                let positions: Vec<usize> = (start..start + t).collect();
                let (mut wq, mut wk) = (q.clone(), kk.clone());
                ops::rope(&mut wq, &positions, h.n_heads, &inv, style);
                ops::rope(&mut wk, &positions, h.n_kv_heads, &inv, style);
                let (gq, gk) = (down(&g, &dq), down(&g, &dk));
                // Angles up to 3000 rad: f32 argument rounding allows ~1e-3 of the largest value.
                let (eq, ek) = (max_rel(&gq, &wq), max_rel(&gk, &wk));
                let label = format!(
                    "rope {style:?} H={}/{} hd={} start={start} T={t}",
                    h.n_heads, h.n_kv_heads, h.head_dim
                );
                assert!(
                    eq <= 2e-3 && ek <= 2e-3,
                    "{label}: q max_rel {eq:.2e}, k max_rel {ek:.2e} (≤ 2e-3)"
                );
                // The cache holds the rotated k and v (f16) at each position's block and slot.
                for (i, &p) in positions.iter().enumerate() {
                    let (ck, cv) = cache
                        .read_position(&s, table[p / BS] as usize, p % BS)
                        .unwrap();
                    let w = h.kv_dim();
                    let ekc = max_rel(&f16s(&ck), &wk[i * w..(i + 1) * w]);
                    let evc = max_rel(&f16s(&cv), &v[i * w..(i + 1) * w]);
                    assert!(
                        ekc <= 3e-3 && evc <= 1e-3,
                        "{label} pos {p}: cache k {ekc:.2e} (≤ 3e-3), v {evc:.2e} (≤ 1e-3)"
                    );
                }
            }
        }
    }
}

/// Reference attention for one query row `q [Hq, hd]` over keys/values `[n, Hkv, hd]`.
fn ref_attention(q: &[f32], keys: &[Vec<f32>], vals: &[Vec<f32>], h: Heads) -> Vec<f32> {
    let hd = h.head_dim;
    let group = h.n_heads / h.n_kv_heads;
    let scale = 1.0 / (hd as f32).sqrt();
    let mut out = vec![0.0f32; h.q_dim()];
    for hh in 0..h.n_heads {
        let kv = hh / group;
        let qh = &q[hh * hd..(hh + 1) * hd];
        let scores: Vec<f64> = keys
            .iter()
            .map(|kr| {
                qh.iter()
                    .zip(&kr[kv * hd..(kv + 1) * hd])
                    .map(|(a, b)| (*a as f64) * (*b as f64))
                    .sum::<f64>()
                    * scale as f64
            })
            .collect();
        let max = scores.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        let e: Vec<f64> = scores.iter().map(|s| (s - max).exp()).collect();
        let sum: f64 = e.iter().sum();
        for (j, w) in e.iter().enumerate() {
            for d in 0..hd {
                out[hh * hd + d] += (w / sum * vals[j][kv * hd + d] as f64) as f32;
            }
        }
    }
    out
}

/// Writes `n` random positions of one sequence into `cache` (via rope_kv_write) and returns
/// the cached keys and values as the kernels will read them.
#[allow(clippy::too_many_arguments)]
fn fill_sequence(
    g: &Gpu,
    r: &mut impl Rng,
    cache: &mut LayerCache,
    idx: &mut KvIndex,
    table: &[u32],
    n: usize,
    h: Heads,
) -> (Vec<Vec<f32>>, Vec<Vec<f32>>) {
    let s = g.stream.clone();
    let pool = cache.num_blocks();
    let mut off = 0;
    while off < n {
        let t = (n - off).min(64);
        idx.set_prefill(&s, off, t, table, pool, BS).unwrap();
        let mut dq = up(g, &rand_vec(r, t * h.q_dim(), 1.0));
        let mut dk = up(g, &rand_vec(r, t * h.kv_dim(), 1.0));
        let dv = up(g, &rand_vec(r, t * h.kv_dim(), 1.0));
        k::rope_kv_write(&s, &mut dq, &mut dk, &dv, idx, cache, h, 10000.0, true).unwrap();
        off += t;
    }
    let (mut ks, mut vs) = (Vec::new(), Vec::new());
    for p in 0..n {
        let (ck, cv) = cache
            .read_position(&s, table[p / BS] as usize, p % BS)
            .unwrap();
        ks.push(f16s(&ck));
        vs.push(f16s(&cv));
    }
    (ks, vs)
}

#[test]
fn prefill_attention_matches_reference_with_cached_prefix() {
    let Some(g) = gpu() else { return };
    let mut r = rng("attention_prefill");
    let s = g.stream.clone();
    for h in heads_small() {
        for (prefix, t) in [(0usize, 1usize), (0, 45), (40, 25), (300, 9)] {
            let n = prefix + t;
            let pool = n.div_ceil(BS) + 4;
            let table = shuffled_table(&mut r, pool, n.div_ceil(BS), &mut Vec::new());
            let mut cache = LayerCache::new(&s, pool, BS, h.n_kv_heads, h.head_dim).unwrap();
            let mut idx = KvIndex::new(&s, 64.max(t), pool).unwrap();
            let (ks, vs) = fill_sequence(&g, &mut r, &mut cache, &mut idx, &table, n, h);
            // The chunk's queries at positions prefix..n attend causally to 0..=pos.
            idx.set_prefill(&s, prefix, t, &table, pool, BS).unwrap();
            let q = rand_vec(&mut r, t * h.q_dim(), 1.0);
            let mut out = zeros::<f32>(&g, t * h.q_dim());
            k::attention_prefill(&s, &up(&g, &q), &cache, &idx, &mut out, h).unwrap();
            let got = down(&g, &out);
            let mut want = Vec::new();
            for i in 0..t {
                let p = prefix + i;
                want.extend(ref_attention(
                    &q[i * h.q_dim()..(i + 1) * h.q_dim()],
                    &ks[..=p],
                    &vs[..=p],
                    h,
                ));
            }
            let e = max_rel(&got, &want);
            assert!(
                e <= 2e-3,
                "attention_prefill H={}/{} hd={} prefix={prefix} T={t}: max_rel {e:.2e} > 2e-3",
                h.n_heads,
                h.n_kv_heads,
                h.head_dim
            );
        }
    }
}

#[test]
fn decode_attention_matches_reference_over_paged_sequences() {
    let Some(g) = gpu() else { return };
    let mut r = rng("attention_decode");
    let s = g.stream.clone();
    for h in heads_small() {
        // Several sequences of different lengths (crossing WK_ATTN_SPLIT chunks) in one pool.
        let lens = [1usize, 17, 128, 129, 300, 700];
        let pool: usize = lens.iter().map(|l| l.div_ceil(BS)).sum::<usize>() + 8;
        let mut cache = LayerCache::new(&s, pool, BS, h.n_kv_heads, h.head_dim).unwrap();
        let mut idx = KvIndex::new(&s, 64, pool * lens.len()).unwrap();
        let mut taken = Vec::new();
        let mut seqs = Vec::new();
        for &n in &lens {
            let table = shuffled_table(&mut r, pool, n.div_ceil(BS), &mut taken);
            let (ks, vs) = fill_sequence(&g, &mut r, &mut cache, &mut idx, &table, n, h);
            seqs.push((table, ks, vs));
        }
        // The query of each sequence sits at its last cached position.
        let view: Vec<(usize, &[u32])> = seqs
            .iter()
            .zip(&lens)
            .map(|((t, _, _), &n)| (n - 1, &t[..]))
            .collect();
        idx.set_decode(&s, &view, pool, BS).unwrap();
        let q = rand_vec(&mut r, lens.len() * h.q_dim(), 1.0);
        let max_ctx = idx.max_blocks() * BS;
        assert!(max_ctx >= 700);
        let mut scratch = zeros::<u8>(
            &g,
            k::attention_decode_scratch_bytes(lens.len(), h, max_ctx).unwrap(),
        );
        let mut out = zeros::<f32>(&g, lens.len() * h.q_dim());
        k::attention_decode(&s, &up(&g, &q), &cache, &idx, &mut out, &mut scratch, h).unwrap();
        let got = down(&g, &out);
        for (i, ((_, ks, vs), &n)) in seqs.iter().zip(&lens).enumerate() {
            let qd = h.q_dim();
            let want = ref_attention(&q[i * qd..(i + 1) * qd], &ks[..n], &vs[..n], h);
            let e = max_rel(&got[i * qd..(i + 1) * qd], &want);
            assert!(
                e <= 2e-3,
                "attention_decode H={}/{} hd={} seq {i} len {n}: max_rel {e:.2e} > 2e-3",
                h.n_heads,
                h.n_kv_heads,
                h.head_dim
            );
        }
    }
}

#[test]
fn kv_index_rejects_blocks_outside_the_pool() {
    let Some(g) = gpu() else { return };
    let s = g.stream.clone();
    let mut idx = KvIndex::new(&s, 8, 8).unwrap();
    assert!(
        idx.set_prefill(&s, 0, 4, &[7], 4, BS).is_err(),
        "block 7 of a 4-block pool"
    );
    assert!(
        idx.set_prefill(&s, 10, 8, &[0], 4, BS).is_err(),
        "table too short for positions 10..18"
    );
    assert!(
        idx.set_decode(&s, &[(16, &[0][..])], 4, BS).is_err(),
        "position 16 needs a second block"
    );
    assert!(idx.set_prefill(&s, 0, 4, &[3], 4, BS).is_ok());
}

#[test]
fn argmax_matches_host() {
    let Some(g) = gpu() else { return };
    let mut r = rng("argmax");
    let s = g.stream.clone();
    for (t, v) in [(1usize, 10usize), (3, 151_936), (5, 1000)] {
        let mut x = rand_vec(&mut r, t * v, 10.0);
        // A tie in row 0: the lowest index must win.
        let m = x[..v].iter().copied().fold(f32::NEG_INFINITY, f32::max);
        x[v - 1] = m;
        let mut out = zeros::<i32>(&g, t);
        k::argmax(&s, &up(&g, &x), &mut out, t, v).unwrap();
        let got = down(&g, &out);
        for ti in 0..t {
            assert_eq!(
                got[ti] as usize,
                sampling::argmax(&x[ti * v..(ti + 1) * v]),
                "argmax row {ti} of {t}x{v}"
            );
        }
    }
}

/// Test logits: a few large values over a long tail. For a large vocabulary the tail is kept
/// far below the peaks (as in a trained model): with a heavy tail of 150k tokens, the host's
/// sequential f32 cumulative sum drifts by ~1e-5 relative and a draw landing in the tail may pick
/// a neighbouring tail token, which is rounding, not a sampler difference.
fn logits(r: &mut impl Rng, v: usize) -> Vec<f32> {
    let (tail, boost) = if v > 10_000 {
        (-10.0f32..0.0, 12.0f32..20.0)
    } else {
        (-4.0..4.0, 5.0..12.0)
    };
    let mut l: Vec<f32> = (0..v).map(|_| r.random_range(tail.clone())).collect();
    for _ in 0..20 {
        let i = r.random_range(0..v);
        l[i] += r.random_range(boost.clone());
    }
    l
}

struct DeviceSampler {
    scratch: CudaSlice<u8>,
    u: CudaSlice<f32>,
    tok: CudaSlice<i32>,
    lse: CudaSlice<f32>,
    ti: CudaSlice<i32>,
    tl: CudaSlice<f32>,
}

impl DeviceSampler {
    fn new(g: &Gpu, v: usize) -> Self {
        DeviceSampler {
            scratch: zeros(g, k::sample_scratch_bytes(v).unwrap()),
            u: zeros(g, 1),
            tok: zeros(g, 1),
            lse: zeros(g, 1),
            ti: zeros(g, 8),
            tl: zeros(g, 8),
        }
    }

    fn run(
        &mut self,
        g: &Gpu,
        dl: &CudaSlice<f32>,
        v: usize,
        p: &SamplingParams,
        u: f32,
        n_top: usize,
    ) -> (u32, f32, Vec<i32>, Vec<f32>) {
        let s = g.stream.clone();
        s.memcpy_htod(&[u], &mut self.u).unwrap();
        let cfg = SampleSettings {
            top_k: p.top_k,
            top_p: p.top_p,
            min_p: p.min_p,
            temperature: p.temperature,
        };
        let mut ti = self.ti.slice_mut(..n_top);
        let mut tl = self.tl.slice_mut(..n_top);
        let o = SampleOut {
            token: &mut self.tok,
            logsumexp: &mut self.lse,
            top_ids: &mut ti,
            top_logits: &mut tl,
        };
        k::sample(&s, dl, v, &mut self.scratch, cfg, &self.u, n_top, o).unwrap();
        (
            down(g, &self.tok)[0] as u32,
            down(g, &self.lse)[0],
            g.download(&self.ti.slice(..n_top)).unwrap(),
            g.download(&self.tl.slice(..n_top)).unwrap(),
        )
    }
}

#[test]
fn device_sampler_picks_the_host_samplers_token() {
    let Some(g) = gpu() else { return };
    let mut r = rng("sample");
    let settings = [
        SamplingParams::greedy(),
        SamplingParams {
            temperature: 1.0,
            ..Default::default()
        },
        SamplingParams {
            temperature: 0.7,
            top_k: 40,
            ..Default::default()
        },
        SamplingParams {
            temperature: 0.8,
            top_p: 0.9,
            ..Default::default()
        },
        SamplingParams {
            temperature: 1.3,
            min_p: 0.05,
            ..Default::default()
        },
        SamplingParams {
            temperature: 0.6,
            top_k: 50,
            top_p: 0.95,
            min_p: 0.02,
            ..Default::default()
        },
        SamplingParams {
            temperature: 1.0,
            top_k: 1,
            ..Default::default()
        },
    ];
    let mut boundary = 0;
    let mut draws = 0;
    for v in [1000usize, 151_936] {
        let mut ds = DeviceSampler::new(&g, v);
        for _ in 0..3 {
            let l = logits(&mut r, v);
            let dl = up(&g, &l);
            for p in &settings {
                for _ in 0..20 {
                    let u: f32 = r.random();
                    let (tok, lse, ti, tl) = ds.run(&g, &dl, v, p, u, 5);
                    let (want, _) = sampling::sample_host(&l, p, &[], u, None);
                    draws += 1;
                    if tok != want {
                        // Only acceptable where u sits on a boundary between two tokens, within the
                        // f32 rounding of the two cumulative sums (|Δu| ≤ 1e-4).
                        let near = [-1e-4f32, 1e-4].iter().any(|du| {
                            sampling::sample_host(&l, p, &[], (u + du).clamp(0.0, 0.999_999), None)
                                .0
                                == tok
                        });
                        assert!(near, "V={v} {p:?} u={u}: device {tok}, host {want}");
                        boundary += 1;
                    }
                    let want_lse = sampling::logsumexp(&l);
                    assert!(
                        (lse - want_lse).abs() <= 1e-4 * want_lse.abs().max(1.0),
                        "logsumexp {lse} vs {want_lse}"
                    );
                    let top = sampling::top_n(&l, 5, want_lse);
                    for (j, (id, lp)) in top.iter().enumerate() {
                        assert_eq!(ti[j] as u32, *id, "top-{j} id");
                        assert!((tl[j] - want_lse - lp).abs() <= 1e-4, "top-{j} logit");
                    }
                }
            }
        }
    }
    eprintln!("sampler: {draws} draws, {boundary} on a rounding boundary");
    assert!(
        boundary * 50 <= draws,
        "too many boundary disagreements: {boundary} of {draws}"
    );
}

#[test]
fn repetition_penalty_matches_host() {
    let Some(g) = gpu() else { return };
    let mut r = rng("penalty");
    let s = g.stream.clone();
    let v = 5000;
    let l = logits(&mut r, v);
    let history: Vec<u32> = (0..80)
        .map(|_| r.random_range(0..v as u32))
        .chain([3, 3, 3, 9_999_999])
        .collect();
    let p = SamplingParams {
        repetition_penalty: 1.3,
        penalty_last_n: 64,
        ..Default::default()
    };
    let mut want = l.clone();
    sampling::apply_penalties(&mut want, &p, &history);
    let mut dl = up(&g, &l);
    let mut ids = zeros::<i32>(&g, v);
    let recent = &history[history.len() - 64..];
    k::repetition_penalty(&s, &mut dl, v, recent, &mut ids, 1.3).unwrap();
    assert_eq!(down(&g, &dl), want);
}

#[test]
fn f16_gemm_matches_cpu_dot_products() {
    let Some(g) = gpu() else { return };
    if !device::cublas_present() {
        eprintln!("SKIPPED (libcublas not found; set LD_LIBRARY_PATH to CUDA's lib64)");
        return;
    }
    let mut r = rng("gemm");
    let s = g.stream.clone();
    let blas = cudarc::cublas::CudaBlas::new(s.clone()).expect("cuBLAS handle");
    for (m, t, kk, ldc, col0) in [
        (1usize, 9usize, 32usize, 1usize, 0usize),
        (37, 12, 896, 100, 50),
        (300, 33, 4864, 896, 596),
    ] {
        for accumulate in [false, true] {
            // Weights of any type go through dequantize -> f16; here random Q5_0 rows.
            let ty = GgmlType::Q5_0;
            let w = random_matrix(&mut r, ty, m, kk);
            let x = rand_vec(&mut r, t * kk, 2.0);
            let prev = rand_vec(&mut r, t * ldc, 1.0);
            let mut w16 = zeros::<u16>(&g, m * kk);
            k::dequantize(
                &s,
                dtype(ty).unwrap(),
                &up(&g, &w),
                &mut w16,
                dtype(GgmlType::F16).unwrap(),
                m,
                kk,
            )
            .unwrap();
            let mut x16 = zeros::<u16>(&g, t * kk);
            k::f32_to_f16(&s, &up(&g, &x), &mut x16, t, kk).unwrap();
            let mut out = up(&g, &prev);
            k::gemm_f16(
                &blas,
                &s,
                &w16,
                m,
                &x16,
                t,
                kk,
                &mut out.slice_mut(..),
                ldc,
                col0,
                accumulate,
            )
            .unwrap();
            let got = down(&g, &out);
            // Reference on the f16-rounded inputs, in f64.
            let wf: Vec<f32> = down(&g, &w16)
                .into_iter()
                .map(|b| half::f16::from_bits(b).to_f32())
                .collect();
            let xf: Vec<f32> = x.iter().map(|&v| half::f16::from_f32(v).to_f32()).collect();
            for ti in 0..t {
                for c in 0..ldc {
                    let base = prev[ti * ldc + c];
                    let want = if c >= col0 && c < col0 + m {
                        let n = c - col0;
                        let dot: f64 = (0..kk)
                            .map(|i| wf[n * kk + i] as f64 * xf[ti * kk + i] as f64)
                            .sum();
                        let mag: f64 = (0..kk)
                            .map(|i| (wf[n * kk + i] as f64 * xf[ti * kk + i] as f64).abs())
                            .sum();
                        let want = dot as f32 + if accumulate { base } else { 0.0 };
                        let tol = 1e-4 * mag as f32 + 1e-5;
                        assert!(
                            (got[ti * ldc + c] - want).abs() <= tol,
                            "gemm m={m} t={t} k={kk} acc={accumulate} out[{ti},{c}]: {} vs {want}",
                            got[ti * ldc + c]
                        );
                        continue;
                    } else {
                        base
                    };
                    assert_eq!(
                        got[ti * ldc + c],
                        want,
                        "gemm wrote outside its columns at [{ti},{c}]"
                    );
                }
            }
        }
    }
}
