"""Reward model: the K-wise loss, scores independent of padding / batching / packing, data handling, the stage."""

from __future__ import annotations

import itertools
import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from chatforge import ChatforgeError
from chatforge.config import TrainConfig
from chatforge.reward import RewardModel, load_reward_model, score_conversations
from chatforge.run import read_stage_info
from chatforge.tokenizer import Tokenizer
from chatforge.train.rm import RMOptions, kwise_loss, run_rm
from chatforge.train.rm_data import (
    Group,
    Scored,
    build_group_batch,
    build_score_rows,
    load_groups,
    ranking_pairs,
)
from chatforge.train.sft_data import tokenize_conversation


@pytest.fixture(scope="module")
def tok(prepared_run_template) -> Tokenizer:
    return Tokenizer.load(prepared_run_template / "tokenizer")


@pytest.fixture(scope="module")
def rm_model(tok) -> RewardModel:
    from chatforge.model import ModelConfig

    torch.manual_seed(0)
    cfg = ModelConfig.preset_style("llama", vocab_size=tok.vocab_size, n_layer=2, d_model=64, n_head=4,
                                   n_kv_head=2, max_seq_len=128)
    return RewardModel(cfg).eval()


def _conv(q: str, a: str) -> list[dict]:
    return [{"role": "user", "content": q}, {"role": "assistant", "content": a}]


def _scored(tok, q, a) -> Scored:
    return Scored(np.asarray(tokenize_conversation(tok, _conv(q, a))[0]))


def test_kwise_loss_is_the_mean_over_pairs_and_k2_is_pairwise():
    torch.manual_seed(0)
    rewards = torch.randn(9)
    ranking = [3, 0, 8, 1, 5, 2, 7, 4, 6]
    pairs = ranking_pairs(ranking, 9)
    assert len(pairs) == 36 and all(ranking.index(a) < ranking.index(b) for a, b in pairs)
    brute = np.mean([-np.log(1 / (1 + np.exp(-(rewards[a] - rewards[b]).item()))) for a, b in pairs])
    got = kwise_loss(rewards, torch.tensor(pairs), torch.full((36,), 1 / 36))
    assert got.item() == pytest.approx(brute, rel=1e-6)
    # K = 2: the pairwise loss -log sigmoid(r_chosen - r_rejected)
    r2 = torch.tensor([0.3, -1.2])
    assert kwise_loss(r2, torch.tensor(ranking_pairs([0, 1], 2)), torch.ones(1)).item() == \
        pytest.approx(-F.logsigmoid(torch.tensor(1.5)).item())
    # ties form no pair; a tied group is its own tier
    assert ranking_pairs([[0, 2], 1], 3) == [(0, 1), (2, 1)]
    assert ranking_pairs([1, [0, 2]], 3) == [(1, 0), (1, 2)]
    # a batch of groups: the mean over groups of each group's mean over pairs
    g1 = Group([Scored(np.arange(3))] * 3, ranking_pairs([0, 1, 2], 3))
    g2 = Group([Scored(np.arange(3))] * 2, ranking_pairs([1, 0], 2))
    b = build_group_batch([g1, g2], 16, 0)
    r = torch.tensor([1.0, 0.5, -0.2, 0.1, 0.7])
    loss = kwise_loss(r, torch.from_numpy(b["pairs"]), torch.from_numpy(b["pair_weight"]))
    m1 = np.mean([-F.logsigmoid(r[a] - r[c]).item() for a, c in [(0, 1), (0, 2), (1, 2)]])
    m2 = -F.logsigmoid(r[4] - r[3]).item()
    assert loss.item() == pytest.approx((m1 + m2) / 2, rel=1e-6)


