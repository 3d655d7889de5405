"""The real server on 127.0.0.1, driven by the real `openai` client and raw HTTP: chat and text completions,
streaming chunk sequences, n > 1, stop strings, logprobs (checked against the model's own scores), the
tokenizer endpoints, auth, every error status and shape (the server keeps serving after each), client
disconnects freeing their rows, continuous batching, metrics and the feedback API."""

from __future__ import annotations

import json
import threading
import time

import httpx
import openai
import pytest
import torch

from tests.serving import running_server

KEY = "sk-test-key"
MSG = [{"role": "user", "content": "Where is the Marmidor common?"}]


@pytest.fixture(scope="module")
def served_run(base_run, tmp_path_factory):
    """The base run with its RoPE model's context widened to 1024 (no learned positions, same weights), so a
    stream can run long enough for a client to walk away from it mid-answer."""
    import shutil

    run = tmp_path_factory.mktemp("served") / "run"
    shutil.copytree(base_run, run)
    cfg_file = run / "base" / "config.json"
    cfg = json.loads(cfg_file.read_text())
    assert cfg["pos"] == "rope"
    cfg_file.write_text(json.dumps(dict(cfg, max_seq_len=1024)))
    return run


@pytest.fixture(scope="module")
def server(served_run):
    # 4 running rows + 4 waiting places: a request for n=9 sequences must be refused with 429.
    with running_server(served_run, "--api-key", KEY, "--max-batch", "4", "--max-queue", "4",
                        "--max-tokens-limit", "2000", "--max-body-bytes", "20000") as url:
        yield url


@pytest.fixture(scope="module")
def client(server) -> openai.OpenAI:
    return openai.OpenAI(base_url=server + "/v1", api_key=KEY, max_retries=0, timeout=60)


def post(server, path, body, key=KEY, **kw) -> httpx.Response:
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    return httpx.post(server + path, json=body, headers=headers, timeout=60, **kw)


def sse_events(resp: httpx.Response) -> list:
    """The `data:` payloads of an SSE response, JSON-decoded ('[DONE]' kept as a string)."""
    out = []
    for block in resp.text.split("\n\n"):
        if not block.strip():
            continue
        assert block.startswith("data: "), block
        data = block[len("data: "):]
        out.append(data if data == "[DONE]" else json.loads(data))
    return out


def test_models_health_and_tokenizer_endpoints(server, client, base_run):
    models = client.models.list().data
    assert [m.id for m in models] == ["chatforge-run-base"]
    assert httpx.get(server + "/health").json()["status"] == "ok"
    info = httpx.get(server + "/tokenizer_info", headers={"Authorization": f"Bearer {KEY}"}).json()
    assert info["max_model_len"] == 1024 and info["vocab_size"] == 1024
    text = "The Zogota feeds on berries. 卡奎佐吃树叶。"
    ids = post(server, "/tokenize", {"prompt": text}).json()["tokens"]
    from chatforge.tokenizer import Tokenizer

    assert ids == Tokenizer.load(base_run / "tokenizer").encode(text)
    assert post(server, "/detokenize", {"tokens": ids}).json()["prompt"] == text


def test_chat_completion_non_streaming_with_usage_and_seed(server, client):
    r = client.chat.completions.create(model="chatforge-run-base", messages=MSG, max_tokens=12, seed=7,
                                       temperature=0.8)
    c = r.choices[0]
    assert r.object == "chat.completion" and c.message.role == "assistant" and isinstance(c.message.content, str)
    assert c.finish_reason in ("stop", "length")
    n_prompt = post(server, "/tokenize", {"messages": MSG}).json()["count"]
    assert r.usage.prompt_tokens == n_prompt and 1 <= r.usage.completion_tokens <= 12
    assert r.usage.total_tokens == n_prompt + r.usage.completion_tokens
    again = client.chat.completions.create(model="x", messages=MSG, max_tokens=12, seed=7, temperature=0.8,
                                           extra_body={"some_unknown_field": 1})
    assert again.choices[0].message.content == c.message.content  # same seed, same text; unknown field ignored


def test_n_choices_are_distinct_seeded_samples(client):
    r = client.chat.completions.create(model="m", messages=MSG, max_tokens=10, n=3, seed=11, temperature=1.0,
                                       extra_body={"ignore_eos": True})
    assert [c.index for c in r.choices] == [0, 1, 2]
    assert r.usage.completion_tokens == 30
    texts = [c.message.content for c in r.choices]
    assert len(set(texts)) > 1
    for j in range(3):  # choice j is the request's sample with seed + j
        one = client.chat.completions.create(model="m", messages=MSG, max_tokens=10, seed=11 + j, temperature=1.0,
                                             extra_body={"ignore_eos": True})
        assert one.choices[0].message.content == texts[j]


