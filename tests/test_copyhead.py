"""The copy head (chatforge/copyhead.py): a proper distribution, the same numbers through the KV cache (prefill,
decode, row subsets, static steps) and in packed rows as alone, and what it is for — a small model learns to
copy a sequence it has read within 100 small steps, where the same model without it does not."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F

from chatforge import ChatforgeError
from chatforge.eval.copying import copy_probe
from chatforge.model import GPT, KVCache, ModelConfig

CFG = dict(vocab_size=300, n_layer=2, n_head=4, n_kv_head=2, d_model=64, max_seq_len=64)


def _model(copy_head: int = 16, seed: int = 0, lookahead: int = 1) -> GPT:
    torch.manual_seed(seed)
    m = GPT(ModelConfig.preset_style("llama", **CFG, copy_head=copy_head, copy_lookahead=lookahead)).eval()
    with torch.no_grad():  # an open, input-dependent gate, so the pointer's share is not the initial constant
        m.copy.gate.weight.normal_(0, 0.5)
        if lookahead > 1:  # per-offset weights that differ, so a wrong shift would show
            m.copy.ahead_w.normal_(1, 0.5)
    return m


LOOKAHEADS = pytest.mark.parametrize("lookahead", [1, 4])


@LOOKAHEADS
def test_output_is_a_distribution_and_the_first_position_is_the_plain_head(lookahead):
    m = _model(lookahead=lookahead)
    x = torch.randint(0, 300, (3, 40))
    with torch.no_grad():
        logp, _ = m(x)
        plain = F.log_softmax(m.lm_head(m(x, return_hidden=True)[0]), -1)
    assert torch.allclose(logp.logsumexp(-1), torch.zeros(3, 40), atol=1e-5)
    assert torch.allclose(logp[:, 0], plain[:, 0], atol=1e-5)  # nothing to point at yet
    assert (logp[:, 5:] - plain[:, 5:]).abs().max() > 1e-2  # later, the pointer shifts mass
    # mass moves only towards tokens of the context: a token absent from the row only loses probability
    absent = next(v for v in range(300) if not (x[0] == v).any())
    assert (logp[0, 1:, absent] <= plain[0, 1:, absent] + 1e-5).all()


@LOOKAHEADS
def test_no_position_sees_a_later_token(lookahead):
    """The lookahead keys read tokens after p: the mask must keep every one of them at or before the query."""
    m = _model(lookahead=lookahead)
    x = torch.randint(0, 300, (2, 40))
    y = x.clone()
    y[:, 20:] = torch.randint(0, 300, (2, 20))
    with torch.no_grad():
        a, b = m(x)[0], m(y)[0]
    assert (a[:, :20] - b[:, :20]).abs().max() < 1e-5
    assert (a[:, 20:] - b[:, 20:]).abs().max() > 1e-3


@LOOKAHEADS
def test_cache_prefill_decode_row_subsets_and_static_steps_equal_the_full_forward(lookahead):
    m = _model(lookahead=lookahead)
    x = torch.randint(0, 300, (3, 40))
    with torch.no_grad():
        full, _ = m(x)
        cache = KVCache(m.cfg, 3)
        steps = [m(x[:, :25], cache=cache)[0]] + [m(x[:, t:t + 1], cache=cache)[0] for t in range(25, 40)]
        assert (torch.cat(steps, 1) - full).abs().max() < 1e-4
        cache = KVCache(m.cfg, 3)  # rows filled separately and then stepped together at different lengths
        a = m(x[1:2, :30], cache=cache, rows=torch.tensor([1]))[0]
        b = m(x[0:1, :10], cache=cache, rows=torch.tensor([0]))[0]
        both = m(torch.stack([x[0, 10:11], x[1, 30:31]]), cache=cache, rows=torch.tensor([0, 1]))[0]
        assert (a - full[1:2, :30]).abs().max() < 1e-4 and (b - full[0:1, :10]).abs().max() < 1e-4
        assert (both[0] - full[0, 10:11]).abs().max() < 1e-4 and (both[1] - full[1, 30:31]).abs().max() < 1e-4
        cache = KVCache(m.cfg, 3, static=True)  # the shape-static decode step the GPU engine records
        m(x[:, :25], cache=cache)
        cache.sync_positions()
        assert (m(x[:, 25:26], cache=cache)[0] - full[:, 25:26]).abs().max() < 1e-4


@LOOKAHEADS
def test_packed_samples_point_only_within_themselves(lookahead):
    m = _model(lookahead=lookahead)
    x = torch.randint(0, 300, (1, 40))
    seg = torch.tensor([[0] * 15 + [1] * 25])
    pos = torch.cat([torch.arange(15), torch.arange(25)])[None]
    with torch.no_grad():
        packed, _ = m(x, segment_ids=seg, positions=pos)
        first, second = m(x[:, :15])[0], m(x[:, 15:])[0]
    assert (packed[0, :15] - first[0]).abs().max() < 1e-4 and (packed[0, 15:] - second[0]).abs().max() < 1e-4


@LOOKAHEADS
def test_gradients_are_finite_and_reach_the_pointer(lookahead):
    m = _model(lookahead=lookahead).train()
    x = torch.randint(0, 300, (2, 30))
    m(x, x)[1].backward()
    for name, p in m.named_parameters():
        assert torch.isfinite(p.grad).all(), name
    assert m.copy.q.weight.grad.abs().sum() > 0 and m.copy.gate.weight.grad.abs().sum() > 0


def test_the_gate_sees_the_token_the_pointer_copies():
    """g_t = sigmoid(gate(h_t) + G(h_t) . sum_p a_{t,p} e(x_{p+1})): with G nonzero, changing only which token
    sits where the pointer looks changes the gate, and so the mixture; a head written before G existed loads with
    G = 0 and gives exactly its old outputs."""
    import tempfile

    from safetensors.torch import load_file, save_file

    from chatforge.model import load_model, save_model

    m = _model()
    x = torch.randint(0, 300, (1, 30))
    with torch.no_grad():
        before = m(x)[0]
        m.copy.gate_tok.weight.normal_(0, 0.5)
        after = m(x)[0]
    assert not torch.allclose(before, after)
    with torch.no_grad():
        m.copy.gate_tok.weight.zero_()
    with tempfile.TemporaryDirectory() as d:
        save_model(m, d)
        sd = load_file(f"{d}/model.safetensors")
        del sd["copy.gate_tok.weight"]  # as the head was saved before the token-aware gate
        save_file(sd, f"{d}/model.safetensors")
        with torch.no_grad():
            assert torch.equal(load_model(d).eval()(x)[0], before)


def test_config_rejects_a_negative_width():
    with pytest.raises(ChatforgeError, match="copy_head"):
        ModelConfig(copy_head=-1)
    with pytest.raises(ChatforgeError, match="copy_lookahead"):
        ModelConfig(copy_head=16, copy_lookahead=0)


def _train_on_repeats(copy_head: int, steps: int = 100) -> GPT:
    """Rows of random ids shown twice at random offsets (so no fixed-distance attention can solve them)."""
    torch.manual_seed(0)
    m = GPT(ModelConfig.preset_style("llama", **{**CFG, "vocab_size": 600}, copy_head=copy_head))
    opt = torch.optim.AdamW(m.parameters(), lr=3e-3)
    g = torch.Generator().manual_seed(1)
    for _ in range(steps):
        rows = []
        for _ in range(16):
            n = int(torch.randint(6, 20, (1,), generator=g))
            s = torch.randint(256, 600, (n,), generator=g)
            gap = torch.randint(256, 600, (int(torch.randint(0, 8, (1,), generator=g)),), generator=g)
            row = torch.cat([torch.zeros(1, dtype=torch.long), s, gap, s])
            rows.append(F.pad(row, (0, 48 - len(row)), value=1))
        x = torch.stack(rows)
        m(x[:, :-1], x[:, 1:])[1].backward()
        opt.step()
        opt.zero_grad()
    return m.eval()


def test_a_small_model_learns_to_copy_with_the_head_and_not_without():
    tok = SimpleNamespace(special_ids={}, bos_id=0, vocab_size=600)
    with_head = copy_probe(_train_on_repeats(copy_head=16), tok)
    without = copy_probe(_train_on_repeats(copy_head=0), tok)
    # 100 small steps: the head already saves a quarter of the loss on repeats; the plain model nothing
    assert with_head["in_context_copying"] > 0.25, with_head
    assert abs(without["in_context_copying"]) < 0.05, without


def test_the_training_loss_equals_cross_entropy_of_the_mixture_and_has_the_same_gradients():
    m = _model().train()
    x = torch.randint(0, 300, (2, 30))
    y = x.roll(-1, 1)
    y[0, :4] = -100  # ignored targets, as SFT's prompt tokens
    seg = torch.tensor([[0] * 12 + [1] * 18] * 2)
    pos = torch.cat([torch.arange(12), torch.arange(18)])[None].expand(2, -1)
    logits, loss = m(x, y, segment_ids=seg, positions=pos)
    assert logits is None
    loss.backward()
    fast = {n: p.grad.clone() for n, p in m.named_parameters()}
    m.zero_grad()
    full, _ = m(x, segment_ids=seg, positions=pos)
    reference = F.cross_entropy(full.reshape(-1, 300), y.reshape(-1), ignore_index=-100)
    reference.backward()
    assert abs(loss.item() - reference.item()) < 1e-5
    for n, p in m.named_parameters():
        assert torch.allclose(fast[n], p.grad, atol=1e-6), n

