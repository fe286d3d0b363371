//! The whole model on the CUDA backend: against the CPU backend (same logits within tolerances,
//! prefill and decode, batched decode, split prefill), against HF transformers (the teacher-forced
//! thresholds), greedy generation through the engine, and the VRAM rules (start-up check with
//! both numbers, out-of-memory during a request without losing the backend).
//!
//! Runs only with `--features cuda`; skips (message on stderr) when there is no CUDA driver/GPU.
//! On a GPU machine:
//! - the model: `WORKER_ORCD_MODEL=/path/model.gguf`, default
//!   `~/.cache/worker-orcd/models/qwen2.5-coder-0.5b-instruct-q4_k_m.gguf`;
//! - the golden files: `WORKER_ORCD_GOLDEN=/path/golden` (holding teacher_forced_hf.jsonl
//!   and greedy_llamacpp.jsonl), default the checkout's `../shared/golden`.
//!
//! Without the real model the CUDA-vs-CPU tests run on a full-size synthetic model; the two
//! tests that compare with reference outputs (teacher-forced, " Paris") then fail, saying so.
//! Skip them with `--skip teacher_forced --skip says_paris`.
//!
//! Build here, run there (GPU machines have no Rust):
//! ```text
//! CUDA_HOME=$PWD/.cuda-toolchain/cuda cargo test -p worker-core --features cuda \
//!     --test cuda_kernels --test cuda_model --no-run --message-format=json
//! # copy the two "executable" paths (strip them: ~4 + 8 MB) and the golden files into a
//! # carried folder, then on the GPU machine:
//! LD_LIBRARY_PATH=/usr/local/cuda/lib64 ./cuda_kernels --nocapture
//! LD_LIBRARY_PATH=/usr/local/cuda/lib64 WORKER_ORCD_MODEL=... WORKER_ORCD_GOLDEN=golden \
//!     ./cuda_model --nocapture --test-threads=1
//! ```
#![cfg(feature = "cuda")]

mod common;
#[path = "common/teacher.rs"]
mod teacher;

use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use worker_core::cpu::CpuBackend;
use worker_core::cuda::device;
use worker_core::cuda::{CudaBackend, CudaConfig, CudaInitError};
use worker_core::engine::{
    Backend, BackendError, BatchItem, EngineConfig, EngineHandle, Event, GenerateRequest,
    LogitsWanted, SampleRequest, StopReason,
};
use worker_core::gguf::GgufFile;
use worker_core::model::Model;
use worker_core::sampling::{self, SamplingParams};
use worker_core::synth::{SynthSpec, write_synthetic};
use worker_core::tokenizer::Tokenizer;

/// GPU tests run one at a time (each holds a model in VRAM; the budget test reads free memory).
fn serial() -> MutexGuard<'static, ()> {
    static LOCK: Mutex<()> = Mutex::new(());
    LOCK.lock().unwrap_or_else(|p| p.into_inner())
}

fn no_gpu() -> bool {
    match device::unavailable_reason(0) {
        Some(why) => {
            eprintln!("SKIPPED (no CUDA GPU here: {why})");
            true
        }
        None => false,
    }
}

fn model_path() -> PathBuf {
    std::env::var_os("WORKER_ORCD_MODEL")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(std::env::var("HOME").unwrap_or_default())
                .join(".cache/worker-orcd/models/qwen2.5-coder-0.5b-instruct-q4_k_m.gguf")
        })
}

/// Whether the real default model is available (tests that need its weights fail without it;
/// the others run on a full-size synthetic model instead).
fn have_real_model() -> bool {
    model_path().is_file()
}

/// The real model, or (absent) a synthetic model with its exact shapes, types and vocabulary
/// size: every CUDA-vs-CPU comparison holds for any weights.
fn model() -> Arc<Model> {
    static MODEL: OnceLock<Arc<Model>> = OnceLock::new();
    MODEL
        .get_or_init(|| {
            let p = model_path();
            if p.is_file() {
                eprintln!("model: {}", p.display());
                return Arc::new(
                    Model::load(&p)
                        .unwrap_or_else(|e| panic!("loading {} failed: {e}", p.display())),
                );
            }
            eprintln!(
                "model: {} is missing (set WORKER_ORCD_MODEL); using a full-size SYNTHETIC model",
                p.display()
            );
            synthetic(&SynthSpec::qwen2_0_5b(), 1234)
        })
        .clone()
}

