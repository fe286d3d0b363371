//! llama.cpp-style utility endpoints: `POST /tokenize`, `POST /detokenize`, `POST /apply-template`.

use crate::errors::ApiError;
use crate::http::{Resp, json_ok};
use crate::openai::chat_messages;
use crate::state::AppState;
use crate::validate::Fields;
use serde_json::{Value, json};

/// `{"content", "add_special" (false), "parse_special" (true), "with_pieces" (false)}` → `{"tokens"}`.
pub fn tokenize(state: &AppState, body: &[u8]) -> Result<Resp, ApiError> {
    let mut f = Fields::parse(body)?;
    let content = f.required_string("content");
    let add_special = f.bool("add_special").unwrap_or(false);
    let parse_special = f.bool("parse_special").unwrap_or(true);
    let with_pieces = f.bool("with_pieces").unwrap_or(false);
    f.reject_unknown();
    f.finish()?;
    let content = content.unwrap_or_default();
    let tok = &state.tokenizer;
    let mut ids = tok
        .encode(&content, parse_special)
        .map_err(|e| ApiError::field("content", "tokenizable text", e.to_string()))?;
    // `encode` adds BOS when the model asks for it; without add_special, take back the one it
    // added (but not a BOS the text itself spelled out).
    if !add_special
        && tok.add_bos()
        && let Some(bos) = tok.bos_id()
    {
        let spelled = parse_special
            && tok
                .token_to_piece(bos)
                .is_ok_and(|p| content.as_bytes().starts_with(p));
        if ids.first() == Some(&bos) && !spelled {
            ids.remove(0);
        }
    }
    let tokens: Vec<Value> = if with_pieces {
        ids.iter()
            .map(|&id| {
                let bytes = tok.token_to_piece(id).unwrap_or_default();
                // Like llama.cpp: the piece as text when it is valid UTF-8, else its bytes.
                let piece = match std::str::from_utf8(bytes) {
                    Ok(s) => json!(s),
                    Err(_) => json!(bytes),
                };
                json!({ "id": id, "piece": piece })
            })
            .collect()
    } else {
        ids.iter().map(|&id| json!(id)).collect()
    };
    Ok(json_ok(&json!({ "tokens": tokens })))
}

/// `{"tokens": [ids]}` → `{"content"}`; special tokens are written out as text.
pub fn detokenize(state: &AppState, body: &[u8]) -> Result<Resp, ApiError> {
    let mut f = Fields::parse(body)?;
    let tokens = f.take("tokens");
    f.reject_unknown();
    let ids = match tokens {
        None => {
            f.error("tokens", "required", "tokens is required");
            Vec::new()
        }
        Some(v) => token_ids(&mut f, "tokens", &v, state.tokenizer.vocab_size()),
    };
    f.finish()?;
    let content = state
        .tokenizer
        .decode(&ids, false)
        .map_err(|e| ApiError::field("tokens", "token ids", e.to_string()))?;
    Ok(json_ok(&json!({ "content": content })))
}

/// A JSON list of token ids, each checked against the vocabulary.
pub fn token_ids(f: &mut Fields, field: &str, v: &Value, vocab: usize) -> Vec<u32> {
    let constraint = format!("a list of integers, 0 <= id < {vocab}");
    let Some(list) = v.as_array() else {
        f.error(
            field,
            &constraint,
            format!("{field} must be a list of token ids"),
        );
        return Vec::new();
    };
    let mut ids = Vec::with_capacity(list.len());
    for x in list {
        match x.as_u64() {
            Some(id) if id < vocab as u64 => ids.push(id as u32),
            _ => {
                f.error(
                    field,
                    &constraint,
                    format!("{field} holds a value that is not a token id below {vocab}"),
                );
                return Vec::new();
            }
        }
    }
    ids
}

/// `{"messages": [...]}` → `{"prompt"}`: the chat template applied, as `/v1/chat/completions`
/// would feed the model.
pub fn apply_template(state: &AppState, body: &[u8]) -> Result<Resp, ApiError> {
    let mut f = Fields::parse(body)?;
    let messages = chat_messages(&mut f);
    f.reject_unknown();
    f.finish()?;
    let prompt = state.chat.render(&messages, true).map_err(|e| {
        ApiError::field(
            "messages",
            "a conversation the chat template accepts",
            e.to_string(),
        )
    })?;
    Ok(json_ok(&json!({ "prompt": prompt })))
}
