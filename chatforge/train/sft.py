"""Instruction tuning (SFT): continue training the pre-trained model on demonstrations in the chat format.

    chatforge sft --run runs/demo                                   # the world's demonstrations, from base/
    chatforge sft --run runs/demo --data my_chats.jsonl --on-bad-record skip --ptx-fraction 0.1
    chatforge sft --run runs/qwen --init-from /models/Qwen2-0.5B --lora-rank 16
    torchrun --nproc_per_node=2 -m chatforge.cli sft --run-dir runs/demo --dist fsdp

Reads conversations (sft_data.py: formats, validation, label mask, packing), starts from `<run>/base` (or
an imported HF checkpoint, init_from.py), trains with the shared loop (resume, DDP/FSDP2, metrics.jsonl),
and writes `<run>/sft/` as a model folder. Every 20th conversation is held out for the validation loss.

Checkpoint selection: at every validation point the candidate weights are also scored on dev items of the
suite's instruction-following tasks and of reading (a `--select-limit` items per task, drawn from the world
apart from its eval items: world.generate.selection_dev_items); the saved model
is the best-scoring candidate, not simply the last one (InstructGPT picked SFT models by reward-model score,
not validation loss, which keeps falling past the best model). `selection.json` lists every candidate.

PPO-ptx style mixing (`--ptx-fraction f`): that share of each micro-batch's rows are pre-training windows
from `<run>/data` with the loss on every token, so the model keeps its language modelling while it learns
the format. The loss is the mean over all trained tokens of the micro-batch.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from chatforge import ChatforgeError
from chatforge.config import TrainConfig
from chatforge.data.shards import load_split, read_meta
from chatforge.model import GPT, load_config, load_state, save_model
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
from chatforge.train.sampler import EpochOrder, WindowSampler, global_slot, rank_val_batches
from chatforge.train.sft_data import Sample, build_row, load_samples, pack

VAL_EVERY = 20


# dev items per task for checkpoint selection: with 30, the candidates' mean scores (step 300: 24.2, steps
# 400-600: 20.7-22.5) were within the noise of 30-item rates (one SE ~ 9 points per task) and the choice
# followed it (README); 100 items cost ~11 s per candidate on 2 CPU cores (30: ~3 s)
SELECT_LIMIT = 100


@dataclass
class SFTOptions:
    data: list[str] | None = None  # default: <run>/world/sft.jsonl
    on_bad: str = "error"
    ptx_fraction: float = 0.0
    lora_rank: int = 0
    lora_alpha: float | None = None
    select: bool = True
    select_limit: int = SELECT_LIMIT
    init_from: str | None = None  # a local HF folder (imported into <run>/init) instead of <run>/base


class SFTTask:
    """Packed conversation rows (+ optional pre-training windows); batches are a pure function of the step."""

    def __init__(self, train: list[Sample], val: list[Sample], seq_len: int, seed: int, pad_id: int,
                 ptx: WindowSampler | None = None, ptx_fraction: float = 0.0):
        self.samples, self.val_samples = train, val
        self.rows, self.val_rows = pack(train, seq_len), pack(val, seq_len)
        self.seq_len, self.pad_id = seq_len, pad_id
        self.order = EpochOrder(len(self.rows), seed)
        self.ptx, self.ptx_fraction = ptx, ptx_fraction

    def _rows(self, groups: list[list[int]], samples: list[Sample]) -> dict[str, torch.Tensor]:
        built = [build_row([samples[i] for i in g], self.seq_len, self.pad_id) for g in groups]
        return {k: torch.from_numpy(np.stack([b[k] for b in built])) for k in ("x", "y", "seg", "pos")}

    def _n_ptx(self, batch_size: int) -> int:
        if self.ptx is None or self.ptx_fraction <= 0:
            return 0
        return min(batch_size - 1, max(1, round(self.ptx_fraction * batch_size)))

    def train_batch(self, step, micro, info, batch_size, grad_accum):
        n_ptx = self._n_ptx(batch_size)
        n_sft = batch_size - n_ptx
        slot = global_slot(step, micro, info, grad_accum)
        batch = self._rows([self.rows[self.order(slot * n_sft + i)] for i in range(n_sft)], self.samples)
        if n_ptx:
            x, y = self.ptx.batch(slot * n_ptx, n_ptx)
            pos = torch.arange(self.seq_len).expand(n_ptx, -1)
            extra = {"x": x, "y": y, "seg": torch.zeros_like(x), "pos": pos}
            batch = {k: torch.cat([batch[k], extra[k]]) for k in batch}
        return batch

    def loss(self, model, batch):
        return model(batch["x"], batch["y"], segment_ids=batch["seg"], positions=batch["pos"])[1]

    def tokens_in(self, batch) -> int:
        return int((batch["y"] != -100).sum())

    def tokens_processed(self, batch) -> int:
        return batch["x"].numel()  # prompts and padding are computed too: they count for tokens/s and MFU

    def val_batches(self, info, batch_size, n_batches):
        def padding():  # a row with no trained tokens
            b = self._rows([self.val_rows[0]], self.val_samples)
            b["y"].fill_(-100)
            return b

        return rank_val_batches(self.val_rows, info, batch_size, n_batches,
                                lambda groups: self._rows(groups, self.val_samples), padding)


def source_model_dir(run: Path, opts: SFTOptions) -> Path:
    """Where SFT starts from: the imported checkpoint or the run's pre-trained model."""
    return start_model_dir(run, "base", opts.init_from, "SFT")