/// The real model, failing loudly when it is missing (for checks against reference outputs).
fn real_model() -> Arc<Model> {
    assert!(
        have_real_model(),
        "{} is missing: this test needs the real default model (set WORKER_ORCD_MODEL)",
        model_path().display()
    );
    model()
}

fn synthetic(spec: &SynthSpec, seed: u64) -> Arc<Model> {
    let mut bytes = Vec::new();
    write_synthetic(spec, seed, &mut bytes).expect("writing a synthetic model");
    Arc::new(
        Model::from_gguf(GgufFile::from_bytes(bytes).expect("synthetic GGUF"))
            .expect("synthetic model"),
    )
}

fn tokenizer() -> Arc<Tokenizer> {
    static TOK: OnceLock<Arc<Tokenizer>> = OnceLock::new();
    TOK.get_or_init(|| Arc::new(Tokenizer::from_gguf(&model().file).expect("tokenizer")))
        .clone()
}

fn cuda(cfg: CudaConfig) -> CudaBackend {
    CudaBackend::with_config(model(), 4096, 0, cfg).unwrap_or_else(|e| panic!("CUDA backend: {e}"))
}

fn encode(text: &str) -> Vec<u32> {
    tokenizer().encode(text, true).expect("encode")
}

const PROMPTS: [&str; 3] = [
    "The capital of France is",
    "def fibonacci(n):\n    \"\"\"Return the n-th Fibonacci number.\"\"\"\n",
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\nWrite a haiku about GPU memory.<|im_end|>\n<|im_start|>assistant\n",
];

/// Per-row agreement of two logits rows. On the real model: |Δ logprob| over the reference's
/// top 5 and the argmax where the reference margin is ≥ 0.2 (the teacher-forced thresholds). On a
/// synthetic model (random weights, whose logit scale says nothing about language) the scale-free
/// form: per row `||Δ||₂ / ||ref − mean(ref)||₂`, and the argmax where the reference margin is
/// ≥ 5% of the row's max − median.
struct Agreement {
    synthetic: bool,
    errors: Vec<f32>,
    rel: Vec<f32>,
    decisive: usize,
    misses: Vec<String>,
}

impl Agreement {
    fn new(synthetic: bool) -> Self {
        Agreement {
            synthetic,
            errors: Vec::new(),
            rel: Vec::new(),
            decisive: 0,
            misses: Vec::new(),
        }
    }

    fn add(&mut self, label: &str, ours: &[f32], reference: &[f32]) {
        assert_eq!(ours.len(), reference.len());
        assert!(
            ours.iter().all(|v| v.is_finite()),
            "{label}: non-finite CUDA logits"
        );
        let (lo, lr) = (sampling::logsumexp(ours), sampling::logsumexp(reference));
        let top = sampling::top_n(reference, 5, lr);
        for &(id, lp) in &top {
            self.errors.push(((ours[id as usize] - lo) - lp).abs());
        }
        let mean = reference.iter().map(|&v| v as f64).sum::<f64>() / reference.len() as f64;
        let num: f64 = ours
            .iter()
            .zip(reference)
            .map(|(a, b)| ((a - b) as f64).powi(2))
            .sum();
        let den: f64 = reference.iter().map(|&b| (b as f64 - mean).powi(2)).sum();
        self.rel.push((num.sqrt() / den.sqrt().max(1e-30)) as f32);
        let margin = if self.synthetic {
            let mut sorted = reference.to_vec();
            sorted.sort_by(f32::total_cmp);
            0.05 * (sorted[sorted.len() - 1] - sorted[sorted.len() / 2])
        } else {
            0.2
        };
        if top[0].1 - top[1].1 >= margin {
            self.decisive += 1;
            let a = sampling::argmax(ours) as u32;
            if a != top[0].0 {
                self.misses
                    .push(format!("{label}: CUDA {a}, CPU {}", top[0].0));
            }
        }
    }

