"""The main job: `chatforge pipeline` runs stages in order, stops at --until, skips completed stages."""

from __future__ import annotations

import json

from chatforge.cli import main
from tests.conftest import TINY_SETS

FAST = [*TINY_SETS, "--seq-len", "32", "--batch-size", "2", "--max-steps", "3", "--eval-every", "3"]


def test_pipeline_until_then_resume_and_skip(tmp_path, capsys):
    run = tmp_path / "demo"
    assert main(["pipeline", "--run", str(run), "--preset", "tiny", "--until", "data", *FAST]) == 0
    out = capsys.readouterr().out
    assert "[3/4] data: done" in out and "pretrain" not in out
    assert (run / "data" / "meta.json").exists() and not (run / "base").exists()
    assert json.loads((run / "run.json").read_text())["preset"] == "tiny"
    stats = json.loads((run / "tokenizer" / "stats.json").read_text())
    assert stats["chars_per_token"]["zh"] > 1 and stats["chars_per_token"]["en"] > 2

    assert main(["pipeline", "--run", str(run), *FAST]) == 0
    out = capsys.readouterr().out
    for stage in ("world", "tokenizer", "data"):
        assert f"{stage}: complete, skipping" in out
    assert "[4/4] pretrain: done" in out and "model ready" in out
    assert (run / "base" / "model.safetensors").exists()

    assert main(["pipeline", "--run", str(run), *FAST]) == 0
    assert "pretrain: complete, skipping" in capsys.readouterr().out


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


def test_pipeline_bad_until(tmp_path, capsys):
    assert main(["pipeline", "--run", str(tmp_path / "x"), "--until", "rlhf"]) == 2
    assert "--until 'rlhf'" in capsys.readouterr().err


def test_empty_user_corpus_is_a_clear_error(tmp_path, capsys):
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    assert main(["pipeline", "--run", str(tmp_path / "r"), "--data", str(empty), *FAST]) == 2
    assert "empty" in capsys.readouterr().err