def test_streaming_chunk_sequence(server, client):
    full = client.chat.completions.create(model="m", messages=MSG, max_tokens=16, seed=3, temperature=0.9)
    resp = post(server, "/v1/chat/completions", {"messages": MSG, "max_tokens": 16, "seed": 3, "temperature": 0.9,
                                                 "stream": True, "stream_options": {"include_usage": True}})
    assert resp.status_code == 200 and resp.headers["content-type"].startswith("text/event-stream")
    events = sse_events(resp)
    assert events[-1] == "[DONE]"
    chunks = events[:-1]
    assert len({c["id"] for c in chunks}) == 1 and all(c["object"] == "chat.completion.chunk" for c in chunks)
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    usage_chunk = chunks[-1]
    assert usage_chunk["choices"] == [] and usage_chunk["usage"]["completion_tokens"] == full.usage.completion_tokens
    assert all(c["usage"] is None for c in chunks[:-1])
    last = chunks[-2]["choices"][0]
    assert last["delta"] == {} and last["finish_reason"] == full.choices[0].finish_reason
    middle = [c["choices"][0] for c in chunks[1:-2]]
    assert all(ch["finish_reason"] is None and set(ch["delta"]) == {"content"} for ch in middle)
    assert "".join(ch["delta"]["content"] for ch in middle) == full.choices[0].message.content
    # the openai client's own stream parser accepts it, n = 2 interleaved
    got = {0: "", 1: ""}
    finished = set()
    for chunk in client.chat.completions.create(model="m", messages=MSG, max_tokens=8, n=2, seed=5, stream=True):
        for ch in chunk.choices:
            got[ch.index] += ch.delta.content or ""
            if ch.finish_reason:
                finished.add(ch.index)
    assert finished == {0, 1}


def test_streaming_never_splits_a_utf8_character(server):
    """Chinese characters are 3 bytes and byte-level tokens often split them: every streamed delta must
    still be whole characters, so the deltas join into exactly the decoding of all the answer's bytes."""
    zh = [{"role": "user", "content": "卡奎佐靠吃什么过活？卡奎佐吃树叶。艾米米靠吃什么过活？"}]
    body = {"messages": zh, "max_tokens": 60, "seed": 1, "temperature": 1.0, "ignore_eos": True}
    whole = post(server, "/v1/chat/completions", dict(body, logprobs=True)).json()["choices"][0]
    pieces = [bytes(e["bytes"]) for e in whole["logprobs"]["content"]]
    split = [b for b in pieces if b and _not_whole_utf8(b)]
    assert split, "the answer has no token that splits a character; the test would prove nothing"
    resp = post(server, "/v1/chat/completions", dict(body, stream=True))
    deltas = [c["choices"][0]["delta"].get("content", "") for c in sse_events(resp)[:-1] if c["choices"]]
    assert "".join(deltas) == b"".join(pieces).decode("utf-8", "replace") == whole["message"]["content"]
    for d in deltas:  # no delta ends in the middle of a character that the next one completes
        assert d == d.encode("utf-8").decode("utf-8")


def _not_whole_utf8(b: bytes) -> bool:
    try:
        b.decode("utf-8")
        return False
    except UnicodeDecodeError:
        return True


def test_stop_strings(client):
    free = client.chat.completions.create(model="m", messages=MSG, max_tokens=30, seed=21, temperature=1.0,
                                          extra_body={"ignore_eos": True}).choices[0].message.content
    assert len(free) > 12
    stop = free[8:11]
    cut = free[:free.index(stop)]
    for stops in (stop, [stop, "\x00never"]):
        r = client.chat.completions.create(model="m", messages=MSG, max_tokens=30, seed=21, temperature=1.0,
                                           stop=stops, extra_body={"ignore_eos": True})
        assert r.choices[0].message.content == cut and r.choices[0].finish_reason == "stop"
    streamed = "".join(ch.choices[0].delta.content or "" for ch in client.chat.completions.create(
        model="m", messages=MSG, max_tokens=30, seed=21, temperature=1.0, stop=stop, stream=True,
        extra_body={"ignore_eos": True}) if ch.choices)
    assert streamed == cut  # the stop text (and a held-back prefix of it) is never streamed


