"""Atomic, resumable training checkpoints, full or sharded; either resumes on any number of processes.

- full: one file, `checkpoint.pt`, with unsharded model and optimizer state (gathered to rank 0, which
  writes), the step, token count and every rank's RNG state. Written to `checkpoint.pt.tmp`, fsynced, then
  renamed over the old one.
- sharded: a folder, `checkpoint/`, written by torch.distributed.checkpoint (DCP): every process writes its
  own FSDP2 shards (DDP's replicas are written once), so nothing is gathered on one rank — the format for
  models whose full state doesn't fit one process — plus `meta.pt` (step, tokens, settings, RNG states).
  Written to `checkpoint.tmp/`, fsynced, then swapped in (`checkpoint/` -> `checkpoint.old/`, the new
  folder -> `checkpoint/`, the old one deleted); a load finishes an interrupted swap. DCP reshards on load,
  so shards written by 2 processes load on 1, or on 4.
A kill at any moment, mid-save included, leaves the previous complete checkpoint or the new one, never a
torn one. Saving in one format removes the other, so a stage folder holds one checkpoint.
Both keep state dicts keyed by parameter name (torch.distributed.checkpoint.state_dict), independent of
DDP/FSDP2 wrapping.
"""

from __future__ import annotations

import contextlib
import os
import random
import shutil
import signal
import warnings
from pathlib import Path

import numpy as np
import torch
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_model_state_dict,
    get_optimizer_state_dict,
    set_model_state_dict,
    set_optimizer_state_dict,
)

from chatforge import ChatforgeError

CKPT_NAME = "checkpoint.pt"
SHARDED_NAME = "checkpoint"  # a folder
CHECKPOINT_FORMATS = ("auto", "full", "sharded")
_FULL = StateDictOptions(full_state_dict=True, cpu_offload=True)


def check_format(fmt: str) -> None:
    """TrainConfig / PPOConfig .checkpoint_format must name a format."""
    if fmt not in CHECKPOINT_FORMATS:
        raise ChatforgeError(f"--checkpoint-format {fmt!r}: expected one of {', '.join(CHECKPOINT_FORMATS)}")


def is_sharded(fmt: str, fsdp: bool) -> bool:
    """Whether `fmt` writes sharded checkpoints: auto = sharded under FSDP2."""
    check_format(fmt)
    return fmt == "sharded" or (fmt == "auto" and fsdp)


def _sharded_paths(stage_dir: Path) -> tuple[Path, Path, Path]:
    """(the complete folder, the one being written, the one being replaced)."""
    return stage_dir / SHARDED_NAME, stage_dir / (SHARDED_NAME + ".tmp"), stage_dir / (SHARDED_NAME + ".old")


def checkpoint_path(stage_dir: Path) -> Path:
    """Where the stage's checkpoint is (the sharded folder when there is one), for messages."""
    return stage_dir / SHARDED_NAME if (stage_dir / SHARDED_NAME).is_dir() else stage_dir / CKPT_NAME


def remove_checkpoints(stage_dir: Path) -> None:
    """Delete every checkpoint of the stage, complete or not (start over)."""
    for name in (CKPT_NAME, CKPT_NAME + ".tmp"):
        (stage_dir / name).unlink(missing_ok=True)
    for folder in _sharded_paths(stage_dir):
        shutil.rmtree(folder, ignore_errors=True)


def full_model_state(model: torch.nn.Module) -> dict:
    """Unsharded CPU state dict; under FSDP2 every rank must call this (it all-gathers)."""
    return get_model_state_dict(model, options=_FULL)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def rng_state() -> dict:
    """This process's RNG states as plain tensors/lists, so the checkpoint loads with weights_only=True."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    version, internal, gauss_py = random.getstate()
    state = {"python": [version, list(internal), gauss_py], "torch": torch.get_rng_state(),
             "numpy": [kind, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, gauss]}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    version, internal, gauss_py = state["python"]
    random.setstate((version, tuple(internal), gauss_py))
    kind, keys, pos, has_gauss, gauss = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, gauss))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _all_rng_states() -> list[dict]:
    """Every rank's RNG state (collective), so each rank resumes its own dropout stream."""
    import torch.distributed as dist

    mine = rng_state()
    if not dist.is_initialized():
        return [mine]
    gathered: list = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, mine)
    return gathered


def _kill_hook(step) -> None:
    # Test hook: die mid-save (after the new checkpoint is written, before it replaces the old one).
    if os.environ.get("CHATFORGE_TEST_KILL_IN_SAVE") == str(step):
        os.kill(os.getpid(), signal.SIGKILL)


