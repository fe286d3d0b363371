//! The GGUF tokenizer against llama.cpp's and HF's ids for the real models
//! (`shared/golden/tokenizer_*.jsonl`, `greedy_llamacpp.jsonl`). The model files are fetched
//! into the cache on first use.

mod common;

use serde_json::Value as Json;
use std::path::PathBuf;
use std::time::Instant;
use worker_core::gguf::GgufFile;
use worker_core::tokenizer::{TokenAttr, Tokenizer, TokenizerError};

const QWEN_FILE: &str = "qwen2.5-coder-0.5b-instruct-q4_k_m.gguf";
const SMOLLM_FILE: &str = "SmolLM2-135M-Instruct.Q4_1.gguf";

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
    // Fetched into the cache on first use: these tests never skip for lack of the file.
    let path = common::known_model_file(file);
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
    check_tokenizer_goldens(&tok, common::golden_dir());
}

#[test]
fn qwen_greedy_prompts_tokenize_like_llamacpp() {
    let Some((_, tok)) = qwen() else { return };
    check_greedy_prompts(&tok, common::golden_dir());
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
    check_tokenizer_goldens(&tok, common::golden_dir().join("smollm2"));
    check_greedy_prompts(&tok, common::golden_dir().join("smollm2"));
}

// ---------------------------------------------------------------------------------------------
// A tiny synthetic vocabulary, so the partitioning, byte mapping, streaming and error paths are
// also tested where no model file is present.

/// GPT-2's byte-to-character map (the printable bytes stand for themselves).
fn byte_char(b: u8) -> char {
    let mut next = 256u32;
    for x in 0..=255u8 {
        let printable = matches!(x, 33..=126 | 161..=172 | 174..=255);
        if x == b {
            return if printable {
                char::from(x)
            } else {
                char::from_u32(next).unwrap()
            };
        }
        if !printable {
            next += 1;
        }
    }
    unreachable!()
}

enum Meta<'a> {
    Str(&'a str),
    U32(u32),
    Bool(bool),
    Strs(Vec<String>),
    I32s(Vec<i32>),
}

fn gguf_bytes(kvs: &[(&str, Meta)]) -> Vec<u8> {
    fn s(out: &mut Vec<u8>, v: &str) {
        out.extend_from_slice(&(v.len() as u64).to_le_bytes());
        out.extend_from_slice(v.as_bytes());
    }
    let mut b = b"GGUF".to_vec();
    b.extend_from_slice(&3u32.to_le_bytes());
    b.extend_from_slice(&0u64.to_le_bytes());
    b.extend_from_slice(&(kvs.len() as u64).to_le_bytes());
    for (k, v) in kvs {
        s(&mut b, k);
        match v {
            Meta::Str(v) => {
                b.extend_from_slice(&8u32.to_le_bytes());
                s(&mut b, v);
            }
            Meta::U32(v) => {
                b.extend_from_slice(&4u32.to_le_bytes());
                b.extend_from_slice(&v.to_le_bytes());
            }
            Meta::Bool(v) => {
                b.extend_from_slice(&7u32.to_le_bytes());
                b.push(u8::from(*v));
            }
            Meta::Strs(vs) => {
                b.extend_from_slice(&9u32.to_le_bytes());
                b.extend_from_slice(&8u32.to_le_bytes());
                b.extend_from_slice(&(vs.len() as u64).to_le_bytes());
                for v in vs {
                    s(&mut b, v);
                }
            }
            Meta::I32s(vs) => {
                b.extend_from_slice(&9u32.to_le_bytes());
                b.extend_from_slice(&5u32.to_le_bytes());
                b.extend_from_slice(&(vs.len() as u64).to_le_bytes());
                for v in vs {
                    b.extend_from_slice(&v.to_le_bytes());
                }
            }
        }
    }
    b
}

/// Ids 0..256: one token per byte; then "he", "ll", "hell", "hello", "Ġhello";
/// then <|im_start|> (control), <|im_end|> (normal in the file, made control as an EOG text),
/// <tool> (user-defined).
fn synthetic(model: &str, pre: &str, add_bos: Option<bool>) -> Result<Tokenizer, TokenizerError> {
    let mut tokens: Vec<String> = (0..=255u8).map(|b| byte_char(b).to_string()).collect();
    tokens.extend(
        [
            "he",
            "ll",
            "hell",
            "hello",
            "Ġhello",
            "<|im_start|>",
            "<|im_end|>",
            "<tool>",
        ]
        .map(String::from),
    );
    let mut types = vec![1i32; tokens.len()];
    let n = types.len();
    types[n - 3] = 3;
    types[n - 1] = 4;
    let merges = ["h e", "l l", "he ll", "hell o", "Ġ hello", "x nothing"]
        .map(String::from)
        .to_vec();
    let mut kvs = vec![
        ("tokenizer.ggml.model", Meta::Str(model)),
        ("tokenizer.ggml.pre", Meta::Str(pre)),
        ("tokenizer.ggml.tokens", Meta::Strs(tokens)),
        ("tokenizer.ggml.token_type", Meta::I32s(types)),
        ("tokenizer.ggml.merges", Meta::Strs(merges)),
        ("tokenizer.ggml.bos_token_id", Meta::U32(261)),
        ("tokenizer.ggml.eos_token_id", Meta::U32(262)),
    ];
    if let Some(v) = add_bos {
        kvs.push(("tokenizer.ggml.add_bos_token", Meta::Bool(v)));
    }
    let gguf = GgufFile::from_bytes(gguf_bytes(&kvs)).expect("valid synthetic gguf");
    Tokenizer::from_gguf(&gguf)
}

