//! Chat formatting with the models' own templates, checked against the exact prompts
//! llama.cpp was given for the goldens (`shared/golden/**/greedy_llamacpp.jsonl`).

mod common;

use serde_json::Value as Json;
use std::path::PathBuf;
use worker_core::gguf::GgufFile;
use worker_core::tokenizer::{ChatError, ChatMessage, ChatTemplate, Tokenizer};

const QWEN_DEFAULT_SYSTEM: &str =
    "You are Qwen, created by Alibaba Cloud. You are a helpful assistant.";

fn open_model(file: &str) -> Option<GgufFile> {
    // Fetched into the cache on first use: these tests never skip for lack of the file.
    let path = common::known_model_file(file);
    Some(GgufFile::open(&path).expect("open gguf"))
}

/// The chat prompts (those written in ChatML) of a greedy golden file, with their messages
/// parsed back out of the text.
fn golden_chats(file: PathBuf) -> Vec<(String, Vec<ChatMessage>, Vec<u32>)> {
    let text = std::fs::read_to_string(&file).unwrap_or_else(|e| panic!("{}: {e}", file.display()));
    let mut chats = Vec::new();
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        let v: Json = serde_json::from_str(line).unwrap();
        let prompt = v["prompt"].as_str().unwrap().to_owned();
        let Some(body) = prompt.strip_suffix("<|im_start|>assistant\n") else {
            continue;
        };
        let messages = body
            .split("<|im_end|>\n")
            .filter(|m| !m.is_empty())
            .map(|m| {
                let m = m
                    .strip_prefix("<|im_start|>")
                    .expect("message starts with <|im_start|>");
                let (role, content) = m.split_once('\n').expect("role line");
                ChatMessage::new(role, content)
            })
            .collect();
        let ids = v["prompt_tokens"]
            .as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_u64().unwrap() as u32)
            .collect();
        chats.push((prompt, messages, ids));
    }
    chats
}

/// A GGUF file with only the given string metadata and a two-token vocabulary.
fn tiny_gguf(strings: &[(&str, &str)]) -> GgufFile {
    fn put_str(out: &mut Vec<u8>, s: &str) {
        out.extend_from_slice(&(s.len() as u64).to_le_bytes());
        out.extend_from_slice(s.as_bytes());
    }
    let mut b = Vec::new();
    b.extend_from_slice(b"GGUF");
    b.extend_from_slice(&3u32.to_le_bytes());
    b.extend_from_slice(&0u64.to_le_bytes()); // tensors
    b.extend_from_slice(&(strings.len() as u64 + 3).to_le_bytes());
    for (k, v) in strings {
        put_str(&mut b, k);
        b.extend_from_slice(&8u32.to_le_bytes());
        put_str(&mut b, v);
    }
    put_str(&mut b, "tokenizer.ggml.tokens");
    b.extend_from_slice(&9u32.to_le_bytes());
    b.extend_from_slice(&8u32.to_le_bytes());
    b.extend_from_slice(&2u64.to_le_bytes());
    put_str(&mut b, "<s>");
    put_str(&mut b, "</s>");
    for (key, id) in [
        ("tokenizer.ggml.bos_token_id", 0u32),
        ("tokenizer.ggml.eos_token_id", 1),
    ] {
        put_str(&mut b, key);
        b.extend_from_slice(&4u32.to_le_bytes());
        b.extend_from_slice(&id.to_le_bytes());
    }
    GgufFile::from_bytes(b).expect("valid tiny gguf")
}

#[test]
fn qwen_template_adds_the_default_system_message() {
    let Some(gguf) = open_model("qwen2.5-coder-0.5b-instruct-q4_k_m.gguf") else {
        return;
    };
    let chat = ChatTemplate::from_gguf(&gguf).unwrap();
    assert!(!chat.is_fallback());
    let text = chat.render(&[ChatMessage::user("hi")], true).unwrap();
    assert_eq!(
        text,
        format!(
            "<|im_start|>system\n{QWEN_DEFAULT_SYSTEM}<|im_end|>\n<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"
        )
    );
    // Without the generation prompt the text ends after the user's turn.
    let text = chat.render(&[ChatMessage::user("hi")], false).unwrap();
    assert!(
        text.ends_with("<|im_start|>user\nhi<|im_end|>\n"),
        "{text:?}"
    );
}

#[test]
fn qwen_template_keeps_a_given_system_message_and_the_history() {
    let Some(gguf) = open_model("qwen2.5-coder-0.5b-instruct-q4_k_m.gguf") else {
        return;
    };
    let chat = ChatTemplate::from_gguf(&gguf).unwrap();
    let messages = [
        ChatMessage::system("Be brief."),
        ChatMessage::user("2+2?"),
        ChatMessage::assistant("4"),
        ChatMessage::user("And 3+3?"),
    ];
    let text = chat.render(&messages, true).unwrap();
    assert_eq!(
        text,
        "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\n2+2?<|im_end|>\n\
         <|im_start|>assistant\n4<|im_end|>\n<|im_start|>user\nAnd 3+3?<|im_end|>\n<|im_start|>assistant\n"
    );
    assert!(!text.contains(QWEN_DEFAULT_SYSTEM));
}

