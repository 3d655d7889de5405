"""SFT: exact label masks, packing without cross-attention, bad-record handling, ptx mixing, LoRA, the stage."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from chatforge import ChatforgeError
from chatforge.config import TrainConfig
from chatforge.model import GPT, ModelConfig, load_model
from chatforge.run import read_stage_info
from chatforge.tokenizer import Tokenizer
from chatforge.train.sampler import WindowSampler
from chatforge.train.sft import SFTOptions, SFTTask, run_sft
from chatforge.train.sft_data import Sample, build_row, load_samples, pack, tokenize_conversation

CONVO = [{"role": "system", "content": "Be brief."},
         {"role": "user", "content": "Where is Kalo?"},
         {"role": "assistant", "content": "Kalo lies on the Jade River."},
         {"role": "user", "content": "卡洛有多少人？"},
         {"role": "assistant", "content": "卡洛有1200人。"}]


# The test tokenizer has 1,024 tokens, so some of the world's grounded demonstrations (passages in Chinese
# especially) are longer than a 256-token row; the demo's 4,096-token tokenizer fits them all (test_world).
TEST_ON_BAD = "skip"


@pytest.fixture(scope="module")
def tok(prepared_run_template) -> Tokenizer:
    return Tokenizer.load(prepared_run_template / "tokenizer")


def _sample(tok, messages) -> Sample:
    ids, trained = tokenize_conversation(tok, messages)
    return Sample(np.asarray(ids), np.asarray(trained))


def test_label_mask_is_exactly_the_assistant_spans(tok):
    ids, trained = tokenize_conversation(tok, CONVO)
    assert ids == tok.encode_chat(CONVO)  # the same ids as the chat template
    want = [t for m in CONVO if m["role"] == "assistant" for t in [*tok.encode(m["content"]), tok.end_id]]
    assert [i for i, on in zip(ids, trained) if on] == want
    # as training targets: every non-ignored target is an assistant token predicted from the token before it
    row = build_row([Sample(np.asarray(ids), np.asarray(trained))], 64, tok.pad_id)
    assert [int(t) for t in row["y"] if t != -100] == want
    ys = row["y"][: len(ids) - 1]
    for t in range(len(ids) - 1):
        assert (ys[t] != -100) == trained[t + 1] and (not trained[t + 1] or ys[t] == ids[t + 1])
    assert (row["y"][len(ids) - 1:] == -100).all()  # padding carries no loss
    # role tokens, system and user content never carry loss
    system_user = {t for m in CONVO if m["role"] != "assistant" for t in tok.encode(m["content"])}
    trained_ids = [i for i, on in zip(ids, trained) if on]
    assert tok.role_ids["assistant"] not in trained_ids and tok.bos_id not in trained_ids
    assert not (set(trained_ids) - set(want)) and system_user - set(want)


@pytest.mark.parametrize("style", ["llama", "gpt2"])
def test_packing_gives_the_same_per_sample_loss_as_unpacked(tok, style):
    torch.manual_seed(0)
    cfg = ModelConfig.preset_style(style, vocab_size=tok.vocab_size, n_layer=2, d_model=64, n_head=4,
                                   max_seq_len=128, **({"n_kv_head": 2} if style == "llama" else {}))
    model = GPT(cfg).eval()
    convos = [CONVO, CONVO[1:3], [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"}]]
    samples = [_sample(tok, c) for c in convos]
    rows = pack(samples, 128)
    assert len(rows) == 1 and sorted(rows[0]) == [0, 1, 2]  # all three share one row
    packed = build_row([samples[i] for i in rows[0]], 128, tok.pad_id)
    b = {k: torch.from_numpy(v)[None] for k, v in packed.items()}
    with torch.no_grad():
        logits, _ = model(b["x"], segment_ids=b["seg"], positions=b["pos"])
        at = 0
        for i in rows[0]:
            s = samples[i]
            alone = build_row([s], s.width, tok.pad_id)
            solo_logits, _ = model(torch.from_numpy(alone["x"])[None])
            y = torch.from_numpy(alone["y"])
            solo = F.cross_entropy(solo_logits[0], y, ignore_index=-100, reduction="none")
            pk = F.cross_entropy(logits[0, at:at + s.width], y, ignore_index=-100, reduction="none")
            assert torch.allclose(pk, solo, atol=1e-5), (style, i)
            at += s.width
        # and without the segment mask the packed losses would differ (the test can fail)
        leaky, _ = model(b["x"])
        assert not torch.allclose(leaky[0, at - samples[rows[0][-1]].width:at],
                                  logits[0, at - samples[rows[0][-1]].width:at], atol=1e-3)


def _write(path, lines):
    path.write_text("\n".join(lines) + "\n")
    return path


def test_bad_records_error_with_file_line_or_are_counted(tok, tmp_path):
    good = json.dumps({"messages": CONVO[1:3]})
    f = _write(tmp_path / "chats.jsonl", [
        good,
        json.dumps({"prompt": "Say hi", "completion": "Hi!"}),  # TRL prompt/completion
        json.dumps({"prompt": [{"role": "user", "content": "2+2?"}],
                    "completion": [{"role": "assistant", "content": "4"}]}),  # TRL conversational
        "{not json",
        json.dumps({"messages": []}),
        json.dumps({"messages": [{"role": "wizard", "content": "x"}, {"role": "assistant", "content": "y"}]}),
        json.dumps({"messages": [{"role": "user", "content": "unanswered"}]}),
        json.dumps({"messages": [{"role": "user", "content": 5}, {"role": "assistant", "content": "y"}]}),
        json.dumps({"text": "no messages"}),
        json.dumps({"messages": [{"role": "user", "content": "long " * 200}, {"role": "assistant", "content": "ok"}]}),
    ])
    with pytest.raises(ChatforgeError, match=r"chats.jsonl:4: not valid JSON"):
        load_samples([f], tok, 128, "error")
    train, val, report = load_samples([f], tok, 128, "skip")
    assert report.records == 10 and report.kept == 3 and len(train) == 3 and not val
    assert report.skipped == {"not valid JSON": 1, "empty conversation": 1, "unknown role 'wizard' in message 0": 1,
                              "does not end with an assistant turn": 1, "message 0 content is not a string": 1,
                              "no 'messages' (or 'prompt' and 'completion') field": 1, "too long": 1}
    assert report.examples["too long"].startswith(f"{f}:10: too long")
    # prompt/completion became user/assistant turns with the loss on the completion only
    assert [int(t) for t in train[1].ids[train[1].trained]] == [*tok.encode("Hi!"), tok.end_id]
    with pytest.raises(ChatforgeError, match="--on-bad-record"):
        load_samples([f], tok, 128, "ignore")
    only_bad = _write(tmp_path / "bad.jsonl", ["{oops"])
    with pytest.raises(ChatforgeError, match="no usable training conversations"):
        load_samples([only_bad], tok, 128, "skip")


def test_ptx_rows_are_pretraining_windows_with_full_loss(tok, prepared_run_template):
    from chatforge.data.shards import load_split
    from chatforge.train.dist import DistInfo

    hi = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"}]
    samples = [_sample(tok, hi), _sample(tok, CONVO[1:3])] * 10
    assert max(s.width for s in samples) <= 32
    ptx = WindowSampler(load_split(prepared_run_template / "data", "train"), 32, 0)
    task = SFTTask(samples, [], 32, 0, tok.pad_id, ptx, ptx_fraction=0.25)
    info = DistInfo()
    b = task.train_batch(0, 0, info, 8, 1)
    assert b["x"].shape == (8, 32)
    sft_rows, ptx_rows = b["y"][:6], b["y"][6:]
    assert (ptx_rows != -100).all()  # every pre-training token is trained
    assert (sft_rows == -100).any(dim=1).all()  # conversation rows mask prompts and padding
    again = task.train_batch(0, 0, info, 8, 1)
    assert all(torch.equal(b[k], again[k]) for k in b)  # a pure function of the step


@pytest.mark.parametrize("tied", [False, True])
def test_lora_trains_only_adapters_and_merge_equals_adapted(tok, tied):
    pytest.importorskip("peft")
    from chatforge.train.lora import add_lora, is_lora_state, merge_lora

    torch.manual_seed(0)
    cfg = ModelConfig.preset_style("llama", vocab_size=tok.vocab_size, n_layer=2, d_model=64, n_head=4,
                                   n_kv_head=2, max_seq_len=64, tie_embeddings=tied)
    chat_tokens = sorted(tok.special_ids.values())
    model = add_lora(GPT(cfg), rank=4, token_ids=chat_tokens)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n or "trainable_tokens_delta" in n for n in trainable)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    s = _sample(tok, CONVO)
    row = {k: torch.from_numpy(v)[None] for k, v in build_row([s], 64, tok.pad_id).items()}
    for _ in range(3):
        loss = model(row["x"], row["y"])[1]
        loss.backward()
        opt.step()
        opt.zero_grad()
    after = model.state_dict()
    changed = {k for k in after if not torch.equal(after[k], before[k])}
    assert changed and all("lora_" in k or "trainable_tokens_delta" in k for k in changed)  # base weights frozen
    assert any("lora_B" in k for k in changed)  # B starts at 0: once it moved, the adapter changes outputs
    assert any("wte" in k for k in changed) and any("lm_head" in k for k in changed)  # the chat-token rows
    assert is_lora_state(after)
    base_wte = before["wte.token_adapter.base_layer.weight"]
    with torch.no_grad():
        adapted = model(row["x"])[0]
        merged = merge_lora(model)
        assert not is_lora_state(merged.state_dict()) and isinstance(merged.blocks[0].attn.qkv, torch.nn.Linear)
        assert (merged(row["x"])[0] - adapted).abs().max().item() < 1e-5
        assert merged.cfg.tie_embeddings is False  # token rows are trained separately for input and output
        other = [i for i in range(tok.vocab_size) if i not in chat_tokens]
        assert torch.equal(merged.wte.weight[other], base_wte[other])  # only the chat-token rows moved
        assert not torch.equal(merged.wte.weight[chat_tokens], base_wte[chat_tokens])


@pytest.fixture(scope="module")
def pretrained_run(prepared_run_template, tmp_path_factory):
    """The prepared run with a few-step pre-trained base model."""
    import shutil

    from chatforge.train.pretrain import run_pretrain

    run = tmp_path_factory.mktemp("sft") / "run"
    shutil.copytree(prepared_run_template, run)
    cfg = ModelConfig.preset_style("llama", vocab_size=1024, n_layer=2, d_model=64, n_head=4, n_kv_head=2,
                                   max_seq_len=256)
    run_pretrain(run, cfg, TrainConfig(max_steps=30, batch_size=8, seq_len=64, lr=3e-3, warmup_steps=5,
                                       eval_every=30, eval_batches=1, save_every=30, log_every=10))
    return run


def _sft_cfg(**kw) -> TrainConfig:
    return TrainConfig(**{"max_steps": 6, "batch_size": 4, "seq_len": 256, "lr": 1e-3, "warmup_steps": 2,
                          "eval_every": 3, "eval_batches": 2, "save_every": 3, "log_every": 1, **kw})


def test_sft_stage_trains_selects_and_writes_a_model(pretrained_run):
    summary = run_sft(pretrained_run, _sft_cfg(), SFTOptions(select_limit=2, on_bad=TEST_ON_BAD))
    out = pretrained_run / "sft"
    info = read_stage_info(out)
    assert info["complete"] and info["selected_step"] in (3, 6)
    sel = json.loads((out / "selection.json").read_text())
    assert set(sel["candidates"]) == {"3", "6"} and sel["best_step"] == info["selected_step"]
    assert {"format", "refusal", "reading", "instruction_score"} <= set(sel["candidates"]["3"])
    data = info["data"]
    assert data["kept"] == data["train_conversations"] + data["val_conversations"] and data["val_conversations"] > 0
    model, picked = load_model(out), load_model(out / "best")  # the saved model is the best candidate
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), picked.state_dict().values()))
    assert Tokenizer.load(out).fingerprint() == Tokenizer.load(pretrained_run / "tokenizer").fingerprint()
    val = [json.loads(line) for line in (out / "metrics.jsonl").read_text().split("\n") if "val/loss" in line]
    assert [v["step"] for v in val] == [3, 6] and all(np.isfinite(v["val/loss"]) for v in val)
    assert summary["selected_step"] == info["selected_step"]


def test_sft_selection_without_dev_items_is_refused_before_training(pretrained_run, monkeypatch):
    """No world facts, no dev items: selection says so (and how to go on) instead of scoring the eval's items."""
    import chatforge.world.generate as generate

    monkeypatch.setattr(generate, "selection_dev_items", lambda world_dir, n: {})
    before = sorted(str(p) for p in pretrained_run.rglob("*"))
    with pytest.raises(ChatforgeError, match="--no-select"):
        run_sft(pretrained_run, _sft_cfg(max_steps=2), SFTOptions(select_limit=2, on_bad=TEST_ON_BAD), fresh=True)
    assert sorted(str(p) for p in pretrained_run.rglob("*")) == before  # nothing written, nothing removed
    with pytest.raises(ChatforgeError, match="--select-limit 0"):
        run_sft(pretrained_run, _sft_cfg(max_steps=2), SFTOptions(select_limit=0, on_bad=TEST_ON_BAD))


