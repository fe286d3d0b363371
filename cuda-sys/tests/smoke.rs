//! GPU smoke tests of the kernels against small Rust references written from BRIEF.md's formulas.
//! Each test prints "skipped" and passes when no CUDA device is visible (development machines,
//! CI); on a GPU machine run `cargo test -p cuda-sys --test smoke -- --nocapture`.
//!
//! Tolerances are normalized errors (||gpu - ref|| / ||ref||) unless said otherwise.

use std::ffi::{c_int, c_void};

use cuda_sys::*;
use half::f16;

// ---- device plumbing ---------------------------------------------------------------------------

fn ok(code: c_int) {
    if let Err(e) = check(code) {
        panic!("{e}");
    }
}

fn gpu_present(test: &str) -> bool {
    let mut n = 0;
    // SAFETY: out-parameter only.
    let st = unsafe { wk_device_count(&mut n) };
    if st != 0 || n == 0 {
        let why = check(st)
            .err()
            .map_or_else(|| "0 devices".to_string(), |e| e.to_string());
        eprintln!("{test}: skipped, no CUDA device ({why})");
        return false;
    }
    true
}

/// An owned device allocation (freed on drop).
struct Dev {
    ptr: *mut c_void,
    bytes: usize,
}

impl Dev {
    fn zeroed(bytes: usize) -> Dev {
        let mut ptr = std::ptr::null_mut();
        // SAFETY: out-parameter; the allocation is owned by the returned value.
        ok(unsafe { wk_malloc(&mut ptr, bytes.max(1)) });
        let dev = Dev { ptr, bytes };
        dev.upload(&vec![0u8; bytes]);
        dev
    }
    fn of<T: Copy>(data: &[T]) -> Dev {
        let dev = Dev::zeroed(size_of_val(data));
        dev.upload(data);
        dev
    }
    fn upload<T: Copy>(&self, data: &[T]) {
        assert!(size_of_val(data) <= self.bytes);
        // SAFETY: the destination holds self.bytes >= the source's size.
        ok(unsafe { wk_memcpy_htod(self.ptr, data.as_ptr().cast(), size_of_val(data)) });
    }
    fn download<T: Copy + Default>(&self, n: usize) -> Vec<T> {
        let mut out = vec![T::default(); n];
        assert!(size_of_val(out.as_slice()) <= self.bytes);
        // SAFETY: the host buffer holds n elements, no more than the allocation.
        ok(unsafe {
            wk_memcpy_dtoh(
                out.as_mut_ptr().cast(),
                self.ptr,
                size_of_val(out.as_slice()),
            )
        });
        out
    }
    fn f(&self) -> *mut f32 {
        self.ptr.cast()
    }
    fn i(&self) -> *mut i32 {
        self.ptr.cast()
    }
}

impl Drop for Dev {
    fn drop(&mut self) {
        // SAFETY: allocated by wk_malloc and freed once; every launch using it was synchronized.
        let st = unsafe { wk_free(self.ptr) };
        if st != 0 && !std::thread::panicking() {
            ok(st);
        }
    }
}

fn sync() {
    // SAFETY: the default stream.
    ok(unsafe { wk_stream_synchronize(std::ptr::null_mut()) });
}

const NULL_STREAM: wk_stream_t = std::ptr::null_mut();

// ---- host references ---------------------------------------------------------------------------

/// xorshift64*: deterministic test data without a dependency.
struct Rng(u64);
impl Rng {
    fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    /// Uniform in [-1, 1).
    fn f(&mut self) -> f32 {
        (self.next_u64() >> 40) as f32 / (1u64 << 23) as f32 - 1.0
    }
    fn vec(&mut self, n: usize, scale: f32) -> Vec<f32> {
        (0..n).map(|_| self.f() * scale).collect()
    }
    fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.next_u64() as u8).collect()
    }
}

fn norm_err(got: &[f32], want: &[f32]) -> f64 {
    assert_eq!(got.len(), want.len());
    let mut num = 0.0f64;
    let mut den = 0.0f64;
    for (g, w) in got.iter().zip(want) {
        num += (*g as f64 - *w as f64).powi(2);
        den += (*w as f64).powi(2);
    }
    (num / den.max(1e-30)).sqrt()
}

fn f16_at(b: &[u8], off: usize) -> f32 {
    f16::from_bits(u16::from_le_bytes([b[off], b[off + 1]])).to_f32()
}

fn put_f16(b: &mut [u8], off: usize, v: f32) {
    b[off..off + 2].copy_from_slice(&f16::from_f32(v).to_bits().to_le_bytes());
}

/// (elements, bytes) per block.
fn geometry(t: wk_dtype) -> (usize, usize) {
    let (mut e, mut b) = (0, 0);
    // SAFETY: out-parameters.
    ok(unsafe { wk_dtype_info(t, &mut e, &mut b) });
    (e as usize, b as usize)
}

const QUANT_TYPES: [wk_dtype; 8] = [
    wk_dtype::WK_TYPE_Q4_0,
    wk_dtype::WK_TYPE_Q4_1,
    wk_dtype::WK_TYPE_Q5_0,
    wk_dtype::WK_TYPE_Q5_1,
    wk_dtype::WK_TYPE_Q8_0,
    wk_dtype::WK_TYPE_Q4_K,
    wk_dtype::WK_TYPE_Q5_K,
    wk_dtype::WK_TYPE_Q6_K,
];

/// Random but valid blocks: random bytes with sane f16 scale fields (random f16 bits could be
/// inf/NaN).
fn random_blocks(rng: &mut Rng, t: wk_dtype, n_blocks: usize) -> Vec<u8> {
    let (_, bb) = geometry(t);
    let mut data = rng.bytes(n_blocks * bb);
    for blk in data.chunks_exact_mut(bb) {
        let d = 0.002 + 0.02 * (rng.f() + 1.0);
        let m = 0.01 * rng.f();
        match t {
            wk_dtype::WK_TYPE_Q4_0 | wk_dtype::WK_TYPE_Q5_0 | wk_dtype::WK_TYPE_Q8_0 => {
                put_f16(blk, 0, d)
            }
            wk_dtype::WK_TYPE_Q4_1 | wk_dtype::WK_TYPE_Q5_1 => {
                put_f16(blk, 0, d);
                put_f16(blk, 2, m);
            }
            wk_dtype::WK_TYPE_Q4_K | wk_dtype::WK_TYPE_Q5_K => {
                put_f16(blk, 0, d * 0.1);
                put_f16(blk, 2, m.abs() * 0.1);
            }
            wk_dtype::WK_TYPE_Q6_K => put_f16(blk, 208, d * 0.05),
            _ => unreachable!(),
        }
    }
    data
}

