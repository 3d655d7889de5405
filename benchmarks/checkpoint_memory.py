"""Checkpoint save under FSDP2: full (gathered to rank 0) vs sharded (DCP, every rank writes its shards).

    python -m torch.distributed.run --standalone --nproc_per_node=2 benchmarks/checkpoint_memory.py \
        [--shape gpt2-124m] [--repeats 2]

Each process builds the preset's model shape (random weights, fp32), shards it with FSDP2, gives AdamW its
state (one step on random tokens), then saves with `chatforge.train.ckpt.save_checkpoint` in each format,
`--repeats` times, alternating (sharded first, see below). Measured per rank: median wall time of the save and
the highest rise of the process's resident memory during one (RSS polled every 2 ms from /proc), and the
bytes on disk; then rank 0 alone loads
each checkpoint into an unsharded model (the "resume on 1 process" path) and times it. The anchor is the full
format in the same run: the printed ratio is sharded / full for rank 0's memory rise and save time. On the
project's 2-core CPU with gloo (the figure in README); on GPUs the same script measures host memory.
Last line: `RESULT {json}` (rank 0).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from chatforge.config import get_preset  # noqa: E402
from chatforge.model import GPT  # noqa: E402
from chatforge.train import ckpt, dist  # noqa: E402

_PAGE = os.sysconf("SC_PAGE_SIZE")


def rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * _PAGE


class PeakRss:
    """The highest RSS seen while the block runs, minus the RSS at its start (bytes)."""

    def __enter__(self):
        self.start = self.peak = rss()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll, daemon=True)
        self._thread.start()
        return self

    def _poll(self):
        while not self._stop.is_set():
            self.peak = max(self.peak, rss())
            time.sleep(0.002)

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, rss())
        self.rise = self.peak - self.start


def folder_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) if path.is_dir() else path.stat().st_size


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--shape", default="gpt2-124m", help="a preset whose model shape to build")
    ap.add_argument("--repeats", type=int, default=2)
    args = ap.parse_args()
    info = dist.setup("cpu")
    torch.manual_seed(0)
    cfg = get_preset(args.shape).model
    raw = GPT(cfg)
    n_params = sum(p.numel() for p in raw.parameters())
    model = dist.wrap_model(raw, info, "fsdp", None)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    x = torch.randint(0, cfg.vocab_size, (1, 64))
    model(x, x)[1].backward()
    opt.step()
    opt.zero_grad(set_to_none=True)
    root = Path(tempfile.mkdtemp(prefix="ckpt-bench-")) if info.is_main else None
    objs = [str(root) if root else None]
    if info.distributed:
        torch.distributed.broadcast_object_list(objs, src=0)
    root = Path(objs[0])
    runs = {"sharded": [], "full": []}
    for _ in range(args.repeats):
        # sharded first: its first save runs on a heap the full save hasn't grown (freed pages stay in the
        # process and would hide a later save's rise); the rise reported is the max over repeats
        for fmt in ("sharded", "full"):
            stage = root / fmt
            stage.mkdir(parents=True, exist_ok=True)
            dist.barrier()
            t0 = time.perf_counter()
            with PeakRss() as mem:
                ckpt.save_checkpoint(stage, model, opt, {"step": 1, "tokens": 0}, info.is_main, fmt == "sharded")
                dist.barrier()
            runs[fmt].append((time.perf_counter() - t0, mem.rise))
    per_rank = {fmt: {"save_s": statistics.median(t for t, _ in r), "rss_rise_mb": max(m for _, m in r) / 2**20}
                for fmt, r in runs.items()}
    gathered = [None] * info.world_size
    if info.distributed:
        torch.distributed.all_gather_object(gathered, per_rank)
    else:
        gathered = [per_rank]
    dist.teardown()
    if not info.is_main:
        return
    disk = {fmt: folder_bytes(root / fmt / (ckpt.CKPT_NAME if fmt == "full" else ckpt.SHARDED_NAME)) / 2**20
            for fmt in runs}
    load_s = {}
    for fmt in runs:  # resume on 1 process: an unsharded model (the process group is gone)
        single = GPT(cfg)
        single_opt = torch.optim.AdamW(single.parameters(), lr=1e-4)
        t0 = time.perf_counter()
        ckpt.restore(single, single_opt, ckpt.load_checkpoint(root / fmt), rank=0)
        load_s[fmt] = time.perf_counter() - t0
    shutil.rmtree(root, ignore_errors=True)
    print(f"{args.shape}: {n_params / 1e6:.1f}M parameters, fp32 + AdamW state, FSDP2 on {info.world_size} "
          f"process(es), median of {args.repeats}")
    for fmt in runs:
        ranks = ", ".join(f"rank {r}: save {g[fmt]['save_s']:.2f} s, RSS +{g[fmt]['rss_rise_mb']:.0f} MB"
                          for r, g in enumerate(gathered))
        print(f"  {fmt:8s} {ranks}; on disk {disk[fmt]:.0f} MB; load on 1 process {load_s[fmt]:.2f} s")
    full0, shard0 = gathered[0]["full"], gathered[0]["sharded"]
    ratio_mem = shard0["rss_rise_mb"] / max(full0["rss_rise_mb"], 1e-9)
    ratio_t = shard0["save_s"] / full0["save_s"]
    print(f"  sharded / full on rank 0: memory rise {ratio_mem:.2f}x, save time {ratio_t:.2f}x")
    print("RESULT " + json.dumps({"shape": args.shape, "params_m": round(n_params / 1e6, 1),
                                  "world_size": len(gathered), "per_rank": gathered, "disk_mb": disk,
                                  "load_on_1_s": load_s, "rank0_mem_ratio_sharded_over_full": round(ratio_mem, 3),
                                  "rank0_save_time_ratio": round(ratio_t, 3)}))


if __name__ == "__main__":
    main()
