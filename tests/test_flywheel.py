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

import pytest

from benchmarks.flywheel import post_feedback, qa_prompts, rm_prefers_source
from chatforge.config import TrainConfig
from chatforge.pipeline import FeedbackMix, mix_feedback
from chatforge.train.dpo import DPOOptions
from chatforge.train.rm import RMOptions, run_rm
from chatforge.train.sft import SFTOptions
from tests.conftest import cli_env
from tests.serving import running_server

RM_TRAIN = TrainConfig(max_steps=60, batch_size=8, seq_len=128, lr=2e-3, warmup_steps=5, eval_every=60,
                       eval_batches=2, save_every=60, log_every=20)


@pytest.mark.slow
def test_feedback_through_the_api_retrains_the_reward_model(base_run, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(base_run, run)
    qa = qa_prompts(run)
    users, new = qa[:36], qa[36:76]
    assert len(new) == 40

    run_rm(run, RM_TRAIN, RMOptions(init="base"))  # the RM before: the world's rankings only
    before = {"users": rm_prefers_source(run / "rm", users), "new": rm_prefers_source(run / "rm", new)}

    with running_server(run) as url:  # the benchmark's simulated users: ranking, thumbs, correction
        post_feedback(url, users)

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
    after = {"users": rm_prefers_source(run / "rm", users), "new": rm_prefers_source(run / "rm", new)}
    print(f"RM prefers the users' choice: their prompts {before['users']:.2f} -> {after['users']:.2f}; "
          f"new prompts {before['new']:.2f} -> {after['new']:.2f}")
    assert after["users"] >= 0.9 and after["users"] >= before["users"] + 0.3
    assert after["new"] >= 0.8 and after["new"] >= before["new"] + 0.3
