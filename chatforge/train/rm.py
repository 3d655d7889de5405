"""Reward model from human rankings (InstructGPT step 2).

    chatforge rm --run runs/demo                          # world/rankings.jsonl, initialised from sft/
    chatforge rm --run runs/demo --data prefs.jsonl --from base --on-bad-record skip
    chatforge rm score --run runs/demo --input convs.jsonl [--output scored.jsonl]
    torchrun --nproc_per_node=2 -m chatforge.cli rm --run-dir runs/demo --dist fsdp

Training: each batch element is one prompt with its K ranked answers; every answer is encoded once and
scored at its <|end|>; the loss is InstructGPT's: the mean over the group's C(K,2) ordered pairs of
-log sigmoid(r_better - r_worse), averaged over the groups (rm_data.py builds rows and pair weights).
Every 10th prompt is held out. After training:
- pairwise accuracy on the held-out comparisons, overall and per labeler (`rm/eval.json`);
- normalisation: a gain and bias so that answers sampled from the SFT model score mean 0, std 1
  (InstructGPT normalised its RM the same way, so PPO starts at reward 0); without an SFT model, the
  comparison answers are used instead and `reward.json` says so.
Writes `<run>/rm/`: a model folder + reward_head.safetensors + reward.json (see reward.py).
"""

from __future__ import annotations

import json
from collections import defaultdict
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from chatforge import ChatforgeError
from chatforge.config import TrainConfig
from chatforge.model import load_config, load_state
from chatforge.reward import RewardModel, save_reward_model, score_ids
from chatforge.run import (
    atomic_write_text,
    is_main_process,
    mark_complete,
    read_stage_info,
    require_run,
    stage_dir,
)
from chatforge.tokenizer import Tokenizer, copy_tokenizer_files
from chatforge.train import loop
from chatforge.train.inputs import data_paths, stage_plan, start_model_dir
from chatforge.train.rm_data import Group, build_group_batch, load_groups
from chatforge.train.sampler import EpochOrder, GroupTask

VAL_EVERY = 10
NORM_SAMPLES = 128


@dataclass
class RMOptions:
    data: list[str] | None = None  # default: <run>/world/rankings.jsonl
    on_bad: str = "error"
    init: str = "sft"  # sft | base (a model stage of the run) or, with init_from, the imported checkpoint
    init_from: str | None = None