fn scale_min_k4(j: usize, s: &[u8]) -> (f32, f32) {
    if j < 4 {
        ((s[j] & 63) as f32, (s[j + 4] & 63) as f32)
    } else {
        (
            ((s[j + 4] & 15) | ((s[j - 4] >> 6) << 4)) as f32,
            ((s[j + 4] >> 4) | ((s[j] >> 6) << 4)) as f32,
        )
    }
}

/// Reference dequantization of one block (BRIEF.md §3 / ggml's dequantize_row_*).
fn dequant_block(t: wk_dtype, b: &[u8], out: &mut Vec<f32>) {
    let nib = |qs: &[u8], j: usize| if j < 16 { qs[j] & 15 } else { qs[j - 16] >> 4 } as i32;
    match t {
        wk_dtype::WK_TYPE_Q4_0 => {
            let d = f16_at(b, 0);
            out.extend((0..32).map(|j| d * (nib(&b[2..], j) - 8) as f32));
        }
        wk_dtype::WK_TYPE_Q4_1 => {
            let (d, m) = (f16_at(b, 0), f16_at(b, 2));
            out.extend((0..32).map(|j| d * nib(&b[4..], j) as f32 + m));
        }
        wk_dtype::WK_TYPE_Q5_0 => {
            let d = f16_at(b, 0);
            let qh = u32::from_le_bytes([b[2], b[3], b[4], b[5]]);
            out.extend((0..32).map(|j| {
                let q = nib(&b[6..], j) | ((((qh >> j) & 1) as i32) << 4);
                d * (q - 16) as f32
            }));
        }
        wk_dtype::WK_TYPE_Q5_1 => {
            let (d, m) = (f16_at(b, 0), f16_at(b, 2));
            let qh = u32::from_le_bytes([b[4], b[5], b[6], b[7]]);
            out.extend((0..32).map(|j| {
                let q = nib(&b[8..], j) | ((((qh >> j) & 1) as i32) << 4);
                d * q as f32 + m
            }));
        }
        wk_dtype::WK_TYPE_Q8_0 => {
            let d = f16_at(b, 0);
            out.extend((0..32).map(|j| d * (b[2 + j] as i8) as f32));
        }
        wk_dtype::WK_TYPE_Q4_K | wk_dtype::WK_TYPE_Q5_K => {
            let five = t == wk_dtype::WK_TYPE_Q5_K;
            let (d, dmin) = (f16_at(b, 0), f16_at(b, 2));
            let scales = &b[4..16];
            let (qh, qs) = if five {
                (&b[16..48], &b[48..176])
            } else {
                (&b[0..0], &b[16..144])
            };
            for j in 0..8 {
                let (sc, m) = scale_min_k4(j, scales);
                let (d1, m1) = (d * sc, dmin * m);
                for l in 0..32 {
                    let byte = qs[32 * (j / 2) + l];
                    let mut q = if j % 2 == 0 { byte & 15 } else { byte >> 4 } as i32;
                    if five {
                        q |= (((qh[l] >> j) & 1) as i32) << 4;
                    }
                    out.push(d1 * q as f32 - m1);
                }
            }
        }
        wk_dtype::WK_TYPE_Q6_K => {
            let d = f16_at(b, 208);
            for h in 0..2 {
                let (ql, qh, sc) = (&b[64 * h..], &b[128 + 32 * h..], &b[192 + 8 * h..]);
                let mut vals = [0f32; 128];
                for l in 0..32 {
                    let s = l / 16;
                    let q = [
                        ((ql[l] & 15) | ((qh[l] & 3) << 4)) as i32,
                        ((ql[l + 32] & 15) | (((qh[l] >> 2) & 3) << 4)) as i32,
                        ((ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4)) as i32,
                        ((ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4)) as i32,
                    ];
                    for (r, q) in q.iter().enumerate() {
                        vals[32 * r + l] = d * (sc[s + 2 * r] as i8) as f32 * (q - 32) as f32;
                    }
                }
                out.extend_from_slice(&vals);
            }
        }
        _ => unreachable!(),
    }
}

fn dequant_rows(t: wk_dtype, data: &[u8]) -> Vec<f32> {
    let (_, bb) = geometry(t);
    let mut out = Vec::new();
    for blk in data.chunks_exact(bb) {
        dequant_block(t, blk, &mut out);
    }
    out
}

/// Decodes q8_1 activation blocks downloaded from the device.
fn decode_q8_1(data: &[u8]) -> Vec<f32> {
    let mut out = Vec::new();
    for blk in data.chunks_exact(WK_Q8_1_BLOCK_BYTES as usize) {
        let d = f16_at(blk, 0);
        out.extend(blk[4..36].iter().map(|&q| d * (q as i8) as f32));
    }
    out
}

fn matmul_ref(
    w: &[f32],
    x: &[f32],
    bias: Option<&[f32]>,
    n: usize,
    k: usize,
    t: usize,
) -> Vec<f32> {
    let mut out = vec![0f32; t * n];
    for ti in 0..t {
        for ni in 0..n {
            let mut acc = 0f64;
            for ki in 0..k {
                acc += w[ni * k + ki] as f64 * x[ti * k + ki] as f64;
            }
            out[ti * n + ni] = acc as f32 + bias.map_or(0.0, |b| b[ni]);
        }
    }
    out
}

// ---- tests -------------------------------------------------------------------------------------

