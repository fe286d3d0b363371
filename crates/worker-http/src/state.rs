//! What every handler shares: the engine handle, the tokenizer and chat template, cached
//! model facts (so `/health` never touches the engine thread), limits, jobs and metrics.

use crate::jobs::JobRegistry;
use crate::metrics::{Gauges, Metrics};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};
use tokio::sync::watch;
use worker_core::engine::{BackendInfo, EngineHandle};
use worker_core::model::Model;
use worker_core::tokenizer::{ChatTemplate, Tokenizer};

/// Facts about the served model, computed once at start.
#[derive(Debug, Clone)]
pub struct ModelInfo {
    /// The name clients see (`/v1/models`, `model` fields).
    pub served_name: String,
    pub arch: String,
    /// e.g. "Q4_K_M" (from `general.file_type`).
    pub quant_kind: String,
    pub tokenizer_kind: String,
    pub vocab_size: usize,
    /// Context window per request (`--ctx-size`).
    pub ctx_size: usize,
    /// The context length the model was trained for.
    pub model_context_length: usize,
    pub backend: BackendInfo,
}

impl ModelInfo {
    pub fn new(
        served_name: String,
        model: &Model,
        tokenizer: &Tokenizer,
        ctx_size: usize,
        backend: BackendInfo,
    ) -> Self {
        let tok_model = model
            .file
            .get_str("tokenizer.ggml.model")
            .unwrap_or("unknown");
        ModelInfo {
            served_name,
            arch: model.config.arch.name.to_string(),
            quant_kind: quant_kind(model),
            tokenizer_kind: format!("gguf-{tok_model}:{}", tokenizer.pre_tokenizer()),
            vocab_size: tokenizer.vocab_size(),
            ctx_size,
            model_context_length: model.config.context_length,
            backend,
        }
    }

    /// Bytes of device memory held: the backend's bytes when it is resident on a GPU, else 0.
    pub fn vram_bytes(&self) -> u64 {
        if self.backend.resident_on_device {
            self.backend.bytes_used
        } else {
            0
        }
    }
}

/// llama.cpp's `llama_ftype` names for `general.file_type`; without the key, the most common
/// tensor type.
fn quant_kind(model: &Model) -> String {
    let name = match model.file.get_u64("general.file_type") {
        Ok(0) => "F32",
        Ok(1) => "F16",
        Ok(2) => "Q4_0",
        Ok(3) => "Q4_1",
        Ok(7) => "Q8_0",
        Ok(8) => "Q5_0",
        Ok(9) => "Q5_1",
        Ok(10) => "Q2_K",
        Ok(11) => "Q3_K_S",
        Ok(12) => "Q3_K_M",
        Ok(13) => "Q3_K_L",
        Ok(14) => "Q4_K_S",
        Ok(15) => "Q4_K_M",
        Ok(16) => "Q5_K_S",
        Ok(17) => "Q5_K_M",
        Ok(18) => "Q6_K",
        Ok(32) => "BF16",
        _ => "",
    };
    if !name.is_empty() {
        return name.to_owned();
    }
    let mut counts: Vec<(String, usize)> = Vec::new();
    for t in model.file.tensors() {
        let ty = t.ty.to_string();
        match counts.iter_mut().find(|(n, _)| *n == ty) {
            Some((_, c)) => *c += 1,
            None => counts.push((ty, 1)),
        }
    }
    counts
        .into_iter()
        .max_by_key(|(_, c)| *c)
        .map(|(n, _)| n)
        .unwrap_or_else(|| "unknown".into())
}

/// Request limits and server settings.
#[derive(Debug, Clone)]
pub struct Limits {
    pub max_body_bytes: usize,
    pub body_timeout: Duration,
    /// Jobs accepted at once (running + queued); more get 503 + Retry-After.
    pub max_active_jobs: usize,
    pub api_key: Option<String>,
}

pub struct AppState {
    pub engine: EngineHandle,
    pub tokenizer: Arc<Tokenizer>,
    pub chat: ChatTemplate,
    pub info: ModelInfo,
    pub limits: Limits,
    pub jobs: JobRegistry,
    pub metrics: Metrics,
    pub started: Instant,
    pub started_unix: u64,
    draining: AtomicBool,
    shutdown: watch::Sender<bool>,
}

impl AppState {
    pub fn new(engine: EngineHandle, chat: ChatTemplate, info: ModelInfo, limits: Limits) -> Self {
        AppState {
            tokenizer: engine.tokenizer().clone(),
            engine,
            chat,
            info,
            limits,
            jobs: JobRegistry::default(),
            metrics: Metrics::default(),
            started: Instant::now(),
            started_unix: crate::util::unix_now(),
            draining: AtomicBool::new(false),
            shutdown: watch::channel(false).0,
        }
    }

    /// Starts a graceful shutdown (SIGTERM, SIGINT or `POST /shutdown`); idempotent.
    pub fn begin_shutdown(&self) {
        self.draining.store(true, Ordering::SeqCst);
        self.shutdown.send_replace(true);
    }

    pub fn draining(&self) -> bool {
        self.draining.load(Ordering::SeqCst)
    }

    pub fn shutdown_signal(&self) -> watch::Receiver<bool> {
        self.shutdown.subscribe()
    }

    pub fn gauges(&self) -> Gauges {
        let s = &self.engine.stats;
        let r = |a: &std::sync::atomic::AtomicU64| a.load(Ordering::Relaxed);
        Gauges {
            running: r(&s.running),
            kv_blocks_used: r(&s.kv_blocks_used),
            kv_blocks_total: r(&s.kv_blocks_total),
            prompt_tokens: r(&s.prompt_tokens),
            generated_tokens: r(&s.generated_tokens),
            engine_steps: r(&s.steps),
            uptime_seconds: self.started.elapsed().as_secs_f64(),
            memory_bytes: self.info.backend.bytes_used,
        }
    }
}
