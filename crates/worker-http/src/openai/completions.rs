//! `POST /v1/completions`: a text (or token-id) prompt, with `echo` and legacy `logprobs`.

use super::logprobs::Legacy;
use super::{DONE, MAX_TOP_LOGPROBS, collect, common, stream_end, usage_json};
use crate::errors::ApiError;
use crate::http::{Resp, json_ok};
use crate::jobs::{self, Item, JobGuard};
use crate::m0::check_prompt_fits;
use crate::sse::{self, StreamFormat};
use crate::state::AppState;
use crate::tokenize::token_ids;
use crate::validate::Fields;
use serde_json::{Value, json};
use std::sync::Arc;
use worker_core::engine::{Event, GenerateRequest, TokenLogprob};

/// The prompt as text and as ids. A string, or token ids; OpenAI's batch forms are accepted
/// with exactly one prompt (`["text"]`, `[[ids]]`).
fn parse_prompt(f: &mut Fields, state: &AppState) -> Option<(String, Vec<u32>)> {
    let constraint = "a string, a list of token ids, or a list holding one of those";
    let vocab = state.info.vocab_size;
    let Some(v) = f.take("prompt") else {
        f.error("prompt", "required", "prompt is required");
        return None;
    };
    let v = match v {
        Value::Array(mut a) if a.len() == 1 && (a[0].is_string() || a[0].is_array()) => a.remove(0),
        Value::Array(a) if a.iter().any(|x| x.is_string() || x.is_array()) => {
            f.error(
                "prompt",
                constraint,
                "several prompts in one request are not supported; send one per request",
            );
            return None;
        }
        other => other,
    };
    match v {
        Value::String(s) => match state.tokenizer.encode(&s, true) {
            Ok(ids) => Some((s, ids)),
            Err(e) => {
                f.error(
                    "prompt",
                    "tokenizable text",
                    format!("the prompt could not be tokenized: {e}"),
                );
                None
            }
        },
        Value::Array(_) => {
            let n_errors = f.errors.len();
            let ids = token_ids(f, "prompt", &v, vocab);
            if f.errors.len() > n_errors {
                return None;
            }
            let text = state.tokenizer.decode(&ids, false).unwrap_or_default();
            Some((text, ids))
        }
        _ => {
            f.error(
                "prompt",
                constraint,
                "prompt must be a string or a list of token ids",
            );
            None
        }
    }
}

pub async fn completions(state: &Arc<AppState>, body: &[u8]) -> Result<Resp, ApiError> {
    let mut f = Fields::parse(body)?;
    let prompt = parse_prompt(&mut f, state);
    let c = common(&mut f, state.info.vocab_size);
    let max_tokens = f.int("max_tokens", 1, i64::from(u32::MAX)).unwrap_or(16) as usize;
    let echo = f.bool("echo").unwrap_or(false);
    let logprobs = f.int("logprobs", 0, MAX_TOP_LOGPROBS).map(|n| n as usize);
    if f.string("suffix").is_some_and(|s| !s.is_empty()) {
        f.error("suffix", "not supported", "suffix is not supported");
    }
    if let Some((_, ids)) = &prompt {
        check_prompt_fits(&mut f, "prompt", ids.len(), state.info.ctx_size);
    }
    f.finish()?;
    let (prompt_text, ids) = prompt.unwrap_or_default();

    let id = crate::util::new_id("cmpl");
    let req = GenerateRequest {
        prompt: ids.clone(),
        max_tokens,
        sampling: c.sampling,
        stop: c.stop,
        logprobs,
        prompt_logprobs: if echo { logprobs } else { None },
        ignore_eos: c.ignore_eos,
        trace_name: Some(id.clone()),
    };
    let n_prompt = ids.len();
    let job = jobs::submit(state, id.clone(), "completions", req)?;
    let created = crate::util::unix_now();
    if c.stream {
        let fmt = CompletionStream {
            state: state.clone(),
            id,
            created,
            logprobs,
            as_ids: c.as_token_ids,
            include_usage: c.include_usage,
            echo: echo.then_some((prompt_text, ids)),
            prompt_lps: Vec::new(),
            lp: Legacy::default(),
            prompt_tokens: n_prompt,
        };
        return Ok(sse::response(job, fmt));
    }

    let out = match collect(job, n_prompt).await {
        Ok(o) => o,
        Err(resp) => return Ok(resp),
    };
    let lp = logprobs.map(|_| {
        let mut l = Legacy::default();
        if echo {
            for (j, &t) in ids.iter().enumerate() {
                l.push(
                    state,
                    t,
                    out.prompt_logprobs.get(j).and_then(Option::as_ref),
                    c.as_token_ids,
                );
            }
        }
        // Every sampled token carries its logprob; an entry without one is the engine's
        // final flush of held-back text, not a token.
        for t in out.tokens.iter().filter(|t| t.logprob.is_some()) {
            l.push(state, t.id, t.logprob.as_ref(), c.as_token_ids);
        }
        l.take()
    });
    let text = if echo {
        prompt_text + &out.text
    } else {
        out.text
    };
    Ok(json_ok(&json!({
        "id": id,
        "object": "text_completion",
        "created": created,
        "model": state.info.served_name,
        "choices": [{ "index": 0, "text": text, "logprobs": lp, "finish_reason": out.finish_reason }],
        "usage": usage_json(out.usage.prompt_tokens, out.usage.completion_tokens),
        "seed": out.seed,
    })))
}

