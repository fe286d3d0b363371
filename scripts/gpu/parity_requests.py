#!/usr/bin/env python3
"""Sends every golden prompt to a running worker's /execute, greedily, 4 tokens, with the prompt's
name as job_id (the checkpoint log's request name), so `cargo xtask parity` can pair the worker's
log with parity_hf.jsonl / parity_llamacpp.jsonl.  Usage: parity_requests.py GOLDEN_DIR PORT"""
import json, sys, urllib.request

golden, port = sys.argv[1], int(sys.argv[2])
for line in open(f"{golden}/greedy_llamacpp.jsonl"):
    case = json.loads(line)
    body = json.dumps({"job_id": case["name"], "prompt": case["prompt"], "max_tokens": 4,
                       "temperature": 0}).encode()
    req = urllib.request.Request(f"http://127.0.0.1:{port}/execute", data=body,
                                 headers={"content-type": "application/json"})
    with urllib.request.urlopen(req) as r:
        events = r.read().decode()
    end = [l for l in events.splitlines() if l.startswith("data:")][-1]
    print(case["name"], end)
