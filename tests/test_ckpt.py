"""Checkpoint formats (full file, sharded DCP folder) in one process, and the global batch's accumulation.

The multi-process halves (sharded on 2 FSDP2 processes -> resumed on 1; DDP's full file) are in test_train.py.
"""

from __future__ import annotations

import pytest
import torch

from chatforge import ChatforgeError
from chatforge.cli import _resolve_preset, build_parser
from chatforge.config import TrainConfig
from chatforge.model import GPT, ModelConfig
from chatforge.train import ckpt
from chatforge.train.loop import build_optimizer, per_process_accumulation

CFG = ModelConfig(vocab_size=64, n_layer=2, n_head=2, d_model=32, max_seq_len=16)


def _model_and_optimizer(seed: int):
    torch.manual_seed(seed)
    model = GPT(CFG)
    return model, build_optimizer(model, TrainConfig(lr=1e-2), torch.device("cpu"))


def _step(model, opt, seed: int) -> float:
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(0, CFG.vocab_size, (2, 16), generator=g)
    _, loss = model(x, x)
    loss.backward()
    opt.step()
    opt.zero_grad(set_to_none=True)
    return loss.item()


@pytest.mark.parametrize("sharded", [True, False])
def test_a_checkpoint_restores_weights_optimizer_and_the_next_steps(tmp_path, sharded):
    model, opt = _model_and_optimizer(0)
    for s in range(3):
        _step(model, opt, s)
    ckpt.save_checkpoint(tmp_path, model, opt, {"step": 3, "tokens": 96}, is_main=True, sharded=sharded)
    torch.manual_seed(99)
    want = [_step(model, opt, s) for s in (3, 4)]  # the uninterrupted continuation

    other, other_opt = _model_and_optimizer(1)  # different initial weights: all must come from the checkpoint
    payload = ckpt.load_checkpoint(tmp_path)
    assert payload["step"] == 3 and payload["tokens"] == 96 and ("sharded" in payload) == sharded
    ckpt.restore(other, other_opt, payload, rank=0)
    torch.manual_seed(99)
    got = [_step(other, other_opt, s) for s in (3, 4)]
    assert got == want  # bit-identical: Adam moments and step counts came back too
    for (k, a), (_, b) in zip(model.state_dict().items(), other.state_dict().items()):
        assert torch.equal(a, b), k
    assert ckpt.checkpoint_path(tmp_path).name == ("checkpoint" if sharded else "checkpoint.pt")


def test_saving_in_one_format_removes_the_other(tmp_path):
    model, opt = _model_and_optimizer(0)
    _step(model, opt, 0)
    ckpt.save_checkpoint(tmp_path, model, opt, {"step": 1}, is_main=True, sharded=True)
    assert (tmp_path / "checkpoint" / ".metadata").is_file() and not (tmp_path / "checkpoint.pt").exists()
    ckpt.save_checkpoint(tmp_path, model, opt, {"step": 2}, is_main=True, sharded=False)
    assert (tmp_path / "checkpoint.pt").is_file() and not (tmp_path / "checkpoint").exists()
    ckpt.save_checkpoint(tmp_path, model, opt, {"step": 3}, is_main=True, sharded=True)
    assert not (tmp_path / "checkpoint.pt").exists()
    assert ckpt.load_checkpoint(tmp_path)["step"] == 3
    ckpt.remove_checkpoints(tmp_path)
    assert not any(tmp_path.iterdir()) and ckpt.load_checkpoint(tmp_path) is None


def test_a_save_killed_between_the_folder_renames_loads_the_complete_old_one(tmp_path):
    model, opt = _model_and_optimizer(0)
    _step(model, opt, 0)
    ckpt.save_checkpoint(tmp_path, model, opt, {"step": 7}, is_main=True, sharded=True)
    # the state after `checkpoint/ -> checkpoint.old/` and before `checkpoint.tmp/ -> checkpoint/`
    (tmp_path / "checkpoint").rename(tmp_path / "checkpoint.old")
    (tmp_path / "checkpoint.tmp").mkdir()
    (tmp_path / "checkpoint.tmp" / "half-written.distcp").write_bytes(b"\x00" * 10)
    assert (tmp_path / "checkpoint.old" / "meta.pt").is_file() and not (tmp_path / "checkpoint").exists()
    assert ckpt.load_checkpoint(tmp_path)["step"] == 7
    assert (tmp_path / "checkpoint").is_dir()
    assert not (tmp_path / "checkpoint.old").exists() and not (tmp_path / "checkpoint.tmp").exists()


def test_broken_sharded_checkpoints_are_clear_errors(tmp_path):
    model, opt = _model_and_optimizer(0)
    _step(model, opt, 0)
    ckpt.save_checkpoint(tmp_path, model, opt, {"step": 1, "rng": []}, is_main=True, sharded=True)
    for shard in (tmp_path / "checkpoint").glob("*.distcp"):
        shard.write_bytes(b"garbage")
    payload = ckpt.load_checkpoint(tmp_path)
    with pytest.raises(ChatforgeError, match="cannot load the sharded checkpoint"):
        ckpt.restore(model, opt, payload, rank=0)
    (tmp_path / "checkpoint" / "meta.pt").unlink()
    with pytest.raises(ChatforgeError, match="incomplete"):
        ckpt.load_checkpoint(tmp_path)
    with pytest.raises(ChatforgeError, match="--checkpoint-format 'zip'"):
        ckpt.is_sharded("zip", fsdp=True)
    assert ckpt.is_sharded("auto", fsdp=True) and not ckpt.is_sharded("auto", fsdp=False)
    assert ckpt.is_sharded("sharded", fsdp=False) and not ckpt.is_sharded("full", fsdp=True)


def test_the_global_batch_sets_accumulation_per_process_count():
    cfg = TrainConfig(batch_size=16, grad_accum=1, global_batch=512)
    assert [per_process_accumulation(cfg, w).grad_accum for w in (1, 2, 8, 32)] == [32, 16, 4, 1]
    assert per_process_accumulation(TrainConfig(batch_size=4, grad_accum=3), 2).grad_accum == 3  # unset: as given
    with pytest.raises(ChatforgeError, match="not a multiple"):
        per_process_accumulation(cfg, 3)
    with pytest.raises(ChatforgeError, match="not a multiple"):
        per_process_accumulation(TrainConfig(batch_size=16, global_batch=24), 1)


def test_the_gpt2_preset_keeps_its_half_million_token_batch_unless_grad_accum_is_given():
    parse = build_parser().parse_args
    _, preset, _ = _resolve_preset(parse(["pretrain", "--run", "r", "--preset", "gpt2-124m"]))
    assert preset.train.global_batch * preset.train.seq_len == 524_288
    assert per_process_accumulation(preset.train, 4).grad_accum == 8
    _, preset, _ = _resolve_preset(parse(["pretrain", "--run", "r", "--preset", "gpt2-124m", "--grad-accum", "2"]))
    assert preset.train.global_batch == 0 and preset.train.grad_accum == 2
    _, preset, _ = _resolve_preset(parse(["pretrain", "--run", "r", "--preset", "gpt2-124m",
                                          "--global-batch", "64", "--batch-size", "8"]))
    assert per_process_accumulation(preset.train, 2).grad_accum == 4
