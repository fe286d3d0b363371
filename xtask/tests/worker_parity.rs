//! The worker's own checkpoint log (CPU backend, real model, the golden prompts run greedily
//! through the engine) compared with the references by the parity report: no failure against
//! HF transformers or llama.cpp, and a deliberately broken layer is named as the first bad one.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use worker_core::cpu::CpuBackend;
use worker_core::engine::{EngineConfig, EngineHandle, Event, GenerateRequest};
use worker_core::gguf::GgufFile;
use worker_core::model::Model;
use worker_core::tokenizer::Tokenizer;
use xtask::parity::{self, Band};

fn golden(name: &str) -> PathBuf {
    let dir = std::env::var_os("WORKER_ORCD_GOLDEN")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../shared/golden"));
    dir.join(name)
}

/// Runs every golden prompt greedily for 4 tokens (token_idx 0..3, as in parity_hf.jsonl) with a
/// checkpoint sink writing to `log` (or no sink), and returns the generated ids per prompt.
fn log_golden_prompts(model: Model, log: Option<&Path>) -> Vec<Vec<u32>> {
    let tokenizer = Arc::new(Tokenizer::from_gguf(&model.file).expect("tokenizer"));
    let sink = log.map(orch_log_sink);
    let cfg = EngineConfig {
        max_batch: 1,
        ctx_size: 512,
        ..Default::default()
    };
    let engine = EngineHandle::spawn_with_log(
        Box::new(CpuBackend::new(Arc::new(model), 512)),
        tokenizer,
        cfg,
        sink,
    );
    let mut outputs = Vec::new();
    let text = std::fs::read_to_string(golden("greedy_llamacpp.jsonl")).expect("golden prompts");
    for line in text.lines().filter(|l| !l.is_empty()) {
        let case: serde_json::Value = serde_json::from_str(line).unwrap();
        let prompt: Vec<u32> = case["prompt_tokens"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_u64().unwrap() as u32)
            .collect();
        let mut req = GenerateRequest::greedy(prompt, 4);
        req.ignore_eos = true;
        req.trace_name = Some(case["name"].as_str().unwrap().to_owned());
        let mut sub = engine.submit(req).expect("submit");
        let mut ids = Vec::new();
        while let Some(e) = sub.events.blocking_recv() {
            match e {
                Event::Token { id, .. } => ids.push(id),
                Event::Error(e) => panic!("{e}"),
                _ => {}
            }
        }
        outputs.push(ids);
    }
    engine.shutdown(false);
    outputs
}

fn orch_log_sink(path: &Path) -> orch_log::Sink {
    orch_log::Sink::new(path, orch_log::SinkConfig::default()).expect("creating the log")
}

fn report(ours: &Path, reference: &str) -> parity::Report {
    let ours = parity::read_jsonl(ours).expect("our log");
    let reference = parity::read_jsonl(&golden(reference)).expect("reference log");
    parity::compare(&ours, &reference, 5)
}

fn default_model() -> Model {
    let path = worker_core::fetch::resolve_model(worker_core::fetch::DEFAULT_MODEL)
        .expect("the default model");
    Model::load(path).expect("loading the model")
}

#[test]
fn cpu_log_has_no_failure_against_either_reference_and_a_broken_layer_is_pinpointed() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("ours.jsonl");
    let with_log = log_golden_prompts(default_model(), Some(&log));
    let without_log = log_golden_prompts(default_model(), None);
    assert_eq!(
        with_log, without_log,
        "logging changed the generated tokens"
    );

    let hf = report(&log, "parity_hf.jsonl");
    let mut out = Vec::new();
    hf.render(&mut out, true).unwrap();
    eprintln!("vs HF:\n{}", String::from_utf8_lossy(&out));
    assert!(hf.divergences.is_empty(), "{:?}", hf.divergences);
    assert!(
        hf.rows.len() >= 10 * 4 * 27,
        "compared only {} checkpoints",
        hf.rows.len()
    );
    assert!(
        !hf.failed_at(Band::Fail),
        "the CPU backend fails against HF"
    );

    let llama = report(&log, "parity_llamacpp.jsonl");
    assert!(
        llama.rows.len() >= 10 * 4,
        "compared only {} logits lines",
        llama.rows.len()
    );
    assert!(
        !llama.failed_at(Band::Fail),
        "the CPU backend fails against llama.cpp"
    );

    // Break layer 5: negate its attention-norm weights in a copy of the file. Everything before
    // layer.5 must stay as good as before; the report must name layer.5 first.
    let path = worker_core::fetch::resolve_model(worker_core::fetch::DEFAULT_MODEL).unwrap();
    let mut bytes = std::fs::read(&path).unwrap();
    let t = GgufFile::open(&path)
        .unwrap()
        .tensor("blk.5.attn_norm.weight")
        .unwrap()
        .clone();
    for chunk in bytes[t.offset as usize..(t.offset + t.size_bytes) as usize].chunks_exact_mut(4) {
        let v = -f32::from_le_bytes(chunk.try_into().unwrap());
        chunk.copy_from_slice(&v.to_le_bytes());
    }
    let broken = Model::from_gguf(GgufFile::from_bytes(bytes).unwrap()).unwrap();
    let log2 = dir.path().join("broken.jsonl");
    log_golden_prompts(broken, Some(&log2));
    let bad = report(&log2, "parity_hf.jsonl");
    let first = bad.first_bad().expect("a broken layer must be reported");
    assert_eq!(
        first.checkpoint, "layer.5",
        "first bad checkpoint: {first:?}"
    );
}
