//! Teacher-forced parity of the CPU backend against HF transformers (float32) on the real
//! models: the issues' acceptance thresholds, asserted.

mod common;
#[path = "common/teacher.rs"]
mod teacher;

use std::sync::Arc;
use worker_core::cpu::CpuBackend;
use worker_core::model::Model;

#[test]
fn cpu_backend_matches_hf_teacher_forced() {
    let mut backend = CpuBackend::new(common::default_model(), 512);
    teacher::check_teacher_forced(
        &mut backend,
        "cpu qwen2",
        &common::golden_lines("teacher_forced_hf.jsonl"),
    );
}

#[test]
fn cpu_backend_matches_hf_teacher_forced_smollm2() {
    let path = worker_core::fetch::resolve_model("smollm2-135m").expect("SmolLM2-135M");
    let model = Arc::new(Model::load(path).expect("loading SmolLM2"));
    assert_eq!(model.config.arch.name, "llama");
    let mut backend = CpuBackend::new(model, 512);
    let cases = common::golden_lines("smollm2/teacher_forced_hf.jsonl");
    teacher::check_teacher_forced_with(&mut backend, "cpu smollm2", &cases, teacher::SMOLLM2);
}
