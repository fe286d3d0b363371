//! The OpenAI-compatible API and the tokenizer endpoints over real HTTP against the real
//! binary and model: shapes the official clients parse, streaming vs not, logprobs, echo,
//! token-id prompts, and agreement with the M0 `/execute` greedy output.

use serde_json::{Value, json};
use worker_e2e::{SseStream, Worker, openai_chunks};

const PROMPT: &str = "def fibonacci(n):";

fn execute_text(w: &Worker, prompt: &str, max_tokens: u32) -> String {
    let s = SseStream::open(
        &w.addr,
        "/execute",
        &json!({"job_id": format!("x-{max_tokens}"), "prompt": prompt, "max_tokens": max_tokens, "temperature": 0}),
    );
    let events = s.collect();
    assert_eq!(events.last().unwrap().event, "end");
    events
        .iter()
        .filter(|e| e.event == "token")
        .map(|e| e.json()["t"].as_str().unwrap().to_owned())
        .collect()
}

fn stream(w: &Worker, path: &str, body: Value) -> Vec<Value> {
    let s = SseStream::open(&w.addr, path, &body);
    assert_eq!(s.status, 200);
    openai_chunks(&s.collect())
}

fn models(w: &Worker) {
    let m = w.get("/v1/models").json();
    assert_eq!(m["object"], "list");
    assert_eq!(m["data"][0]["id"], "qwen2.5-coder-0.5b");
    assert_eq!(m["data"][0]["object"], "model");
}

fn completions(w: &Worker) {
    let greedy = execute_text(w, PROMPT, 6);
    let r = w.post(
        "/v1/completions",
        &json!({"model": "any", "prompt": PROMPT, "max_tokens": 6, "temperature": 0}),
    );
    assert_eq!(r.status, 200);
    let c = r.json();
    assert_eq!(c["object"], "text_completion");
    assert_eq!(c["model"], "qwen2.5-coder-0.5b");
    assert_eq!(
        c["choices"][0]["text"],
        greedy.as_str(),
        "completions and /execute disagree at temperature 0"
    );
    assert_eq!(c["choices"][0]["finish_reason"], "length");
    let prompt_tokens = w.post("/tokenize", &json!({"content": PROMPT})).json()["tokens"]
        .as_array()
        .unwrap()
        .len();
    assert_eq!(c["usage"]["prompt_tokens"], prompt_tokens);
    assert_eq!(c["usage"]["completion_tokens"], 6);
    assert_eq!(c["usage"]["total_tokens"], prompt_tokens + 6);

    // Streaming gives the same text, then a finish chunk, the usage chunk and [DONE].
    let chunks = stream(
        w,
        "/v1/completions",
        json!({"prompt": PROMPT, "max_tokens": 6, "temperature": 0, "stream": true, "stream_options": {"include_usage": true}}),
    );
    let text: String = chunks
        .iter()
        .filter_map(|c| c["choices"][0]["text"].as_str())
        .collect();
    assert_eq!(text, greedy);
    let n = chunks.len();
    assert_eq!(chunks[n - 2]["choices"][0]["finish_reason"], "length");
    assert_eq!(chunks[n - 1]["usage"]["completion_tokens"], 6);
    assert!(chunks.len() >= 6, "one chunk per token, not one in total");

    // The same prompt as token ids.
    let ids = w.post("/tokenize", &json!({"content": PROMPT})).json()["tokens"].clone();
    let by_ids = w
        .post(
            "/v1/completions",
            &json!({"prompt": ids, "max_tokens": 6, "temperature": 0}),
        )
        .json();
    assert_eq!(by_ids["choices"][0]["text"], greedy.as_str());
}

