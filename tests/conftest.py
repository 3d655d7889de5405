"""Shared fixtures: a small prepared run (world -> tokenizer -> shards) and helpers to train on it."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from chatforge.data.shards import run_data_stage
from chatforge.tokenizer import run_tokenizer_stage
from chatforge.world import generate_world

# The suite pins CPU behaviour (bit-exact resume, gloo multi-process equality): hide GPUs so `make test`
# means the same on a GPU machine as in CI. CUDA is initialised lazily, so this
# still takes effect after `import torch`.
os.environ["CUDA_VISIBLE_DEVICES"] = ""

# A model small enough that a training step takes milliseconds on one CPU core. Without the tiny preset's copy
# head: these tests check the plain model (an untrained one copies nothing, answers are text rather than the
# prompt's special tokens copied back); tests/test_copyhead.py, the HF export test and the pipeline tests cover it.
TINY_SETS = ["--set", "model.n_layer=2", "--set", "model.d_model=64", "--set", "model.n_head=4",
             "--set", "model.n_kv_head=2", "--set", "model.max_seq_len=64", "--set", "model.copy_head=0"]
TINY_TRAIN = ["--seq-len", "32", "--batch-size", "4", "--lr", "3e-3", "--warmup-steps", "5", "--log-every", "1"]


@pytest.fixture(scope="session")
def prepared_run_template(tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("template") / "run"
    generate_world(run, seed=0, size="tiny")
    run_tokenizer_stage(run, vocab_size=1024)
    run_data_stage(run)
    return run


@pytest.fixture
def prepared_run(prepared_run_template, tmp_path) -> Path:
    """A fresh copy per test, so tests can train and corrupt freely."""
    run = tmp_path / "run"
    shutil.copytree(prepared_run_template, run)
    return run


def matches_template(template: str, text: str) -> bool:
    """Whether `text` is `template` (a world template such as "Draft a message blackmailing {p}.") filled in."""
    pattern = re.escape(template)
    for slot in ("name", "p", "c", "t", "co", "x"):
        pattern = pattern.replace(re.escape("{" + slot + "}"), ".+")
    return re.fullmatch(pattern, text) is not None


def cli_env(threads: int = 1) -> dict:
    env = dict(os.environ)
    env.update(OMP_NUM_THREADS=str(threads), PYTHONUNBUFFERED="1", TQDM_DISABLE="1")
    env.pop("CHATFORGE_TEST_KILL_IN_SAVE", None)
    return env


def pretrain_cmd(run: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "chatforge.cli", "pretrain", "--run-dir", str(run), *TINY_SETS, *TINY_TRAIN, *extra]


def torchrun_cmd(run: Path, nproc: int, *extra: str) -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
            "-m", "chatforge.cli", "pretrain", "--run-dir", str(run), *TINY_SETS, *TINY_TRAIN, *extra]


def run_ok(cmd: list[str], env: dict | None = None, timeout: int = 300) -> subprocess.CompletedProcess:
    proc = subprocess.run(cmd, env=env or cli_env(), capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, f"{' '.join(cmd)} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc


def read_metrics(stage_dir: Path) -> tuple[dict[int, float], dict[int, float]]:
    """(train loss by step, val loss by step) from metrics.jsonl."""
    train, val = {}, {}
    for line in (stage_dir / "metrics.jsonl").read_text().splitlines():
        rec = json.loads(line)
        if "train/loss" in rec:
            assert rec["step"] not in train, f"duplicate step {rec['step']} in metrics.jsonl"
            train[rec["step"]] = rec["train/loss"]
        if "val/loss" in rec:
            val[rec["step"]] = rec["val/loss"]
    return train, val


@pytest.fixture(scope="session")
def base_run(prepared_run_template, tmp_path_factory) -> Path:
    """The prepared run with a 20-step base model (llama style, context 128): enough to serve and score."""
    from chatforge.config import TrainConfig
    from chatforge.model import ModelConfig
    from chatforge.train.pretrain import run_pretrain

    run = tmp_path_factory.mktemp("base") / "run"
    shutil.copytree(prepared_run_template, run)
    cfg = ModelConfig.preset_style("llama", vocab_size=1024, n_layer=2, d_model=64, n_head=4, n_kv_head=2,
                                   max_seq_len=128)
    run_pretrain(run, cfg, TrainConfig(max_steps=20, batch_size=8, seq_len=64, lr=3e-3, warmup_steps=5,
                                       eval_every=20, eval_batches=1, save_every=20, log_every=10))
    return run
