"""Atomic, resumable training checkpoints.

One file, `checkpoint.pt`, holding full (unsharded) model and optimizer state, the step, token count and
RNG states. Written to `checkpoint.pt.tmp`, fsynced, then renamed over the old one: a kill at any moment,
mid-save included, leaves either the previous complete checkpoint or the new one, never a torn file.
Full state dicts (torch.distributed.checkpoint.state_dict) make the file independent of DDP/FSDP2 and of
the number of processes, so a run saved on 2 processes resumes on 1.
"""

from __future__ import annotations

import os
import random
import signal
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
_FULL = StateDictOptions(full_state_dict=True, cpu_offload=True)


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


def save_checkpoint(stage_dir: Path, model, optimizer, extra: dict, is_main: bool) -> None:
    """All ranks call (state gathering is collective); rank 0 writes."""
    payload = {"model": full_model_state(model), "optim": get_optimizer_state_dict(model, optimizer, options=_FULL),
               "rng": _all_rng_states(), **extra}
    if not is_main:
        return
    final, tmp = stage_dir / CKPT_NAME, stage_dir / (CKPT_NAME + ".tmp")
    with open(tmp, "wb") as f:
        torch.save(payload, f)
        f.flush()
        # Test hook: die mid-save (after the temp file is written, before the rename).
        if os.environ.get("CHATFORGE_TEST_KILL_IN_SAVE") == str(extra.get("step")):
            os.kill(os.getpid(), signal.SIGKILL)
        os.fsync(f.fileno())
    tmp.replace(final)
    _fsync_dir(stage_dir)


def load_checkpoint(stage_dir: Path) -> dict | None:
    """The last complete checkpoint, or None. A leftover temp file from a killed save is discarded."""
    (stage_dir / (CKPT_NAME + ".tmp")).unlink(missing_ok=True)
    f = stage_dir / CKPT_NAME
    if not f.exists():
        return None
    try:
        # weights_only: tensors and plain containers only, so a checkpoint can't run code when loaded
        return torch.load(f, map_location="cpu", weights_only=True)
    except Exception as e:
        raise ChatforgeError(f"{f}: checkpoint is corrupt or unreadable ({type(e).__name__}: {e}). "
                             f"Delete it to restart this stage from scratch.") from None


def restore(model, optimizer, payload: dict, rank: int) -> None:
    """Load weights and optimizer state (resharding as needed) and this rank's RNG state. Resuming on a
    different number of processes keeps rank r's stream where it exists, else reseeds deterministically."""
    set_model_state_dict(model, payload["model"], options=StateDictOptions(full_state_dict=True))
    set_optimizer_state_dict(model, optimizer, payload["optim"], options=StateDictOptions(full_state_dict=True))
    states = payload["rng"]
    if rank < len(states):
        set_rng_state(states[rank])
    else:
        torch.manual_seed(int(payload["step"]) * 1000 + rank)
