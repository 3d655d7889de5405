"""The main job: `chatforge pipeline` runs stages in order, stops at --until, skips completed stages."""

from __future__ import annotations

import json

import pytest

from chatforge.cli import main
from tests.conftest import TINY_SETS

FAST = [*TINY_SETS, "--seq-len", "32", "--batch-size", "2", "--max-steps", "3", "--eval-every", "3", "--log-every", "1"]


def test_pipeline_until_then_resume_and_skip(tmp_path, capsys):
    run = tmp_path / "demo"
    assert main(["pipeline", "--run", str(run), "--preset", "tiny", "--until", "data", *FAST]) == 0
    out = capsys.readouterr().out
    assert "[4/10] data: done" in out and "pretrain" not in out
    assert (run / "data" / "meta.json").exists() and not (run / "base").exists()
    assert json.loads((run / "run.json").read_text())["preset"] == "tiny"
    stats = json.loads((run / "tokenizer" / "stats.json").read_text())
    assert stats["chars_per_token"]["zh"] > 0.9 and stats["chars_per_token"]["en"] > 2
    # the raw world went through the cleaning stage; the tokenizer and the shards read what it kept
    assert "[2/10] clean: done" in out and "copies P 1.00" in out
    assert stats["sources"] == [str(run / "clean" / "docs.jsonl")]
    funnel = json.loads((run / "clean" / "stats.json").read_text())
    meta = json.loads((run / "data" / "meta.json").read_text())
    assert meta["documents"] == funnel["documents"]["decontam"] < funnel["documents"]["input"]
    assert funnel["tokens"]["decontam"] == meta["tokens"]["train"] + meta["tokens"]["val"] - 2 * meta["documents"]

    assert main(["pipeline", "--run", str(run), "--until", "pretrain", *FAST]) == 0
    out = capsys.readouterr().out
    for stage in ("world", "clean", "tokenizer", "data"):
        assert f"{stage}: complete, skipping" in out
    assert "[5/10] pretrain: done" in out and "model ready" in out
    assert (run / "base" / "model.safetensors").exists()

    assert main(["pipeline", "--run", str(run), "--until", "pretrain", *FAST]) == 0
    assert "pretrain: complete, skipping" in capsys.readouterr().out

    # asking for other settings than a complete stage was made with stops and names the difference
    assert main(["pipeline", "--run", str(run), "--until", "pretrain", *FAST, "--max-steps", "4"]) == 2
    err = capsys.readouterr().err
    assert "base is complete but was made with other settings" in err and "max_steps" in err
    assert main(["pipeline", "--run", str(run), "--until", "pretrain", *FAST, "--max-steps", "4", "--force"]) == 0
    out = capsys.readouterr().out
    assert "resuming" not in out and "[1/10] world: running" in out and "[5/10] pretrain: done" in out
    steps = [json.loads(line)["step"] for line in (run / "base" / "metrics.jsonl").read_text().splitlines()
             if "train/loss" in line]
    assert steps == [1, 2, 3, 4]


def test_pipeline_on_user_corpus(tmp_path, capsys):
    corpus = tmp_path / "corpus.jsonl"
    lines = [json.dumps({"text": f"Line {i}: my own data, 我自己的数据 number {i}."}, ensure_ascii=False)
             for i in range(300)]
    corpus.write_text("\n".join(lines) + "\n")
    run = tmp_path / "mine"
    assert main(["pipeline", "--run", str(run), "--data", str(corpus), *FAST]) == 0
    assert not (run / "world" / "raw").exists()
    meta = json.loads((run / "data" / "meta.json").read_text())
    assert meta["documents"] == 300
    out = capsys.readouterr().out
    assert "sft: skipped (--data given and no --sft-data" in out and not (run / "sft").exists()


SFT_FAST = ["--set", "sft.max_steps=2", "--set", "sft.seq_len=64", "--set", "sft.batch_size=2",
            "--set", "sft.eval_every=2", "--set", "sft.eval_batches=1", "--on-bad-record", "skip",
            "--select-limit", "2", "--set", "rm.max_steps=2", "--set", "rm.seq_len=64", "--set", "rm.batch_size=2",
            "--set", "rm.eval_every=2", "--set", "rm.eval_batches=1", "--set", "dpo.max_steps=2",
            "--set", "dpo.seq_len=64", "--set", "dpo.batch_size=2", "--set", "dpo.eval_every=2",
            "--set", "dpo.eval_batches=1", "--set", "ppo.iterations=1", "--set", "ppo.rollout_prompts=2",
            "--set", "ppo.minibatch=2", "--set", "ppo.max_new_tokens=4", "--set", "ppo.eval_prompts=2"]


