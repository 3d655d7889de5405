"""What a post-training stage (sft, rm, dpo) starts from and reads, and the settings that identify its run.

Shared so the three stages resolve their starting model, default data and recorded settings one way.
"""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

from chatforge import ChatforgeError
from chatforge.config import TrainConfig
from chatforge.run import read_stage_info, stage_dir
from chatforge.train import loop

START_STAGES = {"base": "pretrain", "sft": "sft"}  # --from NAME -> the stage whose model it is


def start_model_dir(run: Path, init: str, init_from: str | None, who: str) -> Path:
    """The imported checkpoint (with --init-from) or the run's finished `init` model ("base" or "sft")."""
    if init_from:
        from chatforge.init_from import INIT_DIR

        return run / INIT_DIR
    if init not in START_STAGES:
        raise ChatforgeError(f"--from {init!r}: expected one of {sorted(START_STAGES)}")
    folder = stage_dir(run, START_STAGES[init])
    if not read_stage_info(folder).get("complete"):
        raise ChatforgeError(f"{folder}: no finished model to start {who} from; run `chatforge "
                             f"{START_STAGES[init]} --run {run}` first, or start from a checkpoint with "
                             f"--init-from <hf-dir>")
    return folder


def data_paths(run: Path, data: list[str] | None, world_file: str, what: str) -> list[str]:
    """The user's files, else the world's `world_file` (which must exist)."""
    if data:
        return list(data)
    default = stage_dir(run, "world") / world_file
    if not default.is_file():
        raise ChatforgeError(f"{default}: no {what}; run `chatforge world --run {run}` or pass --data")
    return [str(default)]


def stage_plan(src: Path, data: list[str], opts, tcfg: TrainConfig) -> dict:
    """Settings recorded in stage.json and the checkpoint: start model, data, options, trajectory."""
    return {"source": src.name, "source_stage": read_stage_info(src).get("settings"), "data": data,
            "options": {k: v for k, v in asdict(opts).items() if k != "data"}, "train": loop.run_identity(tcfg, 1)}
