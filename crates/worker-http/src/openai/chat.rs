//! `POST /v1/chat/completions`: messages rendered with the model's own chat template.

use super::logprobs::chat_entry;
use super::{DONE, MAX_TOP_LOGPROBS, collect, common, stream_end, usage_json};
use crate::errors::ApiError;
use crate::http::{Resp, json_ok};
use crate::jobs::{self, Item, JobGuard};
use crate::m0::check_prompt_fits;
use crate::sse::{self, StreamFormat};
use crate::state::AppState;
use crate::validate::Fields;
use serde_json::{Value, json};
use std::sync::Arc;
use worker_core::engine::{Event, GenerateRequest};
use worker_core::tokenizer::ChatMessage;

/// The `messages` list: each `{role, content}` with content as a string, a list of text
/// parts, or null (an assistant turn that only called tools).
pub fn chat_messages(f: &mut Fields) -> Vec<ChatMessage> {
    let constraint = "a non-empty list of {role, content} objects";
    let list = match f.take("messages") {
        Some(Value::Array(a)) if !a.is_empty() => a,
        None => {
            f.error("messages", "required", "messages is required");
            return Vec::new();
        }
        Some(_) => {
            f.error("messages", constraint, "messages must be a non-empty list");
            return Vec::new();
        }
    };
    let mut out = Vec::with_capacity(list.len());
    for (i, m) in list.iter().enumerate() {
        let field = format!("messages[{i}]");
        let role = match m.get("role").and_then(Value::as_str) {
            Some(r) if !r.is_empty() => r,
            _ => {
                f.error(
                    &field,
                    constraint,
                    format!("{field}.role must be a non-empty string"),
                );
                continue;
            }
        };
        let content = match m.get("content") {
            None | Some(Value::Null) => String::new(),
            Some(Value::String(s)) => s.clone(),
            Some(Value::Array(parts)) => {
                let mut text = String::new();
                for p in parts {
                    match (
                        p.get("type").and_then(Value::as_str),
                        p.get("text").and_then(Value::as_str),
                    ) {
                        (Some("text"), Some(t)) => text.push_str(t),
                        _ => {
                            f.error(
                                &field,
                                "text content parts only",
                                format!("{field}.content has a part that is not text"),
                            );
                            break;
                        }
                    }
                }
                text
            }
            Some(_) => {
                f.error(
                    &field,
                    constraint,
                    format!("{field}.content must be a string or a list of text parts"),
                );
                continue;
            }
        };
        out.push(ChatMessage::new(role, content));
    }
    out
}