def test_chat_logprobs(client):
    r = client.chat.completions.create(model="m", messages=MSG, max_tokens=10, temperature=0, logprobs=True,
                                       top_logprobs=3, extra_body={"ignore_eos": True})
    content = r.choices[0].logprobs.content
    assert len(content) == r.usage.completion_tokens == 10
    for e in content:
        assert len(e.top_logprobs) == 3 and e.logprob <= 0
        assert e.token == e.top_logprobs[0].token and e.logprob == pytest.approx(e.top_logprobs[0].logprob)  # greedy
        assert bytes(e.bytes).decode("utf-8", "replace") == e.token or not e.bytes  # special tokens: no text
    assert "".join(bytes(b for e in content for b in e.bytes).decode("utf-8", "replace")) == r.choices[0].message.content
    # streamed: each chunk carries its own tokens' logprobs; together they are the non-streamed list
    streamed = []
    for ch in client.chat.completions.create(model="m", messages=MSG, max_tokens=10, temperature=0, logprobs=True,
                                             top_logprobs=3, stream=True, extra_body={"ignore_eos": True}):
        for c in ch.choices:
            if c.logprobs and c.logprobs.content:
                streamed += c.logprobs.content
    assert [(e.token, e.logprob) for e in streamed] == [(e.token, e.logprob) for e in content]


def test_completions_echo_logprobs_match_the_models_own_scores(server, served_run):
    from chatforge.model import load_model
    from chatforge.tokenizer import Tokenizer

    tok = Tokenizer.load(served_run / "tokenizer")
    model = load_model(served_run / "base").eval()
    text = "The Zogota feeds on berries near the river."
    ids = tok.encode(text)
    body = {"prompt": text, "max_tokens": 0, "echo": True, "logprobs": 2, "temperature": 0}
    r = post(server, "/v1/completions", body).json()
    lp = r["choices"][0]["logprobs"]
    assert r["choices"][0]["text"] == text and r["usage"]["completion_tokens"] == 0
    assert lp["tokens"] == [tok.decode([i]) for i in ids] and lp["token_logprobs"][0] is None
    with torch.no_grad():
        own = torch.log_softmax(model(torch.tensor([ids]))[0][0].float(), -1)
    expected = [own[k - 1, ids[k]].item() for k in range(1, len(ids))]
    assert lp["token_logprobs"][1:] == pytest.approx(expected, abs=1e-4)
    for k in range(1, len(ids)):  # top-2 dicts at every position: the model's two likeliest next tokens
        top = own[k - 1].topk(2)
        assert sorted(lp["top_logprobs"][k].values(), reverse=True) == pytest.approx(top.values.tolist(), abs=1e-4)
    assert lp["text_offset"][0] == 0 and lp["text_offset"][-1] == len(text) - len(lp["tokens"][-1])
    # lm-eval's local-completions: echo + logprobs=1 + max_tokens=1, ids as the prompt
    r = post(server, "/v1/completions", {"prompt": [ids, ids[:5]], "max_tokens": 1, "echo": True, "logprobs": 1,
                                         "temperature": 0}).json()
    assert [len(c["logprobs"]["tokens"]) for c in r["choices"]] == [len(ids) + 1, 6]
    assert r["choices"][0]["logprobs"]["token_logprobs"][1:len(ids)] == pytest.approx(expected, abs=1e-4)


def test_completion_prompt_forms_and_n(server, client):
    assert len(client.completions.create(model="m", prompt="The town of", max_tokens=3).choices) == 1
    r = client.completions.create(model="m", prompt=["The town of", "A Zogota"], max_tokens=3, n=2, seed=1)
    assert [c.index for c in r.choices] == [0, 1, 2, 3]
    ids = post(server, "/tokenize", {"prompt": "The town of"}).json()["tokens"]
    a = client.completions.create(model="m", prompt=ids, max_tokens=5, temperature=0).choices[0].text
    b = client.completions.create(model="m", prompt="The town of", max_tokens=5, temperature=0).choices[0].text
    assert a == b


def _assert_error(resp: httpx.Response, status: int, param: str | None = None, code: str | None = None):
    assert resp.status_code == status, resp.text
    err = resp.json()["error"]
    assert set(err) == {"message", "type", "param", "code"} and err["message"]
    if param is not None:
        assert err["param"] == param
    if code is not None:
        assert err["code"] == code