    fn check(mut self, label: &str) {
        assert!(!self.errors.is_empty());
        let pct = |v: &mut Vec<f32>, p: f64| {
            v.sort_by(f32::total_cmp);
            v[((v.len() - 1) as f64 * p).round() as usize]
        };
        let (median, p95, max) = (
            pct(&mut self.errors, 0.5),
            pct(&mut self.errors, 0.95),
            pct(&mut self.errors, 1.0),
        );
        let (rmed, r95, rmax) = (
            pct(&mut self.rel, 0.5),
            pct(&mut self.rel, 0.95),
            pct(&mut self.rel, 1.0),
        );
        eprintln!(
            "[{label}] CUDA vs CPU{}: {} rows, {} decisive; top-5 |Δlogprob| median {median:.4}, p95 {p95:.4}, max {max:.4}; row rel. L2 median {rmed:.4}, p95 {r95:.4}, max {rmax:.4}; top-1 misses {}",
            if self.synthetic {
                " (synthetic model)"
            } else {
                ""
            },
            self.rel.len(),
            self.decisive,
            self.misses.len()
        );
        assert!(
            self.misses.is_empty(),
            "{label}: top-1 disagrees on decisive rows: {:?}",
            self.misses
        );
        if self.synthetic {
            // Random weights amplify the 8-bit activation rounding of the dp4a (q8_1) path layer
            // after layer: measured on an H200, 2026-11-27, full-size synthetic model, median row
            // rel. L2 0.085 for the matvec prompt path (0.006 through the f16 GEMM; 0.021 on the
            // real model). A wrong kernel gives ~1.0, so these bounds still catch one.
            assert!(rmed <= 0.15, "{label}: median row rel. L2 {rmed} > 0.15");
            assert!(r95 <= 0.3, "{label}: p95 row rel. L2 {r95} > 0.3");
        } else {
            assert!(median <= 0.05, "{label}: median {median} > 0.05");
            assert!(p95 <= 0.2, "{label}: p95 {p95} > 0.2");
        }
    }
}

fn table_for(n_positions: usize, first_block: u32, bs: usize) -> Vec<u32> {
    (0..n_positions.div_ceil(bs) as u32)
        .map(|b| first_block + 2 * b)
        .collect()
}

/// Prompt logits (every position) and then `steps` greedy decode steps, on one backend; returns
/// every logits row and the tokens fed.
fn prompt_then_decode(
    b: &mut dyn Backend,
    prompt: &[u32],
    feed: Option<&[u32]>,
    steps: usize,
    first_block: u32,
) -> (Vec<Vec<f32>>, Vec<u32>) {
    let bs = b.kv_block_size();
    let table = table_for(prompt.len() + steps + 1, first_block, bs);
    b.forward(&[BatchItem {
        tokens: prompt,
        start_pos: 0,
        block_table: &table,
        logits: LogitsWanted::All,
        trace: None,
        cancel: None,
    }])
    .expect("prefill");
    let mut rows: Vec<Vec<f32>> = (0..prompt.len())
        .map(|r| b.logits(r).expect("row"))
        .collect();
    let mut fed = Vec::new();
    for i in 0..steps {
        let next = match feed {
            Some(f) => f[i],
            None => sampling::argmax(rows.last().unwrap()) as u32,
        };
        fed.push(next);
        let pos = prompt.len() + i;
        b.forward(&[BatchItem {
            tokens: &[next],
            start_pos: pos,
            block_table: &table,
            logits: LogitsWanted::Last,
            trace: None,
            cancel: None,
        }])
        .expect("decode");
        rows.push(b.logits(0).expect("row"));
    }
    (rows, fed)
}

#[test]
fn cuda_matches_cpu_on_prompts_and_decode_steps() {
    if no_gpu() {
        return;
    }
    let _g = serial();
    let mut cpu = CpuBackend::new(model(), 4096);
    // Prompts through the cuBLAS GEMM path (when libcublas loads) and through the matvec path.
    for prompt_gemm in [true, false] {
        let mut gpu = cuda(CudaConfig {
            prompt_gemm,
            ..Default::default()
        });
        let label = if gpu.uses_prompt_gemm() {
            "prefill (GEMM) + decode"
        } else {
            "prefill (matvec) + decode"
        };
        if prompt_gemm && !gpu.uses_prompt_gemm() {
            eprintln!(
                "NOTE: libcublas was not found; the GEMM prompt path is not tested (set LD_LIBRARY_PATH)"
            );
        }
        let mut agree = Agreement::new(!have_real_model());
        for p in PROMPTS {
            let prompt = encode(p);
            let (cpu_rows, fed) = prompt_then_decode(&mut cpu, &prompt, None, 8, 1);
            // The CUDA backend is fed the CPU's tokens so both see the same sequence.
            let (gpu_rows, _) = prompt_then_decode(&mut gpu, &prompt, Some(&fed), 8, 3);
            for (i, (o, r)) in gpu_rows.iter().zip(&cpu_rows).enumerate() {
                agree.add(&format!("{:?} row {i}", &p[..p.len().min(20)]), o, r);
            }
        }
        agree.check(label);
    }
}