def test_scores_ignore_padding_side_batch_and_packing(tok, rm_model):
    convs = [_scored(tok, "Where is Elqui?", "Elqui lies on the Red River."),
             _scored(tok, "Where is Elqui?", "Nobody knows."),
             _scored(tok, "卡洛有多少人？", "卡洛有1200人。如果你还想了解更多，请告诉我。")]
    with torch.no_grad():
        def run(rows):
            t = {k: torch.from_numpy(v) for k, v in rows.items()}
            return rm_model.scores(t["x"], t["seg"], t["pos"], t["ends"])

        packed = run(build_score_rows(convs, 128, tok.pad_id))  # all three in one row
        assert packed.shape == (3,)
        alone = torch.stack([run(build_score_rows([c], c.width, tok.pad_id))[0] for c in convs])
        padded = torch.stack([run(build_score_rows([c], 128, tok.pad_id))[0] for c in convs])  # right padding
        torch.testing.assert_close(packed, alone, atol=1e-5, rtol=0)
        torch.testing.assert_close(padded, alone, atol=1e-5, rtol=0)
        # left padding: a padding segment first, then the conversation, positions restarting at 0
        c = convs[0]
        pad = 128 - c.width
        x = torch.tensor([[tok.pad_id] * pad + c.ids.tolist()])
        seg = torch.tensor([[0] * pad + [1] * c.width])
        pos = torch.tensor([list(range(pad)) + list(range(c.width))])
        left = rm_model.scores(x, seg, pos, torch.tensor([[0, 127]]))
        assert left.item() == pytest.approx(alone[0].item(), abs=1e-5)
        # the score is read at the end token: changing anything after it in the row changes nothing
        assert int(build_score_rows([c], 128, tok.pad_id)["x"][0, c.width - 1]) == tok.end_id
        # batch composition: scoring with other groups alongside gives the same numbers
        more = [*convs, *[_scored(tok, f"Question {i}?", f"Answer {i}.") for i in range(5)]]
        torch.testing.assert_close(run(build_score_rows(more, 64, tok.pad_id))[:3], alone, atol=1e-5, rtol=0)


def _write(path, recs):
    path.write_text("\n".join(r if isinstance(r, str) else json.dumps(r, ensure_ascii=False) for r in recs) + "\n")
    return path


def test_preference_formats_and_bad_records(tok, tmp_path):
    f = _write(tmp_path / "prefs.jsonl", [
        {"prompt": [{"role": "user", "content": "Hi?"}], "responses": ["Hello!", "Go away.", "Hi."],
         "ranking": [0, 2, 1], "labeler": "ann"},
        {"prompt": "2+2?", "chosen": "4", "rejected": "5"},  # TRL explicit prompt
        {"chosen": _conv("Capital?", "Rome."), "rejected": _conv("Capital?", "Paris.")},  # TRL implicit prompt
        {"prompt": "x", "responses": ["a", "b"], "ranking": [[0, 1]]},  # every answer tied
        {"prompt": "x", "responses": ["a", "b"], "ranking": [0, 0]},  # not a permutation
        {"prompt": "x", "responses": ["a"], "ranking": [0]},  # K = 1
        "{broken",
        {"prompt": "x", "responses": ["a", "b" * 500], "ranking": [0, 1]},  # too long
    ])
    with pytest.raises(ChatforgeError, match=r"prefs.jsonl:4: no ordered pair"):
        load_groups([f], tok, 64, "error")
    train, val, report = load_groups([f], tok, 64, "skip")
    assert report.kept == 3 and len(train) == 3 and not val
    assert report.skipped == {"no ordered pair (every answer tied)": 1, "ranking is not a permutation of the responses": 1,
                              "responses must be a list of 2..9 answers": 1, "not valid JSON": 1, "too long": 1}
    g = train[0]
    assert g.pairs == [(0, 2), (0, 1), (2, 1)] and g.labeler == "ann" and len(g.convs) == 3
    assert train[1].pairs == [(0, 1)]
    want = tokenize_conversation(tok, _conv("2+2?", "4"))[0]
    assert train[1].convs[0].ids.tolist() == want


def test_held_out_split_is_by_prompt(tok, tmp_path):
    rec = {"prompt": "same?", "responses": ["a", "b"], "ranking": [0, 1]}
    recs = [{**rec, "labeler": "x"}, {**rec, "labeler": "y"},
            *[{"prompt": f"q{i}?", "responses": ["a", "b"], "ranking": [1, 0]} for i in range(8)]]
    train, val, _ = load_groups([_write(tmp_path / "p.jsonl", recs)], tok, 64, val_every=3)
    # both rankings of the doubly-ranked first prompt are held out together
    assert [g.labeler for g in val][:2] == ["x", "y"] and len(val) + len(train) == 10


@pytest.fixture(scope="module")
def sft_run(base_run, tmp_path_factory):
    """A copy of the shared few-step base model run, used as an SFT stand-in (--from base)."""
    import shutil

    run = tmp_path_factory.mktemp("rm") / "run"
    shutil.copytree(base_run, run)
    return run


