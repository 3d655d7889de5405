"""Cost of SFT packing's attention mask: a training step on packed rows (block-diagonal causal mask from
segment ids, per-sample positions) vs the same step with plain causal attention, same shapes, same run.

    python benchmarks/sft_packing.py [--device cpu|cuda] [--preset tiny|gpu-small] [--batch 16] [--steps 10]

Rows hold samples of random lengths (16..seq_len/2 tokens). Prints ms/step for both, and the ratio
packed/causal (1.0 = the mask is free). On CUDA in bf16 autocast; the masked path can't use the flash
kernel, which is what this measures. Last line: `RESULT {json}`.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from chatforge.config import get_preset  # noqa: E402
from chatforge.model import GPT  # noqa: E402


def packed_segments(batch: int, seq_len: int, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    seg = torch.zeros(batch, seq_len, dtype=torch.long)
    pos = torch.zeros(batch, seq_len, dtype=torch.long)
    for b in range(batch):
        at, k = 0, 0
        while at < seq_len:
            n = min(seq_len - at, int(torch.randint(16, seq_len // 2, (1,), generator=gen)))
            seg[b, at:at + n], pos[b, at:at + n] = k, torch.arange(n)
            at, k = at + n, k + 1
    return seg, pos


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--device", default="cpu")
    p.add_argument("--preset", default="tiny")
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--steps", type=int, default=10)
    args = p.parse_args()
    device = torch.device(args.device)
    preset = get_preset(args.preset)
    seq = preset.train.seq_len
    torch.manual_seed(0)
    model = GPT(preset.model).to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    gen = torch.Generator().manual_seed(0)
    x = torch.randint(0, preset.model.vocab_size, (args.batch, seq), generator=gen).to(device)
    seg, pos = (t.to(device) for t in packed_segments(args.batch, seq, gen))
    amp = torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else torch.autocast("cpu",
                                                                                                      enabled=False)
    sync = (lambda: torch.cuda.synchronize(device)) if device.type == "cuda" else (lambda: None)

    def step(packed: bool) -> None:
        with amp:
            kw = {"segment_ids": seg, "positions": pos} if packed else {}
            loss = model(x, x, **kw)[1]
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    times: dict[bool, list[float]] = {True: [], False: []}
    for packed in (True, False):  # warm-up
        step(packed)
    for _ in range(args.steps):
        for packed in (True, False):  # interleaved, so machine noise hits both
            sync()
            t0 = time.perf_counter()
            step(packed)
            sync()
            times[packed].append(time.perf_counter() - t0)
    ms = {k: 1000 * statistics.median(v) for k, v in times.items()}
    res = {"preset": args.preset, "device": str(device), "batch": args.batch, "seq_len": seq,
           "ms_packed": round(ms[True], 2), "ms_causal": round(ms[False], 2), "ratio_packed_vs_causal":
           round(ms[True] / ms[False], 3)}
    print(f"{args.preset} on {device}, batch {args.batch} x {seq}: packed {ms[True]:.1f} ms/step, "
          f"causal {ms[False]:.1f} ms/step, ratio {ms[True] / ms[False]:.2f}x")
    print("RESULT " + json.dumps(res))


if __name__ == "__main__":
    main()
