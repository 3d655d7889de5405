"""The one training loop every stage shares: device/dtype, DDP/FSDP2, grad accumulation, clipping,
warmup + cosine schedule, validation, metrics.jsonl, progress bar, atomic checkpoint/resume.

A stage supplies a `Task` (its batches and its loss) and a model factory; the loop does the rest.
Resuming: re-running the same command finds the checkpoint (`checkpoint.pt`, or the sharded `checkpoint/`
folder under FSDP2: train/ckpt.py) and continues from its step on any number of processes; `global_batch`
fixes the accumulation per process count (`per_process_accumulation`). Because batches
are a pure function of the step (see sampler.py) and RNG/optimizer state are restored, the resumed loss
curve equals the uninterrupted one on CPU.
"""

from __future__ import annotations

import contextlib
import json
import math
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Protocol

import torch
from tqdm import tqdm

from chatforge import ChatforgeError
from chatforge.config import TrainConfig
from chatforge.model import GPT
from chatforge.run import atomic_write_text
from chatforge.train import ckpt, dist
from chatforge.train.dist import DistInfo

# Dense bf16 tensor-core peaks (FLOP/s) for MFU. Unknown GPUs report no MFU rather than a made-up one.
GPU_PEAK_BF16 = {"H100": 989e12, "H200": 989e12, "A100": 312e12, "L40S": 362e12, "L4": 121e12,
                 "A10G": 125e12, "4090": 165e12, "3090": 71e12}
_CPU_PEAK: dict[str, float] = {}


class Task(Protocol):
    """What a stage gives the loop. Batches are dicts of CPU tensors; the loop moves them."""

    def train_batch(self, step: int, micro: int, info: DistInfo, batch_size: int, grad_accum: int) -> dict: ...

    def loss(self, model, batch: dict) -> torch.Tensor: ...

    def tokens_in(self, batch: dict) -> int:
        """Tokens that carry loss in a (CPU) batch."""
        ...

    # optional: `tokens_processed(batch)`, the positions the model computes on, for tokens/s and MFU when
    # not every position carries loss (SFT computes prompts and padding too); default tokens_in

    def val_batches(self, info: DistInfo, batch_size: int, n_batches: int) -> list[dict]:
        """The same number of batches on every rank (FSDP forwards are collective); padding batches have
        tokens_in == 0. Together the ranks cover the same windows whatever the world size."""
        ...


def lr_at(step: int, cfg: TrainConfig) -> float:
    """Linear warmup to cfg.lr, then cosine decay to cfg.lr * min_lr_ratio at max_steps."""
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    span = max(1, cfg.max_steps - cfg.warmup_steps)
    progress = min(1.0, (step - cfg.warmup_steps) / span)
    return cfg.lr * (cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress)))


def peak_flops(device: torch.device) -> float | None:
    """Peak FLOP/s for MFU: a table for GPUs; on CPU a measured fp32 matmul rate (so CPU 'MFU' reads as
    the fraction of what this machine's BLAS sustains on a large matmul)."""
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        return next((v for k, v in GPU_PEAK_BF16.items() if k in name), None)
    if "cpu" not in _CPU_PEAK:
        # best of several short windows: one slow window (a noisy neighbour, a frequency dip) would
        # otherwise understate the peak and inflate MFU
        n = 2048
        gen = torch.Generator().manual_seed(0)  # never touch the global RNG (exact resume with dropout)
        a, b = torch.randn(n, n, generator=gen), torch.randn(n, n, generator=gen)
        a @ b
        best = 0.0
        for _ in range(5):
            k, t0 = 0, time.perf_counter()
            while time.perf_counter() - t0 < 0.1:
                a @ b
                k += 1
            best = max(best, 2 * n**3 * k / (time.perf_counter() - t0))
        _CPU_PEAK["cpu"] = best
    return _CPU_PEAK["cpu"]