#[test]
fn cuda_matches_cpu_on_small_synthetic_models_of_every_weight_type() {
    if no_gpu() {
        return;
    }
    let _g = serial();
    use worker_core::quant::GgmlType::*;
    let base = SynthSpec {
        n_layers: 3,
        d_model: 256,
        d_ff: 512,
        n_heads: 4,
        n_kv_heads: 2,
        vocab: 4096,
        context_length: 4096,
        high_bit_layers: vec![1],
        ..SynthSpec::qwen2_0_5b()
    };
    let specs = [
        // (label, spec): every matvec type appears as some matrix; head_dim 64 and 128.
        (
            "Q4_1/Q5_1/Q5_K/Q8_0/Q6_K, embd Q4_0, out F16",
            SynthSpec {
                embd_type: Q4_0,
                output_type: F16,
                matrix_type: Q4_1,
                high_bit: (Q5_1, Q5K),
                low_bit: (Q8_0, Q6K),
                ..base.clone()
            },
        ),
        (
            "Q5_K/F32/BF16/F16/Q4_0, embd BF16, out Q4_K",
            SynthSpec {
                embd_type: BF16,
                output_type: Q4K,
                matrix_type: Q5K,
                high_bit: (F32, BF16),
                low_bit: (F16, Q4_0),
                ..base.clone()
            },
        ),
        (
            "Q8_0 hd128, embd F32, out Q5_0",
            SynthSpec {
                d_model: 512,
                n_heads: 4,
                n_kv_heads: 1,
                embd_type: F32,
                output_type: Q5_0,
                matrix_type: Q8_0,
                high_bit: (Q5_0, Q4K),
                low_bit: (Q8_0, Q5_0),
                ..base.clone()
            },
        ),
    ];
    for (label, spec) in specs {
        let m = synthetic(&spec, 99);
        let mut cpu = CpuBackend::new(m.clone(), 1024);
        let mut gpu = CudaBackend::with_config(m.clone(), 1024, 0, CudaConfig::default())
            .unwrap_or_else(|e| panic!("{label}: {e}"));
        let prompt: Vec<u32> = (0..40u32).map(|i| (i * 97 + 13) % 4000).collect();
        let (cpu_rows, fed) = prompt_then_decode(&mut cpu, &prompt, None, 6, 1);
        let (gpu_rows, _) = prompt_then_decode(&mut gpu, &prompt, Some(&fed), 6, 5);
        let mut agree = Agreement::new(true);
        for (i, (o, r)) in gpu_rows.iter().zip(&cpu_rows).enumerate() {
            agree.add(&format!("{label} row {i}"), o, r);
        }
        agree.check(label);
    }
}

