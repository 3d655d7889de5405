"""The generation engine: exactness against uncached recomputation, sampling sets, seeds, batching,
stop strings, UTF-8-safe streaming, penalties, logprobs and errors."""

from __future__ import annotations

import pytest
import torch

from chatforge import ChatforgeError
from chatforge.engine import Engine, SamplingParams
from chatforge.model import GPT, ModelConfig
from chatforge.tokenizer import Tokenizer, byte_level_alphabet


@pytest.fixture(scope="module")
def tok(prepared_run_template) -> Tokenizer:
    return Tokenizer.load(prepared_run_template / "tokenizer")


@pytest.fixture(scope="module", params=["llama", "gpt2"])
def model(request, tok) -> GPT:
    torch.manual_seed(0)
    cfg = ModelConfig.preset_style(request.param, vocab_size=tok.vocab_size, n_layer=2, d_model=64, n_head=4,
                                   max_seq_len=96, **({"n_kv_head": 2} if request.param == "llama" else {}))
    m = GPT(cfg).eval()
    with torch.no_grad():  # a peakier distribution than init, so greedy/top-k choices are well separated
        m.lm_head.weight.mul_(8) if not cfg.tie_embeddings else m.wte.weight.mul_(3)
    return m


def _prompts(tok):
    return [tok.encode_chat([{"role": "user", "content": q}], add_generation_prompt=True)
            for q in ("Where is Kalo?", "卡洛有多少人？", "How many legs does a Zogota have? Tell me.", "Hi")]


def _uncached_logits(model, ids):
    with torch.no_grad():
        return model(torch.tensor([ids]))[0][0, -1]


def test_cached_decode_equals_uncached_recomputation(model, tok):
    eng = Engine(model, tok)
    prompt = _prompts(tok)[0]
    out = eng.generate([prompt], SamplingParams(max_tokens=20, temperature=0.0, logprobs=0, stop_token_ids=[]))[0]
    assert out.token_ids
    for i, t in enumerate(out.token_ids):
        logits = _uncached_logits(model, prompt + out.token_ids[:i])
        assert int(logits.argmax()) == t
        assert out.logprobs[i] == pytest.approx(float(torch.log_softmax(logits, -1)[t]), abs=1e-4)


@pytest.mark.parametrize("kw", [{"top_k": 3}, {"top_p": 0.5}, {"top_k": 5, "top_p": 0.9}])
def test_top_k_top_p_never_leave_the_allowed_set(model, tok, kw):
    eng = Engine(model, tok)
    prompt = _prompts(tok)[2]
    for seed in range(4):
        out = eng.generate([prompt], SamplingParams(max_tokens=12, temperature=1.5, seed=seed, **kw))[0]
        for i, t in enumerate(out.token_ids):
            logits = _uncached_logits(model, prompt + out.token_ids[:i]) / 1.5
            allowed = set(range(logits.numel()))
            if "top_k" in kw:
                allowed &= set(torch.topk(logits, kw["top_k"]).indices.tolist())
                logits = logits.masked_fill(logits < torch.topk(logits, kw["top_k"]).values[-1], float("-inf"))
            if "top_p" in kw:
                p, order = torch.softmax(logits, -1).sort(descending=True)
                keep = (p.cumsum(0) - p) < kw["top_p"]
                allowed &= set(order[keep].tolist())
            assert t in allowed, (i, t)


def test_same_seed_same_text_and_seeds_differ(model, tok):
    eng = Engine(model, tok)
    prompt = _prompts(tok)[1]
    sp = dict(max_tokens=16, temperature=1.2)
    a = eng.generate([prompt], SamplingParams(seed=7, **sp))[0].token_ids
    b = eng.generate([prompt], SamplingParams(seed=7, **sp))[0].token_ids
    others = [eng.generate([prompt], SamplingParams(seed=s, **sp))[0].token_ids for s in range(8, 12)]
    assert a == b and any(o != a for o in others)


def test_batched_and_continuous_batching_equal_one_at_a_time(model, tok):
    prompts = _prompts(tok)
    params = [SamplingParams(max_tokens=10 + 3 * i, temperature=0.9, seed=i, top_k=20) for i in range(len(prompts))]
    single = [Engine(model, tok).generate([p], sp)[0].token_ids for p, sp in zip(prompts, params)]
    batched = [c.token_ids for c in Engine(model, tok, max_batch=4).generate(prompts, params)]
    continuous = [c.token_ids for c in Engine(model, tok, max_batch=2).generate(prompts, params)]  # rows reused
    assert batched == single and continuous == single
    # the shape-static step (what a CUDA graph records) gives the same tokens, rows reused included
    static = [c.token_ids for c in Engine(model, tok, max_batch=2, decode_mode="static").generate(prompts, params)]
    assert static == single


