#!/usr/bin/env python3
"""Writes the text seeds of the fuzz corpora (tokenizer, stop_strings, request_parse) from the
golden files: real prompts, texts and generated ids. Usage: make_text_seeds.py [GOLDEN_DIR]
(default ../shared/golden beside the checkout). Binary seeds: fuzz/src/make_seeds.rs."""
import json, os, sys

here = os.path.dirname(os.path.abspath(__file__))
golden = sys.argv[1] if len(sys.argv) > 1 else os.path.join(here, "../../../shared/golden")

def lines(name):
    with open(os.path.join(golden, name)) as f:
        return [json.loads(l) for l in f if l.strip()]

tok = lines("tokenizer_hf.jsonl")
greedy = lines("greedy_llamacpp.jsonl")

def write(target, name, data):
    d = os.path.join(here, target)
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, name), "wb") as f:
        f.write(data)

def ids_bytes(ids):
    return b"".join(i.to_bytes(3, "little") for i in ids)

# tokenizer: mode byte (1 parse special, 2 skip special, 4 ids), then text or 3-byte ids.
for i, t in enumerate(tok):
    write("tokenizer", f"text-{i:02}", bytes([i % 2]) + t["text"].encode())
    write("tokenizer", f"ids-{i:02}", bytes([4 | (i % 2) * 2]) + ids_bytes(t["ids"]))
for g in greedy:
    write("tokenizer", f"prompt-{g['name']}", b"\x01" + g["prompt"].encode())
    write("tokenizer", f"gen-{g['name']}", b"\x04" + ids_bytes(g["prompt_tokens"] + g["generated"]))

# stop_strings: mode byte (1: small alphabet), stops joined by 0x01, then pieces split by 0x00.
for g in greedy:
    text = g["generated_text"]
    words = [w for w in text.split() if len(w) > 3]
    stops = ["\n\n", words[len(words) // 2] if words else "x", "<|im_end|>"]
    pieces, i, n = [], 0, 1
    while i < len(text):
        pieces.append(text[i : i + n])
        i += n
        n = n % 5 + 1
    body = b"\x01".join(s.encode() for s in stops) + b"\x00" + b"\x00".join(p.encode() for p in pieces)
    write("stop_strings", f"golden-{g['name']}", b"\x00" + body)
write("stop_strings", "alphabet", b"\x01ab\x01\xc3\xa9\xe6\x97\xa5\x00a\x00ba\x00\xc3\xa9\x00\xe6\x97\xa5\xf0\x9f\x98\x80")

# request_parse: mode byte (even /execute, odd OpenAI), then the JSON body.
for g in greedy[:4]:
    p = g["prompt"]
    write("request_parse", f"execute-{g['name']}", b"\x00" + json.dumps(
        {"job_id": "job-1", "prompt": p, "max_tokens": 16, "temperature": 0.7, "top_p": 0.9,
         "top_k": 40, "min_p": 0.05, "repetition_penalty": 1.1, "stop": ["\n\n", "END"], "seed": 7}).encode())
    write("request_parse", f"completions-{g['name']}", b"\x01" + json.dumps(
        {"model": "qwen2.5-coder-0.5b", "prompt": p, "max_tokens": 16, "stream": True,
         "stream_options": {"include_usage": True}, "logprobs": 2, "seed": -1, "n": 1,
         "logit_bias": {}, "presence_penalty": 0.5, "frequency_penalty": -0.5}).encode())
    write("request_parse", f"tokens-{g['name']}", b"\x01" + json.dumps(
        {"prompt": g["prompt_tokens"], "max_tokens": 4, "top_k": -1}).encode())
write("request_parse", "execute-errors", b"\x00" + json.dumps(
    {"job_id": "", "prompt": 5, "max_tokens": 99999, "temperature": -1, "top_p": "x",
     "stop": ["", "a", "b", "c", "d"], "seed": 1.5, "typo": True}).encode())
write("request_parse", "openai-errors", b"\x01" + json.dumps(
    {"n": 2, "best_of": 3, "logit_bias": {"1": 2}, "stream_options": {"include_usage": 1},
     "repetition_penalty": 0, "top_k": -2}).encode())
write("request_parse", "not-json", b"\x00{\"job_id\": \"a\", \"prompt\": ")
print("text seeds written under", here)