fn completion_logprobs(w: &Worker) {
    let c = w
        .post(
            "/v1/completions",
            &json!({"prompt": PROMPT, "max_tokens": 4, "temperature": 0, "logprobs": 3}),
        )
        .json();
    let lp = &c["choices"][0]["logprobs"];
    let tokens = lp["tokens"].as_array().unwrap();
    assert_eq!(tokens.len(), 4);
    let joined: String = tokens.iter().map(|t| t.as_str().unwrap()).collect();
    assert_eq!(joined, c["choices"][0]["text"].as_str().unwrap());
    for k in 0..4 {
        let chosen = lp["token_logprobs"][k].as_f64().unwrap();
        assert!(chosen <= 0.0);
        let top = lp["top_logprobs"][k].as_object().unwrap();
        assert!(!top.is_empty() && top.len() <= 3);
        // Greedy picks the most likely token, so it leads its own top list.
        let best = top
            .values()
            .map(|v| v.as_f64().unwrap())
            .fold(f64::NEG_INFINITY, f64::max);
        assert!(
            (best - chosen).abs() < 1e-6,
            "greedy token is not the top-1 at step {k}: {lp}"
        );
    }

    // echo: the prompt comes back first, with prompt log-probabilities (none for the first token).
    let e = w.post("/v1/completions", &json!({"prompt": PROMPT, "max_tokens": 2, "temperature": 0, "logprobs": 1, "echo": true})).json();
    let text = e["choices"][0]["text"].as_str().unwrap();
    assert!(text.starts_with(PROMPT), "{text:?}");
    let lp = &e["choices"][0]["logprobs"];
    let n_prompt = e["usage"]["prompt_tokens"].as_u64().unwrap() as usize;
    assert_eq!(lp["tokens"].as_array().unwrap().len(), n_prompt + 2);
    assert!(lp["token_logprobs"][0].is_null());
    for k in 1..n_prompt + 2 {
        assert!(lp["token_logprobs"][k].as_f64().unwrap() <= 0.0, "{lp}");
    }

    // vLLM's return_tokens_as_token_ids names tokens by id.
    let t = w.post("/v1/completions", &json!({"prompt": PROMPT, "max_tokens": 2, "temperature": 0, "logprobs": 1, "return_tokens_as_token_ids": true})).json();
    let names = t["choices"][0]["logprobs"]["tokens"].as_array().unwrap();
    let ids: Vec<u64> = names
        .iter()
        .map(|n| {
            n.as_str()
                .unwrap()
                .strip_prefix("token_id:")
                .unwrap()
                .parse()
                .unwrap()
        })
        .collect();
    let decoded = w.post("/detokenize", &json!({"tokens": ids})).json()["content"].clone();
    assert_eq!(decoded, t["choices"][0]["text"]);
}

