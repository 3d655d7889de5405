"""The main job: run every stage that exists, in order, skipping the ones already complete.

    chatforge pipeline --run runs/demo --preset tiny [--until pretrain] [--force] [--max-steps N]

Stages: world -> tokenizer -> data -> pretrain (SFT, RM, PPO/DPO are added by later stages).
The tokenizer is trained before the token shards are written (the shards need its ids); the
text-cleaning part of the data stage will run before the tokenizer once it exists.
"""

from __future__ import annotations

import time
from pathlib import Path

from chatforge import ChatforgeError
from chatforge.config import Preset
from chatforge.run import is_complete, stage_dir, write_run_info

STAGES = ["world", "tokenizer", "data", "pretrain"]


def _brief(stage: str, result) -> str:
    """One-line summary of what a stage produced, for the progress log."""
    if stage == "tokenizer":
        cpt = result["chars_per_token"]
        return f" (vocab {result['vocab_size']}, chars/token: " + ", ".join(f"{k} {v}" for k, v in cpt.items()) + ")"
    if stage == "data":
        return f" (tokens: train {result['train']:,}, val {result['val']:,})"
    if stage == "pretrain":
        return f" (loss {result.get('train/loss', float('nan')):.3f}, val loss {result.get('val/loss', float('nan')):.3f})"
    return ""


def run_pipeline(run: str | Path, preset_name: str, preset: Preset, until: str | None = None,
                 force: bool = False, data: list[str] | None = None, model_overrides: dict | None = None,
                 seed: int = 0) -> dict:
    from chatforge.data.shards import run_data_stage
    from chatforge.tokenizer import run_tokenizer_stage
    from chatforge.train.pretrain import run_pretrain
    from chatforge.world import generate_world

    if until is not None and until not in STAGES:
        raise ChatforgeError(f"--until {until!r}: expected one of {STAGES}")
    run = Path(run)
    write_run_info(run, preset=preset_name)
    results: dict = {}
    actions = {
        "world": lambda: str(generate_world(run, seed=seed, size=preset.world_size)) if not data else "skipped (--data)",
        "tokenizer": lambda: run_tokenizer_stage(run, preset.vocab_size, data),
        "data": lambda: run_data_stage(run, data)["tokens"],
        "pretrain": lambda: run_pretrain(run, preset.model, preset.train, model_overrides),
    }
    for i, name in enumerate(STAGES, 1):
        folder = stage_dir(run, name)
        if not force and is_complete(folder):
            print(f"[{i}/{len(STAGES)}] {name}: complete, skipping ({folder})", flush=True)
        else:
            print(f"[{i}/{len(STAGES)}] {name}: running -> {folder}", flush=True)
            t0 = time.perf_counter()
            results[name] = actions[name]()
            print(f"[{i}/{len(STAGES)}] {name}: done in {time.perf_counter() - t0:.1f}s{_brief(name, results[name])}",
                  flush=True)
        if name == until:
            break
    return results
