//! Teacher-forced parity of the CPU backend against HF transformers (float32) on the real model:
//! the acceptance thresholds, asserted.

mod common;

use worker_core::cpu::CpuBackend;
use worker_core::engine::{Backend, BatchItem, LogitsWanted};
use worker_core::sampling::{argmax, logsumexp};

/// Runs every golden sequence through `backend` and checks the next-token distributions.
pub fn check_teacher_forced(backend: &mut dyn Backend, label: &str) {
    let mut errors: Vec<f32> = Vec::new();
    let (mut steps, mut decisive, mut top1_miss) = (0, 0, Vec::new());
    for case in common::golden_lines("teacher_forced_hf.jsonl") {
        let name = case["name"].as_str().unwrap().to_owned();
        let prompt = common::ids(&case["prompt_tokens"]);
        let generated = common::ids(&case["llamacpp_generated"]);
        let mut tokens = prompt.clone();
        tokens.extend_from_slice(&generated[..generated.len() - 1]);
        let bs = backend.kv_block_size();
        let table: Vec<u32> = (0..tokens.len().div_ceil(bs) as u32).collect();
        backend
            .forward(&[BatchItem {
                tokens: &tokens,
                start_pos: 0,
                block_table: &table,
                logits: LogitsWanted::All,
                trace: None,
                cancel: None,
            }])
            .expect("forward");
        for (i, step) in case["steps"].as_array().unwrap().iter().enumerate() {
            let logits = backend.logits(prompt.len() - 1 + i).expect("logits row");
            let ours_lse = logsumexp(&logits);
            let ref_lse = step["logsumexp"].as_f64().unwrap() as f32;
            let top = step["top"].as_array().unwrap();
            let tok = |j: usize| top[j][0].as_u64().unwrap() as usize;
            let val = |j: usize| top[j][1].as_f64().unwrap() as f32;
            for j in 0..5 {
                errors.push(((logits[tok(j)] - ours_lse) - (val(j) - ref_lse)).abs());
            }
            steps += 1;
            if val(0) - val(1) >= 0.2 {
                decisive += 1;
                let ours = argmax(&logits);
                if ours != tok(0) {
                    top1_miss.push(format!("{name} step {i}: ours {ours}, reference {}", tok(0)));
                }
            }
        }
    }
    errors.sort_by(f32::total_cmp);
    let pct = |p: f64| errors[((errors.len() - 1) as f64 * p).round() as usize];
    let (median, p95, max) = (pct(0.5), pct(0.95), errors[errors.len() - 1]);
    eprintln!(
        "[{label}] teacher-forced vs HF: {steps} steps, {decisive} decisive; top-5 |Δlogprob| median {median:.2e}, p95 {p95:.2e}, max {max:.2e}; top-1 misses: {}",
        top1_miss.len()
    );
    assert!(top1_miss.is_empty(), "top-1 disagrees where the reference margin ≥ 0.2: {top1_miss:?}");
    assert!(median <= 0.05, "median {median} > 0.05");
    assert!(p95 <= 0.2, "95th percentile {p95} > 0.2");
}

#[test]
fn cpu_backend_matches_hf_teacher_forced() {
    let model = common::default_model();
    let mut backend = CpuBackend::new(model, 512);
    check_teacher_forced(&mut backend, "cpu");
}
