//! Dequantization and dot products checked against `/work/shared/golden/dequant.jsonl`
//! (reference values from the `gguf` Python package) and against each other.

use rand::SeedableRng;
use serde_json::Value as Json;
use std::path::PathBuf;
use worker_core::gguf::GgufFile;
use worker_core::quant::{
    GgmlType, QuantError, dequantize_row, dot_row, dot_row_portable, dot_rows_multi, random_blocks,
};

const GOLDEN: &str = "/work/shared/golden/dequant.jsonl";

fn model_path() -> Option<PathBuf> {
    let p = PathBuf::from(std::env::var_os("HOME")?)
        .join(".cache/worker-orcd/models/qwen2.5-coder-0.5b-instruct-q4_k_m.gguf");
    p.exists().then_some(p)
}

fn unhex(s: &str) -> Vec<u8> {
    assert!(s.len().is_multiple_of(2), "odd hex length");
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).expect("hex digit"))
        .collect()
}

fn golden_cases() -> Vec<Json> {
    let text = std::fs::read_to_string(GOLDEN).expect("golden dequant file");
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).expect("json line"))
        .collect()
}

/// Exact, or within 1e-6 relative.
fn assert_close(what: &str, got: &[f32], want: &[f64]) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    for (i, (&g, &w)) in got.iter().zip(want).enumerate() {
        let (g, w) = (f64::from(g), w);
        assert!(
            g == w || (g - w).abs() <= 1e-6 * w.abs(),
            "{what}: element {i}: got {g}, want {w}"
        );
    }
}

fn values(case: &Json) -> Vec<f64> {
    case["values"]
        .as_array()
        .expect("values")
        .iter()
        .map(|v| v.as_f64().expect("number"))
        .collect()
}

fn case_type(case: &Json) -> GgmlType {
    let code = case["type_code"].as_u64().expect("type_code") as u32;
    let ty = GgmlType::from_code(code).expect("supported type");
    assert_eq!(
        ty.name(),
        case["type"].as_str().expect("type name"),
        "type name of code {code}"
    );
    ty
}

#[test]
fn golden_random_blocks_dequantize_exactly() {
    let mut seen = std::collections::BTreeSet::new();
    let mut n = 0;
    for case in golden_cases()
        .iter()
        .filter(|c| c.get("bytes_hex").is_some())
    {
        let ty = case_type(case);
        assert_eq!(
            ty.block_bytes() as u64,
            case["block_bytes"].as_u64().unwrap(),
            "{ty} block bytes"
        );
        assert_eq!(
            ty.block_elements() as u64,
            case["block_elements"].as_u64().unwrap(),
            "{ty} block elements"
        );
        let bytes = unhex(case["bytes_hex"].as_str().unwrap());
        let want = values(case);
        let mut got = vec![f32::NAN; want.len()];
        dequantize_row(ty, &bytes, &mut got).expect("dequantize");
        assert_close(&format!("{ty} block #{n}"), &got, &want);
        // The dot product with a one-hot-free, all-ones vector is the sum of the values.
        let ones = vec![1.0f32; want.len()];
        let sum: f64 = want.iter().sum();
        let dot = f64::from(dot_row(ty, &bytes, &ones));
        assert!(
            (dot - sum).abs() <= 1e-5 * want.iter().map(|v| v.abs()).sum::<f64>().max(1e-30),
            "{ty}: dot {dot} vs {sum}"
        );
        seen.insert(ty.name());
        n += 1;
    }
    // Every type except F32 (which the reference does not list) must be covered.
    for ty in GgmlType::ALL.iter().filter(|t| **t != GgmlType::F32) {
        assert!(seen.contains(ty.name()), "golden file has no case for {ty}");
    }
    eprintln!("{n} golden random-block cases matched");
}

#[test]
fn golden_real_tensor_rows_dequantize_exactly() {
    let Some(path) = model_path() else {
        eprintln!("SKIPPED: model file absent; real-tensor dequant cases not checked");
        return;
    };
    let file = GgufFile::open(&path).expect("open model");
    let mut n = 0;
    for case in golden_cases().iter().filter(|c| c.get("tensor").is_some()) {
        let ty = case_type(case);
        let name = case["tensor"].as_str().unwrap();
        let t = file
            .tensor(name)
            .unwrap_or_else(|| panic!("tensor {name} missing"));
        assert_eq!(t.ty, ty, "{name} type");
        let ne0 = case["ne0"].as_u64().unwrap();
        assert_eq!(t.ne0(), ne0, "{name} ne0");
        let row_bytes = ty.bytes_for(ne0).unwrap() as usize;
        let data = file.tensor_data(t);
        let want = values(case);
        let mut got = Vec::new();
        for r in case["rows"].as_array().unwrap() {
            let r = r.as_u64().unwrap() as usize;
            let mut row = vec![f32::NAN; ne0 as usize];
            dequantize_row(ty, &data[r * row_bytes..(r + 1) * row_bytes], &mut row)
                .expect("dequantize");
            got.extend(row);
        }
        assert_close(&format!("{name} ({ty})"), &got, &want);
        n += 1;
    }
    assert_eq!(n, 4, "expected 4 real-tensor cases");
}