pub async fn chat_completions(state: &Arc<AppState>, body: &[u8]) -> Result<Resp, ApiError> {
    let mut f = Fields::parse(body)?;
    let messages = chat_messages(&mut f);
    let c = common(&mut f, state.info.vocab_size);
    let limit = i64::from(u32::MAX);
    let max_tokens = match f.int("max_completion_tokens", 1, limit) {
        Some(n) => Some(n),
        None => f.int("max_tokens", 1, limit),
    };
    let logprobs = f.bool("logprobs").unwrap_or(false);
    let top = f.int("top_logprobs", 0, MAX_TOP_LOGPROBS);
    if top.is_some() && !logprobs {
        f.error(
            "top_logprobs",
            "only with logprobs: true",
            "top_logprobs needs logprobs set to true",
        );
    }
    if f.take("tools")
        .is_some_and(|t| t.as_array().is_none_or(|a| !a.is_empty()))
    {
        f.error("tools", "not supported", "tool calling is not supported");
    }
    let _ = (f.take("tool_choice"), f.take("parallel_tool_calls"));
    if let Some(rf) = f.take("response_format")
        && rf.get("type").and_then(Value::as_str) != Some("text")
    {
        f.error(
            "response_format",
            "{\"type\": \"text\"}",
            "only text responses are supported",
        );
    }
    let mut ids = Vec::new();
    if f.errors.is_empty() {
        match state.chat.render(&messages, true) {
            Ok(text) => match state.tokenizer.encode(&text, true) {
                Ok(t) => ids = t,
                Err(e) => f.error(
                    "messages",
                    "tokenizable text",
                    format!("the conversation could not be tokenized: {e}"),
                ),
            },
            Err(e) => f.error(
                "messages",
                "a conversation the chat template accepts",
                e.to_string(),
            ),
        }
        check_prompt_fits(&mut f, "messages", ids.len(), state.info.ctx_size);
    }
    f.finish()?;

    let n_prompt = ids.len();
    let id = crate::util::new_id("chatcmpl");
    // Without a limit, generate until the context window is full (as vLLM does).
    let max_tokens = max_tokens.map_or(state.info.ctx_size - n_prompt, |n| n as usize);
    let req = GenerateRequest {
        prompt: ids,
        max_tokens,
        sampling: c.sampling,
        stop: c.stop,
        logprobs: logprobs.then_some(top.unwrap_or(0) as usize),
        prompt_logprobs: None,
        ignore_eos: c.ignore_eos,
        trace_name: Some(id.clone()),
    };
    let job = jobs::submit(state, id.clone(), "chat_completions", req)?;
    let created = crate::util::unix_now();
    if c.stream {
        let fmt = ChatStream {
            state: state.clone(),
            id,
            created,
            logprobs,
            as_ids: c.as_token_ids,
            include_usage: c.include_usage,
            prompt_tokens: n_prompt,
            role_sent: false,
        };
        return Ok(sse::response(job, fmt));
    }

    let out = match collect(job, n_prompt).await {
        Ok(o) => o,
        Err(resp) => return Ok(resp),
    };
    let lp = logprobs.then(|| {
        let content: Vec<Value> = out
            .tokens
            .iter()
            .filter_map(|t| t.logprob.as_ref())
            .map(|l| chat_entry(state, l, c.as_token_ids))
            .collect();
        json!({ "content": content })
    });
    Ok(json_ok(&json!({
        "id": id,
        "object": "chat.completion",
        "created": created,
        "model": state.info.served_name,
        "choices": [{
            "index": 0,
            "message": { "role": "assistant", "content": out.text },
            "logprobs": lp,
            "finish_reason": out.finish_reason,
        }],
        "usage": usage_json(out.usage.prompt_tokens, out.usage.completion_tokens),
        "seed": out.seed,
    })))
}

struct ChatStream {
    state: Arc<AppState>,
    id: String,
    created: u64,
    logprobs: bool,
    as_ids: bool,
    include_usage: bool,
    prompt_tokens: usize,
    role_sent: bool,
}

impl ChatStream {
    fn chunk(&self, delta: Value, logprobs: Value, finish: Option<&str>) -> String {
        sse::data(&json!({
            "id": self.id,
            "object": "chat.completion.chunk",
            "created": self.created,
            "model": self.state.info.served_name,
            "choices": [{ "index": 0, "delta": delta, "logprobs": logprobs, "finish_reason": finish }],
        }))
    }

    /// The first chunk names the role, as OpenAI's does.
    fn role(&mut self) -> String {
        if self.role_sent {
            return String::new();
        }
        self.role_sent = true;
        self.chunk(
            json!({ "role": "assistant", "content": "" }),
            Value::Null,
            None,
        )
    }

    fn finish(&mut self, reason: &str, completion_tokens: usize) -> String {
        let mut out = self.role();
        out.push_str(&self.chunk(json!({}), Value::Null, Some(reason)));
        if self.include_usage {
            out.push_str(&sse::data(&json!({
                "id": self.id,
                "object": "chat.completion.chunk",
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

impl StreamFormat for ChatStream {
    fn item(&mut self, g: &mut JobGuard, item: Item) -> (String, bool) {
        let item = match stream_end(g, item, |reason, n| self.finish(reason, n)) {
            Ok(last) => return (last, true),
            Err(item) => item,
        };
        match item {
            Item::Engine(Event::Started { .. }) => (self.role(), false),
            Item::Engine(Event::PromptLogprobs(_)) => (String::new(), false),
            Item::Engine(Event::Token {
                text,
                index,
                logprob,
                ..
            }) => {
                let mut out = self.role();
                let new = g.on_token(index);
                let lp = match (&logprob, self.logprobs && new) {
                    (Some(l), true) => {
                        json!({ "content": [chat_entry(&self.state, l, self.as_ids)] })
                    }
                    _ => Value::Null,
                };
                if !text.is_empty() || !lp.is_null() {
                    out.push_str(&self.chunk(json!({ "content": text }), lp, None));
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