#[test]
fn rmsnorm_and_fused_quantize_match_reference() {
    if !gpu_present("rmsnorm") {
        return;
    }
    let (t, k, eps) = (3usize, 896usize, 1e-6f32);
    let mut rng = Rng(7);
    let x = rng.vec(t * k, 3.0);
    let w = rng.vec(k, 1.5);
    let want: Vec<f32> = x
        .chunks_exact(k)
        .flat_map(|row| {
            let ms = row.iter().map(|v| (*v as f64).powi(2)).sum::<f64>() / k as f64;
            let r = 1.0 / (ms + eps as f64).sqrt();
            row.iter()
                .zip(&w)
                .map(move |(v, w)| (*v as f64 * r) as f32 * w)
                .collect::<Vec<_>>()
        })
        .collect();
    let (dx, dw, dout) = (Dev::of(&x), Dev::of(&w), Dev::zeroed(4 * t * k));
    // SAFETY: device buffers of the documented shapes.
    ok(unsafe {
        wk_rmsnorm(
            NULL_STREAM,
            dx.f(),
            dw.f(),
            dout.f(),
            t as i32,
            k as i32,
            eps,
        )
    });
    let got: Vec<f32> = dout.download(t * k);
    let e = norm_err(&got, &want);
    assert!(e < 1e-6, "rmsnorm error {e}");

    let q8 = Dev::zeroed(t * k / 32 * WK_Q8_1_BLOCK_BYTES as usize);
    // SAFETY: as above; q8 holds [t, k/32] blocks.
    ok(unsafe {
        wk_rmsnorm_quantize_q8_1(NULL_STREAM, dx.f(), dw.f(), q8.ptr, t as i32, k as i32, eps)
    });
    let bytes: Vec<u8> = q8.download(q8.bytes);
    let e = norm_err(&decode_q8_1(&bytes), &want);
    assert!(e < 1e-2, "rmsnorm+q8_1 error {e}");
    // s = d * sum(q) in every block
    for blk in bytes.chunks_exact(36) {
        let sum: i32 = blk[4..].iter().map(|&q| (q as i8) as i32).sum();
        let s = f16_at(blk, 2);
        assert!(
            (s - f16_at(blk, 0) * sum as f32).abs() <= 2e-3 * s.abs().max(1e-3),
            "q8_1 s field"
        );
    }
    println!("rmsnorm ok");
}

#[test]
fn argmax_picks_largest_and_lowest_index_on_ties() {
    if !gpu_present("argmax") {
        return;
    }
    let v = 151_936usize;
    let mut rng = Rng(11);
    let mut x = rng.vec(2 * v, 10.0);
    x[12_345] = 50.0;
    x[v + 99_000] = 60.0;
    x[v + 7] = 60.0; // tie: the lower index wins
    x[3] = f32::NAN; // NaN never wins
    let (dx, dout) = (Dev::of(&x), Dev::zeroed(8));
    // SAFETY: x [2, v], out [2].
    ok(unsafe { wk_argmax(NULL_STREAM, dx.f(), dout.i(), 2, v as i32) });
    assert_eq!(dout.download::<i32>(2), vec![12_345, 7]);
    println!("argmax ok");
}

#[test]
fn dequantize_and_get_rows_match_reference_for_every_type() {
    if !gpu_present("dequantize") {
        return;
    }
    let mut rng = Rng(3);
    for t in QUANT_TYPES {
        let (be, _) = geometry(t);
        let (n, k) = (5usize, if be == 256 { 512 } else { 96 });
        let data = random_blocks(&mut rng, t, n * k / be);
        let want = dequant_rows(t, &data);
        let dw = Dev::of(&data);
        let dout = Dev::zeroed(4 * n * k);
        // SAFETY: W [n, k] of t, out f32 [n, k].
        ok(unsafe {
            wk_dequantize(
                NULL_STREAM,
                t,
                dw.ptr,
                dout.ptr,
                wk_dtype::WK_TYPE_F32,
                n as i32,
                k as i32,
            )
        });
        let got: Vec<f32> = dout.download(n * k);
        let e = norm_err(&got, &want);
        assert!(e < 1e-6, "dequantize {t:?}: error {e}");

        let ids: Vec<i32> = vec![4, 0, 2, 2];
        let (dids, drows) = (Dev::of(&ids), Dev::zeroed(4 * ids.len() * k));
        // SAFETY: table [n, k], ids [4], out [4, k].
        ok(unsafe {
            wk_get_rows(
                NULL_STREAM,
                t,
                dw.ptr,
                dids.i(),
                drows.f(),
                4,
                n as i32,
                k as i32,
            )
        });
        let rows: Vec<f32> = drows.download(ids.len() * k);
        for (r, &id) in ids.iter().enumerate() {
            let id = id as usize;
            let e = norm_err(&rows[r * k..(r + 1) * k], &want[id * k..(id + 1) * k]);
            assert!(e < 1e-6, "get_rows {t:?}: error {e}");
        }
    }
    println!("dequantize/get_rows ok");
}

#[test]
fn matvec_q_matches_reference_for_every_type() {
    if !gpu_present("matvec_q") {
        return;
    }
    let mut rng = Rng(5);
    for t in QUANT_TYPES {
        let (be, _) = geometry(t);
        // 131 rows: not a multiple of the 4 rows per block. T = 10 exercises two launches (8 + 2).
        for (k, tt) in [
            (if be == 256 { 4864 } else { 896 }, 1usize),
            (if be == 256 { 768 } else { 4864 }, 10),
        ] {
            let n = 131usize;
            let data = random_blocks(&mut rng, t, n * k / be);
            let w = dequant_rows(t, &data);
            let x = rng.vec(tt * k, 2.0);
            let bias = rng.vec(n, 1.0);
            let (dw, dx, db) = (Dev::of(&data), Dev::of(&x), Dev::of(&bias));
            let dq = Dev::zeroed(tt * k / 32 * WK_Q8_1_BLOCK_BYTES as usize);
            let dout = Dev::zeroed(4 * tt * n);
            // SAFETY: x [tt, k] -> q8 [tt, k/32]; W [n, k]; out [tt, n].
            unsafe {
                ok(wk_quantize_q8_1(
                    NULL_STREAM,
                    dx.f(),
                    dq.ptr,
                    tt as i32,
                    k as i32,
                ));
                ok(wk_matvec_q(
                    NULL_STREAM,
                    t,
                    dw.ptr,
                    dq.ptr,
                    db.f(),
                    dout.f(),
                    n as i32,
                    k as i32,
                    tt as i32,
                    0,
                ));
            }
            let got: Vec<f32> = dout.download(tt * n);
            // Against the exactly quantized activations: only f32 rounding and the f16 `s` field.
            let xq = decode_q8_1(&dq.download::<u8>(dq.bytes));
            let e = norm_err(&got, &matmul_ref(&w, &xq, Some(&bias), n, k, tt));
            assert!(
                e < 2e-3,
                "matvec_q {t:?} k={k} T={tt}: error {e} vs quantized x"
            );
            // Against the f32 activations: the q8_1 quantization error too.
            let e = norm_err(&got, &matmul_ref(&w, &x, Some(&bias), n, k, tt));
            assert!(e < 2e-2, "matvec_q {t:?} k={k} T={tt}: error {e} vs f32 x");

            // accumulate = 1 adds onto out (fused residual)
            // SAFETY: as above.
            ok(unsafe {
                wk_matvec_q(
                    NULL_STREAM,
                    t,
                    dw.ptr,
                    dq.ptr,
                    std::ptr::null(),
                    dout.f(),
                    n as i32,
                    k as i32,
                    tt as i32,
                    1,
                )
            });
            let twice: Vec<f32> = dout.download(tt * n);
            let want: Vec<f32> = got
                .iter()
                .enumerate()
                .map(|(i, g)| g + (g - bias[i % n]))
                .collect();
            assert!(norm_err(&twice, &want) < 1e-5, "matvec_q {t:?} accumulate");
        }
    }
    println!("matvec_q ok");
}

