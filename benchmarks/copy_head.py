"""Cost of the copy head (chatforge/copyhead.py): a training step and a decode step of a preset's model with
its copy head vs the same model without it, interleaved in one run (same shapes, same weights elsewhere).

    python benchmarks/copy_head.py [--device cpu|cuda] [--preset tiny|gpu-small] [--width 64] [--batch 16] [--steps 5]

Training step: forward + backward of next-token loss on (batch, seq_len) random ids (the copy head's loss path
forms only each target's probability). Decode step: one token for `batch` rows after a half-context prefill
(the full mixture over the vocabulary is formed there). Prints median ms for both models and the ratios
with/without (1.0 = free). Last line: `RESULT {json}`.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from dataclasses import replace
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from chatforge.config import get_preset  # noqa: E402
from chatforge.model import GPT, KVCache  # noqa: E402


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--preset", default="tiny")
    ap.add_argument("--width", type=int, default=64, help="the copy head's width for the 'with' model")
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--steps", type=int, default=5)
    args = ap.parse_args()
    preset = get_preset(args.preset)
    seq = preset.train.seq_len
    cfgs = {"without": replace(preset.model, copy_head=0), "with": replace(preset.model, copy_head=args.width)}
    torch.manual_seed(0)
    models = {k: GPT(c).to(args.device) for k, c in cfgs.items()}
    x = torch.randint(0, preset.model.vocab_size, (args.batch, seq), device=args.device)
    amp = torch.autocast("cuda", dtype=torch.bfloat16) if args.device.startswith("cuda") else torch.autocast("cpu", enabled=False)
    train = {k: [] for k in models}
    decode = {k: [] for k in models}
    for step in range(args.steps + 1):  # step 0 warms up, not counted
        for name, m in models.items():
            m.train()
            _sync(args.device)
            t = time.perf_counter()
            with amp:
                loss = m(x[:, :-1], x[:, 1:])[1]
            loss.backward()
            _sync(args.device)
            dt = time.perf_counter() - t
            m.zero_grad(set_to_none=True)
            m.eval()
            cache = KVCache(m.cfg, args.batch, device=args.device)
            with torch.no_grad(), amp:
                m(x[:, : seq // 2], cache=cache)
                _sync(args.device)
                t = time.perf_counter()
                m(x[:, seq // 2: seq // 2 + 1], cache=cache)
                _sync(args.device)
            if step:
                train[name].append(dt * 1000)
                decode[name].append((time.perf_counter() - t) * 1000)
    med = {k: (statistics.median(train[k]), statistics.median(decode[k])) for k in models}
    for k, (tr, de) in med.items():
        print(f"{k:>7} copy head: train step {tr:8.1f} ms   decode step {de:7.2f} ms")
    ratio_train, ratio_decode = med["with"][0] / med["without"][0], med["with"][1] / med["without"][1]
    print(f"ratio with/without: train {ratio_train:.2f}x, decode {ratio_decode:.2f}x "
          f"({args.preset}, batch {args.batch} x {seq}, {args.device})")
    print("RESULT " + json.dumps({"preset": args.preset, "device": args.device, "batch": args.batch, "seq_len": seq,
                                  "train_ms": {k: round(v[0], 2) for k, v in med.items()},
                                  "decode_ms": {k: round(v[1], 3) for k, v in med.items()},
                                  "train_ratio": round(ratio_train, 3), "decode_ratio": round(ratio_decode, 3)}))


if __name__ == "__main__":
    main()
