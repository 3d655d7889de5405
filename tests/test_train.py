"""Pre-training: learning, exact resume after SIGKILL (also mid-save), multi-process equality, bad input."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import time

import pytest
import torch

from chatforge.cli import main
from chatforge.config import TrainConfig
from chatforge.train.loop import lr_at
from tests.conftest import TINY_SETS, TINY_TRAIN, cli_env, pretrain_cmd, read_metrics, run_ok, torchrun_cmd


def test_lr_schedule_warmup_then_cosine():
    cfg = TrainConfig(max_steps=100, warmup_steps=10, lr=1.0, min_lr_ratio=0.1)
    lrs = [lr_at(s, cfg) for s in range(101)]
    assert lrs[0] == pytest.approx(0.1) and lrs[9] == pytest.approx(1.0)
    assert all(a >= b for a, b in zip(lrs[10:], lrs[11:]))
    assert lrs[100] == pytest.approx(0.1) and lrs[55] == pytest.approx(0.55)


def test_loss_decreases_and_stage_outputs(prepared_run, capsys):
    assert main(["pretrain", "--run", str(prepared_run), *TINY_SETS, *TINY_TRAIN, "--max-steps", "60",
                 "--eval-every", "20"]) == 0  # 60 steps of 4 x 32 tokens
    base = prepared_run / "base"
    train, val = read_metrics(base)
    assert sorted(train) == list(range(1, 61))
    first, last = sum(train[s] for s in range(1, 6)) / 5, sum(train[s] for s in range(56, 61)) / 5
    assert last < first - 1.0, (first, last)  # clearly learning, not noise (init loss is ~ln 1024 = 6.9)
    assert val[60] < val[20] < math.log(1024)
    for name in ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json", "stage.json",
                 "checkpoint.pt", "train_config.json"):
        assert (base / name).is_file(), name
    # the sample command continues text with the trained model
    capsys.readouterr()
    assert main(["sample", "--run", str(prepared_run), "--stage", "base", "The town of",
                 "--max-new-tokens", "10"]) == 0
    assert capsys.readouterr().out.strip().startswith("The town of")


@pytest.mark.slow
def test_resume_after_sigkill_equals_uninterrupted(prepared_run, tmp_path):
    import shutil

    other = tmp_path / "uninterrupted"
    shutil.copytree(prepared_run, other)
    args = ["--max-steps", "150", "--save-every", "10", "--eval-every", "50"]
    run_ok(pretrain_cmd(other, *args))
    reference, ref_val = read_metrics(other / "base")

    proc = subprocess.Popen(pretrain_cmd(prepared_run, *args), env=cli_env(), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    metrics = prepared_run / "base" / "metrics.jsonl"
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        if metrics.exists() and metrics.read_text().count("train/loss") >= 25:
            proc.send_signal(signal.SIGKILL)
            break
        time.sleep(0.005)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, "the run finished before it could be killed"
    assert not (prepared_run / "base" / "stage.json").exists()
    killed_at = max(read_metrics(prepared_run / "base")[0])
    assert killed_at < 150

    out = run_ok(pretrain_cmd(prepared_run, *args))
    assert "resuming from" in out.stdout
    resumed, res_val = read_metrics(prepared_run / "base")
    assert resumed == reference  # bit-identical loss curve, every step present exactly once
    assert res_val == ref_val


@pytest.mark.slow
@pytest.mark.parametrize("dropout", ["0.0", "0.1"])
def test_kill_in_the_middle_of_a_save_keeps_the_previous_checkpoint(prepared_run, tmp_path, dropout):
    """With dropout the RNG streams must be restored too for the resumed curve to be identical."""
    import shutil

    other = tmp_path / "uninterrupted"
    shutil.copytree(prepared_run, other)
    args = ["--max-steps", "30", "--save-every", "10", "--eval-every", "100", "--set", f"model.dropout={dropout}"]
    run_ok(pretrain_cmd(other, *args))
    env = cli_env()
    env["CHATFORGE_TEST_KILL_IN_SAVE"] = "20"  # dies after writing the temp file of step 20, before rename
    proc = subprocess.run(pretrain_cmd(prepared_run, *args), env=env, capture_output=True, timeout=300)
    assert proc.returncode == -signal.SIGKILL
    base = prepared_run / "base"
    assert (base / "checkpoint.pt.tmp").exists()
    assert torch.load(base / "checkpoint.pt", weights_only=True)["step"] == 10
    out = run_ok(pretrain_cmd(prepared_run, *args))
    assert "at step 10" in out.stdout
    assert not (base / "checkpoint.pt.tmp").exists()
    assert read_metrics(base) == read_metrics(other / "base")


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["ddp", "fsdp"])
def test_two_processes_equal_one(prepared_run, tmp_path, mode):
    """Same global batch (1 proc x 2 micro-batches == 2 procs x 1): same losses within float tolerance. The
    1-process run spells it --grad-accum 2, the 2-process run --global-batch 8 (4 per process: accumulation 1)."""
    import shutil

    multi = tmp_path / "multi"
    shutil.copytree(prepared_run, multi)
    common = ["--max-steps", "12", "--eval-every", "6", "--save-every", "100"]
    run_ok(pretrain_cmd(prepared_run, *common, "--grad-accum", "2"))
    run_ok(torchrun_cmd(multi, 2, *common, "--dist", mode, "--global-batch", "8"))
    single, single_val = read_metrics(prepared_run / "base")
    double, double_val = read_metrics(multi / "base")
    assert sorted(single) == sorted(double) == list(range(1, 13))
    for step in single:
        assert double[step] == pytest.approx(single[step], rel=1e-5, abs=1e-5), step
    for step in single_val:
        assert double_val[step] == pytest.approx(single_val[step], rel=1e-5, abs=1e-5)
    # the final weights agree too
    from safetensors.torch import load_file

    a, b = load_file(prepared_run / "base" / "model.safetensors"), load_file(multi / "base" / "model.safetensors")
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], atol=1e-4, rtol=1e-3)


@pytest.mark.slow
@pytest.mark.parametrize("mode,fmt", [("fsdp", "sharded"), ("ddp", "full")])
def test_save_on_two_processes_resume_on_one(prepared_run, tmp_path, mode, fmt):
    """FSDP2 writes sharded checkpoints by default (each process its own shards), DDP a full one; the
    2-process run dies while saving step 10, and 1 process resumes from step 5 on the same curve."""
    import shutil

    other = tmp_path / "single"
    shutil.copytree(prepared_run, other)
    common = ["--save-every", "5", "--eval-every", "100", "--max-steps", "10", "--global-batch", "8"]
    run_ok(pretrain_cmd(other, *common))
    env = cli_env()
    env["CHATFORGE_TEST_KILL_IN_SAVE"] = "10"  # the 2-process run dies while saving step 10
    proc = subprocess.run(torchrun_cmd(prepared_run, 2, *common, "--dist", mode), env=env, capture_output=True,
                          timeout=300)
    assert proc.returncode != 0
    base = prepared_run / "base"
    if fmt == "sharded":
        assert not (base / "checkpoint.pt").exists()
        assert len(list((base / "checkpoint").glob("*.distcp"))) == 2  # one file of shards per process
        assert torch.load(base / "checkpoint" / "meta.pt", weights_only=True)["step"] == 5
        assert (base / "checkpoint.tmp" / "meta.pt").is_file()  # step 10, written but never swapped in
    else:
        assert not (base / "checkpoint").exists()
        assert torch.load(base / "checkpoint.pt", weights_only=True)["step"] == 5
    out = run_ok(pretrain_cmd(prepared_run, *common))  # same global batch, 1 process (accumulation 2)
    assert "at step 5" in out.stdout
    assert (base / "checkpoint.pt").is_file() and not (base / "checkpoint").exists()  # 1 process saves full
    got, _ = read_metrics(base)
    want, _ = read_metrics(other / "base")
    assert sorted(got) == list(range(1, 11))
    for step in want:
        assert got[step] == pytest.approx(want[step], rel=1e-5, abs=1e-5)


def test_missing_run_folder_is_a_clear_error(tmp_path, capsys):
    assert main(["pretrain", "--run", str(tmp_path / "nope"), "--max-steps", "1"]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_missing_shards_is_a_clear_error(prepared_run, capsys):
    (prepared_run / "data" / "meta.json").unlink()
    assert main(["pretrain", "--run", str(prepared_run), "--max-steps", "1"]) == 2
    assert "chatforge data" in capsys.readouterr().err


def test_corrupt_checkpoint_is_a_clear_error(prepared_run, capsys):
    base = prepared_run / "base"
    base.mkdir()
    (base / "checkpoint.pt").write_bytes(b"\x00garbage" * 100)
    assert main(["pretrain", "--run", str(prepared_run), *TINY_SETS, *TINY_TRAIN, "--max-steps", "2"]) == 2
    err = capsys.readouterr().err
    assert "corrupt" in err and "checkpoint.pt" in err


def test_changed_settings_refuse_to_resume_until_forced(prepared_run, capsys):
    args = ["pretrain", "--run", str(prepared_run), *TINY_SETS, *TINY_TRAIN, "--save-every", "2"]
    assert main([*args, "--max-steps", "2"]) == 0
    capsys.readouterr()
    assert main([*args, "--max-steps", "2", "--set", "model.n_layer=3"]) == 2
    err = capsys.readouterr().err
    assert "different settings" in err and "n_layer" in err and "--force" in err
    assert main([*args, "--max-steps", "4"]) == 2  # a longer schedule changes the LR curve: refused too
    assert "max_steps" in capsys.readouterr().err
    assert main([*args, "--max-steps", "4", "--force"]) == 0
    train, _ = read_metrics(prepared_run / "base")
    assert sorted(train) == [1, 2, 3, 4]


def test_restart_without_checkpoint_drops_stale_metrics(prepared_run):
    base = prepared_run / "base"
    base.mkdir()
    stale = [json.dumps({"step": s, "train/loss": 99.0}) for s in (1, 2, 3)]
    (base / "metrics.jsonl").write_text("\n".join(stale) + '\n{"step": 4, "train/lo')  # torn by a kill
    assert main(["pretrain", "--run", str(prepared_run), *TINY_SETS, *TINY_TRAIN, "--max-steps", "3"]) == 0
    train, _ = read_metrics(base)  # read_metrics also asserts no duplicate steps
    assert sorted(train) == [1, 2, 3] and 99.0 not in train.values()


@pytest.mark.parametrize("world", [1, 2, 3])
def test_val_batches_same_count_on_every_rank_and_same_windows(prepared_run, world):
    from chatforge.train.dist import DistInfo
    from chatforge.train.pretrain import PretrainTask

    task = PretrainTask(prepared_run / "data", seq_len=32, seed=0)
    total = min(7 * 3, task.val.n)
    per_rank = [task.val_batches(DistInfo(rank=r, world_size=world), 3, 7) for r in range(world)]
    assert len({len(b) for b in per_rank}) == 1  # FSDP forwards are collective
    rows = [row for batches in per_rank for b in batches if task.tokens_in(b) for row in b["x"].tolist()]
    single = [row for b in task.val_batches(DistInfo(), 3, 7) for row in b["x"].tolist()]
    assert sorted(rows) == sorted(single) and len(single) == total


@pytest.mark.parametrize("flag,value,msg", [("--device", "tpu9", "--device"), ("--seed", "-1", "--seed -1"),
                                            ("--dist", "zero3", "--dist 'zero3'")])
def test_bad_flags_are_clear_errors(prepared_run, capsys, flag, value, msg):
    assert main(["pretrain", "--run", str(prepared_run), *TINY_SETS, *TINY_TRAIN, flag, value]) == 2
    assert msg in capsys.readouterr().err


def test_bad_override_is_a_clear_error(prepared_run, capsys):
    assert main(["pretrain", "--run", str(prepared_run), "--set", "train.nope=1"]) == 2
    assert "unknown train setting 'nope'" in capsys.readouterr().err
    assert main(["pretrain", "--run", str(prepared_run), "--set", "model.n_layer=two"]) == 2
    assert "model.n_layer" in capsys.readouterr().err


def test_torchrun_env_is_not_leaking():
    assert "RANK" not in os.environ  # tests above rely on single-process defaults
