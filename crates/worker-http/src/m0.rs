//! The M0 contract's endpoints: `POST /execute` (SSE), `POST /cancel`, `GET /health`.

use crate::errors::ApiError;
use crate::http::{Resp, json_ok, json_response};
use crate::jobs::{self, Item, JobGuard};
use crate::sse::{self, StreamFormat};
use crate::state::AppState;
use crate::validate::Fields;
use hyper::StatusCode;
use serde_json::json;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use worker_core::engine::{Event, GenerateRequest, StopReason};
use worker_core::sampling::SamplingParams;

pub const MAX_PROMPT_CHARS: usize = 32_768;
pub const MAX_TOKENS: i64 = 2048;
pub const MAX_STOPS: usize = 4;
const MAX_JOB_ID_CHARS: usize = 256;
/// A `metrics` event goes out after every this many tokens (and once before `end`).
const METRICS_EVERY: usize = 16;

/// A validated `/execute` request.
#[derive(Debug)]
struct Execute {
    job_id: String,
    req: GenerateRequest,
}

fn parse_execute(state: &AppState, body: &[u8]) -> Result<Execute, ApiError> {
    let mut f = Fields::parse(body)?;
    let job_id = f.required_string("job_id");
    if let Some(id) = &job_id
        && (id.is_empty()
            || id.chars().count() > MAX_JOB_ID_CHARS
            || id.chars().any(char::is_control))
    {
        f.error(
            "job_id",
            "1 to 256 characters, no control characters",
            "job_id must be 1 to 256 printable characters",
        );
    }
    let prompt = f.required_string("prompt");
    let max_tokens = if f.has("max_tokens") {
        f.int("max_tokens", 1, MAX_TOKENS)
    } else {
        f.error("max_tokens", "required", "max_tokens is required");
        None
    };
    let temperature = f.number("temperature", 0.0, 2.0, false).unwrap_or(1.0);
    let top_p = f.number("top_p", 0.0, 1.0, false).unwrap_or(1.0);
    let top_k = f.int("top_k", 0, state.info.vocab_size as i64).unwrap_or(0);
    let min_p = f.number("min_p", 0.0, 1.0, false).unwrap_or(0.0);
    // 0 would divide logits by zero; the useful range is (0, 2].
    let repetition_penalty = f
        .number("repetition_penalty", 0.0, 2.0, true)
        .unwrap_or(1.0);
    let stop = f.stop_list("stop", MAX_STOPS);
    let seed = f.seed("seed");
    f.reject_unknown();

    let mut prompt_ids = Vec::new();
    if let Some(p) = &prompt {
        let n = p.chars().count();
        if n == 0 || n > MAX_PROMPT_CHARS {
            f.error(
                "prompt",
                "1 <= characters <= 32768",
                format!("the prompt has {n} characters; 1 to 32768 are allowed"),
            );
        } else {
            match state.tokenizer.encode(p, true) {
                Ok(ids) => prompt_ids = ids,
                Err(e) => f.error(
                    "prompt",
                    "tokenizable text",
                    format!("the prompt could not be tokenized: {e}"),
                ),
            }
            check_prompt_fits(&mut f, "prompt", prompt_ids.len(), state.info.ctx_size);
        }
    }
    f.finish()?;
    let sampling = SamplingParams {
        temperature,
        top_p,
        top_k: top_k as usize,
        min_p,
        repetition_penalty,
        seed,
        ..Default::default()
    };
    let job_id = job_id.unwrap_or_default();
    let req = GenerateRequest {
        prompt: prompt_ids,
        max_tokens: max_tokens.unwrap_or(1) as usize,
        sampling,
        stop,
        logprobs: None,
        prompt_logprobs: None,
        ignore_eos: false,
        trace_name: Some(job_id.clone()),
    };
    Ok(Execute { job_id, req })
}

/// The prompt must leave room for at least one generated token.
pub fn check_prompt_fits(f: &mut Fields, field: &str, n_tokens: usize, ctx: usize) {
    if n_tokens == 0 {
        f.error(field, "at least one token", "the prompt is empty");
    } else if n_tokens >= ctx {
        f.error(
            field,
            "prompt tokens < context size",
            format!("the prompt has {n_tokens} tokens; the context size is {ctx} and at least one token must be generated"),
        );
    }
}

pub async fn execute(state: &Arc<AppState>, body: &[u8]) -> Result<Resp, ApiError> {
    let Execute { job_id, req } = parse_execute(state, body)?;
    let seed = req.sampling.seed;
    let job = jobs::submit(state, job_id.clone(), "execute", req)?;
    let fmt = M0Stream {
        job_id,
        model: state.info.served_name.clone(),
        seed,
        vram: state.info.vram_bytes(),
    };
    Ok(sse::response(job, fmt))
}

