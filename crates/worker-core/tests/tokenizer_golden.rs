//! The GGUF tokenizer against llama.cpp's and HF's ids for the real models
//! (`shared/golden/tokenizer_*.jsonl`, `greedy_llamacpp.jsonl`). Skipped, with a message, when
//! the model file is not in the cache.

use serde_json::Value as Json;
use std::path::PathBuf;
use std::time::Instant;
use worker_core::gguf::GgufFile;
use worker_core::tokenizer::{TokenAttr, Tokenizer, TokenizerError};

const QWEN_FILE: &str = "qwen2.5-coder-0.5b-instruct-q4_k_m.gguf";
const SMOLLM_FILE: &str = "SmolLM2-135M-Instruct.Q4_1.gguf";

fn golden_dir() -> PathBuf {
    let beside_repo = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../../shared/golden");
    if beside_repo.is_dir() {
        beside_repo
    } else {
        PathBuf::from("/work/shared/golden")
    }
}

fn read_jsonl(path: PathBuf) -> Vec<Json> {
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).expect("valid JSON line"))
        .collect()
}

fn ids(v: &Json) -> Vec<u32> {
    v.as_array()
        .expect("id array")
        .iter()
        .map(|x| x.as_u64().expect("id") as u32)
        .collect()
}

fn load(file: &str) -> Option<(GgufFile, Tokenizer)> {
    let path = worker_core::fetch::cache_dir().join("models").join(file);
    if !path.exists() {
        eprintln!(
            "skipping: {} is absent (run the worker once or fetch it to create it)",
            path.display()
        );
        return None;
    }
    let gguf = GgufFile::open(&path).expect("open gguf");
    let t0 = Instant::now();
    let tok = Tokenizer::from_gguf(&gguf).expect("tokenizer");
    eprintln!("{file}: tokenizer built in {:?}", t0.elapsed());
    Some((gguf, tok))
}

fn qwen() -> Option<(GgufFile, Tokenizer)> {
    load(QWEN_FILE)
}

/// Encodes every line of llama.cpp's and HF's tokenizer goldens in `dir` and checks the ids,
/// the decoded text and the streamed text.
fn check_tokenizer_goldens(tok: &Tokenizer, dir: PathBuf) {
    let lines = read_jsonl(dir.join("tokenizer_llamacpp.jsonl"));
    assert!(!lines.is_empty());
    for line in &lines {
        let text = line["text"].as_str().expect("text");
        assert_eq!(
            tok.encode(text, true).unwrap(),
            ids(&line["ids_parse_special"]),
            "parse_special {text:?}"
        );
        assert_eq!(
            tok.encode(text, false).unwrap(),
            ids(&line["ids_plain"]),
            "plain {text:?}"
        );
    }
    let hf = read_jsonl(dir.join("tokenizer_hf.jsonl"));
    assert!(!hf.is_empty());
    for line in &hf {
        let text = line["text"].as_str().expect("text");
        let want = ids(&line["ids"]);
        assert_eq!(tok.encode(text, true).unwrap(), want, "hf ids {text:?}");
        let decoded = line["decoded"].as_str().expect("decoded");
        assert_eq!(
            tok.decode(&want, false).unwrap(),
            decoded,
            "hf decode {text:?}"
        );
        // Streaming one token at a time gives the same text.
        let mut stream = tok.stream_decoder(false);
        let mut streamed = String::new();
        for &id in &want {
            streamed.push_str(&stream.push(id).unwrap());
        }
        streamed.push_str(&stream.finish());
        assert_eq!(streamed, decoded, "streamed {text:?}");
    }
    eprintln!(
        "{}: {} llama.cpp and {} HF lines matched",
        dir.display(),
        lines.len(),
        hf.len()
    );
}

fn check_greedy_prompts(tok: &Tokenizer, dir: PathBuf) {
    let lines = read_jsonl(dir.join("greedy_llamacpp.jsonl"));
    assert!(!lines.is_empty());
    for line in &lines {
        let prompt = line["prompt"].as_str().expect("prompt");
        assert_eq!(
            tok.encode(prompt, true).unwrap(),
            ids(&line["prompt_tokens"]),
            "prompt {prompt:?}"
        );
        // The generated text decodes from the generated ids (control tokens hidden).
        if let (Some(generated), Some(text)) =
            (line.get("generated"), line["generated_text"].as_str())
        {
            let decoded = tok.decode(&ids(generated), true).unwrap();
            assert_eq!(decoded, text, "generated text of {:?}", line["name"]);
        }
    }
}

#[test]
fn qwen_matches_llamacpp_and_hf_token_ids() {
    let Some((_, tok)) = qwen() else { return };
    check_tokenizer_goldens(&tok, golden_dir());
}

#[test]
fn qwen_greedy_prompts_tokenize_like_llamacpp() {
    let Some((_, tok)) = qwen() else { return };
    check_greedy_prompts(&tok, golden_dir());
}

