#!/usr/bin/env python3
"""llama.cpp's CPU speed on a GGUF model, through llama-cpp-python (built from source).

Prompt processing of a fixed-length prompt and greedy decode, timed with the library's own
perf counters; prints one JSON line. Used by docs/perf/cpu.md as the baseline measured beside
`worker-http bench --device cpu` in the same run.

    python3 scripts/llamacpp_cpu_bench.py MODEL.gguf --prompt-tokens 128 --gen 32 --threads 2
"""
import argparse, json, time
from llama_cpp import Llama

ap = argparse.ArgumentParser()
ap.add_argument("model")
ap.add_argument("--prompt-tokens", type=int, default=128)
ap.add_argument("--gen", type=int, default=32)
ap.add_argument("--threads", type=int, default=2)
ap.add_argument("--reps", type=int, default=2)
a = ap.parse_args()

llm = Llama(model_path=a.model, n_ctx=2048, n_threads=a.threads, n_batch=512, verbose=False)
vocab = llm.n_vocab()
# Deterministic pseudo-random prompt ids (the same recipe for every rep).
prompt = [(i * 7919 + 13) % 20000 + 100 for i in range(a.prompt_tokens)]
pp, tg = [], []
for _ in range(a.reps):
    llm.reset()
    t0 = time.perf_counter()
    llm.eval(prompt)
    t1 = time.perf_counter()
    pp.append(a.prompt_tokens / (t1 - t0))
    tok = 198  # decode speed does not depend on which token is fed back
    t2 = time.perf_counter()
    for _ in range(a.gen):
        llm.eval([tok])
    t3 = time.perf_counter()
    tg.append(a.gen / (t3 - t2))
print(json.dumps({"engine": "llama.cpp (llama-cpp-python 0.3.36)", "threads": a.threads,
                  "pp_tokens": a.prompt_tokens, "pp_tok_s": pp, "tg_tokens": a.gen, "tg_tok_s": tg}))
