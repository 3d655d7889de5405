"""The run-directory contract: where each stage reads and writes, and how completion is recorded.

    runs/<name>/world/ data/ tokenizer/ base/ ...   (see ../shared/DESIGN.md)

A stage folder is complete when its `stage.json` says {"complete": true}; `chatforge pipeline` skips
complete stages. `run.json` remembers the preset the run was created with.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from chatforge import ChatforgeError

STAGE_DIRS = {"world": "world", "tokenizer": "tokenizer", "data": "data", "pretrain": "base"}
MODEL_STAGES = {"base": "base"}  # --stage names accepted by sample/chat -> folder


def require_run(run: str | Path) -> Path:
    p = Path(run)
    if not p.is_dir():
        raise ChatforgeError(f"run folder {p} does not exist; create it with `chatforge pipeline --run {p}` "
                             f"or `chatforge world --run {p}`")
    return p


def stage_dir(run: str | Path, stage: str) -> Path:
    return Path(run) / STAGE_DIRS.get(stage, stage)


def is_complete(folder: Path) -> bool:
    f = folder / "stage.json"
    try:
        return f.is_file() and json.loads(f.read_text()).get("complete") is True
    except json.JSONDecodeError:
        return False


def atomic_write_text(path: Path, text: str) -> None:
    """Readers (other ranks, a concurrent pipeline) see the old or the new file, never half of one."""
    tmp = path.with_name(f"{path.name}.tmp{os.getpid()}")
    tmp.write_text(text)
    tmp.replace(path)


def is_main_process() -> bool:
    """Rank 0 under torchrun (usable before the process group exists), else True."""
    return os.environ.get("RANK", "0") == "0"


def mark_complete(folder: Path, **info) -> None:
    atomic_write_text(folder / "stage.json", json.dumps({"complete": True, **info}, indent=2))


def read_run_info(run: Path) -> dict:
    f = run / "run.json"
    return json.loads(f.read_text()) if f.is_file() else {}


def write_run_info(run: Path, **info) -> None:
    run.mkdir(parents=True, exist_ok=True)
    (run / "run.json").write_text(json.dumps({**read_run_info(run), **info}, indent=2))


def model_dir(run: str | Path, stage: str) -> Path:
    """Folder of a trained model stage (base, later sft/rm/ppo/dpo), checked to exist."""
    folder = Path(run) / MODEL_STAGES.get(stage, stage)
    if not (folder / "model.safetensors").is_file():
        raise ChatforgeError(f"{folder}: no trained model; run the `{stage}` stage first")
    return folder