/// Every chat prompt llama.cpp was given (haiku, chinese, rust, json, long) renders to the
/// same text with the model's template, and that text tokenizes to the same ids.
#[test]
fn qwen_template_reproduces_the_golden_chat_prompts() {
    let Some(gguf) = open_model("qwen2.5-coder-0.5b-instruct-q4_k_m.gguf") else {
        return;
    };
    let chat = ChatTemplate::from_gguf(&gguf).unwrap();
    let tok = Tokenizer::from_gguf(&gguf).unwrap();
    let chats = golden_chats(common::golden_dir().join("greedy_llamacpp.jsonl"));
    assert!(
        chats.len() >= 5,
        "expected the haiku, chinese, rust, json and long prompts"
    );
    let haiku = [
        ChatMessage::system("You are a helpful assistant."),
        ChatMessage::user("Write a haiku about GPU memory."),
    ];
    assert!(
        chats.iter().any(|(_, m, _)| m.as_slice() == haiku),
        "haiku prompt present and parsed"
    );
    for (prompt, messages, ids) in &chats {
        let rendered = chat.render(messages, true).unwrap();
        assert_eq!(&rendered, prompt);
        assert_eq!(&tok.encode(&rendered, true).unwrap(), ids);
    }
}

#[test]
fn smollm2_template_reproduces_the_golden_chat_prompts() {
    let Some(gguf) = open_model("SmolLM2-135M-Instruct.Q4_1.gguf") else {
        return;
    };
    let chat = ChatTemplate::from_gguf(&gguf).unwrap();
    let chats = golden_chats(common::golden_dir().join("smollm2/greedy_llamacpp.jsonl"));
    assert!(!chats.is_empty());
    for (prompt, messages, _) in &chats {
        assert_eq!(&chat.render(messages, true).unwrap(), prompt);
        // The golden system message is SmolLM2's default: the user turn alone gives the same.
        let user_only: Vec<ChatMessage> = messages
            .iter()
            .filter(|m| m.role != "system")
            .cloned()
            .collect();
        assert_eq!(&chat.render(&user_only, true).unwrap(), prompt);
    }
}

#[test]
fn files_without_a_template_get_chatml() {
    let gguf = tiny_gguf(&[("general.architecture", "test")]);
    let chat = ChatTemplate::from_gguf(&gguf).unwrap();
    assert!(chat.is_fallback());
    let text = chat
        .render(&[ChatMessage::system("S"), ChatMessage::user("hi")], true)
        .unwrap();
    assert_eq!(
        text,
        "<|im_start|>system\nS<|im_end|>\n<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"
    );
    let text = chat.render(&[ChatMessage::user("hi")], false).unwrap();
    assert_eq!(text, "<|im_start|>user\nhi<|im_end|>\n");
    assert_eq!(
        ChatTemplate::chatml()
            .render(&[ChatMessage::user("hi")], false)
            .unwrap(),
        text
    );
}

#[test]
fn templates_get_bos_eos_and_python_string_methods() {
    let source = "{{ bos_token }}{% for m in messages %}[{{ m.role.upper() }}] {{ m.content.strip() }}\n{% endfor %}\
                  {% if add_generation_prompt %}[ASSISTANT]{% endif %}{{ eos_token }}";
    let gguf = tiny_gguf(&[("tokenizer.chat_template", source)]);
    let chat = ChatTemplate::from_gguf(&gguf).unwrap();
    assert!(!chat.is_fallback());
    assert_eq!(chat.source(), source);
    let text = chat.render(&[ChatMessage::user("  hi  ")], true).unwrap();
    assert_eq!(text, "<s>[USER] hi\n[ASSISTANT]</s>");
}

#[test]
fn template_errors_are_reported_not_panics() {
    let raising = "{% if messages[0].role != 'user' %}{{ raise_exception('first message must be user') }}{% endif %}ok";
    let chat = ChatTemplate::from_source(raising, "", "").unwrap();
    assert_eq!(chat.render(&[ChatMessage::user("x")], true).unwrap(), "ok");
    let err = chat
        .render(&[ChatMessage::assistant("x")], true)
        .unwrap_err();
    assert!(matches!(err, ChatError::Render(_)), "{err}");
    assert!(
        err.to_string().contains("first message must be user"),
        "{err}"
    );

    assert!(matches!(
        ChatTemplate::from_source("{% for %}", "", ""),
        Err(ChatError::Compile(_))
    ));
    assert!(matches!(
        ChatTemplate::chatml().render(&[], true),
        Err(ChatError::NoMessages)
    ));
}