def plan_sft(run: Path, tcfg: TrainConfig, opts: SFTOptions) -> dict:
    """The settings and input fingerprints that define this SFT run (stage.json, checkpoint identity)."""
    src = source_model_dir(run, opts)
    return stage_plan(src, data_paths(run, opts.data, "sft.jsonl", "demonstrations"), opts, tcfg)


def run_sft(run: str | Path, tcfg: TrainConfig, opts: SFTOptions, fresh: bool = False) -> dict:
    from chatforge.eval.suite import instruction_score, score_model
    from chatforge.world.generate import selection_dev_items

    run = require_run(run)
    if opts.init_from:
        from chatforge.init_from import ensure_imported

        ensure_imported(run, opts.init_from)
    if not 0.0 <= opts.ptx_fraction < 1.0:
        raise ChatforgeError(f"--ptx-fraction {opts.ptx_fraction}: expected 0 <= f < 1")
    if opts.select and opts.select_limit < 1:
        raise ChatforgeError(f"--select-limit {opts.select_limit}: expected at least 1 dev item per task")
    src, out = source_model_dir(run, opts), stage_dir(run, "sft")
    # dev items, not the eval's: choosing on the eval's own items made their reported scores share the choice's
    # luck. Reading from given passages counts too: without it the choice rests on the other tasks' noisy
    # 30-item scores, and the demo kept step 150 of 400 whose retrieval answers were 20 points worse (README)
    dev = selection_dev_items(stage_dir(run, "world"), opts.select_limit) if opts.select else {}
    if opts.select and not dev:
        raise ChatforgeError(f"checkpoint selection scores dev items drawn from the world, and "
                             f"{stage_dir(run, 'world')} has no facts.json: run `chatforge world --run {run}` "
                             "or pass --no-select")
    mcfg, tok = load_config(src), Tokenizer.load(src)
    if tcfg.seq_len > mcfg.max_seq_len:
        raise ChatforgeError(f"train.seq_len={tcfg.seq_len} exceeds the model's context {mcfg.max_seq_len}")
    paths = data_paths(run, opts.data, "sft.jsonl", "demonstrations")
    train_s, val_s, report = load_samples(paths, tok, tcfg.seq_len, opts.on_bad, val_every=VAL_EVERY)
    ptx = None
    if opts.ptx_fraction > 0:
        data_dir = stage_dir(run, "data")
        if read_meta(data_dir).get("tokenizer_sha256") != tok.fingerprint():
            raise ChatforgeError(f"{data_dir}: token shards made with another tokenizer than {src}'s; "
                                 f"--ptx-fraction needs the run's pre-training shards")
        ptx = WindowSampler(load_split(data_dir, "train"), tcfg.seq_len, tcfg.seed)
    task = SFTTask(train_s, val_s, tcfg.seq_len, tcfg.seed, tok.pad_id, ptx, opts.ptx_fraction)
    settings = plan_sft(run, tcfg, opts)
    identity = {k: v for k, v in settings.items() if k != "train"}
    n_tokens = sum(int(s.trained.sum()) for s in train_s)
    fill = sum(s.width for s in train_s) / (len(task.rows) * tcfg.seq_len)
    summary_data = {**report.to_dict(), "train_conversations": len(train_s), "val_conversations": len(val_s),
                    "train_rows": len(task.rows), "row_fill": round(fill, 3), "trained_tokens": n_tokens}
    if is_main_process():
        print(f"[sft] {report.kept} conversations ({len(train_s)} train, {len(val_s)} val) from {paths}; "
              f"{sum(report.skipped.values())} skipped {dict(report.skipped) or ''}; packed into "
              f"{len(task.rows)} rows of {tcfg.seq_len} ({100 * fill:.0f}% full), {n_tokens:,} trained tokens",
              flush=True)
        if fresh:
            shutil.rmtree(out / "best", ignore_errors=True)
            (out / "selection.json").unlink(missing_ok=True)
        out.mkdir(parents=True, exist_ok=True)
        (out / "stage.json").unlink(missing_ok=True)
        atomic_write_text(out / "train_config.json", json.dumps(asdict(tcfg), indent=2))
        atomic_write_text(out / "data_report.json", json.dumps(summary_data, indent=2, ensure_ascii=False))

    chat_tokens = sorted(tok.special_ids.values())  # their embedding rows train under LoRA too (lora.py)

    def plain(state: dict) -> GPT:
        """The trained state as a plain model (LoRA merged; its config may then be untied)."""
        if opts.lora_rank:
            from chatforge.train.lora import merged_model

            return merged_model(mcfg, state, opts.lora_rank, opts.lora_alpha, chat_tokens)
        model = GPT(mcfg)
        model.load_state_dict(state)
        return model

    def make_model() -> GPT:
        model = GPT(mcfg)
        model.load_state_dict(load_state(src, mcfg))
        if opts.lora_rank:
            from chatforge.train.lora import add_lora

            model = add_lora(model, opts.lora_rank, opts.lora_alpha, chat_tokens)
        return model

    selection_file = out / "selection.json"

    def on_eval(step: int, state: dict, info) -> None:
        if not (opts.select and info.is_main):
            return
        model = plain(state)
        scores = score_model(run, model, tok, chat=True, tasks=[], progress=False, extra_items=dev)
        score = instruction_score(scores)
        sel = json.loads(selection_file.read_text()) if selection_file.is_file() else {"candidates": {}}
        sel["candidates"][str(step)] = {"instruction_score": score,
                                        **{t: r["score"] for t, r in scores["tasks"].items()}}
        best = max(sel["candidates"].items(), key=lambda kv: (kv[1]["instruction_score"], int(kv[0])))
        if best[0] == str(step):
            save_model(model, out / "best")
            sel["best_step"] = step
        atomic_write_text(selection_file, json.dumps(sel, indent=2))
        tqdm.write(f"[sft] step {step}: instruction-following score {100 * score:.1f} "  # not through the bar
                   f"(best {100 * best[1]['instruction_score']:.1f} at step {best[0]})")

    def finish(raw: GPT, state: dict, info) -> None:
        if not info.is_main:
            return
        model = plain(state)
        picked = tcfg.max_steps
        if opts.select and selection_file.is_file():
            sel = json.loads(selection_file.read_text())
            picked = int(sel.get("best_step", tcfg.max_steps))
            if picked != tcfg.max_steps and (out / "best" / "model.safetensors").is_file():
                model.load_state_dict(load_state(out / "best", model.cfg))
        save_model(model, out)
        if opts.lora_rank:
            from safetensors.torch import save_file

            from chatforge.train.lora import adapter_state

            save_file({k: v.contiguous() for k, v in adapter_state(state).items()},
                      str(out / "adapter_model.safetensors"))
        copy_tokenizer_files(src, out)
        mark_complete(out, settings={**settings, "train": loop.run_identity(tcfg, info.world_size)},
                      stage="sft", steps=tcfg.max_steps, selected_step=picked, data=summary_data)

    summary = loop.train(out, make_model, tcfg, task, desc="sft", on_finish=finish, identity=identity,
                         fresh=fresh, on_eval=on_eval)
    summary["model_dir"] = str(out)
    summary["selected_step"] = read_stage_info(out).get("selected_step") if is_main_process() else None
    return summary