#[test]
fn fused_matvecs_match_reference() {
    if !gpu_present("matvec_q_multi/swiglu") {
        return;
    }
    let mut rng = Rng(23);
    // Three parts of different types, one with a bias, one accumulating; T = 10 (groups 8 + 2).
    let (k, tt) = (768usize, 10usize);
    let specs = [
        (wk_dtype::WK_TYPE_Q5_0, 131usize, true, false),
        (wk_dtype::WK_TYPE_Q8_0, 64, false, true),
        (wk_dtype::WK_TYPE_Q4_K, 40, true, false),
    ];
    let x = rng.vec(tt * k, 2.0);
    let dx = Dev::of(&x);
    let dq = Dev::zeroed(tt * k / 32 * WK_Q8_1_BLOCK_BYTES as usize);
    // SAFETY: x [tt, k] -> q8 [tt, k/32].
    ok(unsafe { wk_quantize_q8_1(NULL_STREAM, dx.f(), dq.ptr, tt as i32, k as i32) });
    let xq = decode_q8_1(&dq.download::<u8>(dq.bytes));
    let mut bufs = Vec::new();
    let mut parts = Vec::new();
    let mut wants = Vec::new();
    for (t, n, with_bias, accumulate) in specs {
        let (be, _) = geometry(t);
        let data = random_blocks(&mut rng, t, n * k / be);
        let bias = rng.vec(n, 1.0);
        let prior = rng.vec(tt * n, 1.0);
        let mut want = matmul_ref(
            &dequant_rows(t, &data),
            &xq,
            with_bias.then_some(&bias[..]),
            n,
            k,
            tt,
        );
        if accumulate {
            want.iter_mut().zip(&prior).for_each(|(w, p)| *w += p);
        }
        let (dw, db, dout) = (Dev::of(&data), Dev::of(&bias), Dev::of(&prior));
        parts.push(wk_matvec_part {
            type_: t,
            W: dw.ptr,
            bias: if with_bias { db.f() } else { std::ptr::null() },
            out: dout.f(),
            N: n as i32,
            accumulate: accumulate as i32,
        });
        wants.push(want);
        bufs.push((dw, db, dout));
    }
    // SAFETY: host array of 3 descriptors over live device buffers of the documented shapes.
    ok(unsafe { wk_matvec_q_multi(NULL_STREAM, parts.as_ptr(), 3, dq.ptr, k as i32, tt as i32) });
    for (i, ((_, _, dout), want)) in bufs.iter().zip(&wants).enumerate() {
        let e = norm_err(&dout.download::<f32>(want.len()), want);
        assert!(e < 2e-3, "matvec_q_multi part {i}: error {e}");
    }

    // SwiGLU: silu(Wg . x) * (Wu . x).
    let (n, k, tt) = (100usize, 896usize, 3usize);
    let t = wk_dtype::WK_TYPE_Q5_0;
    let (g_data, u_data) = (
        random_blocks(&mut rng, t, n * k / 32),
        random_blocks(&mut rng, t, n * k / 32),
    );
    let x = rng.vec(tt * k, 2.0);
    let (dx, dg, du) = (Dev::of(&x), Dev::of(&g_data), Dev::of(&u_data));
    let dq = Dev::zeroed(tt * k / 32 * WK_Q8_1_BLOCK_BYTES as usize);
    let dout = Dev::zeroed(4 * tt * n);
    // SAFETY: x [tt, k] -> q8; Wg, Wu [n, k]; out [tt, n].
    unsafe {
        ok(wk_quantize_q8_1(
            NULL_STREAM,
            dx.f(),
            dq.ptr,
            tt as i32,
            k as i32,
        ));
        ok(wk_matvec_q_swiglu(
            NULL_STREAM,
            t,
            dg.ptr,
            du.ptr,
            dq.ptr,
            dout.f(),
            n as i32,
            k as i32,
            tt as i32,
        ));
    }
    let xq = decode_q8_1(&dq.download::<u8>(dq.bytes));
    let g = matmul_ref(&dequant_rows(t, &g_data), &xq, None, n, k, tt);
    let u = matmul_ref(&dequant_rows(t, &u_data), &xq, None, n, k, tt);
    let want: Vec<f32> = g
        .iter()
        .zip(&u)
        .map(|(g, u)| g / (1.0 + (-g).exp()) * u)
        .collect();
    let e = norm_err(&dout.download::<f32>(tt * n), &want);
    assert!(e < 2e-3, "matvec_q_swiglu: error {e}");
    println!("fused matvecs ok");
}

#[test]
fn matvec_f_matches_reference() {
    if !gpu_present("matvec_f") {
        return;
    }
    let mut rng = Rng(9);
    let (n, k, tt) = (77usize, 896usize, 3usize);
    let w = rng.vec(n * k, 1.0);
    let x = rng.vec(tt * k, 1.0);
    let want = matmul_ref(&w, &x, None, n, k, tt);
    let w16: Vec<u16> = w.iter().map(|v| f16::from_f32(*v).to_bits()).collect();
    let wbf: Vec<u16> = w
        .iter()
        .map(|v| half::bf16::from_f32(*v).to_bits())
        .collect();
    let dx = Dev::of(&x);
    let cases: [(wk_dtype, Dev, f64); 3] = [
        (wk_dtype::WK_TYPE_F32, Dev::of(&w), 1e-6),
        (wk_dtype::WK_TYPE_F16, Dev::of(&w16), 2e-3),
        (wk_dtype::WK_TYPE_BF16, Dev::of(&wbf), 1e-2),
    ];
    for (t, dw, tol) in cases {
        let dout = Dev::zeroed(4 * tt * n);
        // SAFETY: W [n, k], x [tt, k], out [tt, n].
        ok(unsafe {
            wk_matvec_f(
                NULL_STREAM,
                t,
                dw.ptr,
                dx.f(),
                std::ptr::null(),
                dout.f(),
                n as i32,
                k as i32,
                tt as i32,
                0,
            )
        });
        let e = norm_err(&dout.download::<f32>(tt * n), &want);
        assert!(e < tol, "matvec_f {t:?}: error {e}");
    }
    println!("matvec_f ok");
}

