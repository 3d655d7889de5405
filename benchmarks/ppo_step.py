"""Wall time of one PPO iteration, split into generation / scoring (RM, reference, values, GAE) / training,
and rollouts per second, for a preset's model shape (random weights, so no run is needed).

    python benchmarks/ppo_step.py [--preset tiny] [--device cpu|cuda] [--rollouts 32] [--iterations 3]

Answers are sampled to exactly `--max-new-tokens` tokens (the stop token is disabled) so every iteration
does the same work. Prints the median split and the share of each part. Last line: `RESULT {json}`.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from decode import _tokenizer  # noqa: E402

from chatforge.config import get_preset  # noqa: E402
from chatforge.model import GPT  # noqa: E402
from chatforge.reward import RewardModel  # noqa: E402
from chatforge.train.ppo import PPOConfig, PPOTrainer  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--preset", default="tiny")
    p.add_argument("--device", default="cpu")
    p.add_argument("--rollouts", type=int, default=32)
    p.add_argument("--max-new-tokens", type=int, default=48)
    p.add_argument("--iterations", type=int, default=3)
    args = p.parse_args()
    device = torch.device(args.device)
    tok = _tokenizer(2048)
    mcfg = get_preset(args.preset).model
    torch.manual_seed(0)
    policy, ref = GPT(mcfg), GPT(mcfg)
    ref.load_state_dict(policy.state_dict())
    rm, value = RewardModel(mcfg), RewardModel(mcfg)
    value.load_state_dict(rm.state_dict())
    cfg = PPOConfig(rollout_prompts=args.rollouts, minibatch=8, max_new_tokens=args.max_new_tokens)
    trainer = PPOTrainer(policy.to(device), ref.to(device), value.to(device), rm.to(device), tok, cfg)
    gen = torch.Generator().manual_seed(0)
    prompts = [tok.encode_chat([{"role": "user", "content": f"Question {i}: where is town {int(n)}?"}],
                               add_generation_prompt=True)
               for i, n in enumerate(torch.randint(0, 1000, (args.rollouts,), generator=gen))]
    trainer_stop = tok.end_id
    tok.end_id = -1  # no stop token during the iterations: every answer runs to max_new_tokens
    times = {"generation": [], "scoring": [], "training": []}
    for it in range(args.iterations + 1):  # the first is warm-up
        rec = trainer.iteration(prompts, it)
        if it:
            times["generation"].append(rec["time/generation_s"])
            times["scoring"].append(rec["time/scoring_s"])
            times["training"].append(rec["time/training_s"])
    tok.end_id = trainer_stop
    med = {k: statistics.median(v) for k, v in times.items()}
    total = sum(med.values())
    res = {"preset": args.preset, "device": str(device), "rollouts": args.rollouts,
           "new_tokens": args.max_new_tokens, **{f"{k}_s": round(v, 3) for k, v in med.items()},
           "iteration_s": round(total, 3), "rollouts_per_s": round(args.rollouts / total, 2)}
    print(f"{args.preset} on {device}: one PPO iteration ({args.rollouts} rollouts x {args.max_new_tokens} tokens, "
          f"{cfg.ppo_epochs} epochs) {total:.2f} s = generation {med['generation']:.2f} s "
          f"({100 * med['generation'] / total:.0f}%) + scoring {med['scoring']:.2f} s "
          f"({100 * med['scoring'] / total:.0f}%) + training {med['training']:.2f} s "
          f"({100 * med['training'] / total:.0f}%); {args.rollouts / total:.1f} rollouts/s")
    print("RESULT " + json.dumps(res))


if __name__ == "__main__":
    main()