#[test]
fn batched_decode_and_split_prefill_match_single_sequence_runs() {
    if no_gpu() {
        return;
    }
    let _g = serial();
    let mut cpu = CpuBackend::new(model(), 4096);
    // Small launch sizes: the prompts are split into 16-token pieces, decode groups into pairs.
    let small = CudaConfig {
        max_batch_tokens: 16,
        max_decode_seqs: 2,
        max_logit_rows: 4,
        ..Default::default()
    };
    let mut gpu = cuda(small);
    let bs = gpu.kv_block_size();
    let prompts: Vec<Vec<u32>> = PROMPTS.iter().map(|p| encode(p)).collect();
    let tables: Vec<Vec<u32>> = prompts
        .iter()
        .enumerate()
        .map(|(i, p)| table_for(p.len() + 4, i as u32 * 64, bs))
        .collect();
    let mut agree = Agreement::new(!have_real_model());
    // Prefill all three in one forward (the logits buffer grows past 4 rows).
    let items: Vec<BatchItem<'_>> = prompts
        .iter()
        .zip(&tables)
        .map(|(p, t)| BatchItem {
            tokens: p,
            start_pos: 0,
            block_table: t,
            logits: LogitsWanted::All,
            trace: None,
            cancel: None,
        })
        .collect();
    gpu.forward(&items).expect("batched prefill");
    let mut row = 0;
    let mut last = Vec::new();
    for (i, p) in prompts.iter().enumerate() {
        let (cpu_rows, _) = prompt_then_decode(&mut cpu, p, Some(&[]), 0, 1);
        for (j, r) in cpu_rows.iter().enumerate() {
            agree.add(
                &format!("prompt {i} row {j}"),
                &gpu.logits(row + j).unwrap(),
                r,
            );
        }
        row += p.len();
        last.push(sampling::argmax(cpu_rows.last().unwrap()) as u32);
    }
    // One decode step for all three sequences together (a group of 2, then 1).
    let items: Vec<BatchItem<'_>> = prompts
        .iter()
        .zip(&tables)
        .zip(&last)
        .map(|((p, t), tok)| BatchItem {
            tokens: std::slice::from_ref(tok),
            start_pos: p.len(),
            block_table: t,
            logits: LogitsWanted::Last,
            trace: None,
            cancel: None,
        })
        .collect();
    gpu.forward(&items).expect("batched decode");
    for (i, p) in prompts.iter().enumerate() {
        let (cpu_rows, _) = prompt_then_decode(&mut cpu, p, Some(&last[i..i + 1]), 1, 1);
        agree.add(
            &format!("decode seq {i}"),
            &gpu.logits(i).unwrap(),
            cpu_rows.last().unwrap(),
        );
    }
    agree.check("batched / split");
}

#[test]
fn cuda_meets_the_teacher_forced_thresholds_against_hf() {
    if no_gpu() {
        return;
    }
    let _g = serial();
    let cases = common::golden_lines("teacher_forced_hf.jsonl");
    real_model();
    for prompt_gemm in [true, false] {
        let mut gpu = cuda(CudaConfig {
            prompt_gemm,
            ..Default::default()
        });
        let label = if gpu.uses_prompt_gemm() {
            "cuda, prompt GEMM"
        } else {
            "cuda, prompt matvec"
        };
        teacher::check_teacher_forced(&mut gpu, label, &cases);
    }
}

fn engine_run(engine: &EngineHandle, req: GenerateRequest) -> (Vec<u32>, String, StopReason) {
    let mut sub = engine.submit(req).expect("submit");
    let (mut ids, mut text) = (Vec::new(), String::new());
    loop {
        match sub
            .events
            .blocking_recv()
            .expect("the stream ends with Finished")
        {
            Event::Token {
                id, text: piece, ..
            } => {
                ids.push(id);
                text.push_str(&piece);
            }
            Event::Finished { reason, .. } => return (ids, text, reason),
            Event::Error(e) => panic!("engine error: {e}"),
            _ => {}
        }
    }
}

#[test]
fn greedy_generation_through_the_engine_says_paris() {
    if no_gpu() {
        return;
    }
    let _g = serial();
    let backend = cuda(CudaConfig::default());
    let info = backend.info();
    assert!(
        info.resident_on_device && info.bytes_used > 400 << 20,
        "{info:?}"
    );
    eprintln!(
        "CUDA backend: {} using {} bytes",
        info.device, info.bytes_used
    );
    let cfg = EngineConfig {
        max_batch: 4,
        ctx_size: 1024,
        ..Default::default()
    };
    let engine = EngineHandle::spawn(Box::new(backend), tokenizer(), cfg);
    // Seeded sampling through the device sampler replays exactly.
    let mut req = GenerateRequest::greedy(encode("Once upon a time"), 10);
    req.sampling = SamplingParams {
        temperature: 0.9,
        top_k: 40,
        top_p: 0.95,
        seed: Some(7),
        ..Default::default()
    };
    let a = engine_run(&engine, req.clone());
    let b = engine_run(&engine, req);
    assert_eq!(a.0, b.0, "same seed, same tokens");
    eprintln!("sampled: {:?}", a.1);
    // Greedy.
    let (ids, text, reason) = engine_run(
        &engine,
        GenerateRequest::greedy(encode("The capital of France is"), 12),
    );
    eprintln!("greedy: {text:?} {ids:?}");
    assert_eq!(reason, StopReason::MaxTokens);
    assert_eq!(ids.len(), 12);
    assert!(
        have_real_model(),
        "the real model is needed for the \" Paris\" check (set WORKER_ORCD_MODEL)"
    );
    assert!(text.starts_with(" Paris"), "got {text:?}");
    // Against llama.cpp's greedy continuation (same quantized model): the same first tokens.
    let case = common::golden_lines("greedy_llamacpp.jsonl")
        .into_iter()
        .find(|c| c["name"] == "capital")
        .expect("capital case");
    let want: Vec<u32> = case["generated"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_u64().unwrap() as u32)
        .collect();
    let same = ids.iter().zip(&want).take_while(|(a, b)| a == b).count();
    eprintln!(
        "greedy vs llama.cpp: {same} of {} tokens identical",
        ids.len()
    );
    assert!(same >= 4, "CUDA greedy {ids:?} vs llama.cpp {want:?}");
}