fn chat(w: &Worker) {
    let messages = json!([{"role": "user", "content": "Say hello."}]);
    let prompt = w
        .post("/apply-template", &json!({"messages": messages}))
        .json()["prompt"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(prompt.ends_with("<|im_start|>assistant\n"), "{prompt:?}");
    let greedy = execute_text(w, &prompt, 5);

    let r = w.post("/v1/chat/completions", &json!({"model": "m", "messages": messages, "max_tokens": 5, "temperature": 0, "logprobs": true, "top_logprobs": 2}));
    assert_eq!(r.status, 200);
    let c = r.json();
    assert_eq!(c["object"], "chat.completion");
    assert_eq!(c["choices"][0]["message"]["role"], "assistant");
    assert_eq!(
        c["choices"][0]["message"]["content"],
        greedy.as_str(),
        "chat and /execute on the templated prompt disagree"
    );
    let content = c["choices"][0]["logprobs"]["content"].as_array().unwrap();
    assert_eq!(content.len(), 5);
    for e in content {
        assert!(e["logprob"].as_f64().unwrap() <= 0.0);
        assert_eq!(e["top_logprobs"].as_array().unwrap().len(), 2);
        assert_eq!(
            e["top_logprobs"][0]["token"], e["token"],
            "greedy token leads its top list"
        );
        let bytes: Vec<u8> = e["bytes"]
            .as_array()
            .unwrap()
            .iter()
            .map(|b| b.as_u64().unwrap() as u8)
            .collect();
        assert_eq!(
            String::from_utf8_lossy(&bytes),
            e["token"].as_str().unwrap()
        );
    }

    let chunks = stream(
        w,
        "/v1/chat/completions",
        json!({"messages": messages, "max_completion_tokens": 5, "temperature": 0, "stream": true}),
    );
    assert_eq!(chunks[0]["object"], "chat.completion.chunk");
    assert_eq!(chunks[0]["choices"][0]["delta"]["role"], "assistant");
    let text: String = chunks
        .iter()
        .filter_map(|c| c["choices"][0]["delta"]["content"].as_str())
        .collect();
    assert_eq!(text, greedy);
    assert_eq!(
        chunks.last().unwrap()["choices"][0]["finish_reason"],
        "length"
    );

    // A chat that ends by itself stops at <|im_end|> with finish_reason "stop".
    let done = w.post("/v1/chat/completions", &json!({"messages": [{"role": "user", "content": "Reply with just the word: yes"}], "max_tokens": 20, "temperature": 0})).json();
    assert_eq!(done["choices"][0]["finish_reason"], "stop", "{done}");
    assert!(
        !done["choices"][0]["message"]["content"]
            .as_str()
            .unwrap()
            .contains("<|im_end|>")
    );
}

fn errors(w: &Worker) {
    for (body, param) in [
        (json!({"prompt": PROMPT, "n": 2}), "n"),
        (json!({"prompt": PROMPT, "temperature": 9}), "temperature"),
        (json!({"prompt": PROMPT, "logprobs": 21}), "logprobs"),
        (json!({"prompt": [1, 999999999]}), "prompt"),
        (json!({"max_tokens": 2}), "prompt"),
    ] {
        let r = w.post("/v1/completions", &body);
        assert_eq!(r.status, 400, "{body}");
        let e = r.json();
        assert_eq!(e["error"]["type"], "invalid_request_error", "{e}");
        assert_eq!(e["error"]["param"], param, "{e}");
        assert!(e["error"]["message"].is_string());
    }
    let r = w.post("/v1/chat/completions", &json!({"messages": []}));
    assert_eq!(r.status, 400);
    assert_eq!(r.json()["error"]["param"], "messages");
    let r = w.post(
        "/v1/chat/completions",
        &json!({"messages": [{"role": "user", "content": "x"}], "top_logprobs": 2}),
    );
    assert_eq!(r.status, 400);
}

fn tokenize_round_trips(w: &Worker) {
    for text in [
        "hello world",
        "<|im_start|>user\nhi<|im_end|>",
        "naïve café 日本語 🦀",
        "   spaces\t\ttabs\n\n",
        "x = [1, 22, 333]",
    ] {
        let ids = w.post("/tokenize", &json!({"content": text})).json()["tokens"].clone();
        assert!(!ids.as_array().unwrap().is_empty());
        let back = w.post("/detokenize", &json!({"tokens": ids})).json();
        assert_eq!(back["content"], text, "round trip of {text:?}");
    }
    // parse_special=false keeps control tokens as plain text.
    let special = w
        .post("/tokenize", &json!({"content": "<|im_end|>"}))
        .json()["tokens"]
        .clone();
    assert_eq!(special, json!([151645]));
    let plain = w
        .post(
            "/tokenize",
            &json!({"content": "<|im_end|>", "parse_special": false}),
        )
        .json()["tokens"]
        .clone();
    assert!(plain.as_array().unwrap().len() > 1);
    let pieces = w
        .post(
            "/tokenize",
            &json!({"content": "hi there", "with_pieces": true}),
        )
        .json();
    assert_eq!(pieces["tokens"][1]["piece"], " there");
    assert_eq!(
        w.post("/detokenize", &json!({"tokens": [151936]})).status,
        400
    );
    assert_eq!(w.post("/tokenize", &json!({"content": 5})).status, 400);
}

#[test]
fn openai_compatible_api() {
    let dev = worker_e2e::device();
    let w = Worker::start(&["--ctx-size", "512", "--max-batch", "2", "--device", &dev]);
    models(&w);
    completions(&w);
    completion_logprobs(&w);
    chat(&w);
    errors(&w);
    tokenize_round_trips(&w);
}
