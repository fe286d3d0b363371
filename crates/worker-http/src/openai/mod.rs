//! The OpenAI-compatible API: `GET /v1/models`, `POST /v1/completions`,
//! `POST /v1/chat/completions` (streaming and not), in the shapes the official clients parse.
//! Sampling extensions from vLLM/llama.cpp (`top_k`, `min_p`, `repetition_penalty`,
//! `ignore_eos`, `return_tokens_as_token_ids`) are accepted too.

mod chat;
mod completions;
mod logprobs;

pub use chat::{chat_completions, chat_messages};
pub use completions::completions;

use crate::errors::{ApiError, Flavor};
use crate::http::{Resp, json_ok};
use crate::jobs::{self, Item, Job};
use crate::server::JobRecorded;
use crate::state::AppState;
use crate::validate::Fields;
use serde_json::{Value, json};
use worker_core::engine::{Event, StopReason, TokenLogprob, Usage};
use worker_core::sampling::SamplingParams;

/// OpenAI allows at most 4 stop sequences and 20 top log-probabilities.
const MAX_STOPS: usize = 4;
pub const MAX_TOP_LOGPROBS: i64 = 20;

pub fn models(state: &AppState) -> Resp {
    json_ok(&json!({
        "object": "list",
        "data": [{
            "id": state.info.served_name,
            "object": "model",
            "created": state.started_unix,
            "owned_by": "worker-orcd",
            "max_model_len": state.info.ctx_size,
        }],
    }))
}

/// Fields both endpoints share.
#[derive(Debug)]
struct Common {
    sampling: SamplingParams,
    stop: Vec<String>,
    stream: bool,
    include_usage: bool,
    ignore_eos: bool,
    as_token_ids: bool,
}

fn common(f: &mut Fields, vocab: usize) -> Common {
    let _model = f.string("model"); // one model per worker: any name is served by it
    let _user = f.string("user");
    let temperature = f.number("temperature", 0.0, 2.0, false).unwrap_or(1.0);
    let top_p = f.number("top_p", 0.0, 1.0, false).unwrap_or(1.0);
    // vLLM uses -1 for "off"; 0 means the same here.
    let top_k = f.int("top_k", -1, vocab as i64).unwrap_or(0).max(0) as usize;
    let min_p = f.number("min_p", 0.0, 1.0, false).unwrap_or(0.0);
    let repetition_penalty = f
        .number("repetition_penalty", 0.0, 2.0, true)
        .unwrap_or(1.0);
    let presence_penalty = f
        .number("presence_penalty", -2.0, 2.0, false)
        .unwrap_or(0.0);
    let frequency_penalty = f
        .number("frequency_penalty", -2.0, 2.0, false)
        .unwrap_or(0.0);
    let seed = f.seed("seed");
    let stop = f.stop_list("stop", MAX_STOPS);
    // One choice per request: `n` and `best_of` may only be 1.
    let _ = f.int("n", 1, 1);
    let _ = f.int("best_of", 1, 1);
    if f.take("logit_bias")
        .is_some_and(|b| b.as_object().is_none_or(|m| !m.is_empty()))
    {
        f.error("logit_bias", "not supported", "logit_bias is not supported");
    }
    let stream = f.bool("stream").unwrap_or(false);
    let mut include_usage = false;
    if let Some(opts) = f.take("stream_options") {
        match opts.get("include_usage").map(Value::as_bool) {
            None => {}
            Some(Some(b)) => include_usage = b,
            Some(None) => f.error(
                "stream_options",
                "{\"include_usage\": bool}",
                "stream_options.include_usage must be a boolean",
            ),
        }
    }
    let ignore_eos = f.bool("ignore_eos").unwrap_or(false);
    let as_token_ids = f.bool("return_tokens_as_token_ids").unwrap_or(false);
    let sampling = SamplingParams {
        temperature,
        top_k,
        top_p,
        min_p,
        repetition_penalty,
        presence_penalty,
        frequency_penalty,
        seed,
        ..Default::default()
    };
    Common {
        sampling,
        stop,
        stream,
        include_usage,
        ignore_eos,
        as_token_ids,
    }
}