def test_sft_with_lora_saves_a_merged_model(pretrained_run, tmp_path):
    pytest.importorskip("peft")
    import shutil

    run = tmp_path / "run"
    shutil.copytree(pretrained_run, run, ignore=shutil.ignore_patterns("sft"))
    run_sft(run, _sft_cfg(max_steps=3, lr=1e-2), SFTOptions(lora_rank=4, select=False, on_bad=TEST_ON_BAD))
    base, sft = load_model(run / "base"), load_model(run / "sft")
    assert list(base.state_dict()) == list(sft.state_dict())  # a plain model folder, no adapter names
    changed = [k for k, v in sft.state_dict().items() if not torch.equal(v, base.state_dict()[k])]
    # only the adapted projections and the chat-token rows moved (norms and other rows were frozen)
    assert changed and all(k.split(".")[-2] in ("qkv", "proj", "up", "down", "wte", "lm_head") for k in changed)
    tok = Tokenizer.load(run / "sft")
    other = [i for i in range(tok.vocab_size) if i not in tok.special_ids.values()]
    assert torch.equal(sft.wte.weight[other], base.wte.weight[other])
    assert (run / "sft" / "adapter_model.safetensors").is_file()


def test_sft_cli_reports_bad_records_and_rejects_shape_overrides(pretrained_run, tmp_path, capsys):
    from chatforge.cli import main

    bad = _write(tmp_path / "bad.jsonl", [json.dumps({"messages": CONVO[1:3]}), json.dumps({"messages": []})])
    assert main(["sft", "--run", str(pretrained_run), "--data", str(bad), "--max-steps", "2"]) == 2
    assert f"{bad}:2: empty conversation" in capsys.readouterr().err
    assert main(["sft", "--run", str(pretrained_run), "--set", "model.n_layer=3"]) == 2
    assert "--set model.* is not accepted" in capsys.readouterr().err
    assert main(["sft", "--run", str(pretrained_run), "--ptx-fraction", "1.5"]) == 2
    assert "--ptx-fraction 1.5" in capsys.readouterr().err