def test_error_statuses_and_shapes_and_the_server_keeps_serving(server, client):
    url = server + "/v1/chat/completions"
    auth = {"Authorization": f"Bearer {KEY}", "Content-Type": "application/json"}
    _assert_error(httpx.post(url, content=b"{not json", headers=auth), 400, code="invalid_json")
    _assert_error(post(server, "/v1/chat/completions", {"messages": MSG, "temperature": "hot"}), 400, "temperature")
    _assert_error(post(server, "/v1/chat/completions", {"messages": "hello"}), 400, "messages")
    _assert_error(post(server, "/v1/chat/completions", {"messages": MSG, "max_tokens": -1}), 400, "max_tokens")
    _assert_error(post(server, "/v1/completions", {"prompt": "x", "max_tokens": -3}), 400, "max_tokens")
    _assert_error(post(server, "/v1/chat/completions", {"messages": MSG, "max_tokens": 2001}), 400, "max_tokens")
    _assert_error(post(server, "/v1/chat/completions", {"messages": [{"role": "robot", "content": "hi"}]}),
                  400, "messages[0].role")
    _assert_error(post(server, "/v1/chat/completions", {"messages": [{"role": "user", "content": 5}]}),
                  400, "messages[0].content")
    _assert_error(post(server, "/v1/chat/completions", {"messages": MSG, "top_logprobs": 2}), 400, "top_logprobs")
    long = [{"role": "user", "content": "Zogota " * 1100}]
    _assert_error(post(server, "/v1/chat/completions", {"messages": long}), 400, "messages", "context_length_exceeded")
    _assert_error(post(server, "/v1/completions", {"prompt": [5000]}), 400, "prompt")
    _assert_error(post(server, "/v1/completions", {"prompt": []}), 400, "prompt")
    _assert_error(post(server, "/v1/chat/completions", {"messages": MSG}, key=None), 401, code="invalid_api_key")
    _assert_error(post(server, "/v1/chat/completions", {"messages": MSG}, key="sk-wrong"), 401)
    _assert_error(post(server, "/v1/chat/completions", {"messages": MSG, "n": 9}), 429, code="queue_full")
    _assert_error(post(server, "/v1/completions", {"prompt": "x" * 30000}), 413)
    _assert_error(httpx.get(server + "/feedback/conversations/nope", headers=auth), 404)
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=server + "/v1", api_key="bad", max_retries=0).models.list()
    # still serving
    assert client.chat.completions.create(model="m", messages=MSG, max_tokens=3).choices[0].message.content is not None
    metrics = httpx.get(server + "/metrics").text
    assert 'chatforge_http_errors_total{status="400"}' in metrics and 'status="429"' in metrics


def _metric(server, name: str) -> float:
    for line in httpx.get(server + "/metrics").text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    raise AssertionError(f"{name} not in /metrics")


def test_client_disconnect_frees_its_row(server):
    before = _metric(server, "chatforge_sequences_cancelled_total")
    body = {"messages": MSG, "max_tokens": 1000, "stream": True, "ignore_eos": True, "temperature": 1.0}
    with httpx.stream("POST", server + "/v1/chat/completions", json=body,
                      headers={"Authorization": f"Bearer {KEY}"}, timeout=60) as resp:
        lines = resp.iter_lines()
        for _ in range(3):
            next(lines)
    deadline = time.monotonic() + 20
    while _metric(server, "chatforge_sequences_cancelled_total") <= before:
        assert time.monotonic() < deadline, "the abandoned stream was never cancelled"
        time.sleep(0.1)
    assert _metric(server, "chatforge_requests_running") == 0


def test_new_requests_join_the_running_batch(server):
    """A short request sent while a long one is generating finishes first (it didn't wait for the batch)."""
    order = []

    def long():  # 3 rows x 1000 tokens; the 4th row is free
        post(server, "/v1/chat/completions", {"messages": MSG, "max_tokens": 1000, "n": 3, "ignore_eos": True})
        order.append("long")

    t = threading.Thread(target=long)
    t.start()
    while _metric(server, "chatforge_requests_running") < 3:  # the long request is decoding
        assert t.is_alive(), "the long request ended before the short one was sent"
        time.sleep(0.005)
    r = post(server, "/v1/chat/completions", {"messages": MSG, "max_tokens": 2, "ignore_eos": True})
    order.append("short")
    t.join()
    assert r.status_code == 200 and order == ["short", "long"]
    assert _metric(server, "chatforge_generation_tokens_total") >= 3002