#[test]
fn dequantize_rejects_wrong_lengths() {
    let mut out = vec![0.0; 32];
    assert_eq!(
        dequantize_row(GgmlType::Q4_0, &[0; 17], &mut out),
        Err(QuantError::PartialBlock {
            ty: GgmlType::Q4_0,
            bytes: 17,
            block_bytes: 18
        })
    );
    assert_eq!(
        dequantize_row(GgmlType::Q4_0, &[0; 36], &mut out),
        Err(QuantError::LengthMismatch {
            ty: GgmlType::Q4_0,
            bytes: 36,
            elements: 64,
            out: 32
        })
    );
    let mut out = vec![0.0; 3];
    assert!(dequantize_row(GgmlType::F32, &[0; 12], &mut out).is_ok());
    assert!(dequantize_row(GgmlType::F16, &[0; 5], &mut out).is_err());
}

fn rng(seed: u64) -> rand_chacha::ChaCha8Rng {
    rand_chacha::ChaCha8Rng::seed_from_u64(seed)
}

fn dequant(ty: GgmlType, bytes: &[u8]) -> Vec<f32> {
    let mut v = vec![0.0; bytes.len() / ty.block_bytes() * ty.block_elements()];
    dequantize_row(ty, bytes, &mut v).unwrap();
    v
}

fn naive_dot(w: &[f32], x: &[f32]) -> (f64, f64) {
    let dot = w
        .iter()
        .zip(x)
        .map(|(&a, &b)| f64::from(a) * f64::from(b))
        .sum();
    let mag = w
        .iter()
        .zip(x)
        .map(|(&a, &b)| (f64::from(a) * f64::from(b)).abs())
        .sum();
    (dot, mag)
}

#[test]
fn random_blocks_are_finite_and_modest() {
    let mut r = rng(1);
    for ty in GgmlType::ALL {
        let bytes = random_blocks(ty, 64, &mut r);
        assert_eq!(bytes.len(), 64 * ty.block_bytes(), "{ty}");
        let v = dequant(ty, &bytes);
        assert!(v.iter().all(|x| x.is_finite()), "{ty}: non-finite value");
        let rms = (v.iter().map(|x| f64::from(*x).powi(2)).sum::<f64>() / v.len() as f64).sqrt();
        assert!(
            (1e-3..0.5).contains(&rms),
            "{ty}: rms {rms} is not weight-like"
        );
        let distinct: std::collections::HashSet<u32> = v.iter().map(|x| x.to_bits()).collect();
        assert!(
            distinct.len() > 8,
            "{ty}: only {} distinct values",
            distinct.len()
        );
    }
}

#[test]
fn dot_row_matches_dequantize_then_f64_dot_for_every_type() {
    let mut r = rng(2);
    for ty in GgmlType::ALL {
        // Several widths, including the model's 896 and 4864 and, for floats, odd tails.
        let widths: &[usize] = if ty.is_quantized() {
            &[1, 3, 28, 152]
        } else {
            &[1, 7, 31, 33, 896, 4867]
        };
        for &blocks in widths {
            let bytes = random_blocks(ty, blocks, &mut r);
            let w = dequant(ty, &bytes);
            let x: Vec<f32> = (0..w.len())
                .map(|_| rand::Rng::random_range(&mut r, -2.0f32..2.0))
                .collect();
            let (want, mag) = naive_dot(&w, &x);
            for (kernel, got) in [
                ("dispatched", dot_row(ty, &bytes, &x)),
                ("portable", dot_row_portable(ty, &bytes, &x)),
            ] {
                let err = (f64::from(got) - want).abs();
                // Relative to the sum of |terms|: the f32 accumulation error is bounded by that,
                // not by |sum|, which can cancel to near zero.
                assert!(
                    err <= 1e-4 * mag.max(1e-30),
                    "{ty} × {blocks} blocks ({kernel}): {got} vs {want} (mag {mag})"
                );
                assert!(
                    err <= 1e-4 * want.abs() || err <= 1e-6 * mag,
                    "{ty} × {blocks} ({kernel}): rel err {}",
                    err / want.abs()
                );
            }
        }
    }
    eprintln!("dot kernel: {}", worker_core::quant::dot_kernel_name());
}