#[test]
fn device_sampling_matches_the_host_sampler_on_model_logits() {
    if no_gpu() {
        return;
    }
    let _g = serial();
    let mut gpu = cuda(CudaConfig::default());
    let prompt = encode("Once upon a time, in a land far away,");
    let table = table_for(prompt.len(), 0, gpu.kv_block_size());
    gpu.forward(&[BatchItem {
        tokens: &prompt,
        start_pos: 0,
        block_table: &table,
        logits: LogitsWanted::Last,
        trace: None,
        cancel: None,
    }])
    .unwrap();
    let logits = gpu.logits(0).unwrap();
    let params = [
        SamplingParams::greedy(),
        SamplingParams {
            temperature: 0.8,
            top_k: 40,
            top_p: 0.9,
            ..Default::default()
        },
        SamplingParams {
            temperature: 1.2,
            min_p: 0.05,
            repetition_penalty: 1.3,
            ..Default::default()
        },
        SamplingParams {
            temperature: 0.7,
            presence_penalty: 0.5,
            frequency_penalty: 0.3,
            ..Default::default()
        },
    ];
    let history = prompt.clone();
    let mut boundary = 0;
    for p in &params {
        for i in 0..50 {
            let u = (i as f32 + 0.5) / 50.0;
            let req = SampleRequest {
                row: 0,
                params: p,
                history: &history,
                uniform: u,
                logprobs: Some(3),
            };
            let got = gpu.sample(&[req]).unwrap().remove(0);
            let (want, want_lp) = sampling::sample_host(&logits, p, &history, u, Some(3));
            if got.token != want {
                let near = [-1e-4f32, 1e-4].iter().any(|du| {
                    sampling::sample_host(&logits, p, &history, u + du, None).0 == got.token
                });
                assert!(near, "{p:?} u={u}: device {}, host {want}", got.token);
                boundary += 1;
                continue;
            }
            let (lp, wlp) = (got.logprob.unwrap(), want_lp.unwrap());
            assert!(
                (lp.logprob - wlp.logprob).abs() < 1e-3,
                "logprob {} vs {}",
                lp.logprob,
                wlp.logprob
            );
            assert_eq!(
                lp.top.iter().map(|t| t.0).collect::<Vec<_>>(),
                wlp.top.iter().map(|t| t.0).collect::<Vec<_>>()
            );
        }
    }
    assert!(boundary <= 2, "{boundary} boundary disagreements");
    let lp = gpu.token_logprob(0, 42, 5).unwrap();
    let want = sampling::token_logprob(&logits, 42, 5);
    assert!((lp.logprob - want.logprob).abs() < 1e-3 && lp.top.len() == 5);
}

#[test]
fn start_fails_with_needed_and_free_bytes_under_a_small_budget() {
    if no_gpu() {
        return;
    }
    let _g = serial();
    let budget = 64u64 << 20;
    let cfg = CudaConfig {
        max_vram_bytes: Some(budget),
        ..Default::default()
    };
    let err = match CudaBackend::with_config(model(), 4096, 0, cfg) {
        Err(e) => e,
        Ok(_) => panic!("a 0.5B model cannot fit 64 MiB"),
    };
    let msg = err.to_string();
    eprintln!("start-up error: {msg}");
    assert!(err.is_insufficient_vram(), "{err:?}");
    let CudaInitError::InsufficientVram { needed, free, .. } = &err else {
        unreachable!()
    };
    assert!(*needed > budget && *free > budget, "{err:?}");
    assert!(
        msg.contains(&format!("needed {needed} bytes"))
            && msg.contains(&format!("free {free} bytes")),
        "{msg}"
    );
    assert!(
        msg.contains(&budget.to_string()),
        "the message names the budget: {msg}"
    );
    // The same plan without a budget fits an H100/H200 easily.
    let plan = CudaBackend::plan(&model(), 4096, &CudaConfig::default()).unwrap();
    assert_eq!(plan.total(), *needed);
}

