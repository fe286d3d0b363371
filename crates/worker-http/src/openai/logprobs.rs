//! Log-probabilities in OpenAI's two shapes: the legacy completions object (parallel lists)
//! and the chat `content` list.

use crate::state::AppState;
use serde_json::{Map, Value, json};
use worker_core::engine::TokenLogprob;

/// How a token is named in logprob entries: its text (lossy for a partial UTF-8 character),
/// or `token_id:N` with vLLM's `return_tokens_as_token_ids`.
pub fn token_name(state: &AppState, id: u32, as_ids: bool) -> String {
    if as_ids {
        return format!("token_id:{id}");
    }
    String::from_utf8_lossy(state.tokenizer.token_to_piece(id).unwrap_or_default()).into_owned()
}

fn token_bytes(state: &AppState, id: u32) -> Vec<u8> {
    state
        .tokenizer
        .token_to_piece(id)
        .unwrap_or_default()
        .to_vec()
}

/// The completions `logprobs` object, built token by token.
#[derive(Debug, Default)]
pub struct Legacy {
    tokens: Vec<String>,
    token_logprobs: Vec<Option<f32>>,
    top_logprobs: Vec<Option<Map<String, Value>>>,
    text_offset: Vec<usize>,
    /// Characters before the next token.
    offset: usize,
}

impl Legacy {
    /// Continues offsets after `offset` characters (streams continue across chunks).
    pub fn starting_at(offset: usize) -> Self {
        Legacy {
            offset,
            ..Default::default()
        }
    }

    /// Adds token `id`; `lp` is None for the first prompt token (nothing predicts it).
    pub fn push(&mut self, state: &AppState, id: u32, lp: Option<&TokenLogprob>, as_ids: bool) {
        let name = token_name(state, id, as_ids);
        self.text_offset.push(self.offset);
        self.offset +=
            String::from_utf8_lossy(state.tokenizer.token_to_piece(id).unwrap_or_default())
                .chars()
                .count();
        self.tokens.push(name);
        self.token_logprobs.push(lp.map(|l| l.logprob));
        self.top_logprobs.push(lp.map(|l| {
            l.top
                .iter()
                .map(|&(t, p)| (token_name(state, t, as_ids), json!(p)))
                .collect::<Map<String, Value>>()
        }));
    }

    /// The JSON object; the builder starts over for the next chunk, keeping the offset.
    pub fn take(&mut self) -> Value {
        let v = json!({
            "tokens": self.tokens,
            "token_logprobs": self.token_logprobs,
            "top_logprobs": self.top_logprobs,
            "text_offset": self.text_offset,
        });
        *self = Legacy::starting_at(self.offset);
        v
    }
}

/// One entry of a chat `logprobs.content` list.
pub fn chat_entry(state: &AppState, lp: &TokenLogprob, as_ids: bool) -> Value {
    let top: Vec<Value> = lp
        .top
        .iter()
        .map(|&(t, p)| json!({ "token": token_name(state, t, as_ids), "logprob": p, "bytes": token_bytes(state, t) }))
        .collect();
    json!({
        "token": token_name(state, lp.token, as_ids),
        "logprob": lp.logprob,
        "bytes": token_bytes(state, lp.token),
        "top_logprobs": top,
    })
}