#[test]
fn dot_rows_multi_matches_dot_row() {
    let mut r = rng(3);
    for ty in GgmlType::ALL {
        let blocks = if ty.is_quantized() { 5 } else { 37 };
        let bytes = random_blocks(ty, blocks, &mut r);
        let k = blocks * ty.block_elements();
        for n in [0usize, 1, 3, 8, 13, 21] {
            let xs: Vec<f32> = (0..n * k)
                .map(|_| rand::Rng::random_range(&mut r, -1.0f32..1.0))
                .collect();
            let mut out = vec![f32::NAN; n];
            dot_rows_multi(ty, &bytes, &xs, k, &mut out);
            for t in 0..n {
                let single = dot_row(ty, &bytes, &xs[t * k..(t + 1) * k]);
                let (want, mag) = naive_dot(&dequant(ty, &bytes), &xs[t * k..(t + 1) * k]);
                assert!(
                    (f64::from(out[t]) - want).abs() <= 1e-4 * mag,
                    "{ty} n={n} t={t}: {} vs {want}",
                    out[t]
                );
                assert!(
                    (out[t] - single).abs() <= 1e-5 * mag as f32,
                    "{ty} n={n} t={t}: multi {} vs single {single}",
                    out[t]
                );
            }
        }
    }
}

/// A dot product must see every element: a one-hot x picks out exactly one dequantized value.
#[test]
fn dot_row_one_hot_picks_each_value() {
    let mut r = rng(4);
    for ty in GgmlType::ALL {
        let n_blocks = if ty.is_quantized() { 2 } else { 70 };
        let bytes = random_blocks(ty, n_blocks, &mut r);
        let w = dequant(ty, &bytes);
        let mut x = vec![0.0f32; w.len()];
        for i in 0..w.len() {
            x[i] = 1.0;
            assert_eq!(dot_row(ty, &bytes, &x), w[i], "{ty} element {i}");
            x[i] = 0.0;
        }
    }
}

/// Best of several timed runs of `f` (which does `units` units of work), in ns per unit:
/// the minimum is the least disturbed by other processes on a shared machine.
fn best_ns(units: usize, mut f: impl FnMut()) -> f64 {
    (0..7)
        .map(|_| {
            let start = std::time::Instant::now();
            f();
            start.elapsed().as_nanos() as f64 / units as f64
        })
        .fold(f64::INFINITY, f64::min)
}

#[test]
#[ignore = "timing printout; run with --ignored --nocapture"]
fn dot_row_timing() {
    let mut r = rng(5);
    for (ty, k, rows) in [
        (GgmlType::Q5_0, 896usize, 4864usize),
        (GgmlType::Q6K, 4864, 896),
        (GgmlType::Q8_0, 896, 4864),
        (GgmlType::Q4K, 4864, 896),
    ] {
        let row_bytes = ty.bytes_for(k as u64).unwrap() as usize;
        let w = random_blocks(ty, rows * k / ty.block_elements(), &mut r);
        let x: Vec<f32> = (0..k)
            .map(|_| rand::Rng::random_range(&mut r, -1.0f32..1.0))
            .collect();
        let mut sink = 0.0f32;
        // A whole matrix (larger than L2), as in a decode step.
        let ns = best_ns(rows, || {
            for row in w.chunks_exact(row_bytes) {
                sink += dot_row(ty, row, &x);
            }
        });
        // A weight set small enough to stay in L2: the compute cost alone.
        let hot = &w[..row_bytes * (128 * 1024 / row_bytes).max(1)];
        let hot_rows = hot.len() / row_bytes;
        let ns_hot = best_ns(hot_rows * 10, || {
            for _ in 0..10 {
                for row in hot.chunks_exact(row_bytes) {
                    sink += dot_row(ty, row, &x);
                }
            }
        });
        // Prefill: 32 activation vectors per weight row.
        let xs: Vec<f32> = (0..32 * k)
            .map(|_| rand::Rng::random_range(&mut r, -1.0f32..1.0))
            .collect();
        let mut out = vec![0.0f32; 32];
        let ns_multi = best_ns(rows * 32, || {
            for row in w.chunks_exact(row_bytes) {
                dot_rows_multi(ty, row, &xs, k, &mut out);
                sink += out[0];
            }
        });
        eprintln!(
            "{ty} row of {k} ({}): dot_row {ns:.1} ns/row ({:.2} GB/s of weights), in L2 {ns_hot:.1} ns/row; \
             dot_rows_multi x32 {ns_multi:.1} ns/row/vector  [{sink:.1}]",
            worker_core::quant::dot_kernel_name(),
            row_bytes as f64 / ns
        );
    }
}
