"""`chatforge report`: a synthetic run with known numbers -> report.md quotes them, the plots are real PNGs,
missing stages are named as missing, and bad runs are a ChatforgeError."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from chatforge import ChatforgeError
from chatforge.cli import main
from chatforge.report import read_metrics, task_order, training_time, write_report

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _write(path: Path, obj) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(obj, list):  # metrics.jsonl
        path.write_text("".join(json.dumps(r) + "\n" for r in obj))
    else:
        path.write_text(json.dumps(obj))


def _loop_metrics(first_loss: float) -> list[dict]:
    # 1,000 tokens in 10 s, then 1,000 more in 20 s: 30 s in steps, 2,000 / 30 = 67 tokens/s
    return [{"step": 10, "train/loss": first_loss, "train/tokens": 1000, "perf/tokens_per_s": 100.0, "perf/mfu": 0.25},
            {"step": 10, "val/loss": first_loss + 0.5},
            {"step": 20, "train/loss": first_loss / 2, "train/tokens": 2000, "perf/tokens_per_s": 50.0,
             "perf/mfu": 0.35},
            {"step": 20, "val/loss": first_loss / 2 + 0.25}]


def _task(score: float, metric: str = "accuracy", **extra) -> dict:
    return {"score": score, "n": 8, "metric": metric, **extra}


def make_run(root: Path, ppo: bool = False) -> Path:
    run = root / "myrun"
    _write(run / "run.json", {"preset": "tiny"})
    _write(run / "world" / "stage.json", {"complete": True, "settings": {"seed": 7, "size": "tiny"}, "stage": "world"})
    _write(run / "world" / "stats.json", {"documents": {"news": 600, "story": 400}, "rankings": 55,
                                          "labeler_agreement": 0.75, "prompts": 30})
    _write(run / "clean" / "stats.json", {
        "documents": {"input": 1000, "quality": 900, "dedup": 800},
        "characters": {"input": 50000, "quality": 45000, "dedup": 40000},
        "tokens": {"input": 20000, "quality": 18000, "dedup": 16000},
        "removed": {"quality": {"mojibake": 100}, "dedup": {"exact": 60, "near": 40}},
        "seconds": {"dedup": 1.5}})
    _write(run / "data" / "meta.json", {"dtype": "uint16", "documents": 800, "tokens": {"train": 15000, "val": 1000},
                                        "splits": {"train": [{"tokens": 15000, "docs": 780}],
                                                   "val": [{"tokens": 1000, "docs": 20}]}})
    _write(run / "base" / "stage.json", {"complete": True, "stage": "pretrain", "settings": {
        "model": {"architecture": "chatforge-gpt", "n_layer": 2, "d_model": 32, "n_head": 2, "n_kv_head": 1,
                  "vocab_size": 512, "max_seq_len": 64}}})
    _write(run / "base" / "metrics.jsonl", _loop_metrics(6.0))
    _write(run / "sft" / "stage.json", {"complete": True, "stage": "sft", "selected_step": 10})
    _write(run / "sft" / "metrics.jsonl", _loop_metrics(3.0))
    _write(run / "rm" / "metrics.jsonl", _loop_metrics(0.7))
    _write(run / "rm" / "eval.json", {"pairwise_accuracy": {"overall": {"accuracy": 0.625, "pairs": 40},
                                                            "per_labeler": {"labeler-0": {"accuracy": 0.5}}}})
    _write(run / "dpo" / "metrics.jsonl", _loop_metrics(0.69))
    _write(run / "dpo" / "eval.json", {"heldout_preference_accuracy": {"accuracy": 0.6875, "pairs": 40}})
    _write(run / "eval" / "base.json", {"stage": "base", "mode": "3-shot", "seconds": 2.0, "tasks": {
        "knowledge_qa": _task(0.125), "arithmetic_cot": _task(0.0), "arithmetic_direct": _task(0.0),
        "refusal": _task(0.5, refusal_rate_harmful=0.25), "bpb": _task(4.321, "bits/byte (lower is better)")}})
    _write(run / "eval" / "sft.json", {"stage": "sft", "mode": "chat", "seconds": 3.0, "tasks": {
        "knowledge_qa": _task(0.375), "knowledge_qa@rag": _task(0.875, retrieval_recall=0.75),
        "arithmetic_cot": _task(0.25), "arithmetic_cot@sc8": _task(0.5), "arithmetic_direct": _task(0.125),
        "refusal": _task(0.625), "refusal+moderation": _task(0.9375), "bpb": _task(4.5, "bits/byte")}})
    if ppo:
        _write(run / "ppo" / "metrics.jsonl", [
            {"iteration": i, "objective/scores": 0.5 * i, "objective/rlhf_reward": 0.4 * i, "objective/kl": 0.1 * i,
             "time/generation_s": 1.0, "time/scoring_s": 0.5, "time/training_s": 2.0} for i in (1, 2, 3)])
        _write(run / "ppo" / "eval.json", {"prompts": 20, "sft_reward": -0.25, "ppo_reward": 1.5,
                                           "ppo_win_rate_vs_sft": 0.8, "sft_ended": 15, "ppo_ended": 18})
    return run


def _assert_png(path: Path) -> None:
    data = path.read_bytes()
    assert data[:8] == PNG_MAGIC, path
    assert len(data) > 10_000, f"{path}: {len(data)} bytes, suspiciously small for a plot"


def test_report_quotes_the_run_files(tmp_path):
    run = make_run(tmp_path)
    report = write_report(run)
    assert report == run / "eval" / "report.md"
    md = report.read_text(encoding="utf-8")
    # header: preset, world settings, model shape
    assert "**preset**: tiny" in md and "seed 7, size tiny" in md and "1,000 raw documents" in md
    assert "2 layers, d_model 32" in md
    # capability table: base -> sft -> ppo -> dpo columns, variants under their plain task, % and bits/byte
    assert "| task | base | sft | ppo | dpo | variant | metric | n |" in md
    assert "| `knowledge_qa` | 12.5% | 37.5% | – | – |" in md
    assert "| ↳ `knowledge_qa@rag` | – | 87.5% | – | – | with retrieval |" in md
    assert "| ↳ `refusal+moderation` | – | 93.8% |" in md
    assert "| `bpb` | 4.321 | 4.500 |" in md
    order = [md.index(f"`{t}` |") for t in ("arithmetic_direct", "arithmetic_cot", "arithmetic_cot@sc8",
                                             "knowledge_qa", "knowledge_qa@rag", "refusal", "refusal+moderation",
                                             "bpb")]
    assert order == sorted(order)
    assert "ppo: not evaluated (no eval/ppo.json)" in md and "dpo: not evaluated" in md
    assert "| `knowledge_qa@rag` retrieval_recall | – | 75.0% |" in md
    # training: first -> last losses; the stage that did not run is named
    assert "| pretrain | 20 | 6.0000 → 3.0000 | 6.5000 → 3.2500 |" in md
    assert "SFT kept the step-10 checkpoint" in md
    assert "- **ppo**: not run" in md and "ppo: not run (no ppo/metrics.jsonl)" in md
    assert "held-out pairwise accuracy 62.5% on 40 pairs" in md and "held-out preference accuracy of the implicit reward 68.8%" in md
    # funnel and throughput: 2,000 tokens over 10 s + 20 s of steps
    assert "| dedup | 800 | 80.0% | 40,000 | 16,000 | exact 60, near 40 |" in md
    assert "| pretrain | 20 | 2,000 (0.13 epochs) | 67 | 30.0% | 30.0 s |" in md
    assert "eval base 2.0 s" in md and "clean dedup 1.5 s" in md
    assert "| ppo | not run |" in md
    # plots: embedded by relative path, real PNGs, and none for the stage that has no data
    plots = run / "eval" / "plots"
    for name in ("losses", "capabilities", "funnel"):
        assert f"](plots/{name}.png)" in md
        _assert_png(plots / f"{name}.png")
    assert not (plots / "ppo.png").exists()


def test_report_with_ppo(tmp_path):
    run = make_run(tmp_path, ppo=True)
    md = write_report(run).read_text(encoding="utf-8")
    _assert_png(run / "eval" / "plots" / "ppo.png")
    assert "](plots/ppo.png)" in md
    assert "held-out RM reward sft -0.250 → ppo 1.500; win rate of ppo over sft 80.0% on 20 prompts" in md
    assert "| `objective/kl` | 0.1000 | 0.3000 | 0.3000 |" in md
    assert "| ppo | 3 iterations | – | – | – | 10.5 s (generation 3.0 s, scoring 1.5 s, training 6.0 s) |" in md


def test_report_on_a_partial_run(tmp_path):
    run = tmp_path / "early"
    _write(run / "world" / "stage.json", {"complete": True, "settings": {"seed": 0, "size": "tiny"}})
    md = write_report(run).read_text(encoding="utf-8")
    assert "| pretrain | base/ | not run |" in md
    assert "eval not run" in md and "clean: not run" in md and "data: not run" in md
    assert not list((run / "eval" / "plots").glob("*.png"))


def test_bad_runs_are_clear_errors(tmp_path, capsys):
    with pytest.raises(ChatforgeError, match="does not exist"):
        write_report(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ChatforgeError, match="nothing to report"):
        write_report(tmp_path / "empty")
    assert main(["report", "--run", str(tmp_path / "empty")]) == 2
    assert "nothing to report" in capsys.readouterr().err


def test_metrics_reading(tmp_path):
    f = tmp_path / "metrics.jsonl"
    # a resumed stage logs step 20 twice (the later record wins); a last line without "\n" is still being written
    f.write_text('{"step": 10, "train/tokens": 100, "perf/tokens_per_s": 10}\n'
                 '{"step": 20, "train/tokens": 200, "perf/tokens_per_s": 1}\n'
                 '{"step": 20, "train/tokens": 200, "perf/tokens_per_s": 20}\n{"step": 30, "tra')
    recs = read_metrics(f)
    assert len(recs) == 3
    assert training_time(recs) == pytest.approx(10 + 5)
    f.write_text('{"step": 10}\nnot json\n{"step": 20}\n')
    with pytest.raises(ChatforgeError, match="metrics.jsonl:2"):
        read_metrics(f)


def test_task_order_keeps_variants_beside_their_task():
    assert task_order({"bpb", "refusal+moderation", "icl", "refusal", "arithmetic_cot@calc", "arithmetic_cot",
                       "arithmetic_direct", "icl@rag"}) == [
        "arithmetic_direct", "arithmetic_cot", "arithmetic_cot@calc", "icl", "icl@rag", "refusal",
        "refusal+moderation", "bpb"]