#[test]
fn elementwise_kernels_match_reference() {
    if !gpu_present("elementwise") {
        return;
    }
    let mut rng = Rng(13);
    let n = 3 * 4864;
    let (g, u) = (rng.vec(n, 6.0), rng.vec(n, 2.0));
    let (dg, du, dout) = (Dev::of(&g), Dev::of(&u), Dev::zeroed(4 * n));
    // SAFETY: all [n].
    unsafe {
        ok(wk_silu_mul(NULL_STREAM, dg.f(), du.f(), dout.f(), n as i64));
    }
    let want: Vec<f32> = g
        .iter()
        .zip(&u)
        .map(|(g, u)| g / (1.0 + (-g).exp()) * u)
        .collect();
    assert!(norm_err(&dout.download::<f32>(n), &want) < 1e-6, "silu_mul");
    // SAFETY: all [n]; bias [4864] over [3, 4864].
    unsafe {
        ok(wk_add(NULL_STREAM, dg.f(), du.f(), dout.f(), n as i64));
        ok(wk_add_bias(NULL_STREAM, dout.f(), du.f(), 3, 4864));
    }
    let want: Vec<f32> = (0..n).map(|i| g[i] + u[i] + u[i % 4864]).collect();
    assert!(
        norm_err(&dout.download::<f32>(n), &want) < 1e-7,
        "add/add_bias"
    );
    println!("elementwise ok");
}

/// Host RoPE as the CPU backend does it (f32 angles, HF inverse frequencies).
fn rope_ref(x: &mut [f32], pos: &[i32], heads: usize, hd: usize, base: f32, neox: bool) {
    let half = hd / 2;
    for (row, &p) in x.chunks_exact_mut(heads * hd).zip(pos) {
        for head in row.chunks_exact_mut(hd) {
            for i in 0..half {
                let inv = 1.0 / base.powf((2 * i) as f32 / hd as f32);
                let (s, c) = (p as f32 * inv).sin_cos();
                let (a, b) = if neox {
                    (i, i + half)
                } else {
                    (2 * i, 2 * i + 1)
                };
                let (x0, x1) = (head[a], head[b]);
                head[a] = x0 * c - x1 * s;
                head[b] = x0 * s + x1 * c;
            }
        }
    }
}

/// out [hq, hd] of a query at position p over keys/values [0, p] ([pos, hkv, hd], f16-rounded).
fn attention_ref(
    q: &[f32],
    k: &[f32],
    v: &[f32],
    p: usize,
    hq: usize,
    hkv: usize,
    hd: usize,
) -> Vec<f32> {
    let g = hq / hkv;
    let scale = 1.0 / (hd as f32).sqrt();
    let mut out = vec![0f32; hq * hd];
    for h in 0..hq {
        let kh = h / g;
        let qh = &q[h * hd..(h + 1) * hd];
        let s: Vec<f64> = (0..=p)
            .map(|j| {
                let kr = &k[(j * hkv + kh) * hd..][..hd];
                qh.iter()
                    .zip(kr)
                    .map(|(a, b)| (*a * scale) as f64 * *b as f64)
                    .sum()
            })
            .collect();
        let m = s.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
        let e: Vec<f64> = s.iter().map(|x| (x - m).exp()).collect();
        let z: f64 = e.iter().sum();
        for d in 0..hd {
            let acc: f64 = (0..=p)
                .map(|j| e[j] * v[(j * hkv + kh) * hd + d] as f64)
                .sum();
            out[h * hd + d] = (acc / z) as f32;
        }
    }
    out
}