def test_static_decode_logprobs_equal_dynamic(model, tok):
    prompts = _prompts(tok)
    sp = SamplingParams(max_tokens=12, temperature=0.0, logprobs=0, stop_token_ids=[])
    dyn = Engine(model, tok, max_batch=3).generate(prompts, sp)
    sta = Engine(model, tok, max_batch=3, decode_mode="static").generate(prompts, sp)
    for a, b in zip(dyn, sta):
        assert a.token_ids == b.token_ids
        assert a.logprobs == pytest.approx(b.logprobs, abs=1e-4)
    with pytest.raises(ChatforgeError, match="decode_mode"):
        Engine(model, tok, decode_mode="fast")
    with pytest.raises(ChatforgeError, match="CUDA"):
        Engine(model, tok, decode_mode="graph")


class ScriptedModel(GPT):
    """A GPT whose next token is dictated by a script (to drive the engine through exact byte sequences)."""

    def __init__(self, cfg, script: list[int]):
        super().__init__(cfg)
        self.script = script

    def forward(self, idx, targets=None, cache=None, return_hidden=False, rows=None):
        pos = cache.begin(idx.shape[1], rows).expand(idx.shape[0], idx.shape[1])  # (T,) when rows are level
        cache.finish()
        logits = torch.full((idx.shape[0], idx.shape[1], self.cfg.vocab_size), -1e4)
        for b in range(idx.shape[0]):
            step = int(pos[b, -1]) + 1 - self.prompt_len
            logits[b, -1, self.script[min(step, len(self.script) - 1)]] = 1e4
        return logits, None


def _scripted(tok, text: str) -> ScriptedModel:
    b2u = byte_level_alphabet()
    script = [tok.hf.token_to_id(b2u[b]) for b in text.encode("utf-8")] + [tok.eos_id]  # one byte per token
    assert None not in script
    cfg = ModelConfig.preset_style("llama", vocab_size=tok.vocab_size, n_layer=1, d_model=32, n_head=2, max_seq_len=96)
    model = ScriptedModel(cfg, script)
    model.prompt_len = 3
    return model


@pytest.mark.parametrize("stops,expected", [
    (["world"], "Hello "),  # a stop string spread over five tokens; its text is not returned
    (["wox", "!"], "Hello world"),  # "wo" is held back, then released when "r" rules "wox" out
    (["zzz"], "Hello world! More."),
    (["界🌍"], "Hello world! More."),
])
def test_stop_strings_across_token_boundaries(tok, stops, expected):
    model = _scripted(tok, "Hello world! More.")
    sp = SamplingParams(max_tokens=60, temperature=0.0, stop=stops)
    events = list(Engine(model, tok).stream([[tok.bos_id, 5, 6]], sp))
    out = events[-1].completion
    assert out.text == expected and "".join(e.delta for e in events) == expected
    assert out.finish_reason == "stop"


def test_streaming_never_breaks_utf8(tok):
    text = "你好🌍 ok 中文"
    model = _scripted(tok, text)
    events = list(Engine(model, tok).stream([[tok.bos_id, 5, 6]], SamplingParams(max_tokens=60, temperature=0.0)))
    deltas = [e.delta for e in events]
    assert all("\ufffd" not in d for d in deltas)
    assert "".join(deltas) == text == events[-1].completion.text
    assert events[-1].completion.finish_reason == "stop"
    assert sum(1 for d in deltas if d) > 3  # it really streamed, not one blob at the end


def test_presence_penalty_prevents_repeats(model, tok):
    eng = Engine(model, tok)
    out = eng.generate([_prompts(tok)[3]], SamplingParams(max_tokens=30, temperature=0.0, presence_penalty=1e4,
                                                          stop_token_ids=[]))[0]
    assert len(set(out.token_ids)) == len(out.token_ids)


def test_length_limits_and_errors(model, tok):
    eng = Engine(model, tok)
    out = eng.generate([_prompts(tok)[0]], SamplingParams(max_tokens=3, temperature=0.0, stop_token_ids=[]))[0]
    if out.finish_reason == "length":
        assert len(out.token_ids) == 3
    long = [tok.bos_id] * 90  # context is 96: generation stops at the context with reason "length"
    out = eng.generate([long], SamplingParams(max_tokens=50, temperature=0.0))[0]
    assert out.finish_reason in ("length", "stop") and len(long) + len(out.token_ids) <= 96
    with pytest.raises(ChatforgeError, match="context is 96"):
        eng.generate([[tok.bos_id] * 96], SamplingParams())
    with pytest.raises(ChatforgeError, match="top_p"):
        eng.generate([[tok.bos_id]], SamplingParams(top_p=0))
    with pytest.raises(ChatforgeError, match="outside the vocabulary"):
        eng.generate([[10**6]], SamplingParams())


def test_prompt_logprobs_match_a_full_forward(model, tok):
    prompt = _prompts(tok)[2]
    out = Engine(model, tok).generate([prompt], SamplingParams(max_tokens=2, prompt_logprobs=True))[0]
    with torch.no_grad():
        lp = torch.log_softmax(model(torch.tensor([prompt]))[0][0], -1)
    want = [None] + [float(lp[i, prompt[i + 1]]) for i in range(len(prompt) - 1)]
    assert out.prompt_logprobs[0] is None
    assert out.prompt_logprobs[1:] == pytest.approx(want[1:], abs=1e-4)