def test_feedback_api_records_answers_ratings_rankings_and_corrections(server):
    auth = {"Authorization": f"Bearer {KEY}"}
    cid = post(server, "/feedback/conversations", {"system_prompt": "Be brief."}).json()["id"]
    tid = post(server, f"/feedback/conversations/{cid}/turns", {"content": "Where is the Marmidor common?"}).json()["id"]
    msgs = [{"role": "system", "content": "Be brief."}, *MSG]
    r = post(server, "/v1/chat/completions", {"messages": msgs, "max_tokens": 6, "n": 2, "seed": 4, "store": True,
                                              "metadata": {"turn_id": tid}}).json()
    a, b = (c["answer_id"] for c in r["choices"])
    assert post(server, f"/feedback/answers/{a}/rating", {"value": 1}).status_code == 200
    assert post(server, f"/feedback/answers/{b}/rating", {"value": -1}).status_code == 200
    assert post(server, f"/feedback/turns/{tid}/ranking", {"answer_ids": [a, [b]]}).status_code == 200
    fix = post(server, f"/feedback/turns/{tid}/answers", {"content": "Near Rennu.", "edited_from": b}).json()["id"]
    _assert_error(post(server, f"/feedback/answers/{a}/rating", {"value": 5}), 400)
    _assert_error(post(server, f"/feedback/turns/{tid}/ranking", {"answer_ids": [a]}), 400)
    _assert_error(post(server, "/feedback/turns/nope/answers", {"content": "x"}), 404)
    for stream in (False, True):  # an unknown turn is refused before any generation or streaming
        _assert_error(post(server, "/v1/chat/completions", {"messages": msgs, "max_tokens": 2, "stream": stream,
                                                            "store": True, "metadata": {"turn_id": "nope"}}),
                      404, "metadata.turn_id")
    conv = httpx.get(f"{server}/feedback/conversations/{cid}", headers=auth).json()
    answers = {x["id"]: x for x in conv["turns"][0]["answers"]}
    assert answers[a]["rating"] == 1 and answers[b]["rating"] == -1 and answers[fix]["author"] == "human"
    assert answers[a]["prompt"] == msgs and answers[a]["params"]["max_tokens"] == 6
    assert answers[a]["model"] == "chatforge-run-base"
    export = httpx.get(server + "/feedback/export", headers=auth).json()
    demos = [d["messages"] for d in export["sft"]]
    assert msgs + [{"role": "assistant", "content": "Near Rennu."}] in demos
    assert msgs + [{"role": "assistant", "content": answers[a]["content"]}] in demos
    recs = [(x["responses"], x["ranking"]) for x in export["rankings"] if x["prompt"] == msgs]
    assert (["Near Rennu.", answers[b]["content"]], [0, 1]) in recs  # the correction beats what it corrected
    assert httpx.delete(f"{server}/feedback/conversations/{cid}", headers=auth).status_code == 200
    assert httpx.get(f"{server}/feedback/conversations/{cid}", headers=auth).status_code == 404


def test_engine_in_thread_matches_the_engine_process_and_survives_a_fault(server, served_run, monkeypatch):
    """The same server with the engine in a thread (FastAPI's TestClient, no socket) answers exactly like the
    engine process; a fault inside a decode step is a 500 in OpenAI's shape, and the next request works."""
    from fastapi.testclient import TestClient

    from chatforge.engine import GenerationBatch
    from chatforge.serve.app import ServeOptions, build_server

    body = {"messages": MSG, "max_tokens": 12, "seed": 9, "temperature": 0.9}
    expected = post(server, "/v1/chat/completions", body).json()["choices"][0]["message"]["content"]
    srv = build_server(served_run, "base", engine_in_thread=True, feedback=False, opts=ServeOptions())
    with TestClient(srv.app) as c:
        assert c.post("/v1/chat/completions", json=body).json()["choices"][0]["message"]["content"] == expected
        real_step, calls = GenerationBatch.step, []

        def broken_step(self):
            calls.append(1)
            if len(calls) == 1:
                raise RuntimeError("simulated device error")
            return real_step(self)

        monkeypatch.setattr(GenerationBatch, "step", broken_step)
        _assert_error(c.post("/v1/chat/completions", json=body), 500, code="generation_failed")
        assert c.post("/v1/chat/completions", json=body).json()["choices"][0]["message"]["content"] == expected
        assert c.get("/health").json()["status"] == "ok"