#[test]
fn rope_kv_cache_and_attention_match_reference() {
    if !gpu_present("attention") {
        return;
    }
    let (hq, hkv, hd, bs) = (14usize, 2usize, 64usize, 16usize);
    let (len, max_blocks, num_blocks) = (300usize, 20usize, 24usize);
    let base = 1_000_000f32;
    let mut rng = Rng(17);
    let q = rng.vec(len * hq * hd, 1.0);
    let k = rng.vec(len * hkv * hd, 1.0);
    let v = rng.vec(len * hkv * hd, 1.0);
    // Physical blocks in a scrambled order, to exercise the paging.
    let table: Vec<i32> = (0..max_blocks)
        .map(|i| ((i * 7 + 3) % num_blocks) as i32)
        .collect();
    let dtable = Dev::of(&table);
    let cache_elems = num_blocks * bs * hkv * hd;
    let (kc, vc) = (Dev::zeroed(2 * cache_elems), Dev::zeroed(2 * cache_elems));

    // Host reference: rotated q and k, f16-rounded cache contents.
    let pos_all: Vec<i32> = (0..len as i32).collect();
    let (mut q_rot, mut k_rot) = (q.clone(), k.clone());
    rope_ref(&mut q_rot, &pos_all, hq, hd, base, true);
    rope_ref(&mut k_rot, &pos_all, hkv, hd, base, true);
    let round = |x: &[f32]| {
        x.iter()
            .map(|v| f16::from_f32(*v).to_f32())
            .collect::<Vec<_>>()
    };
    let (k16, v16) = (round(&k_rot), round(&v));

    // Prefill in two chunks: [0, 200) then [200, 300), the second attending the cached first.
    let scale = 1.0 / (hd as f32).sqrt();
    let mut q_dev_rot = Vec::new();
    for (start, end) in [(0usize, 200usize), (200, len)] {
        let tt = end - start;
        let dq = Dev::of(&q[start * hq * hd..end * hq * hd]);
        let dk = Dev::of(&k[start * hkv * hd..end * hkv * hd]);
        let dv = Dev::of(&v[start * hkv * hd..end * hkv * hd]);
        let dpos = Dev::of(&pos_all[start..end]);
        let dout = Dev::zeroed(4 * tt * hq * hd);
        // SAFETY: shapes as documented in worker_kernels.h; the caches hold num_blocks blocks.
        unsafe {
            ok(wk_rope_kv_write(
                NULL_STREAM,
                dq.f(),
                dk.f(),
                dv.f(),
                dpos.i(),
                std::ptr::null(),
                dtable.i(),
                max_blocks as i32,
                kc.ptr,
                vc.ptr,
                tt as i32,
                hq as i32,
                hkv as i32,
                hd as i32,
                bs as i32,
                base,
                wk_rope_mode::WK_ROPE_NEOX,
            ));
            ok(wk_attention_prefill(
                NULL_STREAM,
                dq.f(),
                kc.ptr,
                vc.ptr,
                dtable.i(),
                dpos.i(),
                dout.f(),
                tt as i32,
                hq as i32,
                hkv as i32,
                hd as i32,
                bs as i32,
                scale,
            ));
        }
        let got_q: Vec<f32> = dq.download(tt * hq * hd);
        let e = norm_err(&got_q, &q_rot[start * hq * hd..end * hq * hd]);
        assert!(e < 1e-4, "rope q error {e}");
        let got_k: Vec<f32> = dk.download(tt * hkv * hd);
        let e = norm_err(&got_k, &k_rot[start * hkv * hd..end * hkv * hd]);
        assert!(e < 1e-4, "rope k error {e}");
        q_dev_rot.extend(got_q);
        let out: Vec<f32> = dout.download(tt * hq * hd);
        for t in [0, tt / 2, tt - 1] {
            let p = start + t;
            let want = attention_ref(
                &q_rot[p * hq * hd..(p + 1) * hq * hd],
                &k16,
                &v16,
                p,
                hq,
                hkv,
                hd,
            );
            let e = norm_err(&out[t * hq * hd..(t + 1) * hq * hd], &want);
            assert!(e < 1e-3, "prefill attention at pos {p}: error {e}");
        }
    }

    // Decode: two sequences sharing the same blocks, at positions 299 and 149 (3 and 2 splits).
    let positions = [len - 1, 149usize];
    let mut qd = Vec::new();
    for p in positions {
        qd.extend_from_slice(&q_dev_rot[p * hq * hd..(p + 1) * hq * hd]);
    }
    let seq_lens: Vec<i32> = positions.iter().map(|p| *p as i32 + 1).collect();
    let table2: Vec<i32> = table.iter().chain(&table).copied().collect();
    let (dq, dlens, dtable2) = (Dev::of(&qd), Dev::of(&seq_lens), Dev::of(&table2));
    let max_ctx = (max_blocks * bs) as i32;
    let mut scratch_bytes = 0usize;
    // SAFETY: out-parameter.
    ok(unsafe {
        wk_attention_decode_scratch_bytes(2, hq as i32, hd as i32, max_ctx, &mut scratch_bytes)
    });
    let scratch = Dev::zeroed(scratch_bytes);
    let dout = Dev::zeroed(4 * 2 * hq * hd);
    // SAFETY: q/out [2, hq, hd], block_table [2, max_blocks], seq_lens [2], scratch as queried.
    ok(unsafe {
        wk_attention_decode(
            NULL_STREAM,
            dq.f(),
            kc.ptr,
            vc.ptr,
            dtable2.i(),
            max_blocks as i32,
            dlens.i(),
            dout.f(),
            scratch.ptr,
            scratch_bytes,
            2,
            hq as i32,
            hkv as i32,
            hd as i32,
            bs as i32,
            max_ctx,
            scale,
        )
    });
    let out: Vec<f32> = dout.download(2 * hq * hd);
    for (s, p) in positions.iter().enumerate() {
        let want = attention_ref(
            &q_rot[p * hq * hd..(p + 1) * hq * hd],
            &k16,
            &v16,
            *p,
            hq,
            hkv,
            hd,
        );
        let e = norm_err(&out[s * hq * hd..(s + 1) * hq * hd], &want);
        assert!(e < 1e-3, "decode attention at pos {p}: error {e}");
    }
    // The q8 variant: the same out, and q8_out byte-identical to wk_quantize_q8_1 of it.
    let q8_bytes = 2 * hq * hd / 32 * WK_Q8_1_BLOCK_BYTES as usize;
    let (dout2, dq8, dq8_ref) = (
        Dev::zeroed(4 * 2 * hq * hd),
        Dev::zeroed(q8_bytes),
        Dev::zeroed(q8_bytes),
    );
    // SAFETY: as above; q8 buffers [2, hq * hd / 32] blocks.
    ok(unsafe {
        wk_attention_decode_q8(
            NULL_STREAM,
            dq.f(),
            kc.ptr,
            vc.ptr,
            dtable2.i(),
            max_blocks as i32,
            dlens.i(),
            dout2.f(),
            dq8.ptr,
            scratch.ptr,
            scratch_bytes,
            2,
            hq as i32,
            hkv as i32,
            hd as i32,
            bs as i32,
            max_ctx,
            scale,
        )
    });
    ok(unsafe { wk_quantize_q8_1(NULL_STREAM, dout2.f(), dq8_ref.ptr, 2, (hq * hd) as i32) });
    let out2: Vec<f32> = dout2.download(2 * hq * hd);
    assert!(
        out.iter()
            .zip(&out2)
            .all(|(a, b)| a.to_bits() == b.to_bits()),
        "wk_attention_decode_q8 output differs from wk_attention_decode"
    );
    assert_eq!(
        dq8.download::<u8>(q8_bytes),
        dq8_ref.download::<u8>(q8_bytes),
        "fused q8_1 output differs from wk_quantize_q8_1"
    );
    sync();
    println!("rope/kv/attention ok");
}

