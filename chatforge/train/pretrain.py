"""Generative pre-training: next-token prediction over token shards.

    chatforge pretrain --run runs/demo [--preset tiny] [--max-steps 600] [--set model.n_layer=6]
    torchrun --nproc_per_node=2 -m chatforge.cli pretrain --run-dir runs/demo --dist fsdp

Reads `<run>/data` (token shards) and `<run>/tokenizer`, writes `<run>/base/`: config.json,
model.safetensors, tokenizer files, metrics.jsonl, train_config.json, checkpoint.pt or checkpoint/ (sharded, FSDP2;
resumable), stage.json.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict
from pathlib import Path

import torch

from chatforge import ChatforgeError
from chatforge.config import TrainConfig, apply_overrides
from chatforge.data.shards import load_split, read_meta
from chatforge.model import GPT, ModelConfig, save_model
from chatforge.run import atomic_write_text, is_main_process, mark_complete, require_run, stage_dir
from chatforge.tokenizer import Tokenizer, copy_tokenizer_files
from chatforge.train import loop
from chatforge.train.sampler import WindowSampler


class PretrainTask:
    """Batches of shuffled windows; global sample numbers are laid out so that any (processes x
    micro-batches) split of a step covers the same samples."""

    def __init__(self, data_dir: Path, seq_len: int, seed: int):
        self.train = WindowSampler(load_split(data_dir, "train"), seq_len, seed)
        val = load_split(data_dir, "val")
        try:
            self.val: WindowSampler | None = WindowSampler(val, seq_len, seed, shuffle=False)
        except ChatforgeError:
            print(f"warning: validation split of {data_dir} is shorter than one window; no val loss")
            self.val = None

    def train_batch(self, step, micro, info, batch_size, grad_accum):
        per_step = batch_size * grad_accum * info.world_size
        first = step * per_step + (info.rank * grad_accum + micro) * batch_size
        x, y = self.train.batch(first, batch_size)
        return {"x": x, "y": y}

    def loss(self, model, batch):
        return model(batch["x"], batch["y"])[1]

    def tokens_in(self, batch) -> int:
        return int((batch["y"] != -100).sum())

    def val_batches(self, info, batch_size, n_batches):
        if self.val is None:
            return []
        total = min(n_batches * batch_size, self.val.n)  # the same windows whatever the world size
        mine = list(range(info.rank, total, info.world_size))
        per_rank = math.ceil(math.ceil(total / info.world_size) / batch_size)
        out = []
        for i in range(per_rank):
            rows = [self.val.batch(g, 1) for g in mine[i * batch_size:(i + 1) * batch_size]]
            if rows:
                out.append({"x": torch.cat([r[0] for r in rows]), "y": torch.cat([r[1] for r in rows])})
            else:  # padding: this rank has run out of windows but FSDP needs its forward
                x, _ = self.val.batch(0, 1)
                out.append({"x": x, "y": torch.full_like(x, -100)})
        return out


def model_config_for(preset_model: ModelConfig, tok: Tokenizer, seq_len: int, overrides: dict,
                     keep_vocab: bool = False) -> ModelConfig:
    """Preset shape + overrides; vocab sized to the tokenizer (rounded up to 64 for matmul efficiency),
    unless `keep_vocab` (an imported model keeps its own, already large enough)."""
    cfg = apply_overrides(preset_model, overrides, "model")
    need = -(-tok.vocab_size // 64) * 64
    if "vocab_size" not in overrides and not keep_vocab:
        cfg = apply_overrides(cfg, {"vocab_size": need}, "model")
    elif cfg.vocab_size < tok.vocab_size:
        raise ChatforgeError(f"model.vocab_size={cfg.vocab_size} < tokenizer vocab {tok.vocab_size}")
    if seq_len > cfg.max_seq_len:
        raise ChatforgeError(f"train.seq_len={seq_len} exceeds model.max_seq_len={cfg.max_seq_len}")
    return cfg


def plan_pretrain(run: Path, model_cfg_base: ModelConfig, tcfg: TrainConfig,
                  model_overrides: dict | None = None, init_from: bool = False) -> tuple[ModelConfig, dict]:
    """Validate the inputs and return (model config, identity): what the stage would train and the
    settings + input fingerprints recorded in its checkpoint and stage.json. With `init_from`, the shape
    is the imported model's (<run>/init, see init_from.py), not the preset's."""
    tok_dir, data_dir = stage_dir(run, "tokenizer"), stage_dir(run, "data")
    tok = Tokenizer.load(tok_dir)
    meta = read_meta(data_dir)
    if meta.get("tokenizer_sha256") != tok.fingerprint():
        raise ChatforgeError(f"{data_dir} was tokenised with a different tokenizer than {tok_dir} "
                             f"(re-trained since?); re-run `chatforge data --run {run}`")
    if init_from:
        from chatforge.init_from import init_model_config, init_settings_of_run

        mcfg = model_config_for(init_model_config(run), tok, tcfg.seq_len, model_overrides or {}, keep_vocab=True)
    else:
        mcfg = model_config_for(model_cfg_base, tok, tcfg.seq_len, model_overrides or {})
    identity = {"model": mcfg.to_dict(), "tokenizer_sha256": tok.fingerprint(),
                "data_tokens": meta["tokens"], "train": loop.run_identity(tcfg, 1)}
    if init_from:
        identity["init"] = init_settings_of_run(run)
    return mcfg, identity


def run_pretrain(run: str | Path, model_cfg_base: ModelConfig, tcfg: TrainConfig,
                 model_overrides: dict | None = None, fresh: bool = False, init_from: bool = False) -> dict:
    """Train (or resume) <run>/base. `fresh` discards an existing checkpoint and starts over. `init_from`:
    start from the imported weights in <run>/init (continued pre-training) instead of a random init."""
    run = require_run(run)
    tok_dir, data_dir, out = stage_dir(run, "tokenizer"), stage_dir(run, "data"), stage_dir(run, "pretrain")
    mcfg, identity = plan_pretrain(run, model_cfg_base, tcfg, model_overrides, init_from)
    identity.pop("train")  # the loop adds the train settings for the actual world size
    task = PretrainTask(data_dir, tcfg.seq_len, tcfg.seed)

    def finish(raw: GPT, state: dict, info) -> None:
        if info.is_main:
            save_model(raw, out, state)
            copy_tokenizer_files(tok_dir, out)
            mark_complete(out, settings={**identity, "train": loop.run_identity(tcfg, info.world_size)},
                          stage="pretrain", steps=tcfg.max_steps)

    if is_main_process():
        out.mkdir(parents=True, exist_ok=True)
        # training (again): the folder is incomplete until on_finish rewrites stage.json
        (out / "stage.json").unlink(missing_ok=True)
        atomic_write_text(out / "train_config.json", json.dumps(asdict(tcfg), indent=2))
        atomic_write_text(out / "config.json", json.dumps(mcfg.to_dict(), indent=2))
    def make_model() -> GPT:
        model = GPT(mcfg)
        if init_from:
            from chatforge.init_from import load_init_weights

            load_init_weights(run, model)
        return model

    summary = loop.train(out, make_model, tcfg, task, desc="pretrain", on_finish=finish,
                         identity=identity, fresh=fresh)
    summary["model_dir"] = str(out)
    return summary