def _sft_cmd(run, *extra: str) -> list[str]:
    import sys

    return [sys.executable, "-m", "chatforge.cli", "sft", "--run-dir", str(run), "--batch-size", "4",
            "--log-every", "1", "--select-limit", "2", "--set", "train.eval_batches=1", "--on-bad-record",
            TEST_ON_BAD, *extra]


@pytest.mark.slow
def test_sft_resume_after_a_kill_equals_the_uninterrupted_run(pretrained_run, tmp_path):
    import shutil
    import signal
    import subprocess

    from tests.conftest import cli_env, read_metrics, run_ok

    a, b = tmp_path / "a", tmp_path / "b"
    for r in (a, b):
        shutil.copytree(pretrained_run, r, ignore=shutil.ignore_patterns("sft"))
    args = ["--max-steps", "8", "--save-every", "4", "--eval-every", "4"]
    run_ok(_sft_cmd(a, *args))
    env = cli_env()
    env["CHATFORGE_TEST_KILL_IN_SAVE"] = "8"  # dies while saving step 8; the step-4 checkpoint survives
    proc = subprocess.run(_sft_cmd(b, *args), env=env, capture_output=True, timeout=300)
    assert proc.returncode == -signal.SIGKILL
    out = run_ok(_sft_cmd(b, *args))
    assert "resuming from" in out.stdout and "at step 4" in out.stdout
    assert read_metrics(b / "sft") == read_metrics(a / "sft")
    sel_a, sel_b = (json.loads((r / "sft" / "selection.json").read_text()) for r in (a, b))
    assert sel_a == sel_b
    ma, mb = load_model(a / "sft"), load_model(b / "sft")
    assert all(torch.equal(x, y) for x, y in zip(ma.state_dict().values(), mb.state_dict().values()))


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["ddp", "fsdp"])
def test_sft_on_two_processes_equals_one(pretrained_run, tmp_path, mode):
    import shutil
    import sys

    from tests.conftest import read_metrics, run_ok

    one, two = tmp_path / "one", tmp_path / "two"
    for r in (one, two):
        shutil.copytree(pretrained_run, r, ignore=shutil.ignore_patterns("sft"))
    args = ["--max-steps", "4", "--save-every", "100", "--eval-every", "2", "--no-select"]
    run_ok(_sft_cmd(one, *args, "--grad-accum", "2"))
    run_ok([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
            *_sft_cmd(two, *args, "--dist", mode)[1:]])
    (s1, v1), (s2, v2) = read_metrics(one / "sft"), read_metrics(two / "sft")
    assert sorted(s1) == sorted(s2) == [1, 2, 3, 4]
    for step in s1:
        assert s2[step] == pytest.approx(s1[step], rel=1e-5, abs=1e-5), step
    for step in v1:
        assert v2[step] == pytest.approx(v1[step], rel=1e-5, abs=1e-5), step