const HELLO: u32 = 259;
const SP_HELLO: u32 = 260;
const IM_START: u32 = 261;
const IM_END: u32 = 262;
const TOOL: u32 = 263;

fn byte_ids(text: &str) -> Vec<u32> {
    text.bytes().map(u32::from).collect()
}

#[test]
fn synthetic_vocab_merges_and_partitions_like_llamacpp() {
    let tok = synthetic("gpt2", "qwen2", None).unwrap();
    assert_eq!(tok.vocab_size(), 264);
    assert_eq!(tok.encode("hello", false).unwrap(), vec![HELLO]);
    assert_eq!(
        tok.encode("hello hello", false).unwrap(),
        vec![HELLO, SP_HELLO]
    );
    // Control tokens are parsed only with parse_special; otherwise they are plain bytes.
    assert_eq!(
        tok.encode("<|im_start|>hello<|im_end|>", true).unwrap(),
        vec![IM_START, HELLO, IM_END]
    );
    let plain = tok.encode("<|im_start|>hello", false).unwrap();
    assert!(!plain.contains(&IM_START));
    assert_eq!(tok.decode(&plain, false).unwrap(), "<|im_start|>hello");
    // User-defined tokens are matched either way.
    assert_eq!(tok.encode("<tool>hello", false).unwrap(), vec![TOOL, HELLO]);
    assert_eq!(tok.encode("<tool>hello", true).unwrap(), vec![TOOL, HELLO]);
    // Unmerged text falls back to one token per byte, including multi-byte characters.
    assert_eq!(tok.encode("é\n", false).unwrap(), byte_ids("é\n"));
    assert_eq!(tok.decode(&byte_ids("é\n"), false).unwrap(), "é\n");
    // <|im_end|> is an end-of-generation text, so it became a control token.
    assert_eq!(tok.eog_ids(), &[IM_END]);
    assert!(tok.is_special(IM_END) && tok.is_special(IM_START) && tok.is_special(TOOL));
    assert_eq!(
        tok.decode(&[IM_START, HELLO, TOOL, IM_END], true).unwrap(),
        "hello<tool>"
    );
    assert!(!tok.add_bos());
}

#[test]
fn synthetic_stream_holds_partial_characters() {
    let tok = synthetic("gpt2", "qwen2", None).unwrap();
    let mut s = tok.stream_decoder(true);
    let bytes = byte_ids("😀"); // four byte tokens
    for &b in &bytes[..3] {
        assert_eq!(s.push(b).unwrap(), "");
    }
    assert_eq!(s.pending_bytes(), 3);
    assert_eq!(s.push(bytes[3]).unwrap(), "😀");
    assert_eq!(s.push(HELLO).unwrap(), "hello");
    assert_eq!(s.push(IM_END).unwrap(), "");
    // A character cut off at the end is flushed lossily by finish().
    assert_eq!(s.push(0xE6).unwrap(), "");
    assert_eq!(s.finish(), "\u{FFFD}");
    // A byte that can never start a character is replaced at once, not held.
    assert_eq!(s.push(0x80).unwrap(), "\u{FFFD}");
    assert_eq!(s.push(0xE6).unwrap(), "");
    assert_eq!(s.push(u32::from(b'a')).unwrap(), "\u{FFFD}a");
    assert!(s.push(264).is_err());
}

#[test]
fn synthetic_bos_and_unsupported_vocabularies() {
    let tok = synthetic("gpt2", "llama-bpe", None).unwrap();
    assert!(
        tok.add_bos(),
        "llama3 vocabularies add BOS unless the file says otherwise"
    );
    assert_eq!(tok.encode("hello", false).unwrap(), vec![IM_START, HELLO]);
    let tok = synthetic("gpt2", "smollm", Some(false)).unwrap();
    assert!(!tok.add_bos());
    assert_eq!(
        tok.encode("hello 42", false).unwrap(),
        [vec![HELLO], byte_ids(" 42")].concat()
    );
    let tok = synthetic("gpt2", "qwen2", Some(true)).unwrap();
    assert_eq!(
        tok.encode("<|im_start|>hello", true).unwrap(),
        vec![IM_START, HELLO],
        "no double BOS"
    );

    let err = synthetic("llama", "qwen2", None).unwrap_err();
    assert!(
        matches!(err, TokenizerError::UnsupportedModel(ref m) if m == "llama"),
        "{err}"
    );
    let err = synthetic("gpt2", "klingon", None).unwrap_err();
    assert!(
        err.to_string().contains("\"klingon\"") && err.to_string().contains("qwen2"),
        "{err}"
    );
}