#[test]
fn sampler_follows_llama_cpp_order_and_reports_logsumexp() {
    if !gpu_present("sample") {
        return;
    }
    let v = 151_936usize;
    let mut rng = Rng(21);
    let mut logits = rng.vec(v, 4.0);
    // Three clear leaders with probabilities ~ e^3 : e^2 : e^1 relative to each other.
    logits[500] = 20.0;
    logits[42] = 19.0;
    logits[90_000] = 18.0;
    let m = 20.0f64;
    let z: f64 = logits.iter().map(|l| (*l as f64 - m).exp()).sum();
    let lse_ref = m + z.ln();

    let mut scratch_bytes = 0usize;
    // SAFETY: out-parameter.
    ok(unsafe { wk_sample_scratch_bytes(v as i32, &mut scratch_bytes) });
    let scratch = Dev::zeroed(scratch_bytes);
    let dl = Dev::of(&logits);
    let (du, dtok, dlse) = (Dev::zeroed(4), Dev::zeroed(4), Dev::zeroed(4));
    let (dtop_ids, dtop_logits) = (Dev::zeroed(4 * 5), Dev::zeroed(4 * 5));
    let sample = |top_k: i32, top_p: f32, min_p: f32, temp: f32, u: f32| -> i32 {
        du.upload(&[u]);
        // SAFETY: logits [v], scratch as queried, one-element outputs, top-5 outputs.
        ok(unsafe {
            wk_sample(
                NULL_STREAM,
                dl.f(),
                v as i32,
                scratch.ptr,
                scratch_bytes,
                top_k,
                top_p,
                min_p,
                temp,
                du.f(),
                5,
                dtok.i(),
                dlse.f(),
                dtop_ids.i(),
                dtop_logits.f(),
            )
        });
        dtok.download::<i32>(1)[0]
    };

    assert_eq!(
        sample(0, 1.0, 0.0, 0.0, 0.5),
        500,
        "temperature 0 is greedy"
    );
    let lse = dlse.download::<f32>(1)[0] as f64;
    assert!(
        (lse - lse_ref).abs() < 1e-4 * lse_ref.abs(),
        "logsumexp {lse} vs {lse_ref}"
    );
    assert_eq!(dtop_ids.download::<i32>(3), vec![500, 42, 90_000]);
    assert_eq!(dtop_logits.download::<f32>(3), vec![20.0, 19.0, 18.0]);
    assert_eq!(sample(1, 1.0, 0.0, 1.0, 0.999), 500, "top_k = 1");
    assert_eq!(
        sample(0, 0.01, 0.0, 1.0, 0.999),
        500,
        "tiny top_p keeps one token"
    );
    assert_eq!(
        sample(0, 1.0, 0.9, 1.0, 0.999),
        500,
        "min_p 0.9 keeps one token"
    );
    // top_k = 3, temperature 1: cumulative probabilities of the three leaders.
    let w = [1.0f64, (-1.0f64).exp(), (-2.0f64).exp()];
    let tot: f64 = w.iter().sum();
    let c0 = (w[0] / tot) as f32;
    let c1 = ((w[0] + w[1]) / tot) as f32;
    assert_eq!(sample(3, 1.0, 0.0, 1.0, c0 - 1e-3), 500);
    assert_eq!(sample(3, 1.0, 0.0, 1.0, c0 + 1e-3), 42);
    assert_eq!(sample(3, 1.0, 0.0, 1.0, c1 + 1e-3), 90_000);
    // min_p 0.3 drops the third (p3 / p1 = e^-2 = 0.135) but keeps the second (e^-1 = 0.37).
    assert_eq!(sample(3, 1.0, 0.3, 1.0, 0.9999), 42);
    // Repetition penalty: 20 / 2 = 10 drops token 500 below 42.
    let dids = Dev::of(&[500i32]);
    // SAFETY: logits [v], ids [1].
    ok(unsafe { wk_repetition_penalty(NULL_STREAM, dl.f(), v as i32, dids.i(), 1, 2.0) });
    assert_eq!(
        sample(0, 1.0, 0.0, 0.0, 0.5),
        42,
        "penalized token no longer greedy"
    );
    println!("sampler ok");
}

/// Device buffers of a small decode step: norm + q8_1, fused QKV, RoPE + KV write, decode
/// attention, q8_1, output head, sampler.
struct DecodeStep {
    x: Dev,
    norm_w: Dev,
    q8: Dev,
    wq: Dev,
    wk: Dev,
    wv: Dev,
    bq: Dev,
    q: Dev,
    k: Dev,
    v: Dev,
    kc: Dev,
    vc: Dev,
    table: Dev,
    pos: Dev,
    seq_len: Dev,
    attn: Dev,
    attn_scratch: Dev,
    attn_scratch_bytes: usize,
    q8_attn: Dev,
    w_out: Dev,
    logits: Dev,
    sample_scratch: Dev,
    sample_scratch_bytes: usize,
    u: Dev,
    token: Dev,
    lse: Dev,
    top_ids: Dev,
    top_logits: Dev,
}

const STEP_D: usize = 896;
const STEP_HQ: usize = 14;
const STEP_HKV: usize = 2;
const STEP_HD: usize = 64;
const STEP_BS: usize = 16;
const STEP_BLOCKS: usize = 8;
const STEP_V: usize = 1000;

impl DecodeStep {
    fn new(rng: &mut Rng) -> DecodeStep {
        let d = STEP_D;
        let kv = STEP_HKV * STEP_HD;
        let q8_bytes = d / 32 * WK_Q8_1_BLOCK_BYTES as usize;
        let cache = 2 * STEP_BLOCKS * STEP_BS * kv;
        let max_ctx = (STEP_BLOCKS * STEP_BS) as i32;
        let (mut attn_scratch_bytes, mut sample_scratch_bytes) = (0, 0);
        // SAFETY: out-parameters.
        unsafe {
            ok(wk_attention_decode_scratch_bytes(
                1,
                STEP_HQ as i32,
                STEP_HD as i32,
                max_ctx,
                &mut attn_scratch_bytes,
            ));
            ok(wk_sample_scratch_bytes(
                STEP_V as i32,
                &mut sample_scratch_bytes,
            ));
        }
        let table: Vec<i32> = (0..STEP_BLOCKS as i32).rev().collect();
        DecodeStep {
            x: Dev::of(&rng.vec(d, 2.0)),
            norm_w: Dev::of(&rng.vec(d, 1.0)),
            q8: Dev::zeroed(q8_bytes),
            wq: Dev::of(&random_blocks(rng, wk_dtype::WK_TYPE_Q5_0, d * d / 32)),
            wk: Dev::of(&random_blocks(rng, wk_dtype::WK_TYPE_Q5_0, kv * d / 32)),
            wv: Dev::of(&random_blocks(rng, wk_dtype::WK_TYPE_Q8_0, kv * d / 32)),
            bq: Dev::of(&rng.vec(d, 1.0)),
            q: Dev::zeroed(4 * d),
            k: Dev::zeroed(4 * kv),
            v: Dev::zeroed(4 * kv),
            kc: Dev::of(&vec![f16::from_f32(0.25).to_bits(); cache / 2]),
            vc: Dev::of(
                &rng.vec(cache / 2, 1.0)
                    .iter()
                    .map(|v| f16::from_f32(*v).to_bits())
                    .collect::<Vec<_>>(),
            ),
            table: Dev::of(&table),
            pos: Dev::zeroed(4),
            seq_len: Dev::zeroed(4),
            attn: Dev::zeroed(4 * d),
            attn_scratch: Dev::zeroed(attn_scratch_bytes),
            attn_scratch_bytes,
            q8_attn: Dev::zeroed(q8_bytes),
            w_out: Dev::of(&random_blocks(rng, wk_dtype::WK_TYPE_Q8_0, STEP_V * d / 32)),
            logits: Dev::zeroed(4 * STEP_V),
            sample_scratch: Dev::zeroed(sample_scratch_bytes),
            sample_scratch_bytes,
            u: Dev::zeroed(4),
            token: Dev::zeroed(4),
            lse: Dev::zeroed(4),
            top_ids: Dev::zeroed(4 * 4),
            top_logits: Dev::zeroed(4 * 4),
        }
    }