def build_optimizer(model: torch.nn.Module, cfg: TrainConfig, device: torch.device) -> torch.optim.AdamW:
    """AdamW; weight decay on matrices and embeddings only (not on norms and biases); fused on GPU."""
    decay = [p for p in model.parameters() if p.requires_grad and p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.requires_grad and p.dim() < 2]
    groups = [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=(cfg.beta1, cfg.beta2), eps=1e-8,
                             fused=device.type == "cuda")


def _compute_dtype(cfg: TrainConfig, device: torch.device) -> torch.dtype:
    if cfg.dtype == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    if cfg.dtype not in ("float32", "bfloat16"):
        raise ChatforgeError(f"--dtype {cfg.dtype!r}: expected auto, float32 or bfloat16")
    return getattr(torch, cfg.dtype)


def _truncate_metrics(path: Path, last_step: int) -> None:
    """Drop records logged after the checkpoint we (re)start from (step 0 when there is none), so the curve
    has no duplicates. A torn last line from a kill is dropped too. Rewritten atomically."""
    if not path.exists():
        return
    keep = []
    for line in path.read_text().splitlines():
        try:
            if json.loads(line).get("step", 0) <= last_step:
                keep.append(line)
        except (json.JSONDecodeError, AttributeError):
            continue
    atomic_write_text(path, "".join(line + "\n" for line in keep))


def run_identity(cfg: TrainConfig, world_size: int) -> dict:
    """The settings that define a training run's trajectory; resuming under different ones is refused."""
    keys = ("max_steps", "seq_len", "lr", "min_lr_ratio", "warmup_steps", "weight_decay", "beta1", "beta2",
            "grad_clip", "seed")
    return {**{k: getattr(cfg, k) for k in keys},
            "global_batch": cfg.batch_size * cfg.grad_accum * world_size}


def train(stage_dir: str | Path, make_model: Callable[[], GPT], cfg: TrainConfig, task: Task,
          desc: str = "train", on_finish: Callable[[GPT, dict, DistInfo], None] | None = None,
          identity: dict | None = None, fresh: bool = False,
          on_eval: Callable[[int, dict, DistInfo], None] | None = None) -> dict:
    """Train to cfg.max_steps, resuming if a checkpoint exists. Returns a summary dict.

    `identity` (model config, input fingerprints...) is stored with the checkpoint together with the
    trajectory-defining train settings; a resume under different ones is refused with the difference.
    `fresh` discards an existing checkpoint and metrics and starts over.
    `on_finish(raw_model, full_state_dict, info)` runs on every rank after the last step (rank 0 writes).
    `on_eval(step, full_state_dict, info)` runs on every rank at each validation point, after the val loss
    (SFT scores a candidate checkpoint there with the capability suite).
    """
    stage = Path(stage_dir)
    info = dist.setup(cfg.device)
    try:
        return _train(stage, make_model, cfg, task, desc, info, on_finish, identity or {}, fresh, on_eval)
    finally:
        dist.teardown()