def kwise_loss(rewards: torch.Tensor, pairs: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """sum over pairs of weight * -log sigmoid(r_better - r_worse) (weights: 1 / (pairs in group * groups))."""
    diff = rewards[pairs[:, 0]] - rewards[pairs[:, 1]]
    return (weights * -F.logsigmoid(diff)).sum()


class RMTask(GroupTask):
    def __init__(self, train: list[Group], val: list[Group], seq_len: int, seed: int, pad_id: int):
        self.train, self.val, self.seq_len, self.pad_id = train, val, seq_len, pad_id
        self.order = EpochOrder(len(train), seed)

    def _batch(self, groups: list[Group]) -> dict[str, torch.Tensor]:
        b = {k: torch.from_numpy(v) for k, v in build_group_batch(groups, self.seq_len, self.pad_id).items()}
        b["n_groups"] = torch.tensor(len(groups))
        return b

    def loss(self, model, batch):
        r = model(batch["x"], segment_ids=batch["seg"], positions=batch["pos"], ends=batch["ends"])
        return kwise_loss(r, batch["pairs"], batch["pair_weight"])


def pairwise_accuracy(model: RewardModel, groups: list[Group], pad_id: int) -> dict:
    """Fraction of held-out (better, worse) pairs the model orders correctly, overall and per labeler."""
    model.eval()
    right: dict[str, list[int]] = defaultdict(lambda: [0, 0])
    for g in groups:
        r = score_ids(model, [c.ids for c in g.convs], pad_id, normalised=False)
        for a, b in g.pairs:
            for key in ("all", g.labeler or "unknown"):
                right[key][0] += r[a] > r[b]
                right[key][1] += 1
    out = {k: {"accuracy": n / t if t else None, "pairs": t} for k, (n, t) in sorted(right.items())}
    return {"overall": out.pop("all", {"accuracy": None, "pairs": 0}), "per_labeler": out}


def _source_dir(run: Path, opts: RMOptions) -> Path:
    return start_model_dir(run, opts.init, opts.init_from, "the reward model")


def plan_rm(run: Path, tcfg: TrainConfig, opts: RMOptions) -> dict:
    return stage_plan(_source_dir(run, opts), data_paths(run, opts.data, "rankings.jsonl", "rankings"), opts, tcfg)


def _normalisation(run: Path, model: RewardModel, tok: Tokenizer, train: list[Group], seed: int) -> dict:
    """gain, bias so that SFT-sampled answers (to the world's RL prompts) score mean 0, std 1."""
    sft, prompts_file = stage_dir(run, "sft"), stage_dir(run, "world") / "prompts.jsonl"
    seqs, source = [], "comparison answers"
    if read_stage_info(sft).get("complete") and prompts_file.is_file():
        from chatforge.engine import Engine, SamplingParams
        from chatforge.model import load_model

        policy = load_model(sft).eval()
        if Tokenizer.load(sft).fingerprint() == tok.fingerprint():
            prompts = [json.loads(line)["prompt"] for line in prompts_file.read_text().split("\n") if line.strip()]
            prompts = prompts[:NORM_SAMPLES]
            ids = [tok.encode_chat(p, add_generation_prompt=True) for p in prompts]
            sp = SamplingParams(max_tokens=64, temperature=1.0, seed=seed)
            outs = Engine(policy, tok).generate(ids, sp)
            ctx = model.cfg.max_seq_len  # an answer cut by the context still ends with <|end|> to be scored
            seqs = [(p + o.token_ids)[:ctx - 1] + [tok.end_id] for p, o in zip(ids, outs) if len(p) < ctx]
            source = f"{len(seqs)} answers sampled from sft/ (temperature 1) to world/prompts.jsonl"
    if not seqs:
        seqs = [c.ids for g in train[:NORM_SAMPLES] for c in g.convs]
    raw = np.asarray(score_ids(model, seqs, tok.pad_id, normalised=False))
    std = float(raw.std()) or 1.0
    return {"gain": 1.0 / std, "bias": -float(raw.mean()) / std, "source": source, "raw_mean": float(raw.mean()),
            "raw_std": float(raw.std())}


def run_rm(run: str | Path, tcfg: TrainConfig, opts: RMOptions, fresh: bool = False) -> dict:
    run = require_run(run)
    if opts.init_from:
        from chatforge.init_from import ensure_imported

        ensure_imported(run, opts.init_from)
    src, out = _source_dir(run, opts), stage_dir(run, "rm")
    mcfg, tok = load_config(src), Tokenizer.load(src)
    if tcfg.seq_len > mcfg.max_seq_len:
        raise ChatforgeError(f"train.seq_len={tcfg.seq_len} exceeds the model's context {mcfg.max_seq_len}")
    paths = data_paths(run, opts.data, "rankings.jsonl", "rankings")
    train, val, report = load_groups(paths, tok, tcfg.seq_len, opts.on_bad, val_every=VAL_EVERY)
    task = RMTask(train, val, tcfg.seq_len, tcfg.seed, tok.pad_id)
    settings = plan_rm(run, tcfg, opts)
    identity = {k: v for k, v in settings.items() if k != "train"}
    n_pairs = sum(len(g.pairs) for g in train)
    data_summary = {**report.to_dict(), "train_groups": len(train), "val_groups": len(val), "train_pairs": n_pairs}
    if is_main_process():
        print(f"[rm] {report.kept} ranked groups ({len(train)} train, {len(val)} held out; {n_pairs:,} training "
              f"pairs) from {paths}; {sum(report.skipped.values())} skipped {dict(report.skipped) or ''}",
              flush=True)
        out.mkdir(parents=True, exist_ok=True)
        (out / "stage.json").unlink(missing_ok=True)
        atomic_write_text(out / "train_config.json", json.dumps(asdict(tcfg), indent=2))

    def make_model() -> RewardModel:
        model = RewardModel(mcfg)
        missing, unexpected = model.load_state_dict(load_state(src, mcfg), strict=False)
        if unexpected or set(missing) - {"reward_head.weight", "reward_head.bias"}:
            raise ChatforgeError(f"{src}: weights don't fit ({missing[:3]}, {unexpected[:3]})")
        return model

    def on_eval(step: int, state: dict, info) -> None:
        if not info.is_main or not val:
            return
        model = RewardModel(mcfg)
        model.load_state_dict(state)
        acc = pairwise_accuracy(model, val, tok.pad_id)["overall"]["accuracy"]
        tqdm.write(f"[rm] step {step}: held-out pairwise accuracy {100 * acc:.1f}%")

    def finish(raw: RewardModel, state: dict, info) -> None:
        if not info.is_main:
            return
        model = RewardModel(mcfg)
        model.load_state_dict(state)
        model.eval()
        acc = pairwise_accuracy(model, val, tok.pad_id) if val else None
        norm = _normalisation(run, model, tok, train, tcfg.seed)
        save_reward_model(model, out, norm=norm)
        copy_tokenizer_files(src, out)
        atomic_write_text(out / "eval.json", json.dumps({"pairwise_accuracy": acc, "data": data_summary,
                                                          "normalisation": norm}, indent=2))
        mark_complete(out, settings={**settings, "train": loop.run_identity(tcfg, info.world_size)}, stage="rm",
                      steps=tcfg.max_steps, pairwise_accuracy=acc and acc["overall"]["accuracy"])

    summary = loop.train(out, make_model, tcfg, task, desc="rm", on_finish=finish, identity=identity,
                         fresh=fresh, on_eval=on_eval)
    summary["model_dir"] = str(out)
    if is_main_process():
        summary["eval"] = json.loads((out / "eval.json").read_text())
    return summary


def score_file(run: str | Path, input_path: str | Path, output_path: str | Path | None = None) -> list[float]:
    """`chatforge rm score`: rewards (normalised) of the conversations in a jsonl ({"messages": [...]})."""
    from chatforge.reward import load_reward_model, score_conversations
    from chatforge.train.sft_data import LoadReport, read_records, to_messages, validate

    model, tok = load_reward_model(stage_dir(require_run(run), "rm"))
    path = Path(input_path)
    if not path.is_file():
        raise ChatforgeError(f"{path}: no such file")

    def parse(rec):
        messages = to_messages(rec)
        validate(messages)
        return rec, messages

    parsed = list(read_records([path], "error", LoadReport(), parse, hint=False))
    records, convs = [r for r, _ in parsed], [m for _, m in parsed]
    scores = score_conversations(model, tok, convs)
    if output_path:
        lines = [json.dumps({**r, "score": s}, ensure_ascii=False) for r, s in zip(records, scores)]
        atomic_write_text(Path(output_path), "\n".join(lines) + "\n")
    return scores