    /// Position and uniform draw: written to device memory, read by the kernels at run time.
    fn set_inputs(&self, pos: i32, u: f32) {
        self.pos.upload(&[pos]);
        self.seq_len.upload(&[pos + 1]);
        self.u.upload(&[u]);
        sync(); // pageable copies may still be in flight on the legacy stream
    }

    /// Enqueues the whole step on `s`.
    fn enqueue(&self, s: wk_stream_t) {
        let (d, hq, hkv, hd) = (
            STEP_D as i32,
            STEP_HQ as i32,
            STEP_HKV as i32,
            STEP_HD as i32,
        );
        let kv = hkv * hd;
        let parts = [
            wk_matvec_part {
                type_: wk_dtype::WK_TYPE_Q5_0,
                W: self.wq.ptr,
                bias: self.bq.f(),
                out: self.q.f(),
                N: d,
                accumulate: 0,
            },
            wk_matvec_part {
                type_: wk_dtype::WK_TYPE_Q5_0,
                W: self.wk.ptr,
                bias: std::ptr::null(),
                out: self.k.f(),
                N: kv,
                accumulate: 0,
            },
            wk_matvec_part {
                type_: wk_dtype::WK_TYPE_Q8_0,
                W: self.wv.ptr,
                bias: std::ptr::null(),
                out: self.v.f(),
                N: kv,
                accumulate: 0,
            },
        ];
        let scale = 1.0 / (STEP_HD as f32).sqrt();
        // SAFETY: every buffer was allocated by DecodeStep::new with the shape each launcher
        // documents for T = 1, S = 1.
        unsafe {
            ok(wk_rmsnorm_quantize_q8_1(
                s,
                self.x.f(),
                self.norm_w.f(),
                self.q8.ptr,
                1,
                d,
                1e-6,
            ));
            ok(wk_matvec_q_multi(s, parts.as_ptr(), 3, self.q8.ptr, d, 1));
            ok(wk_rope_kv_write(
                s,
                self.q.f(),
                self.k.f(),
                self.v.f(),
                self.pos.i(),
                std::ptr::null(),
                self.table.i(),
                STEP_BLOCKS as i32,
                self.kc.ptr,
                self.vc.ptr,
                1,
                hq,
                hkv,
                hd,
                STEP_BS as i32,
                1e6,
                wk_rope_mode::WK_ROPE_NEOX,
            ));
            ok(wk_attention_decode(
                s,
                self.q.f(),
                self.kc.ptr,
                self.vc.ptr,
                self.table.i(),
                STEP_BLOCKS as i32,
                self.seq_len.i(),
                self.attn.f(),
                self.attn_scratch.ptr,
                self.attn_scratch_bytes,
                1,
                hq,
                hkv,
                hd,
                STEP_BS as i32,
                (STEP_BLOCKS * STEP_BS) as i32,
                scale,
            ));
            ok(wk_quantize_q8_1(s, self.attn.f(), self.q8_attn.ptr, 1, d));
            ok(wk_matvec_q(
                s,
                wk_dtype::WK_TYPE_Q8_0,
                self.w_out.ptr,
                self.q8_attn.ptr,
                std::ptr::null(),
                self.logits.f(),
                STEP_V as i32,
                d,
                1,
                0,
            ));
            ok(wk_sample(
                s,
                self.logits.f(),
                STEP_V as i32,
                self.sample_scratch.ptr,
                self.sample_scratch_bytes,
                0,
                0.95,
                0.02,
                0.8,
                self.u.f(),
                4,
                self.token.i(),
                self.lse.f(),
                self.top_ids.i(),
                self.top_logits.f(),
            ));
        }
    }

    /// (attention output, logits, token, logsumexp) after the stream finished.
    fn results(&self, s: wk_stream_t) -> (Vec<f32>, Vec<f32>, i32, f32) {
        // SAFETY: a stream created by wk_stream_create.
        ok(unsafe { wk_stream_synchronize(s) });
        (
            self.attn.download(STEP_D),
            self.logits.download(STEP_V),
            self.token.download::<i32>(1)[0],
            self.lse.download::<f32>(1)[0],
        )
    }
}

#[test]
fn decode_step_is_graph_capturable_and_replays_with_new_device_inputs() {
    if !gpu_present("graph capture") {
        return;
    }
    let mut rng = Rng(29);
    let step = DecodeStep::new(&mut rng);
    let mut s: wk_stream_t = std::ptr::null_mut();
    // SAFETY: out-parameter.
    ok(unsafe { wk_stream_create(&mut s) });

    // Eager reference at position 20.
    step.set_inputs(20, 0.3);
    step.enqueue(s);
    let eager20 = step.results(s);

    // Capture the same step (strict thread-local capture: any sync or allocation inside a
    // launcher would fail here), then replay it.
    let mut exec = std::ptr::null_mut();
    // SAFETY: a created (non-NULL) stream; the graph handle is destroyed below.
    unsafe {
        ok(wk_graph_begin_capture(s));
        step.enqueue(s);
        ok(wk_graph_end_capture(s, &mut exec));
        ok(wk_graph_launch(exec, s));
    }
    let graph20 = step.results(s);
    assert_eq!(
        graph20, eager20,
        "graph replay differs from the eager launches"
    );

    // New position and draw written to device memory: the same graph must pick them up.
    step.set_inputs(21, 0.7);
    // SAFETY: as above.
    ok(unsafe { wk_graph_launch(exec, s) });
    let graph21 = step.results(s);
    step.enqueue(s);
    let eager21 = step.results(s);
    assert_eq!(
        graph21, eager21,
        "graph replay with new inputs differs from the eager launches"
    );
    assert_ne!(graph21.0, graph20.0, "the replay ignored the new position");
    // SAFETY: handles created above, each destroyed once after the stream finished.
    unsafe {
        ok(wk_graph_destroy(exec));
        ok(wk_stream_destroy(s));
    }
    println!("graph capture ok (token {} at pos 21)", graph21.2);
}