def test_a_dead_engine_process_is_a_503_not_a_hang(served_run):
    from fastapi.testclient import TestClient

    from chatforge.serve.app import ServeOptions, build_server

    srv = build_server(served_run, "base", feedback=False, opts=ServeOptions())
    with TestClient(srv.app) as c:
        assert c.post("/v1/chat/completions", json={"messages": MSG, "max_tokens": 3}).status_code == 200
        srv.scheduler._proc.kill()
        deadline = time.monotonic() + 20
        while c.get("/health").status_code != 503:
            assert time.monotonic() < deadline, "the server never noticed its engine died"
            time.sleep(0.05)
        _assert_error(c.post("/v1/chat/completions", json={"messages": MSG, "max_tokens": 3}), 503,
                      code="engine_unavailable")


class _ScriptedBatch:
    """Stands in for the engine's running batch: a first round writes "It is <<calc: 6*7" (stopping at ">>"
    when asked to), a round whose prompt already holds the tool's value writes " so 42.", one token per
    character, so the server's rounds, streaming and usage can be checked exactly."""

    def __init__(self, tok, seen):
        self.tok, self.seen, self.rows = tok, seen, {}

    @property
    def busy(self):
        return bool(self.rows)

    @property
    def running(self):
        return len(self.rows)

    def add(self, key, prompt, params, front=False):
        self.seen.append((key, list(prompt), params))
        answered = self.tok.decode(prompt).endswith("<<calc: 6*7>>42")
        piece, stop = (" so 42.", None) if answered else ("It is <<calc: 6*7", ">>" if ">>" in params.stop else None)
        self.rows[key] = [prompt, piece, 0, stop]

    def cancel(self, key):
        return self.rows.pop(key, None) is not None

    def step(self):
        from chatforge.engine import Completion, StreamEvent

        events = []
        for key, row in list(self.rows.items()):
            prompt, piece, done, stop = row
            row[2] = done + 1
            if row[2] < len(piece):
                events.append(StreamEvent(key, piece[done], [100 + done]))
                continue
            del self.rows[key]
            ids = [100 + i for i in range(len(piece))]
            events.append(StreamEvent(key, piece[done], [100 + done], finished=True, completion=Completion(
                list(prompt), ids, piece, "stop", stop_string=stop)))
        return events


def test_the_calculator_answers_tool_calls_in_chat_requests(served_run, monkeypatch):
    """--calculator / "calculator": the model's <<calc: 6*7 call gets ">>42" and the model goes on from there
    (the next round's prompt holds the value) — in one answer, streamed or not, with usage counting every round
    the model wrote; off, the answer ends at the call; logprobs and a non-boolean flag are 400s."""
    from fastapi.testclient import TestClient

    from chatforge.engine import Engine
    from chatforge.serve.app import ServeOptions, build_server

    seen = []
    monkeypatch.setattr(Engine, "batch", lambda self, n_rows=None: _ScriptedBatch(self.tok, seen))
    srv = build_server(served_run, "base", engine_in_thread=True, feedback=False, opts=ServeOptions(calculator=True))
    body = {"messages": [{"role": "user", "content": "What is 6 times 7?"}], "max_tokens": 100}
    with TestClient(srv.app) as c:
        out = c.post("/v1/chat/completions", json=body).json()
        assert out["choices"][0]["message"]["content"] == "It is <<calc: 6*7>>42 so 42."
        assert out["choices"][0]["finish_reason"] == "stop"
        assert out["usage"]["completion_tokens"] == len("It is <<calc: 6*7") + len(" so 42.")
        (_, first, p1), (_, second, p2) = seen
        assert second == first + srv.tok.encode("It is <<calc: 6*7>>42")  # the model reads the tool's value
        assert ">>" in p1.stop and p2.max_tokens == 100 - len("It is <<calc: 6*7")
        events = sse_events(c.post("/v1/chat/completions", json=dict(body, stream=True)))
        text = "".join(e["choices"][0]["delta"].get("content", "") for e in events[:-1] if e["choices"])
        assert text == "It is <<calc: 6*7>>42 so 42." and events[-2]["choices"][0]["finish_reason"] == "stop"
        off = c.post("/v1/chat/completions", json=dict(body, calculator=False)).json()
        assert off["choices"][0]["message"]["content"] == "It is <<calc: 6*7"
        _assert_error(c.post("/v1/chat/completions", json=dict(body, logprobs=True)), 400, param="logprobs")
        _assert_error(c.post("/v1/chat/completions", json=dict(body, calculator="yes")), 400)
