"""Decode speed of the engine vs Hugging Face `generate` on identical weights, measured in the same run.

    python benchmarks/decode.py [--device cpu|cuda] [--shapes tiny,gpt2-124m] [--new-tokens 64]

For each shape: builds our model (random init), exports it with chatforge.hf to a temporary HF folder and
loads it with transformers, then times greedy generation of `--new-tokens` tokens
- batch 1: ours (Engine.generate; on CUDA with its default CUDA-graph decode, and also without) vs HF (model.generate, do_sample=False, use_cache=True);
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
    engines = {"ours": Engine(model, tok, max_batch=16)}  # default mode: CUDA graphs on GPU, dynamic on CPU
    if device.type == "cuda":
        engines["ours_eager"] = Engine(model, tok, max_batch=16, decode_mode="dynamic")
    sp = SamplingParams(max_tokens=n, temperature=0.0)
    for e in engines.values():
        e.default_stop_ids = ()

    def run_ours(who, batch):
        out = engines[who].generate(prompts[:batch], sp)
        assert all(len(c.token_ids) == n for c in out)
        return [c.token_ids for c in out]

    def theirs(batch):
        ps = prompts[:batch]
        width = max(map(len, ps))
        ids = torch.tensor([[0] * (width - len(p)) + p for p in ps], device=device)
        mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in ps], device=device)
        hf.generate(ids, attention_mask=mask, max_new_tokens=n, min_new_tokens=n, do_sample=False, use_cache=True,
                    pad_token_id=0, eos_token_id=None)

    agree = None
    with torch.no_grad():
        for b in (1, 16):  # warmup (and CUDA-graph recording)
            outs = [run_ours(who, b) for who in engines]
            theirs(b)
        if len(outs) == 2:  # graph vs eager greedy tokens (bf16: masked full-cache attention may round differently)
            agree = sum(x == y for a, b_ in zip(*outs) for x, y in zip(a, b_)) / (16 * n)
        times = {(who, b): [] for who in (*engines, "hf") for b in (1, 16)}
        for _ in range(args.repeats):
            for b in (1, 16):
                for who in engines:
                    times[(who, b)].append(_time(lambda b=b, who=who: run_ours(who, b), sync))
                times[("hf", b)].append(_time(lambda b=b: theirs(b), sync))
    tps = {f"{who}_b{b}": b * n / statistics.median(t) for (who, b), t in times.items()}
    res = {"shape": shape, "device": str(device), "new_tokens": n, "dtype": str(dtype).removeprefix("torch."),
           "params": model.num_params(), **{k: round(v, 1) for k, v in tps.items()},
           "ratio_b1_ours_vs_hf": tps["ours_b1"] / tps["hf_b1"],
           "ratio_b16_ours_vs_hf": tps["ours_b16"] / tps["hf_b16"],
           "ratio_ours_b16_vs_b1": tps["ours_b16"] / tps["ours_b1"]}
    if agree is not None:
        res["graph_vs_eager_token_agreement"] = agree
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
    if "ours_eager_b1" in tps:
        print(f"   without CUDA graphs: batch 1 {tps['ours_eager_b1']:,.1f} tok/s, batch 16 {tps['ours_eager_b16']:,.1f}"
              f" tok/s; greedy tokens equal to the graph run: {100 * agree:.1f}%")
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