fn usage_json(prompt: usize, completion: usize) -> Value {
    json!({ "prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion })
}

/// One generated token as the non-streaming endpoints keep it.
#[derive(Debug)]
struct GenToken {
    id: u32,
    logprob: Option<TokenLogprob>,
}

/// A whole job's output.
#[derive(Debug)]
struct Collected {
    text: String,
    tokens: Vec<GenToken>,
    prompt_logprobs: Vec<Option<TokenLogprob>>,
    finish_reason: &'static str,
    usage: Usage,
    seed: Option<u64>,
}

/// Runs a job to its end. Errors come back as a ready response (the job's outcome is already
/// counted, so the route must not count it again).
async fn collect(mut job: Job, prompt_tokens: usize) -> Result<Collected, Resp> {
    let mut c = Collected {
        text: String::new(),
        tokens: Vec::new(),
        prompt_logprobs: Vec::new(),
        finish_reason: "stop",
        usage: Usage::default(),
        seed: None,
    };
    let failed = |e: ApiError| {
        let mut r = e.response(Flavor::OpenAi);
        r.extensions_mut().insert(JobRecorded);
        r
    };
    loop {
        match job.next().await {
            Item::Engine(Event::Started { seed, .. }) => c.seed = Some(seed),
            Item::Engine(Event::PromptLogprobs(v)) => c.prompt_logprobs.extend(v),
            Item::Engine(Event::Token {
                id,
                text,
                index,
                logprob,
            }) => {
                c.text.push_str(&text);
                if job.guard.on_token(index) {
                    c.tokens.push(GenToken { id, logprob });
                }
            }
            Item::Engine(Event::Finished {
                reason,
                usage,
                seed,
                ..
            }) => {
                job.guard.end(jobs::outcome(&reason));
                c.finish_reason = reason.as_openai();
                c.usage = usage;
                c.seed = Some(seed);
                return Ok(c);
            }
            Item::Engine(Event::Error(e)) => {
                job.guard.end("error");
                return Err(failed(e.into()));
            }
            Item::Cancelled => {
                job.guard.end("cancelled");
                c.finish_reason = StopReason::Cancelled.as_openai();
                c.usage = Usage {
                    prompt_tokens,
                    completion_tokens: job.guard.tokens,
                    cached_tokens: 0,
                };
                return Ok(c);
            }
            Item::Lost => {
                job.guard.end("error");
                return Err(failed(ApiError::internal("the inference engine stopped")));
            }
        }
    }
}

/// The `data: {"error": ...}` event a stream ends with when its job fails.
/// The closing text of an OpenAI stream for a terminal item (finished, failed, cancelled, engine
/// gone), shared by the chat and completions encoders; `finish(reason, completion_tokens)` renders
/// the encoder's own final chunk. A non-terminal item is handed back.
fn stream_end(
    g: &mut jobs::JobGuard,
    item: Item,
    finish: impl FnOnce(&str, usize) -> String,
) -> Result<String, Item> {
    match item {
        Item::Engine(Event::Finished { reason, usage, .. }) => {
            g.end(jobs::outcome(&reason));
            Ok(finish(reason.as_openai(), usage.completion_tokens))
        }
        Item::Engine(Event::Error(e)) => {
            g.end("error");
            Ok(stream_error(e.into()))
        }
        Item::Cancelled => {
            g.end("cancelled");
            let tokens = g.tokens;
            Ok(finish("cancelled", tokens))
        }
        Item::Lost => {
            g.end("error");
            Ok(stream_error(ApiError::internal(
                "the inference engine stopped",
            )))
        }
        other => Err(other),
    }
}

fn stream_error(e: ApiError) -> String {
    let mut s = crate::sse::data(&e.openai_body());
    s.push_str(DONE);
    s
}

const DONE: &str = "data: [DONE]\n\n";