def per_process_accumulation(cfg: TrainConfig, world_size: int) -> TrainConfig:
    """`cfg` with grad_accum set from global_batch for this many processes (unchanged when global_batch is 0):
    the same global batch, so the same optimizer steps, on 1 process or 8."""
    if cfg.global_batch <= 0 or cfg.batch_size <= 0:  # a bad batch_size gets its own error below
        return cfg
    per_micro = cfg.batch_size * world_size
    if cfg.global_batch % per_micro:
        raise ChatforgeError(
            f"global batch {cfg.global_batch} is not a multiple of batch_size {cfg.batch_size} x {world_size} "
            f"processes; pick a --batch-size (per process) that divides {cfg.global_batch // max(world_size, 1)}, "
            f"or set --global-batch")
    return replace(cfg, grad_accum=cfg.global_batch // per_micro)


def _train(stage: Path, make_model, cfg: TrainConfig, task: Task, desc: str, info: DistInfo, on_finish,
           identity: dict, fresh: bool, on_eval=None) -> dict:
    cfg = per_process_accumulation(cfg, info.world_size)
    bad = [f"{k}={getattr(cfg, k)}" for k in ("max_steps", "batch_size", "grad_accum", "seq_len", "log_every",
                                             "eval_every", "save_every") if getattr(cfg, k) <= 0]
    if bad:
        raise ChatforgeError(f"these training settings must be positive: {', '.join(bad)}")
    if cfg.dist not in ("ddp", "fsdp"):
        raise ChatforgeError(f"--dist {cfg.dist!r}: expected 'ddp' or 'fsdp'")
    if cfg.seed < 0:
        raise ChatforgeError(f"--seed {cfg.seed}: must be >= 0")
    if info.is_main:
        stage.mkdir(parents=True, exist_ok=True)
        if fresh:
            ckpt.remove_checkpoints(stage)
            (stage / "metrics.jsonl").unlink(missing_ok=True)
    dist.barrier()
    device = info.device
    peak = peak_flops(device)
    dtype = _compute_dtype(cfg, device)
    torch.manual_seed(cfg.seed)  # identical initial weights on every rank and every run
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True

    raw = make_model().to(device)
    torch.manual_seed(cfg.seed + 1 + info.rank)  # dropout masks differ across ranks (a checkpoint restores them)
    raw.activation_checkpointing = cfg.activation_checkpointing
    flops_per_token = raw.flops_per_token(cfg.seq_len)
    fsdp = info.distributed and cfg.dist == "fsdp"
    if cfg.compile:
        # per block under FSDP2 (so sharding wraps compiled blocks); whole model otherwise
        for block in raw.blocks if fsdp else [raw]:
            block.compile()
    model = dist.wrap_model(raw, info, cfg.dist, dtype if fsdp and dtype != torch.float32 else None)
    optimizer = build_optimizer(model, cfg, device)
    autocast = (torch.autocast(device.type, dtype=dtype) if dtype != torch.float32 and not fsdp
                else contextlib.nullcontext())

    metrics_path = stage / "metrics.jsonl"
    step, tokens_seen = 0, 0
    identity = {**identity, "train": run_identity(cfg, info.world_size)}
    sharded = ckpt.is_sharded(cfg.checkpoint_format, fsdp)
    payload = ckpt.load_checkpoint(stage, info.is_main)
    if payload is not None:
        old = payload.get("identity", {})
        if old != identity:
            diff = {k: (old.get(k), v) for k, v in identity.items() if old.get(k) != v}
            raise ChatforgeError(
                f"{ckpt.checkpoint_path(stage)} was made with different settings {diff} (old, new). Re-run with the "
                f"same settings to resume, or add --force to start this stage over")
        ckpt.restore(model, optimizer, payload, info.rank)
        step, tokens_seen = payload["step"], payload["tokens"]
        if info.is_main:
            print(f"[{desc}] resuming from {ckpt.checkpoint_path(stage)} at step {step}", flush=True)
        del payload
    if info.is_main:
        _truncate_metrics(metrics_path, step)
    dist.barrier()
    log = open(metrics_path, "a") if info.is_main else None
    bar = tqdm(total=cfg.max_steps, initial=step, desc=desc, disable=not info.is_main, mininterval=1.0,
               dynamic_ncols=True)
    summary: dict = {}

    def save() -> None:
        ckpt.save_checkpoint(stage, model, optimizer, {"step": step, "tokens": tokens_seen, "identity": identity},
                             info.is_main, sharded)
        dist.barrier()

    def evaluate() -> float | None:
        batches = task.val_batches(info, cfg.batch_size, cfg.eval_batches)
        model.eval()
        total = count = 0.0
        with torch.no_grad(), autocast:
            for b in batches:
                n = task.tokens_in(b)  # 0 for padding batches: every rank runs the same number of forwards
                loss = task.loss(model, {k: v.to(device) for k, v in b.items()})
                if n:
                    total += loss.item() * n
                    count += n
        model.train()
        total, count = dist.all_reduce_sum([total, count], device)
        return total / count if count else None

    def write(record: dict) -> None:
        if log is not None:
            log.write(json.dumps(record) + "\n")
            log.flush()

    model.train()
    t_last, tokens_last = time.perf_counter(), tokens_seen
    try:
        while step < cfg.max_steps:
            lr = lr_at(step, cfg)
            for g in optimizer.param_groups:
                g["lr"] = lr
            loss_sum = torch.zeros((), device=device)
            step_tokens = 0
            count_tokens = getattr(task, "tokens_processed", task.tokens_in)
            for micro in range(cfg.grad_accum):
                cpu_batch = task.train_batch(step, micro, info, cfg.batch_size, cfg.grad_accum)
                step_tokens += count_tokens(cpu_batch)  # counted on the CPU copy: no GPU sync
                batch = {k: v.to(device, non_blocking=True) for k, v in cpu_batch.items()}
                last = micro == cfg.grad_accum - 1
                if fsdp:
                    model.set_requires_gradient_sync(last)
                sync = model.no_sync() if info.distributed and not fsdp and not last else contextlib.nullcontext()
                with sync, autocast:
                    loss = task.loss(model, batch)
                (loss / cfg.grad_accum).backward()
                loss_sum += loss.detach()
            # grad_clip <= 0 turns clipping off; the norm is still logged
            grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(),
                                                       cfg.grad_clip if cfg.grad_clip > 0 else float("inf"))
            if hasattr(grad_norm, "full_tensor"):
                grad_norm = grad_norm.full_tensor()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            step += 1
            tokens_seen += step_tokens * info.world_size
            bar.update(1)

            if step % cfg.log_every == 0 or step == cfg.max_steps:
                loss_val, = dist.all_reduce_sum([loss_sum.item() / cfg.grad_accum], device)
                loss_val /= info.world_size
                now = time.perf_counter()
                tps = (tokens_seen - tokens_last) / max(now - t_last, 1e-9)
                t_last, tokens_last = now, tokens_seen
                mfu = flops_per_token * tps / (peak * info.world_size) if peak else None
                rec = {"step": step, "train/loss": loss_val, "train/lr": lr,
                       "train/grad_norm": float(grad_norm), "train/tokens": tokens_seen,
                       "perf/tokens_per_s": tps, "perf/mfu": mfu}
                write(rec)
                bar.set_postfix(loss=f"{loss_val:.3f}", tok_s=f"{tps:,.0f}",
                                mfu=f"{100 * mfu:.1f}%" if mfu is not None else "n/a", refresh=False)
                summary.update(rec)
            if step % cfg.eval_every == 0 or step == cfg.max_steps:
                val = evaluate()
                if val is not None:
                    write({"step": step, "val/loss": val})
                    summary["val/loss"] = val
                    if info.is_main:
                        bar.write(f"[{desc}] step {step}: val loss {val:.4f}")
                if on_eval is not None:
                    state = ckpt.full_model_state(model)  # collective under FSDP
                    on_eval(step, state, info)
                    del state
                    dist.barrier()
                t_last = time.perf_counter()  # keep eval time out of the throughput figure
            if step % cfg.save_every == 0 or step == cfg.max_steps:
                save()
                t_last = time.perf_counter()
    except KeyboardInterrupt:
        if info.is_main:
            print(f"\n[{desc}] interrupted at step {step}; re-run the same command to resume", flush=True)
        raise
    finally:
        bar.close()
        if log is not None:
            log.close()

    state = ckpt.full_model_state(model)
    if on_finish is not None:
        on_finish(raw, state, info)
    dist.barrier()
    summary.update({"step": step, "tokens": tokens_seen})
    return summary