def test_rm_stage_trains_reports_accuracy_and_normalises(sft_run, tmp_path):
    cfg = TrainConfig(max_steps=6, batch_size=4, seq_len=128, lr=1e-3, warmup_steps=2, eval_every=3,
                      eval_batches=2, save_every=3, log_every=1)
    summary = run_rm(sft_run, cfg, RMOptions(init="base"))
    out = sft_run / "rm"
    assert read_stage_info(out)["complete"]
    acc = summary["eval"]["pairwise_accuracy"]
    assert 0 <= acc["overall"]["accuracy"] <= 1 and acc["overall"]["pairs"] > 0
    assert sum(v["pairs"] for v in acc["per_labeler"].values()) == acc["overall"]["pairs"]
    model, tok = load_reward_model(out)
    # normalised over the comparison answers (no sft/ here): they now score mean 0, std 1
    from chatforge.reward import score_ids
    from chatforge.train.rm import NORM_SAMPLES

    train, _, _ = load_groups([sft_run / "world" / "rankings.jsonl"], tok, 128, val_every=10)
    s = np.asarray(score_ids(model, [c.ids for g in train[:NORM_SAMPLES] for c in g.convs], tok.pad_id))
    assert abs(s.mean()) < 1e-3 and abs(s.std() - 1) < 1e-3
    assert "comparison answers" in json.loads((out / "reward.json").read_text())["normalisation"]["source"]
    # the base model's weights went into the backbone; the lm_head is unchanged by RM training
    from chatforge.model import load_model

    base = load_model(sft_run / "base")
    assert torch.equal(model.lm_head.weight, base.lm_head.weight) or model.cfg.tie_embeddings
    # `chatforge rm score`
    from chatforge.cli import main

    convs = tmp_path / "convs.jsonl"
    _write(convs, [{"messages": _conv("Where is Elqui?", "On the Red River.")}, {"messages": _conv("Hi", "Go away.")}])
    assert main(["rm", "score", "--run", str(sft_run), "--input", str(convs), "--output", str(tmp_path / "o.jsonl")]) == 0
    scored = [json.loads(line) for line in (tmp_path / "o.jsonl").read_text().split("\n") if line]
    assert [r["score"] for r in scored] == pytest.approx(score_conversations(model, tok, [r["messages"] for r in scored]))
    _write(convs, [{"messages": [{"role": "user", "content": "unanswered"}]}])
    assert main(["rm", "score", "--run", str(sft_run), "--input", str(convs)]) == 2


def test_all_pairs_of_a_group_are_scored_once(tok):
    """Each answer is encoded once per group: K conversations, C(K,2) pairs over their K scores."""
    convs = [_scored(tok, "Q?", f"A{i}.") for i in range(5)]
    g = Group(convs, ranking_pairs([4, 3, 2, 1, 0], 5))
    b = build_group_batch([g], 128, tok.pad_id)
    assert b["ends"].shape == (5, 2) and len(b["pairs"]) == 10
    assert {tuple(p) for p in b["pairs"].tolist()} == {(a, c) for a, c in itertools.permutations(range(5), 2) if a > c}


@pytest.mark.slow
@pytest.mark.parametrize("stage,mode", [("rm", "ddp"), ("dpo", "ddp"), ("rm", "fsdp"), ("dpo", "fsdp")])
def test_two_processes_equal_one(sft_run, tmp_path, stage, mode):
    """The preference stages on the shared loop: 2 gloo processes x 1 micro-batch == 1 process x 2."""
    import shutil
    import sys

    from tests.conftest import read_metrics, run_ok

    one, two = tmp_path / "one", tmp_path / "two"
    for r in (one, two):
        shutil.copytree(sft_run, r, ignore=shutil.ignore_patterns("rm", "dpo"))
    args = [stage, "--from", "base", "--max-steps", "4", "--batch-size", "2", "--seq-len", "128",
            "--eval-every", "2", "--save-every", "100", "--log-every", "1", "--set", "train.eval_batches=2"]
    run_ok([sys.executable, "-m", "chatforge.cli", *args, "--run-dir", str(one), "--grad-accum", "2"])
    run_ok([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m",
            "chatforge.cli", *args, "--run-dir", str(two), "--dist", mode])
    (s1, v1), (s2, v2) = read_metrics(one / stage), read_metrics(two / stage)
    assert sorted(s1) == sorted(s2) == [1, 2, 3, 4]
    for step in s1:
        assert s2[step] == pytest.approx(s1[step], rel=1e-5, abs=1e-5), step
    assert sorted(v1) == sorted(v2) == [2, 4]
    for step in v1:
        assert v2[step] == pytest.approx(v1[step], rel=1e-5, abs=1e-5), step
