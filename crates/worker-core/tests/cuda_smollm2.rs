//! The second architecture on the GPU: SmolLM2-135M-Instruct (llama: adjacent-pair RoPE, no Q/K/V
//! biases, Q4_1 weights, a Q8_0 embedding tied to the output) on the CUDA backend, against HF
//! transformers teacher-forced (issue: second architecture), and greedy text through the engine.
//!
//! Runs only with `--features cuda`; skips (message on stderr) when there is no GPU. The model is
//! taken from the cache (`WORKER_ORCD_CACHE`), fetched when missing.
#![cfg(feature = "cuda")]

mod common;
#[path = "common/teacher.rs"]
mod teacher;

use std::sync::Arc;
use worker_core::cuda::{CudaBackend, device};
use worker_core::engine::{EngineConfig, EngineHandle, Event, GenerateRequest};
use worker_core::model::Model;
use worker_core::tokenizer::Tokenizer;

fn smollm2() -> Option<Arc<Model>> {
    if let Some(why) = device::unavailable_reason(0) {
        eprintln!("SKIPPED (no CUDA GPU here: {why})");
        return None;
    }
    let path = worker_core::fetch::resolve_model("smollm2-135m").expect("SmolLM2-135M");
    Some(Arc::new(Model::load(path).expect("loading SmolLM2")))
}

#[test]
fn smollm2_on_cuda_meets_the_teacher_forced_thresholds() {
    let Some(model) = smollm2() else { return };
    assert_eq!(model.config.arch.name, "llama");
    assert!(
        model.weights.tied_output,
        "SmolLM2 ties its output to the embedding"
    );
    let mut gpu = CudaBackend::new(model, 1024, 0).expect("CUDA backend");
    let cases = common::golden_lines("smollm2/teacher_forced_hf.jsonl");
    teacher::check_teacher_forced_with(&mut gpu, "cuda smollm2", &cases, teacher::SMOLLM2);
}

#[test]
fn smollm2_on_cuda_greedy_says_paris() {
    let Some(model) = smollm2() else { return };
    let tokenizer = Arc::new(Tokenizer::from_gguf(&model.file).expect("tokenizer"));
    let backend = CudaBackend::new(model, 1024, 0).expect("CUDA backend");
    let cfg = EngineConfig {
        max_batch: 1,
        ctx_size: 512,
        ..Default::default()
    };
    let engine = EngineHandle::spawn_with_log(Box::new(backend), tokenizer.clone(), cfg, None);
    let prompt = tokenizer.encode("The capital of France is", true).unwrap();
    let mut sub = engine.submit(GenerateRequest::greedy(prompt, 3)).unwrap();
    let mut text = String::new();
    while let Some(e) = sub.events.blocking_recv() {
        match e {
            Event::Token { text: t, .. } => text.push_str(&t),
            Event::Error(e) => panic!("{e}"),
            _ => {}
        }
    }
    engine.shutdown(false);
    eprintln!("smollm2 on cuda: {text:?}");
    assert!(text.starts_with(" Paris"), "got {text:?}");
}