#[test]
fn out_of_memory_during_a_request_fails_it_and_the_backend_keeps_serving() {
    if no_gpu() {
        return;
    }
    let _g = serial();
    let base = CudaConfig {
        max_logit_rows: 8,
        ..Default::default()
    };
    let planned = CudaBackend::plan(&model(), 4096, &base).unwrap().total();
    // Room for the planned buffers plus 1 MiB: per-position logits of a long prompt cannot fit.
    let cfg = CudaConfig {
        max_vram_bytes: Some(planned + (1 << 20)),
        ..base
    };
    let mut gpu = cuda(cfg);
    let long: Vec<u32> = encode(&"The quick brown fox jumps over the lazy dog. ".repeat(20));
    let table = table_for(long.len(), 0, gpu.kv_block_size());
    let err = gpu
        .forward(&[BatchItem {
            tokens: &long,
            start_pos: 0,
            block_table: &table,
            logits: LogitsWanted::All,
            trace: None,
            cancel: None,
        }])
        .unwrap_err();
    eprintln!("request error: {err}");
    assert!(matches!(err, BackendError::OutOfMemory(_)), "{err:?}");
    // The next request runs normally.
    let prompt = encode("The capital of France is");
    let table = table_for(prompt.len(), 0, gpu.kv_block_size());
    gpu.forward(&[BatchItem {
        tokens: &prompt,
        start_pos: 0,
        block_table: &table,
        logits: LogitsWanted::Last,
        trace: None,
        cancel: None,
    }])
    .expect("the backend keeps serving");
    let greedy = SamplingParams::greedy();
    let req = SampleRequest {
        row: 0,
        params: &greedy,
        history: &[],
        uniform: 0.5,
        logprobs: None,
    };
    let tok = gpu.sample(&[req]).unwrap()[0].token;
    let mut cpu = CpuBackend::new(model(), 4096);
    let (rows, _) = prompt_then_decode(&mut cpu, &prompt, Some(&[]), 0, 0);
    assert_eq!(
        tok as usize,
        sampling::argmax(rows.last().unwrap()),
        "same greedy token as the CPU backend"
    );
}

#[test]
fn bad_inputs_are_rejected_before_touching_the_device() {
    if no_gpu() {
        return;
    }
    let _g = serial();
    let mut gpu = cuda(CudaConfig {
        max_logit_rows: 4,
        ..Default::default()
    });
    let v = model().config.vocab_size as u32;
    let item = |tokens: &'static [u32], table: &'static [u32]| BatchItem {
        tokens,
        start_pos: 0,
        block_table: table,
        logits: LogitsWanted::Last,
        trace: None,
        cancel: None,
    };
    let big: &'static [u32] = Box::leak(vec![v].into_boxed_slice());
    assert!(
        matches!(
            gpu.forward(&[item(big, &[0])]),
            Err(BackendError::Invalid(_))
        ),
        "token id = vocab size"
    );
    let outside: &'static [u32] = Box::leak(vec![gpu.kv_num_blocks() as u32].into_boxed_slice());
    assert!(
        matches!(
            gpu.forward(&[item(&[1, 2], outside)]),
            Err(BackendError::Invalid(_))
        ),
        "block outside the pool"
    );
    assert!(
        matches!(
            gpu.forward(&[item(&[1; 20], &[0])]),
            Err(BackendError::Invalid(_))
        ),
        "table too short"
    );
    assert!(gpu.logits(0).is_err(), "no rows after a failed forward");
}

/// Without a GPU (CI), starting the backend is a clean `NoDevice` error (the server's automatic
/// device choice falls back to the CPU on exactly this), never a panic.
#[test]
fn without_a_gpu_start_fails_with_no_device() {
    if device::unavailable_reason(0).is_none() {
        eprintln!("SKIPPED (a GPU is present)");
        return;
    }
    let spec = SynthSpec {
        n_layers: 1,
        d_model: 64,
        d_ff: 256,
        n_heads: 1,
        n_kv_heads: 1,
        vocab: 300,
        high_bit_layers: vec![],
        ..SynthSpec::qwen2_0_5b()
    };
    match CudaBackend::new(synthetic(&spec, 1), 64, 0) {
        Err(CudaInitError::NoDevice { reason, .. }) => eprintln!("no device: {reason}"),
        Err(e) => panic!("expected NoDevice, got {e}"),
        Ok(_) => panic!("a backend started without a GPU"),
    }
}

