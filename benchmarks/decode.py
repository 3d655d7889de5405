"""Decode speed of the engine vs Hugging Face `generate` on identical weights, measured in the same run.

    python benchmarks/decode.py [--device cpu|cuda] [--shapes tiny,gpt2-124m] [--new-tokens 64]

For each shape: builds our model (random init), exports it with chatforge.hf to a temporary HF folder and
loads it with transformers, then times greedy generation of `--new-tokens` tokens
- batch 1: ours (Engine.generate) vs HF (model.generate, do_sample=False, use_cache=True);
- batch 16: ours (one batched Engine.generate call over 16 prompts) vs HF (left-padded batch).
Prints tokens/s, the ratio ours/HF at batch 1, and our batch-16 aggregate vs our batch 1. On CUDA it also
prints the fraction of the memory-bandwidth bound at batch 1: weights bytes read per token x tokens/s
divided by the device bandwidth (H100 SXM: 3.35 TB/s). Runs alternate (ours, HF, ours, HF...) and the
median is reported. Last lines: `RESULT {json}` per shape.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from chatforge.engine import Engine, SamplingParams  # noqa: E402
from chatforge.hf import export_hf  # noqa: E402
from chatforge.model import GPT, ModelConfig, save_model  # noqa: E402
from chatforge.tokenizer import Tokenizer, train_tokenizer  # noqa: E402

SHAPES = {
    "tiny": ("llama", dict(n_layer=4, n_head=4, n_kv_head=2, d_model=128, max_seq_len=256)),
    "gpt2-124m": ("gpt2", dict(n_layer=12, n_head=12, d_model=768, max_seq_len=1024)),
}
BANDWIDTH = {"H100": 3.35e12, "H200": 4.8e12, "A100": 2.0e12}


def _tokenizer(vocab: int) -> Tokenizer:
    texts = [f"Town {i} has {i * 37} people and lies on river {i % 7}. 小镇{i}有{i * 37}人。" for i in range(2000)]
    return train_tokenizer(texts, vocab_size=vocab)


def _time(fn, sync) -> float:
    sync()
    t0 = time.perf_counter()
    fn()
    sync()
    return time.perf_counter() - t0


def bench(shape: str, args, device: torch.device) -> dict:
    style, kw = SHAPES[shape]
    tok = _tokenizer(2048)
    vocab = 50304 if shape == "gpt2-124m" else 4096
    torch.manual_seed(0)
    model = GPT(ModelConfig.preset_style(style, vocab_size=vocab, **kw)).eval()
    with tempfile.TemporaryDirectory() as d:
        save_model(model, Path(d) / "ours")
        tok.save(Path(d) / "ours")
        export_hf(Path(d) / "ours", Path(d) / "hf")
        from transformers import AutoModelForCausalLM

        hf = AutoModelForCausalLM.from_pretrained(str(Path(d) / "hf")).eval().to(device)
    model = model.to(device)
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    model, hf = model.to(dtype), hf.to(dtype)
    sync = (lambda: torch.cuda.synchronize(device)) if device.type == "cuda" else (lambda: None)
    n = args.new_tokens
    gen = torch.Generator().manual_seed(1)
    prompts = [torch.randint(10, 2000, (int(torch.randint(8, 24, (1,), generator=gen)),), generator=gen).tolist()
               for _ in range(16)]
    # stop only on length, for both, so both produce exactly n tokens per row
    eng = Engine(model, tok, max_batch=16)
    sp = SamplingParams(max_tokens=n, temperature=0.0)
    eng.default_stop_ids = ()

    def ours(batch):
        out = eng.generate(prompts[:batch], sp)
        assert all(len(c.token_ids) == n for c in out)

    def theirs(batch):
        ps = prompts[:batch]
        width = max(map(len, ps))
        ids = torch.tensor([[0] * (width - len(p)) + p for p in ps], device=device)
        mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in ps], device=device)
        hf.generate(ids, attention_mask=mask, max_new_tokens=n, min_new_tokens=n, do_sample=False, use_cache=True,
                    pad_token_id=0, eos_token_id=None)

    with torch.no_grad():
        for b in (1, 16):  # warmup
            ours(b)
            theirs(b)
        times = {(who, b): [] for who in ("ours", "hf") for b in (1, 16)}
        for _ in range(args.repeats):
            for b in (1, 16):
                times[("ours", b)].append(_time(lambda b=b: ours(b), sync))
                times[("hf", b)].append(_time(lambda b=b: theirs(b), sync))
    tps = {f"{who}_b{b}": b * n / statistics.median(t) for (who, b), t in times.items()}
    res = {"shape": shape, "device": str(device), "new_tokens": n, "dtype": str(dtype).removeprefix("torch."),
           "params": model.num_params(), **{k: round(v, 1) for k, v in tps.items()},
           "ratio_b1_ours_vs_hf": tps["ours_b1"] / tps["hf_b1"],
           "ratio_b16_ours_vs_hf": tps["ours_b16"] / tps["hf_b16"],
           "ratio_ours_b16_vs_b1": tps["ours_b16"] / tps["ours_b1"]}
    if device.type == "cuda":
        bw = next((v for k, v in BANDWIDTH.items() if k in torch.cuda.get_device_name(device)), None)
        weight_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
        if bw:
            res["bandwidth_fraction_b1"] = weight_bytes * tps["ours_b1"] / bw
    print(f"\n== {shape} ({res['params']:,} params, {n} new tokens, {res['dtype']}, {device})")
    print(f"   batch 1 : ours {tps['ours_b1']:>10,.1f} tok/s   HF {tps['hf_b1']:>10,.1f} tok/s   "
          f"ratio {res['ratio_b1_ours_vs_hf']:.2f}x")
    print(f"   batch 16: ours {tps['ours_b16']:>10,.1f} tok/s   HF {tps['hf_b16']:>10,.1f} tok/s   "
          f"ratio {res['ratio_b16_ours_vs_hf']:.2f}x;  ours b16/b1 {res['ratio_ours_b16_vs_b1']:.1f}x")
    if "bandwidth_fraction_b1" in res:
        print(f"   batch 1 reads the weights at {100 * res['bandwidth_fraction_b1']:.1f}% of the memory bandwidth")
    return res


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--device", default="cpu")
    p.add_argument("--shapes", default="tiny,gpt2-124m")
    p.add_argument("--new-tokens", type=int, default=64)
    p.add_argument("--repeats", type=int, default=3)
    args = p.parse_args()
    device = torch.device(args.device)
    results = [bench(s.strip(), args, device) for s in args.shapes.split(",") if s.strip()]
    print()
    for r in results:
        print("RESULT " + json.dumps(r))


if __name__ == "__main__":
    main()
