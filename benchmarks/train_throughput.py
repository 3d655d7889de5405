"""Training-step throughput of chatforge's GPT against a plain Hugging Face GPT-2 reference.

For each shape, builds our `GPT` (GPT-2 style: learned positions, LayerNorm, tanh-GELU, biases, tied
embeddings) and a randomly initialised `transformers.GPT2LMHeadModel` of the identical shape (SDPA attention,
built from a config: nothing is downloaded), checks that the parameter counts match, and times one full
training step for each: forward with loss, backward, grad-norm clip 1.0, AdamW step (chatforge's
`build_optimizer`: lr 3e-4, betas (0.9, 0.95), weight decay 0.1 on matrices/embeddings, fused on CUDA),
zero_grad. Both models see the same random token batches. After a warmup, the timed steps are interleaved
between the models in alternating rounds so machine noise hits both alike; the per-step median is reported.

Reported per shape: tokens/s, ms/step, MFU (our `flops_per_token(seq_len)`, the same figure for both since
the shapes are identical, x tokens/s / `chatforge.train.loop.peak_flops`; on CPU that peak is a measured fp32
matmul rate, best of 5 windows, not a datasheet number), peak CUDA memory per model (its parameters + AdamW state
+ the peak working memory of its step; the other model, resident too, is not counted), and the
chatforge/reference speed ratio. The last lines are `RESULT {json}`, one per shape, for a README.

    python benchmarks/train_throughput.py [--device cpu|cuda] [--shapes tiny,gpt2-124m] [--steps N]
        [--batch-size B] [--seq-len T] [--compile] [--dtype auto|float32|bfloat16]
        [--compile-reference] [--reference-act gelu_new|gelu_pytorch_tanh] [--warmup N] [--seed S]

Reading the ratio: HF's `gelu_new` (GPT-2's configured activation) is the tanh-GELU written as separate
elementwise ops (and under bf16 autocast its `torch.pow` promotes the MLP activation to fp32), where ours is
one fused `F.gelu(approximate="tanh")`; that accounts for most of the eager gap and of the reference's extra
memory. `--reference-act gelu_pytorch_tanh` gives the reference the same fused kernel.

Shapes: `tiny` is the tiny preset's size (4 layers, d 128, vocab 4096) in GPT-2 style; `gpt2-124m` is the
gpt2-124m preset model. Defaults per device (batch x seq, steps): CPU tiny 8 x 128, gpt2-124m 1 x 128,
12 steps each (under 3 minutes on 2 cores); CUDA tiny 32 x 256, gpt2-124m 32 x 1024, 30 steps, bf16
autocast. `--compile` compiles ours with `model.compile()` (the reference stays eager: it is the plain
reference step); `--compile-reference` adds a compiled copy of the reference as a third contender.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import gc
import json
import math
import platform
import statistics
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from chatforge.config import TrainConfig  # noqa: E402
from chatforge.model import GPT, ModelConfig  # noqa: E402
from chatforge.train.loop import build_optimizer, peak_flops  # noqa: E402

SHAPES: dict[str, dict] = {
    "tiny": dict(vocab_size=4096, n_layer=4, n_head=4, d_model=128, max_seq_len=256),
    "gpt2-124m": dict(vocab_size=50304, n_layer=12, n_head=12, d_model=768, max_seq_len=1024),
}
# (batch_size, seq_len, timed steps) per device type and shape
DEFAULTS: dict[str, dict[str, tuple[int, int, int]]] = {
    "cpu": {"tiny": (8, 128, 12), "gpt2-124m": (1, 128, 12)},
    "cuda": {"tiny": (32, 256, 30), "gpt2-124m": (32, 1024, 30)},
}
OPTIM = TrainConfig(lr=3e-4, beta1=0.9, beta2=0.95, weight_decay=0.1, grad_clip=1.0)
ROUNDS = 3
N_BATCHES = 4  # distinct random batches, cycled; the same ones for every model
GIB = 2**30


@dataclass
class Contender:
    name: str
    key: str  # key in the RESULT json
    model: torch.nn.Module
    loss_fn: object  # (model, x, y) -> scalar loss
    optimizer: torch.optim.Optimizer | None = None
    times: list[float] = field(default_factory=list)
    peak_delta: int = 0  # bytes above the segment's starting allocation (CUDA)
    last_loss: torch.Tensor | None = None


def reference_model(shape: dict, activation: str = "gelu_new") -> torch.nn.Module:
    from transformers import GPT2Config, GPT2LMHeadModel

    cfg = GPT2Config(vocab_size=shape["vocab_size"], n_positions=shape["max_seq_len"], n_embd=shape["d_model"],
                     n_layer=shape["n_layer"], n_head=shape["n_head"], n_inner=None,
                     activation_function=activation, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,
                     tie_word_embeddings=True, bos_token_id=None, eos_token_id=None, use_cache=False,
                     attn_implementation="sdpa")
    model = GPT2LMHeadModel(cfg)
    model.loss_type = "ForCausalLM"  # HF's default causal-LM loss, named so it doesn't warn that it guessed
    return model


def chatforge_loss(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return model(x, y)[1]


def reference_loss(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    # HF shifts `labels=input_ids` internally: the same next-token targets as `y`, minus the window's
    # last position (which has no next token inside the window); use_cache=False as for any training step
    return model(input_ids=x, labels=x, use_cache=False).loss


def static_bytes(model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> int:
    """Bytes held between steps: parameters (tied ones once) + optimizer state (grads are set to None)."""
    n = sum(p.numel() * p.element_size() for p in model.parameters())
    for state in optimizer.state.values():
        n += sum(t.numel() * t.element_size() for t in state.values() if torch.is_tensor(t))
    return n


def fmt(v: float | None, spec: str, suffix: str = "") -> str:
    return "n/a" if v is None else f"{v:{spec}}{suffix}"


def bench_shape(shape_name: str, args, device: torch.device, dtype: torch.dtype, peak: float | None) -> dict:
    shape = SHAPES[shape_name]
    d_batch, d_seq, d_steps = DEFAULTS[device.type][shape_name]
    B = args.batch_size or d_batch
    T = args.seq_len or d_seq
    steps = args.steps or d_steps
    if T > shape["max_seq_len"]:
        raise SystemExit(f"--seq-len {T} exceeds {shape_name}'s max_seq_len {shape['max_seq_len']}")
    warmup = args.warmup if args.warmup is not None else (6 if args.compile or args.compile_reference else 3)
    cuda = device.type == "cuda"

    def sync() -> None:
        if cuda:
            torch.cuda.synchronize(device)

    if args.compile or args.compile_reference:
        # fresh compile caches per shape: otherwise the second shape is recompiled with dynamic shapes
        # (automatic_dynamic_shapes), which is slower and not what a training run of that shape gets
        torch._dynamo.reset()
    torch.manual_seed(args.seed)
    ours = GPT(ModelConfig.preset_style("gpt2", **shape)).to(device)
    torch.manual_seed(args.seed)
    ref = reference_model(shape, args.reference_act).to(device)
    n_ours = ours.num_params()
    n_ref = sum(p.numel() for p in ref.parameters())  # parameters() counts the tied lm_head once
    print(f"\n== {shape_name}: batch {B} x seq {T}, {steps} timed steps after {warmup} warmup, "
          f"dtype {str(dtype).removeprefix('torch.')}")
    print(f"   params: chatforge {n_ours:,}  reference (HF GPT2LMHeadModel) {n_ref:,}")
    assert n_ours == n_ref, f"parameter counts differ: chatforge {n_ours:,} vs reference {n_ref:,}"
    flops_per_token = ours.flops_per_token(T)

    contenders: list[Contender] = []
    ref_compiled = copy.deepcopy(ref) if args.compile_reference else None
    if args.compile:
        ours.compile()
    contenders.append(Contender(f"chatforge GPT ({'compiled' if args.compile else 'eager'})", "chatforge", ours,
                                chatforge_loss))
    ref_name = "HF GPT2LMHeadModel (sdpa" + ("" if args.reference_act == "gelu_new" else f", {args.reference_act}")
    contenders.append(Contender(f"{ref_name}, eager)", "reference", ref, reference_loss))
    if ref_compiled is not None:
        ref_compiled.compile()
        contenders.append(Contender(f"{ref_name}, compiled)", "reference_compiled", ref_compiled,
                                    reference_loss))
    for c in contenders:
        c.model.train()
        c.optimizer = build_optimizer(c.model, OPTIM, device)

    gen = torch.Generator().manual_seed(args.seed)
    batches = []
    for _ in range(N_BATCHES):
        full = torch.randint(0, shape["vocab_size"], (B, T + 1), generator=gen).to(device)
        batches.append((full[:, :-1].contiguous(), full[:, 1:].contiguous()))
    autocast = (torch.autocast(device.type, dtype=dtype) if dtype != torch.float32 else contextlib.nullcontext())
    step_counter = [0]

    def train_step(c: Contender) -> None:
        x, y = batches[step_counter[0] % N_BATCHES]
        step_counter[0] += 1
        with autocast:
            loss = c.loss_fn(c.model, x, y)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(c.model.parameters(), OPTIM.grad_clip)
        c.optimizer.step()
        c.optimizer.zero_grad(set_to_none=True)
        c.last_loss = loss.detach()

    # warmup (compilation happens here), one model after the other
    for c in contenders:
        t0 = time.perf_counter()
        for i in range(warmup):
            step_counter[0] = i
            train_step(c)
        sync()
        print(f"   warmup {c.name}: {time.perf_counter() - t0:.1f}s")

    # timed: interleaved rounds, rotating which model goes first
    per_round = [steps // ROUNDS + (1 if r < steps % ROUNDS else 0) for r in range(ROUNDS)]
    for r, n in enumerate(per_round):
        order = contenders[r % len(contenders):] + contenders[:r % len(contenders)]
        for c in order:
            if n == 0:
                continue
            step_counter[0] = sum(per_round[:r])  # same batches for every model
            if cuda:
                sync()
                base = torch.cuda.memory_allocated(device)
                torch.cuda.reset_peak_memory_stats(device)
            for _ in range(n):
                sync()
                t0 = time.perf_counter()
                train_step(c)
                sync()
                c.times.append(time.perf_counter() - t0)
            if cuda:
                c.peak_delta = max(c.peak_delta, torch.cuda.max_memory_allocated(device) - base)

    tokens = B * T
    out: dict = {"shape": shape_name, "device": device.type, "device_name": device_name(device),
                 "dtype": str(dtype).removeprefix("torch."), "batch_size": B, "seq_len": T, "steps": steps,
                 "warmup": warmup, "compile": args.compile, "reference_activation": args.reference_act,
                 "torch": torch.__version__,
                 "threads": torch.get_num_threads() if not cuda else None,
                 "params_chatforge": n_ours, "params_reference": n_ref, "flops_per_token": flops_per_token,
                 "peak_flops": peak, "peak_flops_source": peak_source(device)}
    w = max(len(c.name) for c in contenders)
    header = f"   {'model':<{w}} {'ms/step':>9} {'tokens/s':>11} {'MFU':>7} {'peak mem':>10} {'loss':>7}"
    print(header)
    print("   " + "-" * (len(header) - 3))
    for c in contenders:
        med = statistics.median(c.times)
        tps = tokens / med
        mfu = flops_per_token * tps / peak if peak else None
        mem = (static_bytes(c.model, c.optimizer) + c.peak_delta) / GIB if cuda else None
        loss = float(c.last_loss)
        out[c.key] = {"ms_per_step": 1e3 * med, "ms_per_step_min": 1e3 * min(c.times),
                      "ms_per_step_max": 1e3 * max(c.times), "tokens_per_s": tps, "mfu": mfu,
                      "peak_mem_gib": mem, "final_loss": loss}
        print(f"   {c.name:<{w}} {1e3 * med:>9.1f} {tps:>11,.0f} {fmt(mfu and 100 * mfu, '.1f', '%'):>7} "
              f"{fmt(mem, '.2f', ' GiB'):>10} {loss:>7.3f}")
    out["ratio_tokens_per_s"] = out["chatforge"]["tokens_per_s"] / out["reference"]["tokens_per_s"]
    print(f"   chatforge / reference tokens/s: {out['ratio_tokens_per_s']:.3f}x")
    if cuda:
        print("   (peak mem: the model's parameters + AdamW state + its step's peak working memory)")
    if "reference_compiled" in out:
        out["ratio_vs_reference_compiled"] = (out["chatforge"]["tokens_per_s"]
                                              / out["reference_compiled"]["tokens_per_s"])
        print(f"   chatforge / compiled reference tokens/s: {out['ratio_vs_reference_compiled']:.3f}x")
    return out


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return platform.processor() or platform.machine()


def peak_source(device: torch.device) -> str:
    if device.type == "cuda":
        return "dense bf16 tensor-core datasheet peak (chatforge.train.loop.GPU_PEAK_BF16)"
    return (f"measured fp32 2048x2048 matmul rate on {torch.get_num_threads()} threads, best of 5 windows "
            "(not a datasheet peak)")


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    p.add_argument("--shapes", default="tiny,gpt2-124m", help=f"comma list of {','.join(SHAPES)}")
    p.add_argument("--steps", type=int, default=0, help="timed steps per model (default: per device/shape)")
    p.add_argument("--warmup", type=int, default=None, help="warmup steps per model (default 3, 6 with compile)")
    p.add_argument("--batch-size", type=int, default=0)
    p.add_argument("--seq-len", type=int, default=0)
    p.add_argument("--compile", action="store_true", help="compile chatforge's model (model.compile())")
    p.add_argument("--compile-reference", action="store_true",
                   help="also time a compiled copy of the reference (the eager one stays the baseline)")
    p.add_argument("--reference-act", default="gelu_new", choices=["gelu_new", "gelu_pytorch_tanh"],
                   help="the reference's activation_function: gelu_new (GPT-2's own config; composed of "
                        "elementwise ops, and under bf16 autocast its torch.pow runs in fp32) or "
                        "gelu_pytorch_tanh (the same function as one fused kernel, as ours uses)")
    p.add_argument("--dtype", default="auto", choices=["auto", "float32", "bfloat16"],
                   help="auto: bf16 autocast on CUDA, fp32 on CPU")
    p.add_argument("--seed", type=int, default=1337)
    args = p.parse_args(argv)

    dev = args.device
    if dev == "auto":
        dev = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(dev)
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", torch.cuda.current_device())
    if device.type not in DEFAULTS:
        raise SystemExit(f"--device {args.device!r}: expected cpu or cuda")
    dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16}.get(
        args.dtype, torch.bfloat16 if device.type == "cuda" else torch.float32)
    shapes = [s.strip() for s in args.shapes.split(",") if s.strip()]
    unknown = [s for s in shapes if s not in SHAPES]
    if unknown:
        raise SystemExit(f"unknown shapes {unknown}; expected some of {list(SHAPES)}")
    if args.warmup is not None and args.warmup < 1:
        raise SystemExit("--warmup must be >= 1")
    if min(args.steps, args.batch_size, args.seq_len) < 0:
        raise SystemExit("--steps, --batch-size and --seq-len must be positive")
    if device.type == "cuda":  # as the training loop does
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True

    import transformers

    peak = peak_flops(device)  # measured before anything else runs (on CPU)
    print(f"train_throughput: device {device} ({device_name(device)}), torch {torch.__version__}, "
          f"transformers {transformers.__version__}")
    if device.type == "cpu":
        print(f"MFU peak: {fmt(peak and peak / 1e9, ',.1f')} GFLOP/s = {peak_source(device)}; "
              "CPU 'MFU' is the fraction of that rate")
    else:
        print(f"MFU peak: {fmt(peak and peak / 1e12, ',.0f')} TFLOP/s bf16 ({peak_source(device)})"
              + ("" if peak else "; unknown GPU, MFU not reported")
              + ("; this run is fp32/TF32, so MFU is against the bf16 peak" if dtype == torch.float32 else ""))
    results = []
    for s in shapes:
        results.append(bench_shape(s, args, device, dtype, peak))
        gc.collect()
        if device.type == "cuda":
            torch.cuda.empty_cache()
    print()
    for r in results:
        print("RESULT " + json.dumps(r))
    bad = [r["shape"] for r in results if not all(math.isfinite(r[k]["final_loss"])
                                                  for k in ("chatforge", "reference"))]
    if bad:
        raise SystemExit(f"non-finite loss in {bad}")


if __name__ == "__main__":
    main()
