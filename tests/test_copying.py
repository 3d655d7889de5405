"""The in-context copying probe (eval/copying.py) tells a model that copies what it read from one that
doesn't: a 2-layer model trained on sequences shown twice learns to copy (induction) in a couple of hundred
steps and scores near 1; the same model untrained, or trained as long on sequences that never repeat,
scores about 0."""

from __future__ import annotations

from types import SimpleNamespace

import torch
import torch.nn.functional as F

from chatforge.eval.copying import copy_probe
from chatforge.model import GPT, ModelConfig

V, L = 256 + 32, 16  # 32 ordinary ids above the byte range; rows of 16 shown twice
TOK = SimpleNamespace(special_ids={}, bos_id=0, vocab_size=V)


def _trained(repeat: bool, steps: int = 200) -> GPT:
    torch.manual_seed(0)
    model = GPT(ModelConfig(vocab_size=V, n_layer=2, n_head=4, d_model=64, max_seq_len=2 * L + 1))
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    for _ in range(steps):
        w = torch.randint(256, V, (32, L))
        tail = w if repeat else torch.randint(256, V, (32, L))
        x = torch.cat([torch.zeros(32, 1, dtype=torch.long), w, tail], 1)
        logits, _ = model(x[:, :-1])
        F.cross_entropy(logits.reshape(-1, V), x[:, 1:].reshape(-1)).backward()
        opt.step()
        opt.zero_grad()
    return model.eval()


def test_the_probe_separates_a_model_that_copies_from_ones_that_dont():
    untrained = copy_probe(GPT(ModelConfig(vocab_size=V, n_layer=2, n_head=4, d_model=64, max_seq_len=2 * L + 1)), TOK)
    assert abs(untrained["in_context_copying"]) < 0.05
    never_repeats = copy_probe(_trained(repeat=False), TOK, seed=1)
    assert abs(never_repeats["in_context_copying"]) < 0.05
    assert abs(never_repeats["copy_first_nats"] - torch.log(torch.tensor(32.0)).item()) < 0.2  # it learnt the id range
    model = _trained(repeat=True)
    copies = copy_probe(model, TOK, seed=1)
    assert copies["in_context_copying"] > 0.9 and copies["copy_repeat_nats"] < 0.3
    assert copy_probe(model, TOK, seed=1) == copies  # deterministic
    short = GPT(ModelConfig(vocab_size=V, n_layer=1, n_head=2, d_model=16, max_seq_len=9))
    assert copy_probe(short, TOK) == {}  # no room to show a sequence twice: no figure