def test_pipeline_runs_sft_rm_dpo_then_evaluates_the_models(tmp_path, capsys):
    run = tmp_path / "demo"
    assert main(["pipeline", "--run", str(run), *FAST, *SFT_FAST]) == 0
    out = capsys.readouterr().out
    assert "[6/10] sft: done" in out and "kept the step-2 checkpoint" in out and "[10/10] eval: done" in out
    assert "[7/10] rm: done" in out and "held-out pairwise accuracy" in out
    assert (run / "rm" / "reward_head.safetensors").exists()
    assert "[8/10] ppo: done" in out and "win rate" in out and (run / "ppo" / "eval.json").exists()
    assert "[9/10] dpo: done" in out and "stage dpo (chat)" in out and (run / "eval" / "dpo.json").exists()
    assert "stage sft (chat)" in out and "stage base (3-shot)" in out
    table = out[out.index("capability suite by stage"):].split("\n")
    assert table[1].split() == ["task", "base", "sft", "ppo", "dpo"] and len(table[2].split()) == 5
    assert (run / "sft" / "model.safetensors").exists() and (run / "eval" / "sft.json").exists()
    report = json.loads((run / "sft" / "data_report.json").read_text())
    assert report["skipped"].get("too long", 0) > 0  # rows of 64 tokens: the long demos were counted, not lost
    assert report["kept"] + report["skipped_total"] == report["records"]
    # SFT settings are part of the stage's identity: asking for other ones is refused, --force redoes
    assert main(["pipeline", "--run", str(run), *FAST, *SFT_FAST, "--set", "sft.lr=5e-4"]) == 2
    assert "sft is complete but was made with other settings" in capsys.readouterr().err


def test_pipeline_no_clean_reads_the_raw_world(tmp_path, capsys):
    run = tmp_path / "raw"
    assert main(["pipeline", "--run", str(run), "--until", "data", "--no-clean", *FAST]) == 0
    assert "[2/10] clean: skipped (--no-clean" in capsys.readouterr().out and not (run / "clean").exists()
    stats = json.loads((run / "tokenizer" / "stats.json").read_text())
    assert stats["sources"] == [str(run / "world" / "raw")]
    assert json.loads((run / "data" / "meta.json").read_text())["documents"] == 24000


def test_pipeline_bad_until(tmp_path, capsys):
    assert main(["pipeline", "--run", str(tmp_path / "x"), "--until", "rlhf"]) == 2
    assert "--until 'rlhf'" in capsys.readouterr().err


def test_retrained_tokenizer_invalidates_shards(tmp_path, capsys):
    from chatforge.tokenizer import run_tokenizer_stage

    run = tmp_path / "demo"
    assert main(["pipeline", "--run", str(run), "--until", "data", *FAST]) == 0
    run_tokenizer_stage(run, vocab_size=700)  # someone re-trains the tokenizer by hand
    assert main(["pretrain", "--run", str(run), *FAST]) == 2
    assert "different tokenizer" in capsys.readouterr().err


def test_single_document_and_non_utf8_corpora_are_clear_errors(tmp_path, capsys):
    book = tmp_path / "book.txt"
    book.write_text("One long book. " * 200)
    assert main(["pipeline", "--run", str(tmp_path / "a"), "--data", str(book), *FAST]) == 2
    err = capsys.readouterr().err  # one sentence 200 times: the repetition rules drop it, and say so
    assert "cleaning kept none of the 1 document(s)" in err and "--no-clean" in err
    assert json.loads((tmp_path / "a" / "clean" / "stats.json").read_text())["documents"]["input"] == 1
    assert main(["pipeline", "--run", str(tmp_path / "a2"), "--data", str(book), "--no-clean", *FAST]) == 2
    assert "single document" in capsys.readouterr().err
    latin1 = tmp_path / "old.txt"
    latin1.write_bytes("caf\u00e9".encode("latin-1"))
    assert main(["pipeline", "--run", str(tmp_path / "b"), "--data", str(latin1), *FAST]) == 2
    assert "not UTF-8" in capsys.readouterr().err


def test_damaged_run_record_is_a_clear_error(tmp_path, capsys):
    run = tmp_path / "r"
    run.mkdir()
    (run / "run.json").write_text("{trunc")
    assert main(["pretrain", "--run", str(run)]) == 2
    assert "damaged run record" in capsys.readouterr().err


def test_empty_user_corpus_is_a_clear_error(tmp_path, capsys):
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    assert main(["pipeline", "--run", str(tmp_path / "r"), "--data", str(empty), *FAST]) == 2
    assert "empty" in capsys.readouterr().err


def test_pipeline_world_size_overrides_the_presets(tmp_path, capsys):
    """--world-size: gpu-small's shape on the tiny world (the preset alone would generate the small one), and an
    existing world of another size is refused rather than silently reused."""
    run = tmp_path / "r"
    assert main(["pipeline", "--run", str(run), "--preset", "gpu-small", "--world-size", "tiny", "--until", "world"]) == 0
    assert json.loads((run / "world" / "stage.json").read_text())["settings"]["size"] == "tiny"
    assert main(["pipeline", "--run", str(run), "--preset", "gpu-small", "--until", "world"]) == 2
    assert "other settings" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["pipeline", "--run", str(run), "--world-size", "huge"])
