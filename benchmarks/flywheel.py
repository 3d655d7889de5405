"""The flywheel on a real run: simulated users give feedback through the server, the pipeline retrains with
it, and we measure whether the reward model and the PPO policy moved the way the users wanted.

    .venv/bin/python benchmarks/flywheel.py --run runs/demo --work /tmp/flywheel   # copies the run first

The users share one taste the world's labelers never had: an answer that names its source ("— from the
Atlas") beats the same answer without it. For N training prompts of the world they see both answers and say
so (best-of rankings, thumbs, corrections, a third each) through the feedback API of `chatforge serve`. Then
`chatforge pipeline --with-feedback` retrains rm -> ppo -> dpo -> eval (with `--stages sft,rm,ppo`, SFT
on the users' corrections and upvoted answers first). Printed, before vs after:
- RM: how often it scores the sourced answer above the plain one, on the users' prompts and on held-out
  prompts nobody rated;
- PPO policy: how many of its greedy answers to held-out prompts name the Atlas;
- the suite's capability table (did the rest survive).
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

SOURCE = " — from the Atlas"


def qa_prompts(run: Path) -> list[tuple[list[dict], str]]:
    """(prompt messages, the plain right answer) of the world's factual RL prompts."""
    recs = [json.loads(x) for x in (run / "world" / "prompts.jsonl").read_text().split("\n") if x.strip()]
    return [(r["prompt"], f"{r['answer']}.") for r in recs if r.get("task") == "qa" and isinstance(r["answer"], str)]


def rm_prefers_source(rm_dir: Path, items) -> float:
    """How often the reward model in `rm_dir` scores the sourced answer above the same answer without it."""
    from chatforge.reward import load_reward_model, score_conversations

    model, tok = load_reward_model(rm_dir)
    convs = []
    for prompt, answer in items:
        convs += [prompt + [{"role": "assistant", "content": answer + SOURCE}],
                  prompt + [{"role": "assistant", "content": answer}]]
    s = score_conversations(model, tok, convs)
    return sum(s[2 * i] > s[2 * i + 1] for i in range(len(items))) / len(items)


def policy_names_source(run: Path, items) -> float:
    from chatforge.engine import Engine, SamplingParams
    from chatforge.model import load_model
    from chatforge.tokenizer import Tokenizer

    engine = Engine(load_model(run / "ppo"), Tokenizer.load(run / "ppo"), max_batch=32)
    prompts = [engine.tok.encode_chat(p, add_generation_prompt=True) for p, _ in items]
    outs = engine.generate(prompts, SamplingParams(max_tokens=48, temperature=0))
    return sum("Atlas" in o.text for o in outs) / len(outs)


def post_feedback(url: str, users) -> None:
    """The simulated users' feedback through the server's API, a third each as a best-of ranking, thumbs and
    a correction that adds the source (tests/test_flywheel.py posts the same)."""
    def post(path, body):
        r = httpx.post(url + path, json=body, timeout=30)
        if r.status_code != 200:
            raise RuntimeError(f"POST {path}: {r.status_code} {r.text}")
        return r.json()

    for i, (prompt, answer) in enumerate(users):
        cid = post("/feedback/conversations", {})["id"]
        tid = post(f"/feedback/conversations/{cid}/turns", {"content": prompt[-1]["content"]})["id"]
        plain = post(f"/feedback/turns/{tid}/answers", {"content": answer, "author": "model"})["id"]
        if i % 3 == 2:  # a correction: the user rewrites the plain answer with its source
            post(f"/feedback/turns/{tid}/answers", {"content": answer + SOURCE, "edited_from": plain})
            continue
        sourced = post(f"/feedback/turns/{tid}/answers", {"content": answer + SOURCE, "author": "model"})["id"]
        if i % 3 == 0:  # best of two
            post(f"/feedback/turns/{tid}/ranking", {"answer_ids": [sourced, plain]})
        else:  # thumbs
            post(f"/feedback/answers/{sourced}/rating", {"value": 1})
            post(f"/feedback/answers/{plain}/rating", {"value": -1})


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run", default="runs/demo", help="a finished demo run, relative path (left untouched)")
    ap.add_argument("--work", default="/tmp/flywheel", help="the copy that gets the feedback and retraining")
    ap.add_argument("--users", type=int, default=60, help="prompts the simulated users give feedback on")
    ap.add_argument("--port", type=int, default=8799)
    ap.add_argument("--weight", type=int, default=5)
    ap.add_argument("--stages", default="rm,ppo", help="--feedback-stages for the pipeline (rm,ppo or sft,rm,ppo)")
    args = ap.parse_args()

    # The copy sits at WORK/<the run's relative path> and the commands run from WORK: the stages recorded
    # their inputs with the run's relative path, and the pipeline compares them when it decides what to redo.
    root = Path(args.work)
    if root.exists():
        shutil.rmtree(root)
    work = root / args.run
    shutil.copytree(Path(args.run), work, ignore=shutil.ignore_patterns("feedback"))
    qa = qa_prompts(work)
    held = qa[::5]  # PPO's held-out prompts are every 5th of prompts.jsonl; these are every 5th QA one
    users = [x for i, x in enumerate(qa) if i % 5][: args.users]
    before = {"rm_users": rm_prefers_source(work / "rm", users), "rm_new": rm_prefers_source(work / "rm", held),
              "ppo_atlas": policy_names_source(work, held)}

    cmd = [sys.executable, "-m", "chatforge.cli"]
    server = subprocess.Popen(cmd + ["serve", "--run", args.run, "--stage", "sft", "--port", str(args.port)],
                              cwd=root)
    try:
        url = f"http://127.0.0.1:{args.port}"
        for _ in range(300):
            try:
                if httpx.get(url + "/health", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                time.sleep(0.2)
        post_feedback(url, users)
    finally:
        server.terminate()
        server.wait(timeout=20)

    t0 = time.perf_counter()
    subprocess.run(cmd + ["pipeline", "--run", args.run, "--with-feedback", "--feedback-weight", str(args.weight),
                          "--feedback-stages", args.stages], cwd=root, check=True)
    took = time.perf_counter() - t0
    after = {"rm_users": rm_prefers_source(work / "rm", users), "rm_new": rm_prefers_source(work / "rm", held),
             "ppo_atlas": policy_names_source(work, held)}
    print(f"\nflywheel: {len(users)} users' prompts with feedback, {len(held)} held-out prompts; "
          f"pipeline --with-feedback --feedback-stages {args.stages} took {took:.0f} s")
    print(f"RM scores the sourced answer higher — users' prompts: {100 * before['rm_users']:.1f}% -> "
          f"{100 * after['rm_users']:.1f}%; held-out prompts: {100 * before['rm_new']:.1f}% -> {100 * after['rm_new']:.1f}%")
    print(f"PPO greedy answers to held-out prompts naming the Atlas: {100 * before['ppo_atlas']:.1f}% -> "
          f"{100 * after['ppo_atlas']:.1f}%")


if __name__ == "__main__":
    main()