struct CompletionStream {
    state: Arc<AppState>,
    id: String,
    created: u64,
    logprobs: Option<usize>,
    as_ids: bool,
    include_usage: bool,
    /// The prompt, still to be sent first (`echo`).
    echo: Option<(String, Vec<u32>)>,
    prompt_lps: Vec<Option<TokenLogprob>>,
    lp: Legacy,
    prompt_tokens: usize,
}

impl CompletionStream {
    fn chunk(&self, text: &str, logprobs: Value, finish: Option<&str>) -> String {
        sse::data(&json!({
            "id": self.id,
            "object": "text_completion",
            "created": self.created,
            "model": self.state.info.served_name,
            "choices": [{ "index": 0, "text": text, "logprobs": logprobs, "finish_reason": finish }],
        }))
    }

    /// The echoed prompt goes out once, before the first generated text.
    fn flush_echo(&mut self) -> String {
        let Some((text, ids)) = self.echo.take() else {
            return String::new();
        };
        let lp = if self.logprobs.is_some() {
            for (j, &t) in ids.iter().enumerate() {
                self.lp.push(
                    &self.state,
                    t,
                    self.prompt_lps.get(j).and_then(Option::as_ref),
                    self.as_ids,
                );
            }
            self.lp.take()
        } else {
            Value::Null
        };
        self.chunk(&text, lp, None)
    }

    fn finish(&mut self, reason: &str, completion_tokens: usize) -> String {
        let mut out = self.flush_echo();
        out.push_str(&self.chunk("", Value::Null, Some(reason)));
        if self.include_usage {
            out.push_str(&sse::data(&json!({
                "id": self.id,
                "object": "text_completion",
                "created": self.created,
                "model": self.state.info.served_name,
                "choices": [],
                "usage": usage_json(self.prompt_tokens, completion_tokens),
            })));
        }
        out.push_str(DONE);
        out
    }
}

impl StreamFormat for CompletionStream {
    fn item(&mut self, g: &mut JobGuard, item: Item) -> (String, bool) {
        let item = match stream_end(g, item, |reason, n| self.finish(reason, n)) {
            Ok(last) => return (last, true),
            Err(item) => item,
        };
        match item {
            Item::Engine(Event::Started { .. }) => (String::new(), false),
            Item::Engine(Event::PromptLogprobs(v)) => {
                self.prompt_lps.extend(v);
                (String::new(), false)
            }
            Item::Engine(Event::Token {
                id,
                text,
                index,
                logprob,
            }) => {
                let mut out = self.flush_echo();
                let new = g.on_token(index);
                let lp = if self.logprobs.is_some() && new && logprob.is_some() {
                    self.lp.push(&self.state, id, logprob.as_ref(), self.as_ids);
                    self.lp.take()
                } else {
                    Value::Null
                };
                if !text.is_empty() || !lp.is_null() {
                    out.push_str(&self.chunk(&text, lp, None));
                }
                (out, false)
            }
            // Terminal items were taken by `stream_end` above.
            Item::Engine(Event::Finished { .. } | Event::Error(_))
            | Item::Cancelled
            | Item::Lost => (String::new(), true),
        }
    }
}