/// Greedy decode steps on one backend from `pos` (the prompt already cached), each token fed
/// back through `sample`; returns every step's logits and token and the mean time per step.
fn greedy_steps(
    b: &mut CudaBackend,
    first: u32,
    pos: usize,
    steps: usize,
    table: &[u32],
) -> (Vec<Vec<f32>>, Vec<u32>, f64) {
    let params = SamplingParams::greedy();
    let (mut rows, mut toks) = (Vec::new(), Vec::new());
    let mut token = first;
    let mut busy = 0.0;
    for i in 0..steps {
        let t0 = std::time::Instant::now();
        b.forward(&[BatchItem {
            tokens: &[token],
            start_pos: pos + i,
            block_table: table,
            logits: LogitsWanted::Last,
            trace: None,
            cancel: None,
        }])
        .expect("decode");
        token = b
            .sample(&[SampleRequest {
                row: 0,
                params: &params,
                history: &[],
                uniform: 0.0,
                logprobs: None,
            }])
            .expect("sample")[0]
            .token;
        busy += t0.elapsed().as_secs_f64();
        rows.push(b.logits(0).expect("row"));
        toks.push(token);
    }
    (rows, toks, busy / steps as f64)
}

#[test]
fn decode_graph_matches_the_eager_path_bit_for_bit() {
    if no_gpu() {
        return;
    }
    let _g = serial();
    let mut eager = cuda(CudaConfig {
        decode_graph: false,
        ..Default::default()
    });
    let mut graph = cuda(CudaConfig::default());
    // 250 cached positions: the decode steps cross 256 (tables of 16, then 32 blocks: two
    // graphs).
    let prompt: Vec<u32> = (0..250u32).map(|i| (i * 7919 + 13) % 5000 + 10).collect();
    let steps = 24;
    let bs = eager.kv_block_size();
    let table = table_for(prompt.len() + 64 + 1, 5, bs);
    let mut out = Vec::new();
    for b in [&mut eager, &mut graph] {
        b.forward(&[BatchItem {
            tokens: &prompt,
            start_pos: 0,
            block_table: &table,
            logits: LogitsWanted::Last,
            trace: None,
            cancel: None,
        }])
        .expect("prefill");
        let first = sampling::argmax(&b.logits(0).unwrap()) as u32;
        out.push(greedy_steps(b, first, prompt.len(), steps, &table));
    }
    let (ge, gg) = (&out[0], &out[1]);
    assert_eq!(graph.decode_graphs_captured(), 2);
    assert_eq!(eager.decode_graphs_captured(), 0);
    assert_eq!(ge.1, gg.1, "greedy tokens: eager vs graph");
    for (i, (a, b)) in ge.0.iter().zip(&gg.0).enumerate() {
        let same = a.iter().zip(b).all(|(x, y)| x.to_bits() == y.to_bits());
        assert!(same, "step {i}: graph logits differ from the eager ones");
    }
    // A sampled (non-greedy) request after a graph step goes through the device sampler.
    let p = SamplingParams {
        temperature: 0.8,
        top_k: 40,
        ..Default::default()
    };
    let req = |u| SampleRequest {
        row: 0,
        params: &p,
        history: &[],
        uniform: u,
        logprobs: Some(2),
    };
    let (a, b) = (
        eager.sample(&[req(0.37)]).unwrap().remove(0),
        graph.sample(&[req(0.37)]).unwrap().remove(0),
    );
    assert_eq!(a.token, b.token);
    assert_eq!(
        a.logprob.unwrap().logprob.to_bits(),
        b.logprob.unwrap().logprob.to_bits()
    );
    // Timing of the same steps (after the capture): eager vs replayed, host-side per step.
    let t_eager = greedy_steps(&mut eager, 7, prompt.len(), 64, &table).2;
    let t_graph = greedy_steps(&mut graph, 7, prompt.len(), 64, &table).2;
    eprintln!(
        "decode step at ~{} positions: eager {:.1} µs, graph {:.1} µs (incl. logits copy-back)",
        prompt.len(),
        t_eager * 1e6,
        t_graph * 1e6
    );
}
