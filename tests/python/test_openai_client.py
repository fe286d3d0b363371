"""The official `openai` Python client against a running worker.

Run by tests/tests/openai_python.rs (which starts the worker), or by hand:
    WORKER_URL=http://127.0.0.1:8080 WORKER_API_KEY=... python tests/python/test_openai_client.py

Every greedy answer the client gets is compared with the engine's greedy output obtained
another way: the worker's own M0 `/execute` endpoint at temperature 0 (read with urllib), on
the same prompt (for chat: the prompt `/apply-template` renders for the same messages).
"""

import json
import os
import sys
import urllib.request

import openai

URL = os.environ.get("WORKER_URL", "http://127.0.0.1:8080").rstrip("/")
KEY = os.environ.get("WORKER_API_KEY", "none")
client = openai.OpenAI(base_url=URL + "/v1", api_key=KEY, max_retries=0, timeout=120)

PROMPT = "def fibonacci(n):"
MESSAGES = [{"role": "user", "content": "Write a haiku about GPU memory."}]
N = 8


def post(path, body):
    req = urllib.request.Request(
        URL + path,
        data=json.dumps(body).encode(),
        headers={"content-type": "application/json", "authorization": "Bearer " + KEY},
    )
    return urllib.request.urlopen(req, timeout=120)


def execute_greedy(prompt, max_tokens, job_id):
    """The engine's greedy text through /execute (SSE), independent of the OpenAI layer."""
    text, event, end = "", None, None
    with post("/execute", {"job_id": job_id, "prompt": prompt, "max_tokens": max_tokens, "temperature": 0}) as r:
        for raw in r:
            line = raw.decode().rstrip("\n")
            if line.startswith("event:"):
                event = line[6:].strip()
            elif line.startswith("data:"):
                data = json.loads(line[5:])
                if event == "token":
                    text += data["t"]
                elif event in ("end", "error"):
                    end = (event, data)
    assert end and end[0] == "end", end
    return text


def model_id():
    models = client.models.list().data
    assert len(models) == 1, models
    return models[0].id


def test_completions():
    greedy = execute_greedy(PROMPT, N, "py-completions")
    c = client.completions.create(model=model_id(), prompt=PROMPT, max_tokens=N, temperature=0)
    assert c.choices[0].text == greedy, (c.choices[0].text, greedy)
    assert c.choices[0].finish_reason == "length"
    assert c.usage.completion_tokens == N
    assert c.usage.total_tokens == c.usage.prompt_tokens + N

    chunks = list(client.completions.create(model=model_id(), prompt=PROMPT, max_tokens=N, temperature=0, stream=True))
    assert "".join(ch.choices[0].text for ch in chunks if ch.choices) == greedy
    assert len(chunks) > 2, "tokens were streamed, not sent at once"


def test_completion_logprobs():
    c = client.completions.create(model=model_id(), prompt=PROMPT, max_tokens=N, temperature=0, logprobs=2)
    lp = c.choices[0].logprobs
    assert len(lp.tokens) == N and len(lp.token_logprobs) == N and len(lp.top_logprobs) == N
    assert "".join(lp.tokens) == c.choices[0].text
    for chosen, top in zip(lp.token_logprobs, lp.top_logprobs):
        assert chosen <= 0 and 1 <= len(top) <= 2
        assert abs(max(top.values()) - chosen) < 1e-6, "greedy token is the most likely"

    e = client.completions.create(model=model_id(), prompt=PROMPT, max_tokens=2, temperature=0, logprobs=1, echo=True)
    assert e.choices[0].text.startswith(PROMPT)
    assert e.choices[0].logprobs.token_logprobs[0] is None


def test_chat():
    templated = post("/apply-template", {"messages": MESSAGES}).read()
    greedy = execute_greedy(json.loads(templated)["prompt"], N, "py-chat")
    c = client.chat.completions.create(model=model_id(), messages=MESSAGES, max_tokens=N, temperature=0)
    assert c.choices[0].message.role == "assistant"
    assert c.choices[0].message.content == greedy, (c.choices[0].message.content, greedy)
    assert c.choices[0].finish_reason == "length"

    stream = client.chat.completions.create(
        model=model_id(), messages=MESSAGES, max_completion_tokens=N, temperature=0, stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    text = "".join(ch.choices[0].delta.content or "" for ch in chunks if ch.choices)
    assert text == greedy, (text, greedy)
    assert chunks[-1].usage.completion_tokens == N


def test_chat_logprobs():
    c = client.chat.completions.create(
        model=model_id(), messages=MESSAGES, max_tokens=N, temperature=0, logprobs=True, top_logprobs=3
    )
    content = c.choices[0].logprobs.content
    assert len(content) == N
    assert "".join(t.token for t in content) == c.choices[0].message.content
    for t in content:
        assert len(t.top_logprobs) == 3
        assert t.top_logprobs[0].token == t.token and t.logprob <= 0


def test_seeded_sampling_replays():
    kw = dict(model=model_id(), messages=MESSAGES, max_tokens=N, temperature=0.9, seed=7)
    a = client.chat.completions.create(**kw).choices[0].message.content
    b = client.chat.completions.create(**kw).choices[0].message.content
    assert a == b


def test_errors():
    try:
        client.completions.create(model=model_id(), prompt=PROMPT, max_tokens=2, n=2)
        raise AssertionError("n=2 was accepted")
    except openai.BadRequestError as e:
        assert e.status_code == 400 and "n" in str(e)
    bad = openai.OpenAI(base_url=URL + "/v1", api_key="wrong-key", max_retries=0)
    if KEY != "none":
        try:
            bad.models.list()
            raise AssertionError("a wrong API key was accepted")
        except openai.AuthenticationError:
            pass


def main():
    tests = [v for k, v in sorted(globals().items()) if k.startswith("test_") and callable(v)]
    failed = 0
    for t in tests:
        try:
            t()
            print("ok  ", t.__name__)
        except Exception as e:  # report every test, then fail
            failed += 1
            print("FAIL", t.__name__, repr(e))
    print(f"openai {openai.__version__}: {len(tests) - failed} passed, {failed} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
