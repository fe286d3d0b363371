//! Request parsing and validation on arbitrary bodies.
//!
//! The validators live in the `worker-http` binary crate, which has no library target, so
//! this target compiles its `validate.rs`, `errors.rs` and `http.rs` in place (`#[path]`): the
//! real `Fields` parser and error rendering, driven through the field sequences of `/execute`
//! (`m0::parse_execute`) and of the OpenAI endpoints (`openai::common`), copied here because
//! those functions need an `AppState` (a loaded model and an engine). Tokenization of the prompt
//! is covered by the `tokenizer` target; the full handlers are exercised over real HTTP by
//! `tests/tests/faults.rs` (random bodies) and `tests/tests/limits.rs`.
//!
//! Input: byte 0 picks the field sequence (even: /execute, odd: OpenAI); the rest is the body.
//! Checks: no panic; a rejected body renders as JSON in both error shapes; a long prompt value
//! is never echoed in an error.

#![no_main]
#![allow(dead_code)]

#[path = "../../crates/worker-http/src/errors.rs"]
mod errors;
#[path = "../../crates/worker-http/src/http.rs"]
mod http;
#[path = "../../crates/worker-http/src/validate.rs"]
mod validate;

use errors::{ApiError, Flavor};
use libfuzzer_sys::fuzz_target;
use serde_json::Value;
use validate::Fields;

const VOCAB: usize = 151_936;

/// `m0::parse_execute`'s field sequence.
fn execute(f: &mut Fields) {
    if let Some(id) = f.required_string("job_id")
        && (id.is_empty() || id.chars().count() > 256 || id.chars().any(char::is_control))
    {
        f.error(
            "job_id",
            "1 to 256 characters",
            "job_id must be 1 to 256 printable characters",
        );
    }
    let prompt = f.required_string("prompt");
    if f.has("max_tokens") {
        f.int("max_tokens", 1, 2048);
    } else {
        f.error("max_tokens", "required", "max_tokens is required");
    }
    f.number("temperature", 0.0, 2.0, false);
    f.number("top_p", 0.0, 1.0, false);
    f.int("top_k", 0, VOCAB as i64);
    f.number("min_p", 0.0, 1.0, false);
    f.number("repetition_penalty", 0.0, 2.0, true);
    f.stop_list("stop", 4);
    f.seed("seed");
    f.reject_unknown();
    if let Some(p) = prompt {
        let n = p.chars().count();
        if n == 0 || n > 32_768 {
            f.error(
                "prompt",
                "1 <= characters <= 32768",
                format!("the prompt has {n} characters"),
            );
        }
    }
}

/// `openai::common`'s field sequence (plus the completions prompt's type check).
fn openai(f: &mut Fields) {
    let _ = f.string("model");
    let _ = f.string("user");
    f.number("temperature", 0.0, 2.0, false);
    f.number("top_p", 0.0, 1.0, false);
    let _ = f.int("top_k", -1, VOCAB as i64).unwrap_or(0).max(0) as usize;
    f.number("min_p", 0.0, 1.0, false);
    f.number("repetition_penalty", 0.0, 2.0, true);
    f.number("presence_penalty", -2.0, 2.0, false);
    f.number("frequency_penalty", -2.0, 2.0, false);
    f.seed("seed");
    f.stop_list("stop", 4);
    let _ = f.int("n", 1, 1);
    let _ = f.int("best_of", 1, 1);
    if f.take("logit_bias")
        .is_some_and(|b| b.as_object().is_none_or(|m| !m.is_empty()))
    {
        f.error("logit_bias", "not supported", "logit_bias is not supported");
    }
    f.bool("stream");
    if let Some(opts) = f.take("stream_options")
        && let Some(None) = opts.get("include_usage").map(Value::as_bool)
    {
        f.error(
            "stream_options",
            "{\"include_usage\": bool}",
            "must be a boolean",
        );
    }
    f.bool("ignore_eos");
    f.bool("return_tokens_as_token_ids");
    f.int("max_tokens", 1, i64::MAX);
    f.int("logprobs", 0, 20);
    if f.has("prompt") && !matches!(f.take("prompt"), Some(Value::String(_) | Value::Array(_))) {
        f.error(
            "prompt",
            "a string or a list of token ids",
            "prompt has the wrong type",
        );
    }
}

fn render(e: &ApiError, secret: Option<&str>) {
    for (flavor, body) in [(Flavor::M0, e.m0_body()), (Flavor::OpenAi, e.openai_body())] {
        let text = serde_json::to_string(&body).unwrap();
        let back: Value = serde_json::from_str(&text).unwrap();
        assert!(back.is_object());
        if let Some(s) = secret {
            assert!(
                !text.contains(s),
                "the prompt was echoed in a {flavor:?} error"
            );
        }
        let _ = e.response(flavor);
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, body)) = data.split_first() else {
        return;
    };
    let mut f = match Fields::parse(body) {
        Ok(f) => f,
        Err(e) => return render(&e, None),
    };
    // A prompt value long enough not to occur by chance in messages or field names.
    let keys: Vec<String> = f.leftover();
    let secret = serde_json::from_slice::<Value>(body)
        .ok()
        .and_then(|v| v.get("prompt").and_then(Value::as_str).map(str::to_owned))
        .filter(|p| p.chars().count() >= 12 && !keys.iter().any(|k| k.contains(p.as_str())));
    if mode % 2 == 0 {
        execute(&mut f);
    } else {
        openai(&mut f);
    }
    let n_errors = f.errors.len();
    match f.finish() {
        Ok(()) => assert_eq!(n_errors, 0),
        Err(e) => {
            assert_eq!(e.status.as_u16(), 400);
            assert_eq!(e.fields.len(), n_errors);
            render(&e, secret.as_deref());
        }
    }
});
