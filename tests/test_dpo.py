"""DPO: answer log-probabilities on packed rows, the loss at step 0, learning from pairs, the stage."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from chatforge.config import TrainConfig
from chatforge.model import GPT, ModelConfig, load_model
from chatforge.run import read_stage_info
from chatforge.tokenizer import Tokenizer
from chatforge.train.dpo import (
    DPOOptions,
    DPOTask,
    answer_logprobs,
    build_logprob_rows,
    group_logprobs,
    run_dpo,
)
from chatforge.train.rm_data import Group, Scored, ranking_pairs
from chatforge.train.sft_data import tokenize_conversation


@pytest.fixture(scope="module")
def tok(prepared_run_template) -> Tokenizer:
    return Tokenizer.load(prepared_run_template / "tokenizer")


def _scored(tok, q, a) -> Scored:
    ids, trained = tokenize_conversation(tok, [{"role": "user", "content": q}, {"role": "assistant", "content": a}])
    return Scored(np.asarray(ids), np.asarray(trained))


def _model(tok) -> GPT:
    torch.manual_seed(0)
    cfg = ModelConfig.preset_style("llama", vocab_size=tok.vocab_size, n_layer=2, d_model=64, n_head=4,
                                   n_kv_head=2, max_seq_len=128)
    return GPT(cfg)


def _groups(tok):
    return [Group([_scored(tok, f"Where is town {i}?", good), _scored(tok, f"Where is town {i}?", bad),
                   _scored(tok, f"Where is town {i}?", "No idea.")], ranking_pairs([0, 2, 1], 3))
            for i, (good, bad) in enumerate([("On the Red River.", "Go away."), ("卡洛在河边。", "走开。"),
                                             ("By the sea.", "Stop asking.")])]


def test_answer_logprobs_packed_equal_one_by_one(tok):
    model = _model(tok).eval()
    convs = [c for g in _groups(tok) for c in g.convs]
    with torch.no_grad():
        b = {k: torch.from_numpy(v) for k, v in build_logprob_rows(convs, 128, tok.pad_id).items()}
        packed = answer_logprobs(model, b, len(convs))
        for i, c in enumerate(convs):
            logits, _ = model(torch.from_numpy(c.ids[:-1])[None])
            lp = torch.log_softmax(logits[0], -1).gather(-1, torch.from_numpy(c.ids[1:])[:, None]).squeeze(-1)
            want = lp[torch.from_numpy(c.trained[1:])].sum()
            assert packed[i].item() == pytest.approx(want.item(), abs=1e-4), i


def test_loss_is_ln2_at_step_0_and_training_learns_the_preferences(tok):
    from chatforge.train.dist import DistInfo

    groups = _groups(tok)
    model = _model(tok)
    ref = group_logprobs(model, groups, 128, tok.pad_id, "cpu")
    task = DPOTask(groups, [], ref, 128, 0, tok.pad_id, beta=0.5)
    batch = task.train_batch(0, 0, DistInfo(), 3, 1)
    model.train()
    assert task.loss(model, batch).item() == pytest.approx(math.log(2), abs=1e-5)  # policy == reference
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    for step in range(15):
        loss = task.loss(model, task.train_batch(step, 0, DistInfo(), 3, 1))
        loss.backward()
        opt.step()
        opt.zero_grad()
    after = group_logprobs(model, groups, 128, tok.pad_id, "cpu")
    margins = [(after[id(g)] - ref[id(g)])[a] - (after[id(g)] - ref[id(g)])[b] for g in groups for a, b in g.pairs]
    assert all(m > 0 for m in margins)  # every preferred answer gained on every worse one
    assert task.loss(model, batch).item() < 0.5


def test_dpo_stage(prepared_run_template, tmp_path):
    import shutil

    from chatforge.train.pretrain import run_pretrain

    run = tmp_path / "run"
    shutil.copytree(prepared_run_template, run)
    cfg = ModelConfig.preset_style("llama", vocab_size=1024, n_layer=2, d_model=64, n_head=4, n_kv_head=2,
                                   max_seq_len=128)
    run_pretrain(run, cfg, TrainConfig(max_steps=10, batch_size=8, seq_len=64, lr=3e-3, warmup_steps=2,
                                       eval_every=10, eval_batches=1, save_every=10, log_every=5))
    tcfg = TrainConfig(max_steps=4, batch_size=2, seq_len=128, lr=1e-3, warmup_steps=1, eval_every=2,
                       eval_batches=1, save_every=2, log_every=1)
    summary = run_dpo(run, tcfg, DPOOptions(init="base", beta=0.1))
    assert read_stage_info(run / "dpo")["complete"]
    acc = summary["eval"]["heldout_preference_accuracy"]
    assert acc["pairs"] > 0 and 0 <= acc["accuracy"] <= 1
    val = [json.loads(line) for line in (run / "dpo" / "metrics.jsonl").read_text().split("\n") if "val/loss" in line]
    assert [v["step"] for v in val] == [2, 4]
    base, dpo = load_model(run / "base"), load_model(run / "dpo")
    assert any(not torch.equal(a, b) for a, b in zip(base.state_dict().values(), dpo.state_dict().values()))
    from chatforge import ChatforgeError

    with pytest.raises(ChatforgeError, match="--beta"):
        run_dpo(run, tcfg, DPOOptions(init="base", beta=0.0))
