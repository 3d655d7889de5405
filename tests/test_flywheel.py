"""The data flywheel end to end: users' feedback posted through the real server's API -> `chatforge feedback
export` -> the reward model retrained with it mixed into the world's rankings (as `pipeline --with-feedback`
mixes it) -> the RM now prefers the answers those users preferred, on their prompts and on new ones.

The users here share a taste the world's labelers never showed: they like an answer that names its source
("— from the Atlas") over the same answer without it. Each prompt gets both answers; the users express the
preference three ways (a best-of ranking, thumbs up/down, a correction that adds the source).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import httpx
import pytest

from chatforge.config import TrainConfig
from chatforge.pipeline import FeedbackMix, mix_feedback
from chatforge.reward import load_reward_model, score_conversations
from chatforge.train.dpo import DPOOptions
from chatforge.train.rm import RMOptions, run_rm
from chatforge.train.sft import SFTOptions
from tests.conftest import cli_env
from tests.serving import running_server

SOURCE = " — from the Atlas"
RM_TRAIN = TrainConfig(max_steps=60, batch_size=8, seq_len=128, lr=2e-3, warmup_steps=5, eval_every=60,
                       eval_batches=2, save_every=60, log_every=20)


def _qa_prompts(run) -> list[tuple[list[dict], str]]:
    recs = [json.loads(x) for x in (run / "world" / "prompts.jsonl").read_text().split("\n") if x.strip()]
    return [(r["prompt"], f"{r['answer']}.") for r in recs if r.get("task") == "qa" and isinstance(r["answer"], str)]


def _accuracy(rm_dir, items) -> float:
    model, tok = load_reward_model(rm_dir)
    convs = []
    for prompt, answer in items:
        convs += [prompt + [{"role": "assistant", "content": answer + SOURCE}],
                  prompt + [{"role": "assistant", "content": answer}]]
    s = score_conversations(model, tok, convs)
    return sum(s[2 * i] > s[2 * i + 1] for i in range(len(items))) / len(items)


@pytest.mark.slow
def test_feedback_through_the_api_retrains_the_reward_model(base_run, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(base_run, run)
    qa = _qa_prompts(run)
    users, new = qa[:36], qa[36:76]
    assert len(new) == 40

    run_rm(run, RM_TRAIN, RMOptions(init="base"))  # the RM before: the world's rankings only
    before = {"users": _accuracy(run / "rm", users), "new": _accuracy(run / "rm", new)}

    with running_server(run) as url:
        def post(path, body):
            r = httpx.post(url + path, json=body, timeout=30)
            assert r.status_code == 200, r.text
            return r.json()

        for i, (prompt, answer) in enumerate(users):
            cid = post("/feedback/conversations", {})["id"]
            tid = post(f"/feedback/conversations/{cid}/turns", {"content": prompt[-1]["content"]})["id"]
            plain = post(f"/feedback/turns/{tid}/answers", {"content": answer, "author": "model", "model": "base"})["id"]
            if i % 3 == 2:  # a correction: the user rewrites the plain answer with its source
                post(f"/feedback/turns/{tid}/answers", {"content": answer + SOURCE, "edited_from": plain})
                continue
            sourced = post(f"/feedback/turns/{tid}/answers", {"content": answer + SOURCE, "author": "model"})["id"]
            if i % 3 == 0:  # best of two
                post(f"/feedback/turns/{tid}/ranking", {"answer_ids": [sourced, plain]})
            else:  # thumbs
                post(f"/feedback/answers/{sourced}/rating", {"value": 1})
                post(f"/feedback/answers/{plain}/rating", {"value": -1})

    proc = subprocess.run([sys.executable, "-m", "chatforge.cli", "feedback", "export", "--run", str(run)],
                          env=cli_env(), capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    stats = json.loads((run / "feedback" / "export" / "stats.json").read_text())
    assert (stats["rank_user_rankings"], stats["rank_ratings"], stats["rank_corrections"]) == (12, 12, 12)
    assert stats["sft_corrections"] == 12 and stats["sft_upvoted"] == 12

    rm, dpo = RMOptions(init="base"), DPOOptions()
    assert mix_feedback(run, FeedbackMix(weight=5), SFTOptions(), rm, dpo) == "rm"
    assert rm.data[0].endswith("world/rankings.jsonl") and rm.data.count(rm.data[1]) == 5 and dpo.data == rm.data
    run_rm(run, RM_TRAIN, rm, fresh=True)  # the RM after: world + feedback
    after = {"users": _accuracy(run / "rm", users), "new": _accuracy(run / "rm", new)}
    print(f"RM prefers the users' choice: their prompts {before['users']:.2f} -> {after['users']:.2f}; "
          f"new prompts {before['new']:.2f} -> {after['new']:.2f}")
    assert after["users"] >= 0.9 and after["users"] >= before["users"] + 0.3
    assert after["new"] >= 0.8 and after["new"] >= before["new"] + 0.3
