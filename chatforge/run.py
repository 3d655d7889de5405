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

STAGE_DIRS = {"world": "world", "clean": "clean", "tokenizer": "tokenizer", "data": "data", "pretrain": "base", "sft": "sft",
              "rm": "rm", "ppo": "ppo", "dpo": "dpo", "eval": "eval"}
# the pipeline's stages, in order (chatforge pipeline runs them; the report card lists them)
STAGES = list(STAGE_DIRS)
MODEL_STAGES = {"base": "base", "sft": "sft", "ppo": "ppo", "dpo": "dpo"}  # --stage names accepted by sample/chat/eval/export -> folder


def require_run(run: str | Path) -> Path:
    p = Path(run)
    if not p.is_dir():
        raise ChatforgeError(f"run folder {p} does not exist; create it with `chatforge pipeline --run {p}` "
                             f"or `chatforge world --run {p}`")
    return p


def stage_dir(run: str | Path, stage: str) -> Path:
    return Path(run) / STAGE_DIRS.get(stage, stage)


def reads_cleaned(run: str | Path, data: list[str] | None, cleaned: bool | None = None) -> bool:
    """Whether the tokenizer and data stages read `clean/docs.jsonl`: never when the user names files; else
    as asked (`cleaned`), or — None — whenever the run has a complete clean stage."""
    if data or cleaned is False:
        return False
    done = is_complete(stage_dir(run, "clean"))
    if cleaned and not done:
        raise ChatforgeError(f"{stage_dir(run, 'clean')}: no complete cleaning run; run `chatforge clean --run {run}` first")
    return done


def text_sources(run: str | Path, data: list[str] | None, cleaned: bool) -> list[str]:
    """The text the tokenizer and data stages read: the user's files, else the cleaned documents when
    `cleaned` (as resolved by reads_cleaned), else the world's raw documents."""
    if data:
        return data
    return [str(stage_dir(run, "clean") / "docs.jsonl" if cleaned else stage_dir(run, "world") / "raw")]


def read_json(path: Path, what: str = "file") -> dict:
    """Parse a JSON object from `path`, naming the file and the fix when it is damaged."""
    try:
        obj = json.loads(Path(path).read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ChatforgeError(f"{path}: damaged {what} ({e}); delete it and re-run the stage that writes it") from None
    if not isinstance(obj, dict):
        raise ChatforgeError(f"{path}: expected a JSON object in this {what}")
    return obj


def read_stage_info(folder: Path) -> dict:
    """Contents of stage.json ({} when absent)."""
    f = folder / "stage.json"
    return read_json(f, "stage record") if f.is_file() else {}


def is_complete(folder: Path) -> bool:
    return read_stage_info(folder).get("complete") is True


def atomic_write_text(path: Path, text: str) -> None:
    """Readers (other ranks, a concurrent pipeline) see the old or the new file, never half of one."""
    tmp = path.with_name(f"{path.name}.tmp{os.getpid()}")
    tmp.write_text(text)
    tmp.replace(path)


def is_main_process() -> bool:
    """Rank 0 under torchrun (usable before the process group exists), else True."""
    return os.environ.get("RANK", "0") == "0"


def _write_stage_info(folder: Path, info: dict) -> None:
    atomic_write_text(folder / "stage.json", json.dumps(info, indent=2, ensure_ascii=False))


def mark_complete(folder: Path, settings: dict, **info) -> None:
    """Record a finished stage and the settings it was made with (the pipeline compares them)."""
    _write_stage_info(folder, {"complete": True, "settings": settings, **info})


def record_wall_time(folder: Path, seconds: float) -> None:
    """Add the stage's wall-clock seconds (data loading, evaluation and saves included) to its stage.json."""
    info = read_stage_info(folder)
    if info.get("complete"):
        _write_stage_info(folder, {**info, "seconds": round(seconds, 1)})


def read_run_info(run: Path) -> dict:
    f = run / "run.json"
    return read_json(f, "run record") if f.is_file() else {}


def write_run_info(run: Path, **info) -> None:
    run.mkdir(parents=True, exist_ok=True)
    (run / "run.json").write_text(json.dumps({**read_run_info(run), **info}, indent=2))


def model_dir(run: str | Path, stage: str) -> Path:
    """Folder of a trained model stage (base, later sft/rm/ppo/dpo), checked to exist."""
    folder = Path(run) / MODEL_STAGES.get(stage, stage)
    if not (folder / "model.safetensors").is_file():
        raise ChatforgeError(f"{folder}: no trained model; run the `{stage}` stage first")
    return folder