@contextlib.contextmanager
def _single_process_quiet():
    """DCP warns on every single-process save and load that it assumes a single process: we mean it."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="torch.distributed is disabled")
        yield


def _barrier() -> None:
    import torch.distributed as dist

    if dist.is_initialized():
        dist.barrier()


def save_checkpoint(stage_dir: Path, model, optimizer, extra: dict, is_main: bool, sharded: bool = False) -> None:
    """All ranks call (state gathering, or DCP's shard writing, is collective). Full: rank 0 writes."""
    if sharded:
        _save_sharded(stage_dir, model, optimizer, extra, is_main)
        return
    payload = {"model": full_model_state(model), "optim": get_optimizer_state_dict(model, optimizer, options=_FULL),
               "rng": _all_rng_states(), **extra}
    if not is_main:
        return
    final, tmp = stage_dir / CKPT_NAME, stage_dir / (CKPT_NAME + ".tmp")
    with open(tmp, "wb") as f:
        torch.save(payload, f)
        f.flush()
        _kill_hook(extra.get("step"))
        os.fsync(f.fileno())
    tmp.replace(final)
    _fsync_dir(stage_dir)
    final_sharded, _, old_sharded = _sharded_paths(stage_dir)
    for folder in (final_sharded, old_sharded):
        shutil.rmtree(folder, ignore_errors=True)


def _save_sharded(stage_dir: Path, model, optimizer, extra: dict, is_main: bool) -> None:
    import torch.distributed as dist
    import torch.distributed.checkpoint as dcp

    final, tmp, old = _sharded_paths(stage_dir)
    rngs = _all_rng_states()
    if is_main:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
    _barrier()
    # default options: each rank's own shards (DTensors under FSDP2), keyed by parameter name
    state = {"model": get_model_state_dict(model), "optim": get_optimizer_state_dict(model, optimizer)}
    with _single_process_quiet():
        dcp.save(state, checkpoint_id=tmp, no_dist=not dist.is_initialized())  # returns once every rank has written
    if is_main:
        with open(tmp / "meta.pt", "wb") as f:
            torch.save({**extra, "rng": rngs}, f)
            f.flush()
            os.fsync(f.fileno())
        _fsync_dir(tmp)
        _kill_hook(extra.get("step"))
        if final.exists():
            final.rename(old)
        tmp.rename(final)
        _fsync_dir(stage_dir)
        shutil.rmtree(old, ignore_errors=True)
        (stage_dir / CKPT_NAME).unlink(missing_ok=True)
    _barrier()


def _torch_load(f: Path) -> dict:
    try:
        # weights_only: tensors and plain containers only, so a checkpoint can't run code when loaded
        return torch.load(f, map_location="cpu", weights_only=True)
    except Exception as e:
        raise ChatforgeError(f"{f}: checkpoint is corrupt or unreadable ({type(e).__name__}: {e}). "
                             f"Delete it to restart this stage from scratch.") from None


def load_checkpoint(stage_dir: Path, is_main: bool = True) -> dict | None:
    """The last complete checkpoint, or None; all ranks call. Leftovers of a killed save are discarded and
    an interrupted swap of sharded folders is finished (by rank 0, before anyone reads). A sharded
    checkpoint's payload holds its metadata and `sharded` (the folder `restore` reads the shards from)."""
    final, tmp, old = _sharded_paths(stage_dir)
    if is_main:
        (stage_dir / (CKPT_NAME + ".tmp")).unlink(missing_ok=True)
        shutil.rmtree(tmp, ignore_errors=True)
        if old.is_dir():
            if final.is_dir():
                shutil.rmtree(old)
            else:
                old.rename(final)  # killed between the two renames: the old folder is the complete one
    _barrier()
    if final.is_dir():
        meta = final / "meta.pt"
        if not meta.is_file() or not (final / ".metadata").is_file():
            raise ChatforgeError(f"{final}: sharded checkpoint is incomplete (no meta.pt or .metadata). "
                                 f"Delete it to restart this stage from scratch.")
        return {**_torch_load(meta), "sharded": str(final)}
    f = stage_dir / CKPT_NAME
    return _torch_load(f) if f.exists() else None


def restore(model, optimizer, payload: dict, rank: int) -> None:
    """Load weights and optimizer state (resharding as needed) and this rank's RNG state. Resuming on a
    different number of processes keeps rank r's stream where it exists, else reseeds deterministically."""
    if "sharded" in payload:
        import torch.distributed as dist
        import torch.distributed.checkpoint as dcp

        # this process's view of the state (its shards under FSDP2) is filled in place from the saved shards
        state = {"model": get_model_state_dict(model), "optim": get_optimizer_state_dict(model, optimizer)}
        from torch.distributed.checkpoint.api import CheckpointException  # a BaseException, not an Exception

        try:
            with _single_process_quiet():
                dcp.load(state, checkpoint_id=payload["sharded"], no_dist=not dist.is_initialized())
        except (Exception, CheckpointException) as e:
            raise ChatforgeError(f"{payload['sharded']}: cannot load the sharded checkpoint ({type(e).__name__}: "
                                 f"{str(e)[:300]}). Delete it to restart this stage from scratch.") from None
        set_model_state_dict(model, state["model"])
        set_optimizer_state_dict(model, optimizer, state["optim"])
    else:
        set_model_state_dict(model, payload["model"], options=StateDictOptions(full_state_dict=True))
        set_optimizer_state_dict(model, optimizer, payload["optim"], options=StateDictOptions(full_state_dict=True))
    states = payload["rng"]
    if rank < len(states):
        set_rng_state(states[rank])
    else:
        torch.manual_seed(int(payload["step"]) * 1000 + rank)