/// The contract's four stop reasons; a full context window is a token limit (MAX_TOKENS).
fn m0_reason(r: &StopReason) -> &'static str {
    match r {
        StopReason::ContextFull => "MAX_TOKENS",
        other => other.as_m0(),
    }
}

struct M0Stream {
    job_id: String,
    model: String,
    seed: Option<u64>,
    vram: u64,
}

impl M0Stream {
    fn metrics(&self, g: &JobGuard) -> String {
        let secs = g.decode_ms() / 1e3;
        let tps = if secs > 0.0 {
            g.tokens.saturating_sub(1) as f64 / secs
        } else {
            0.0
        };
        sse::event(
            "metrics",
            &json!({ "tokens_per_sec": tps, "vram_bytes": self.vram }),
        )
    }
}

impl StreamFormat for M0Stream {
    fn item(&mut self, g: &mut JobGuard, item: Item) -> (String, bool) {
        match item {
            Item::Engine(Event::Started { seed, .. }) => {
                self.seed = Some(seed);
                let started = json!({ "job_id": self.job_id, "model": self.model, "started_at": crate::util::rfc3339_now() });
                (sse::event("started", &started), false)
            }
            Item::Engine(Event::PromptLogprobs(_)) => (String::new(), false),
            Item::Engine(Event::Token { text, index, .. }) => {
                let new = g.on_token(index);
                let mut out = sse::event("token", &json!({ "t": text, "i": index }));
                if new && g.tokens.is_multiple_of(METRICS_EVERY) {
                    out.push_str(&self.metrics(g));
                }
                (out, false)
            }
            Item::Engine(Event::Finished {
                reason,
                usage,
                timings,
                seed,
            }) => {
                g.end(jobs::outcome(&reason));
                let mut out = if g.tokens > 0 {
                    self.metrics(g)
                } else {
                    String::new()
                };
                let end = json!({
                    // Generated tokens that are text: the engine's usage also counts an
                    // end-of-sequence token, which is never streamed.
                    "tokens_out": usage.completion_tokens - usize::from(reason == StopReason::Eos),
                    "decode_time_ms": timings.decode_ms,
                    "stop_reason": m0_reason(&reason),
                    "seed": seed,
                });
                out.push_str(&sse::event("end", &end));
                (out, true)
            }
            Item::Engine(Event::Error(e)) => {
                g.end("error");
                let e = ApiError::from(e);
                (
                    sse::event(
                        "error",
                        &json!({ "code": e.code, "message": e.message, "retriable": e.retriable }),
                    ),
                    true,
                )
            }
            Item::Cancelled => {
                g.end("cancelled");
                let end = json!({
                    "tokens_out": g.tokens,
                    "decode_time_ms": g.decode_ms(),
                    "stop_reason": "CANCELLED",
                    "seed": self.seed,
                });
                (sse::event("end", &end), true)
            }
            Item::Lost => {
                g.end("error");
                let err = json!({ "code": "INTERNAL", "message": "the inference engine stopped", "retriable": true });
                (sse::event("error", &err), true)
            }
        }
    }
}

pub fn cancel(state: &AppState, body: &[u8]) -> Result<Resp, ApiError> {
    let mut f = Fields::parse(body)?;
    let id = f.required_string("job_id");
    if id.as_deref() == Some("") {
        f.error("job_id", "non-empty", "job_id must not be empty");
    }
    f.reject_unknown();
    f.finish()?;
    let id = id.unwrap_or_default();
    let found = state.jobs.cancel(state, &id);
    if found {
        tracing::info!(job = %id, "cancel requested");
    }
    Ok(json_response(
        StatusCode::ACCEPTED,
        &json!({ "job_id": id, "found": found }),
    ))
}

pub fn health(state: &AppState) -> Resp {
    let i = &state.info;
    let g = state.gauges();
    json_ok(&json!({
        "status": if state.draining() { "draining" } else { "ok" },
        "model": i.served_name,
        "resident": i.backend.resident_on_device,
        "quant_kind": i.quant_kind,
        "vram_bytes_used": i.vram_bytes(),
        "tokenizer_kind": i.tokenizer_kind,
        "vocab_size": i.vocab_size,
        "context_length": i.ctx_size,
        "uptime_seconds": state.started.elapsed().as_secs(),
        "device": i.backend.device,
        "memory_bytes_used": i.backend.bytes_used,
        "model_context_length": i.model_context_length,
        "architecture": i.arch,
        "active_jobs": state.metrics.active_jobs.load(Ordering::Relaxed),
        "running_jobs": g.running,
    }))
}
