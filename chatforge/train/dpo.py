"""Direct preference optimisation (DPO): the cheap alternative to RM + PPO, from the same rankings.

    chatforge dpo --run runs/demo [--beta 0.1] [--data prefs.jsonl] [--from sft]
    torchrun --nproc_per_node=2 -m chatforge.cli dpo --run-dir runs/demo --dist fsdp

For an answer y to prompt x, the implicit reward is beta * (log pi(y|x) - log pi_ref(y|x)), summed over
the answer's tokens (assistant content + <|end|>); the loss for a (better, worse) pair is
-log sigmoid(reward_better - reward_worse). A ranking of K answers gives its C(K,2) ordered pairs, weighted
like the reward model's K-wise loss (mean over the group's pairs, then over groups). The policy and the
frozen reference both start from the SFT model; the reference's log-probabilities are computed once,
before training, so no second model sits in memory during the steps (and at step 0 the loss is ln 2).
Conversations are packed into rows like SFT (no cross-attention). Writes `<run>/dpo/`, a model folder,
with the held-out preference accuracy of the implicit reward in `dpo/eval.json`.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from chatforge import ChatforgeError
from chatforge.config import TrainConfig
from chatforge.model import GPT, load_config, load_state, save_model
from chatforge.run import (
    atomic_write_text,
    is_main_process,
    mark_complete,
    require_run,
    stage_dir,
)
from chatforge.tokenizer import Tokenizer, copy_tokenizer_files
from chatforge.train import loop
from chatforge.train.dist import resolve_device
from chatforge.train.inputs import data_paths, stage_plan, start_model_dir
from chatforge.train.rm_data import Group, Scored, load_groups
from chatforge.train.sampler import EpochOrder, GroupTask
from chatforge.train.sft_data import pack

VAL_EVERY = 10


@dataclass
class DPOOptions:
    data: list[str] | None = None  # default: <run>/world/rankings.jsonl
    on_bad: str = "error"
    beta: float = 0.1
    init: str = "sft"


def build_logprob_rows(convs: list[Scored], seq_len: int, pad_id: int) -> dict[str, np.ndarray]:
    """Packed rows for answer log-probabilities: x, y (targets, -100 off the answers), seg, pos and
    `owner` (R, T): which conversation each target belongs to (-1 for none)."""
    rows = pack(convs, seq_len)  # width = len(ids): inputs ids[:-1] need one slot less; keeps it simple
    shape = (len(rows), seq_len)
    x, y = np.full(shape, pad_id, dtype=np.int64), np.full(shape, -100, dtype=np.int64)
    seg, pos, owner = np.zeros(shape, dtype=np.int64), np.zeros(shape, dtype=np.int64), np.full(shape, -1)
    for r, members in enumerate(rows):
        at = 0
        for k, i in enumerate(members):
            c, w = convs[i], convs[i].width - 1
            x[r, at:at + w] = c.ids[:-1]
            y[r, at:at + w] = np.where(c.trained[1:], c.ids[1:], -100)
            seg[r, at:at + w], pos[r, at:at + w] = k, np.arange(w)
            owner[r, at:at + w] = np.where(c.trained[1:], i, -1)
            at += w
        seg[r, at:], pos[r, at:] = len(members), np.arange(seq_len - at)
    return {"x": x, "y": y, "seg": seg, "pos": pos, "owner": owner}


def answer_logprobs(model, batch: dict, n: int) -> torch.Tensor:
    """Sum of log p(answer token) per conversation -> (n,) from packed rows."""
    logits, _ = model(batch["x"], segment_ids=batch["seg"], positions=batch["pos"])
    y = batch["y"]
    lp = torch.log_softmax(logits.float(), -1).gather(-1, y.clamp(min=0)[..., None]).squeeze(-1)
    keep = batch["owner"] >= 0
    return torch.zeros(n, device=lp.device, dtype=lp.dtype).index_add(0, batch["owner"][keep], lp[keep])


def dpo_loss(policy_lp: torch.Tensor, ref_lp: torch.Tensor, pairs: torch.Tensor, weights: torch.Tensor,
             beta: float) -> torch.Tensor:
    reward = beta * (policy_lp - ref_lp)
    return (weights * -F.logsigmoid(reward[pairs[:, 0]] - reward[pairs[:, 1]])).sum()


class DPOTask(GroupTask):
    def __init__(self, train: list[Group], val: list[Group], ref: dict[int, np.ndarray], seq_len: int, seed: int,
                 pad_id: int, beta: float):
        self.train, self.val, self.ref = train, val, ref  # ref[id(group)] -> reference logprob per conv
        self.seq_len, self.pad_id, self.beta = seq_len, pad_id, beta
        self.order = EpochOrder(len(train), seed)

    def _batch(self, groups: list[Group]) -> dict[str, torch.Tensor]:
        convs, pairs, weights, ref = [], [], [], []
        for g in groups:
            base = len(convs)
            convs += g.convs
            ref += list(self.ref[id(g)])
            pairs += [(base + a, base + b) for a, b in g.pairs]
            weights += [1.0 / (len(g.pairs) * len(groups))] * len(g.pairs)
        b = {k: torch.from_numpy(v) for k, v in build_logprob_rows(convs, self.seq_len, self.pad_id).items()}
        b.update(pairs=torch.tensor(pairs).reshape(-1, 2), pair_weight=torch.tensor(weights, dtype=torch.float32),
                 ref_lp=torch.tensor(ref, dtype=torch.float32), n_groups=torch.tensor(len(groups)))
        return b

    def loss(self, model, batch):
        lp = answer_logprobs(model, batch, len(batch["ref_lp"]))
        return dpo_loss(lp, batch["ref_lp"], batch["pairs"], batch["pair_weight"], self.beta)


@torch.no_grad()
def group_logprobs(model: GPT, groups: list[Group], seq_len: int, pad_id: int, device) -> dict[int, np.ndarray]:
    """Answer log-probabilities of every conversation of every group (the frozen reference's, before training)."""
    model.eval()
    out = {}
    for g in groups:
        b = {k: torch.from_numpy(v).to(device) for k, v in build_logprob_rows(g.convs, seq_len, pad_id).items()}
        out[id(g)] = answer_logprobs(model, b, len(g.convs)).cpu().numpy()
    return out


def preference_accuracy(policy_lp: dict[int, np.ndarray], ref_lp: dict[int, np.ndarray], groups: list[Group]) -> dict:
    """Fraction of held-out (better, worse) pairs whose implicit reward orders them right."""
    right = total = 0
    for g in groups:
        reward = policy_lp[id(g)] - ref_lp[id(g)]
        for a, b in g.pairs:
            right += reward[a] > reward[b]
            total += 1
    return {"accuracy": right / total if total else None, "pairs": total}


def _source(run: Path, opts: DPOOptions) -> Path:
    return start_model_dir(run, opts.init, None, "DPO")


def plan_dpo(run: Path, tcfg: TrainConfig, opts: DPOOptions) -> dict:
    return stage_plan(_source(run, opts), data_paths(run, opts.data, "rankings.jsonl", "rankings"), opts, tcfg)


def run_dpo(run: str | Path, tcfg: TrainConfig, opts: DPOOptions, fresh: bool = False) -> dict:
    run = require_run(run)
    if opts.beta <= 0:
        raise ChatforgeError(f"--beta {opts.beta}: must be positive")
    src, out = _source(run, opts), stage_dir(run, "dpo")
    mcfg, tok = load_config(src), Tokenizer.load(src)
    settings = plan_dpo(run, tcfg, opts)
    train, val, report = load_groups(settings["data"], tok, tcfg.seq_len, opts.on_bad, val_every=VAL_EVERY)
    reference = GPT(mcfg)
    reference.load_state_dict(load_state(src, mcfg))
    device = resolve_device(tcfg.device)
    reference.to(device)
    ref_lp = group_logprobs(reference, train + val, tcfg.seq_len, tok.pad_id, device)
    del reference
    task = DPOTask(train, val, ref_lp, tcfg.seq_len, tcfg.seed, tok.pad_id, opts.beta)
    identity = {k: v for k, v in settings.items() if k != "train"}
    if is_main_process():
        print(f"[dpo] {report.kept} ranked groups ({len(train)} train, {len(val)} held out), "
              f"{sum(len(g.pairs) for g in train):,} training pairs; beta {opts.beta}", flush=True)
        out.mkdir(parents=True, exist_ok=True)
        (out / "stage.json").unlink(missing_ok=True)
        atomic_write_text(out / "train_config.json", json.dumps(asdict(tcfg), indent=2))

    def make_model() -> GPT:
        model = GPT(mcfg)
        model.load_state_dict(load_state(src, mcfg))
        return model

    def finish(raw: GPT, state: dict, info) -> None:
        if not info.is_main:
            return
        model = GPT(mcfg)
        model.load_state_dict(state)
        acc = preference_accuracy(group_logprobs(model, val, tcfg.seq_len, tok.pad_id, "cpu"), ref_lp, val)
        save_model(model, out)
        copy_tokenizer_files(src, out)
        atomic_write_text(out / "eval.json", json.dumps({"heldout_preference_accuracy": acc,
                                                          "data": report.to_dict()}, indent=2))
        mark_complete(out, settings={**settings, "train": loop.run_identity(tcfg, info.world_size)}, stage="dpo",
                      steps=tcfg.max_steps, heldout_preference_accuracy=acc["accuracy"])

    summary = loop.train(out, make_model, tcfg, task, desc="dpo", on_finish=finish, identity=identity, fresh=fresh)
    summary["model_dir"] = str(out)
    if is_main_process():
        summary["eval"] = json.loads((out / "eval.json").read_text())
    return summary