#[test]
fn qwen_metadata_and_special_tokens() {
    let Some((_, tok)) = qwen() else { return };
    assert_eq!(tok.vocab_size(), 151_936);
    assert_eq!(tok.pre_tokenizer(), "qwen2");
    assert_eq!(tok.bos_id(), Some(151_643));
    assert_eq!(tok.eos_id(), Some(151_645));
    assert!(!tok.add_bos());
    assert_eq!(tok.eog_ids(), &[151_643, 151_645]);
    assert!(tok.is_eog(151_645) && tok.is_eog(151_643) && !tok.is_eog(151_644));
    assert_eq!(tok.token_id("<|im_start|>"), Some(151_644));
    assert!(tok.is_special(151_644));
    assert_eq!(tok.token_attr(151_657), Some(TokenAttr::UserDefined)); // <tool_call>
    assert_eq!(tok.token_attr(151_665), Some(TokenAttr::Unused));
    assert!(!tok.is_special(9707));
    assert_eq!(tok.token_to_piece(21927).unwrap(), b" Hello");
    assert_eq!(tok.token_to_piece(151_645).unwrap(), b"<|im_end|>");
    // No "Ġ" or "Ċ" leaks into decoded text.
    assert_eq!(tok.decode(&[21927, 198], false).unwrap(), " Hello\n");
    // skip_special hides control tokens but keeps user-defined ones.
    let chat = tok
        .encode("<|im_start|>user\nhi<|im_end|><tool_call>", true)
        .unwrap();
    assert_eq!(tok.decode(&chat, true).unwrap(), "user\nhi<tool_call>");
    assert_eq!(
        tok.decode(&chat, false).unwrap(),
        "<|im_start|>user\nhi<|im_end|><tool_call>"
    );
    assert_eq!(tok.encode("", true).unwrap(), Vec::<u32>::new());
}

#[test]
fn qwen_out_of_range_ids_are_errors() {
    let Some((_, tok)) = qwen() else { return };
    let n = tok.vocab_size() as u32;
    assert!(
        matches!(tok.decode(&[9707, n], false), Err(TokenizerError::IdOutOfRange { id, .. }) if id == n)
    );
    assert!(tok.token_to_piece(u32::MAX).is_err());
    assert!(tok.check_id(n).is_err());
    assert!(tok.check_id(n - 1).is_ok());
    assert!(tok.stream_decoder(false).push(n).is_err());
    assert!(!tok.is_special(n));
}

/// Emoji and CJK characters whose bytes are spread over several byte-level tokens: the stream
/// must hold the partial bytes and never emit half a character or a replacement char.
#[test]
fn qwen_stream_never_emits_half_a_character() {
    let Some((_, tok)) = qwen() else { return };
    let text = "emoji 😀🚀 and ZWJ 👩\u{200d}💻, 日本語のテキスト, 🦀 Rust, 𝔘𝔫𝔦𝔠𝔬𝔡𝔢 and ẞ";
    let ids = tok.encode(text, false).unwrap();
    let mut stream = tok.stream_decoder(true);
    let mut out = String::new();
    let mut split_chars = 0;
    for &id in &ids {
        let piece = tok.token_to_piece(id).unwrap();
        if std::str::from_utf8(piece).is_err() {
            split_chars += 1;
        }
        let chunk = stream.push(id).unwrap();
        assert!(
            !chunk.contains('\u{FFFD}'),
            "replacement char emitted for id {id}"
        );
        assert!(stream.pending_bytes() <= 3);
        out.push_str(&chunk);
    }
    assert!(
        split_chars >= 2,
        "the text should exercise tokens that are not whole characters"
    );
    assert_eq!(stream.pending_bytes(), 0);
    assert_eq!(stream.finish(), "");
    assert_eq!(out, text);
}

#[test]
fn qwen_long_prompt_encodes_quickly_and_roundtrips() {
    let Some((_, tok)) = qwen() else { return };
    let para =
        "fn main() { println!(\"héllo, 世界 🚀\"); }\n\tlet x = 12345 + y;  // it's fine\r\n";
    let text = para.repeat(32_768 / para.len());
    let t0 = Instant::now();
    let ids = tok.encode(&text, true).unwrap();
    eprintln!(
        "encoded {} chars into {} tokens in {:?}",
        text.chars().count(),
        ids.len(),
        t0.elapsed()
    );
    assert_eq!(tok.decode(&ids, false).unwrap(), text);
}

#[test]
fn qwen_builds_fast() {
    let Some((gguf, _)) = qwen() else { return };
    // The test profile builds dependencies optimised (see the workspace Cargo.toml).
    let t0 = Instant::now();
    Tokenizer::from_gguf(&gguf).unwrap();
    let took = t0.elapsed();
    eprintln!("Tokenizer::from_gguf took {took:?}");
    assert!(
        took.as_secs_f64() < 2.0,
        "building the tokenizer took {took:?}"
    );
}

#[test]
fn smollm2_matches_llamacpp_and_hf_token_ids() {
    let Some((_, tok)) = load(SMOLLM_FILE) else {
        return;
    };
    assert_eq!(tok.pre_tokenizer(), "smollm");
    assert!(
        tok.is_eog(2) && tok.is_eog(0),
        "<|im_end|> and <|endoftext|> end generation"
    );
    check_tokenizer_goldens(&tok, golden_dir().join("smollm2"));
    check_greedy_prompts(&tok, golden_dir().join("smollm2"));
}
