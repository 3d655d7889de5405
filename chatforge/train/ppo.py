"""RLHF with PPO (InstructGPT step 3): improve the SFT policy against the reward model, held close to the
SFT model by a per-token KL penalty, optionally with pre-training gradients mixed in (PPO-ptx).

    chatforge ppo --run runs/demo [--iterations 40] [--kl-coef 0.05] [--ptx-coef 0.0] [--kl-estimator k1]

One iteration:
1. rollout: `rollout_prompts` prompts from world/prompts.jsonl (every 5th held out for evaluation) are
   answered by the policy through the shared engine (KV cache), sampling at `temperature`, up to
   `max_new_tokens`, stopping at <|end|>;
2. scoring: the reward model (normalised: SFT answers score mean 0, std 1) scores each answer at its <|end|>;
   an answer that never ends is scored where it was cut and loses `missing_eos_penalty`;
3. per-token rewards: -beta * KL(policy || reference) at every answer token (k1: log p - log p_ref, or the
   k3 estimator), plus the score on the last token; beta fixed or adapted to a KL target (Ziegler et al.);
4. advantages by GAE (gamma, lambda) from the value model (initialised from the reward model), whitened
   over the answer tokens of the batch;
5. `ppo_epochs` passes over minibatches: clipped policy loss, clipped value loss, and with ptx_coef > 0
   ptx_coef x the language-modelling loss on pre-training windows, in the same backward pass.
Log-probabilities use logits / temperature in rollout and training alike; dropout is off; prompt and
padding positions carry no loss. Metrics use TRL's names (objective/kl, policy/clipfrac_avg, ...) and go
to `ppo/metrics.jsonl`; a checkpoint after every iteration makes the run resumable. Writes `<run>/ppo/`
(the policy, a model folder) and `ppo/eval.json`: held-out RM reward of SFT vs PPO answers and the
RM-judged win rate of PPO over SFT.
"""

from __future__ import annotations

import contextlib
import copy
import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from chatforge import ChatforgeError
from chatforge.engine import Engine, SamplingParams
from chatforge.model import GPT, load_config, load_state, save_model
from chatforge.reward import RewardModel, load_reward_model, score_ids
from chatforge.run import atomic_write_text, mark_complete, read_stage_info, require_run, stage_dir
from chatforge.tokenizer import Tokenizer, copy_tokenizer_files
from chatforge.train.sampler import EpochOrder, WindowSampler

HELDOUT_EVERY = 5


@dataclass
class PPOConfig:
    iterations: int = 40
    rollout_prompts: int = 32
    minibatch: int = 8
    ppo_epochs: int = 2
    max_new_tokens: int = 48
    temperature: float = 1.0
    lr: float = 5e-5
    cliprange: float = 0.2
    cliprange_value: float = 0.2
    vf_coef: float = 0.1
    gamma: float = 1.0
    lam: float = 0.95
    kl_coef: float = 0.1
    kl_estimator: str = "k1"  # k1 | k3
    kl_target: float | None = None  # adaptive beta when set (nats per answer)
    kl_horizon: int = 10000
    missing_eos_penalty: float = 1.0
    ptx_coef: float = 0.0
    ptx_rows: int = 4
    ptx_seq_len: int = 128
    whiten_advantages: bool = True
    grad_clip: float = 1.0
    seed: int = 1337
    eval_prompts: int = 60
    device: str = "auto"
    dist: str = "ddp"  # ddp | fsdp, under torchrun
    checkpoint_format: str = "auto"  # full | sharded | auto (sharded under FSDP2): train/ckpt.py
    # keep the frozen models (reference policy, reward model) in CPU memory and bring each to the device only
    # for its forward pass: device memory then holds just the trained policy and value model (+ optimizer)
    offload_frozen: bool = False
    reward: str = "rm"  # rm | rule | rm+rule (verifiable.py: prompts with a reference answer)
    rule_weight: float = 1.0
    ema_decay: float = 0.0  # > 0: keep an EMA of the policy's weights and save that as the PPO model

    def validate(self) -> None:
        if self.kl_estimator not in ("k1", "k3"):
            raise ChatforgeError(f"--kl-estimator {self.kl_estimator!r}: expected k1 or k3")
        for name in ("iterations", "rollout_prompts", "minibatch", "ppo_epochs", "max_new_tokens"):
            if getattr(self, name) <= 0:
                raise ChatforgeError(f"--{name.replace('_', '-')} must be positive")
        if self.temperature <= 0:
            raise ChatforgeError("--temperature must be positive for PPO (it samples)")
        if not 0 <= self.lam <= 1 or not 0 <= self.gamma <= 1:
            raise ChatforgeError("--lam and --gamma must be in [0, 1]")
        if self.reward not in ("rm", "rule", "rm+rule"):
            raise ChatforgeError(f"--reward {self.reward!r}: expected rm, rule or rm+rule")
        if not 0 <= self.ema_decay < 1:
            raise ChatforgeError("--ema-decay must be in [0, 1)")
        if self.dist not in ("ddp", "fsdp"):
            raise ChatforgeError(f"--dist {self.dist!r}: expected ddp or fsdp")
        from chatforge.train.ckpt import check_format

        check_format(self.checkpoint_format)


# -- the pieces, each testable on its own ----------------------------------------------------------------

def masked_mean(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    return (x * mask).sum() / mask.sum().clamp(min=1)


def _global_sum(t: torch.Tensor) -> torch.Tensor:
    """Sum over every process (a no-op in one process)."""
    import torch.distributed as dist

    if dist.is_initialized():
        t = t.clone()
        dist.all_reduce(t)
    return t


def masked_whiten(x: torch.Tensor, mask: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """(x - mean) / std over the masked positions of every process's batch; masked-out positions become 0."""
    n = _global_sum(mask.sum())
    mean = _global_sum((x * mask).sum()) / n.clamp(min=1)
    var = _global_sum((((x - mean) ** 2) * mask).sum()) / n.clamp(min=1)
    return (x - mean) * torch.rsqrt(var + eps) * mask


def token_logprobs(model: GPT, x: torch.Tensor, targets: torch.Tensor, temperature: float,
                   with_entropy: bool = False):
    """log p(targets[t] | x[:t+1]) with logits / temperature -> (B, L) (and the entropy per position)."""
    logits, _ = model(x)
    logp = torch.log_softmax(logits.float() / temperature, -1)
    lp = logp.gather(-1, targets.clamp(min=0)[..., None]).squeeze(-1)
    if not with_entropy:
        return lp
    return lp, -(logp.exp() * logp).sum(-1)


def token_values(value_model: RewardModel, x: torch.Tensor) -> torch.Tensor:
    """The value head at every position -> (B, L) (through forward, so a DDP wrapper works)."""
    return value_model(x, all_positions=True)


def kl_per_token(logp: torch.Tensor, ref_logp: torch.Tensor, estimator: str) -> torch.Tensor:
    log_ratio = logp - ref_logp
    if estimator == "k1":
        return log_ratio
    return torch.expm1(-log_ratio) + log_ratio  # k3: (r - 1) - log r with r = p_ref / p; unbiased, >= 0


def gae(rewards: torch.Tensor, values: torch.Tensor, mask: torch.Tensor, gamma: float, lam: float):
    """Generalised advantage estimation over the masked (answer) positions of each row -> (advantages,
    returns); the value after an answer's last token is 0."""
    B, L = rewards.shape
    adv = torch.zeros_like(rewards)
    for b in range(B):
        idx = mask[b].nonzero().flatten().tolist()
        last, next_value = 0.0, 0.0
        for t in reversed(idx):
            delta = rewards[b, t] + gamma * next_value - values[b, t]
            last = delta + gamma * lam * last
            adv[b, t] = last
            next_value = values[b, t]
    return adv * mask, (adv + values) * mask


@dataclass
class Rollouts:
    x: torch.Tensor  # (B, L) inputs: prompt + answer minus the last token, right-padded
    targets: torch.Tensor  # (B, L) next tokens (-100 on padding)
    mask: torch.Tensor  # (B, L) float: 1 where the target is an answer token
    ended: list[bool]
    scores: torch.Tensor  # (B,) RM score after the missing-<|end|> penalty
    prompts: list[list[int]]
    answers: list[list[int]]


def build_rollouts(prompts: list[list[int]], answers: list[list[int]], ended: list[bool], pad_id: int,
                   scores: torch.Tensor) -> Rollouts:
    full = [p + a for p, a in zip(prompts, answers)]
    L = max(len(f) for f in full) - 1
    x = torch.full((len(full), L), pad_id, dtype=torch.long)
    targets = torch.full((len(full), L), -100, dtype=torch.long)
    mask = torch.zeros(len(full), L)
    for b, (p, f) in enumerate(zip(prompts, full)):
        n = len(f) - 1
        x[b, :n] = torch.tensor(f[:-1])
        targets[b, :n] = torch.tensor(f[1:])
        mask[b, len(p) - 1:n] = 1.0  # positions whose target is an answer token
    return Rollouts(x, targets, mask, ended, scores, prompts, answers)


def ppo_losses(policy: GPT, value_model: RewardModel, mb: dict, cfg: PPOConfig, denom: torch.Tensor | None = None):
    """(policy loss, value loss, stats) of one minibatch: means over its answer tokens, or with `denom`
    (the token count of the whole minibatch across processes) this process's share of those means."""
    new_lp, entropy = token_logprobs(policy, mb["x"], mb["targets"], cfg.temperature, with_entropy=True)
    mask = mb["mask"]

    def mean(x):
        return masked_mean(x, mask) if denom is None else (x * mask).sum() / denom

    log_ratio = (new_lp - mb["old_logp"]) * mask
    ratio = torch.exp(log_ratio)
    pg1 = -mb["advantages"] * ratio
    pg2 = -mb["advantages"] * torch.clamp(ratio, 1 - cfg.cliprange, 1 + cfg.cliprange)
    pg_loss = mean(torch.max(pg1, pg2))
    vpred = token_values(value_model, mb["x"])
    vclip = mb["old_values"] + torch.clamp(vpred - mb["old_values"], -cfg.cliprange_value, cfg.cliprange_value)
    vf_loss = 0.5 * mean(torch.max((vpred - mb["returns"]) ** 2, (vclip - mb["returns"]) ** 2))
    with torch.no_grad():
        stats = {"approxkl": float(0.5 * masked_mean(log_ratio ** 2, mask)),
                 "clipfrac": float(masked_mean(((ratio - 1).abs() > cfg.cliprange).float(), mask)),
                 "ratio": float(masked_mean(ratio, mask)), "entropy": float(masked_mean(entropy, mask)),
                 "vf_clipfrac": float(masked_mean(((vpred - mb["old_values"]).abs() > cfg.cliprange_value).float(),
                                                  mask))}
    return pg_loss, vf_loss, stats


class PPOTrainer:
    """Holds the four models and does rollouts and updates; `run_ppo` drives it and handles files."""

    def __init__(self, policy: GPT, reference: GPT, value_model: RewardModel, reward_model: RewardModel,
                 tok: Tokenizer, cfg: PPOConfig, ptx: WindowSampler | None = None, info=None):
        from chatforge.train.dist import DistInfo, wrap_model

        self.policy, self.ref, self.value, self.rm, self.tok, self.cfg, self.ptx = \
            policy, reference, value_model, reward_model, tok, cfg, ptx
        self.info = info or DistInfo(device=next(policy.parameters()).device)
        for m in (self.ref, self.rm):
            m.eval().requires_grad_(False)
        # Under torchrun the trained models are wrapped (DDP averages gradients; FSDP2 shards them too), and
        # each process holds every `world_size`-th rollout of an iteration. Generation runs a different
        # number of steps on each process, so it can't use sharded weights (every forward would be a
        # collective): under FSDP2 a plain full copy generates, refreshed after every update.
        sharded = self.info.distributed and cfg.dist == "fsdp"
        self.gen_policy = copy.deepcopy(policy) if sharded else policy
        self.policy_train = wrap_model(policy, self.info, cfg.dist, None)
        self.value_train = wrap_model(value_model, self.info, cfg.dist, None)
        self.sharded = sharded
        self.container = torch.nn.ModuleDict({"policy": policy, "value": value_model})  # for checkpoints
        # no weight decay: with zero advantages an update must leave the policy exactly as it is
        self.opt = torch.optim.AdamW([*policy.parameters(), *value_model.parameters()], lr=cfg.lr,
                                     weight_decay=0.0, betas=(0.9, 0.95))
        self.kl_coef = cfg.kl_coef
        self.device = next(policy.parameters()).device
        # the EMA starts at the initial (SFT) weights
        self.ema = ({k: v.detach().clone() for k, v in self.gen_policy.state_dict().items()}
                    if cfg.ema_decay > 0 else None)

    # -- rollout -------------------------------------------------------------------------------------------
    @torch.no_grad()
    def generate(self, prompts: list[list[int]], seed: int, temperature: float | None = None,
                 seeds: list[int] | None = None):
        engine = Engine(self.gen_policy.eval(), self.tok, max_batch=len(prompts))
        engine.default_stop_ids = (self.tok.end_id,)  # "stop" then means the answer ended with <|end|>
        t = self.cfg.temperature if temperature is None else temperature
        seeds = seeds if seeds is not None else [seed + i for i in range(len(prompts))]
        params = [SamplingParams(max_tokens=self.cfg.max_new_tokens, temperature=t, seed=s) for s in seeds]
        outs = engine.generate(prompts, params)
        ended = [o.finish_reason == "stop" for o in outs]
        answers = [o.token_ids + ([self.tok.end_id] if e else []) for o, e in zip(outs, ended)]
        return answers, ended, outs

    @contextlib.contextmanager
    def resident(self, frozen: torch.nn.Module):
        """`frozen` (the reference or the reward model) on the training device for the block; with
        offload_frozen it goes back to CPU memory after it (a no-op when training on the CPU)."""
        if not self.cfg.offload_frozen:
            yield frozen
            return
        frozen.to(self.device)
        try:
            yield frozen
        finally:
            frozen.to("cpu")

    @torch.no_grad()
    def score(self, prompts, answers, ended, references: list | None = None) -> torch.Tensor:
        """RM score and/or the rule reward (per `cfg.reward`), minus the penalty for answers without <|end|>."""
        total = torch.zeros(len(prompts))
        if "rm" in self.cfg.reward.split("+"):
            with self.resident(self.rm) as rm:
                total += torch.tensor(score_ids(rm, [p + a for p, a in zip(prompts, answers)], self.tok.pad_id,
                                                normalised=True))
        if "rule" in self.cfg.reward.split("+") and references is not None:
            from chatforge.train.verifiable import rule_reward

            texts = [self.tok.decode(a) for a in answers]
            rule = [rule_reward(t, r) for t, r in zip(texts, references)]
            total += self.cfg.rule_weight * torch.tensor([x or 0.0 for x in rule])
        return total - self.cfg.missing_eos_penalty * (1 - torch.tensor(ended, dtype=torch.float))

    @torch.no_grad()
    def prepare(self, ro: Rollouts) -> dict:
        """Old log-probs, reference log-probs, values, per-token rewards, advantages and returns."""
        dev = self.device
        x, targets, mask = ro.x.to(dev), ro.targets.to(dev), ro.mask.to(dev)
        self.gen_policy.train()  # the update's mode (dropout is 0 in PPO, so no randomness either way)
        old_logp = token_logprobs(self.gen_policy, x, targets, self.cfg.temperature) * mask
        with self.resident(self.ref) as ref:
            ref_logp = token_logprobs(ref, x, targets, self.cfg.temperature) * mask
        values = token_values(self.value_train, x) * mask  # once per process: fine under FSDP2 too
        kl = kl_per_token(old_logp, ref_logp, self.cfg.kl_estimator) * mask
        rewards = -self.kl_coef * kl
        last = mask.cumsum(1).argmax(1)  # the final answer position of each row
        rewards[torch.arange(len(last)), last] += ro.scores.to(dev)
        adv, returns = gae(rewards.cpu(), values.cpu(), mask.cpu(), self.cfg.gamma, self.cfg.lam)
        adv, returns = adv.to(dev), returns.to(dev)
        if self.cfg.whiten_advantages:
            adv = masked_whiten(adv, mask)
        return {"x": x, "targets": targets, "mask": mask, "old_logp": old_logp, "ref_logp": ref_logp,
                "old_values": values, "rewards": rewards, "advantages": adv, "returns": returns, "kl": kl}

    # -- update --------------------------------------------------------------------------------------------
    def update(self, batch: dict, iteration: int, n_global: int | None = None) -> dict:
        """`ppo_epochs` passes over minibatches of the iteration's rollouts. Minibatches are drawn from the
        global rollout numbers (this process holds numbers rank, rank + W, ...), so any number of processes
        takes the same steps: each computes its share of the minibatch means, DDP sums the shares."""
        cfg, info = self.cfg, self.info
        n_global = n_global or batch["x"].shape[0]
        self.policy.train()
        self.value.train()
        stats: dict[str, list[float]] = {}
        rng = np.random.default_rng([cfg.seed, iteration])
        if cfg.ptx_coef > 0 and cfg.ptx_rows % info.world_size:
            raise ChatforgeError(f"--ptx-rows {cfg.ptx_rows} must be a multiple of the {info.world_size} processes")
        for epoch in range(cfg.ppo_epochs):
            order = rng.permutation(n_global)
            for start in range(0, n_global, cfg.minibatch):
                mine = [int(g) // info.world_size for g in order[start:start + cfg.minibatch]
                        if int(g) % info.world_size == info.rank]
                idx = torch.as_tensor(mine or [0], device=self.device)
                mb = {k: v[idx] for k, v in batch.items()}
                if not mine:  # nothing of this minibatch here, but DDP needs every process's backward
                    mb["mask"] = torch.zeros_like(mb["mask"])
                denom = _global_sum(mb["mask"].sum()).clamp(min=1) / info.world_size  # DDP averages
                pg_loss, vf_loss, s = ppo_losses(self.policy_train, self.value_train, mb, cfg, denom)
                loss = pg_loss + cfg.vf_coef * vf_loss
                if cfg.ptx_coef > 0 and self.ptx is not None:
                    share = cfg.ptx_rows // info.world_size
                    g = ((iteration * cfg.ppo_epochs + epoch) * 1000 + start) + info.rank * share
                    px, py = self.ptx.batch(g, share)
                    ptx_loss = self.policy_train(px.to(self.device), py.to(self.device))[1]
                    loss = loss + cfg.ptx_coef * ptx_loss
                    s["ptx_loss"] = ptx_loss.item()
                loss.backward()
                torch.nn.utils.clip_grad_norm_([*self.policy.parameters(), *self.value.parameters()],
                                               cfg.grad_clip if cfg.grad_clip > 0 else float("inf"))
                self.opt.step()
                self.opt.zero_grad(set_to_none=True)
                s.update(pg_loss=pg_loss.item() / info.world_size, vf_loss=vf_loss.item() / info.world_size)
                for k, v in s.items():
                    stats.setdefault(k, []).append(v)
        # losses are shares (summed over processes); the other stats are per-process means (averaged)
        keys = sorted(stats)
        totals = _global_sum(torch.tensor([float(np.mean(stats[k])) for k in keys], dtype=torch.float64,
                                          device=self.device)).tolist()
        return {k: t if k.endswith("_loss") and k != "ptx_loss" else t / info.world_size
                for k, t in zip(keys, totals)}

    def adapt_kl(self, kl: float, n: int) -> None:
        if self.cfg.kl_target:  # Ziegler et al.'s proportional controller
            err = float(np.clip(kl / self.cfg.kl_target - 1, -0.2, 0.2))
            self.kl_coef *= 1 + err * n / self.cfg.kl_horizon

    def sync_generation_weights(self) -> None:
        """FSDP2: gather the trained weights into the generation copy (collective: every process calls)."""
        if self.sharded:
            from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

            # full tensors on every process (not only rank 0, as checkpoints gather them)
            full = get_model_state_dict(self.policy_train, options=StateDictOptions(full_state_dict=True))
            self.gen_policy.load_state_dict(full)

    @torch.no_grad()
    def update_ema(self) -> None:
        if self.ema is None:
            return
        d = self.cfg.ema_decay
        for k, v in self.gen_policy.state_dict().items():
            if v.is_floating_point():
                self.ema[k].mul_(d).add_(v, alpha=1 - d)
            else:
                self.ema[k].copy_(v)

    def iteration(self, prompts: list[list[int]], it: int, references: list | None = None) -> dict:
        """One rollout + update over `prompts` (the whole iteration's; this process answers every
        world_size-th, with the same per-prompt seeds as one process would)."""
        info, n = self.info, len(prompts)
        mine = list(range(info.rank, n, info.world_size))
        local = [prompts[i] for i in mine]
        refs = [references[i] for i in mine] if references is not None else None
        t0 = time.perf_counter()
        base = self.cfg.seed * 1_000_003 + it * 10_000
        answers, ended, _ = self.generate(local, base, seeds=[base + i for i in mine])
        t1 = time.perf_counter()
        scores = self.score(local, answers, ended, refs)
        ro = build_rollouts(local, answers, ended, self.tok.pad_id, scores)
        batch = self.prepare(ro)
        t2 = time.perf_counter()
        upd = self.update(batch, it, n_global=n)
        self.sync_generation_weights()
        self.update_ema()
        t3 = time.perf_counter()
        mask = batch["mask"]
        kl_sum = (batch["kl"] * mask).sum(1)
        entropy = (-batch["old_logp"] * mask).sum(1)
        sums = _global_sum(torch.tensor([float(kl_sum.sum()), float(entropy.sum()), float(scores.sum()),
                                         float(sum(ended)), float(mask.sum())], dtype=torch.float64,
                                        device=self.device)).tolist()
        kl_mean, ent_mean, score_mean, n_ended, n_tokens = sums[0] / n, sums[1] / n, sums[2] / n, sums[3], sums[4]
        rec = {"objective/kl": kl_mean, "objective/entropy": ent_mean, "objective/scores": score_mean,
               "objective/rlhf_reward": score_mean - self.kl_coef * kl_mean,
               "objective/kl_coef": self.kl_coef, "policy/approxkl_avg": upd["approxkl"],
               "policy/clipfrac_avg": upd["clipfrac"], "policy/entropy_avg": upd["entropy"],
               "loss/policy_avg": upd["pg_loss"], "loss/value_avg": upd["vf_loss"],
               "val/clipfrac_avg": upd["vf_clipfrac"], "val/ratio": upd["ratio"],
               "val/num_eos_tokens": int(n_ended), "val/answer_tokens": n_tokens / n,
               "time/generation_s": t1 - t0, "time/scoring_s": t2 - t1, "time/training_s": t3 - t2}
        if "ptx_loss" in upd:
            rec["loss/ptx_avg"] = upd["ptx_loss"]
        self.adapt_kl(rec["objective/kl"], n)
        return rec


# -- the stage ------------------------------------------------------------------------------------------

def _prompts(run: Path, tok: Tokenizer):
    """(train prompt ids, their reference answers or None, held-out prompt ids, their references)."""
    f = stage_dir(run, "world") / "prompts.jsonl"
    if not f.is_file():
        raise ChatforgeError(f"{f}: no RL prompts; run `chatforge world --run {run}`")
    recs = [json.loads(line) for line in f.read_text().split("\n") if line.strip()]
    ids = [tok.encode_chat(r["prompt"], add_generation_prompt=True) for r in recs]
    refs = [r.get("answer") for r in recs]
    train = [i for i in range(len(ids)) if i % HELDOUT_EVERY]
    held = [i for i in range(len(ids)) if i % HELDOUT_EVERY == 0]
    return [ids[i] for i in train], [refs[i] for i in train], [ids[i] for i in held], [refs[i] for i in held]


def ppo_settings(run: Path, cfg: PPOConfig) -> dict:
    placement = ("device", "dist", "checkpoint_format", "offload_frozen")  # where it runs, not what it computes
    return {"sft": read_stage_info(stage_dir(run, "sft")).get("settings"),
            "rm": read_stage_info(stage_dir(run, "rm")).get("settings"),
            "ppo": {k: v for k, v in asdict(cfg).items() if k not in placement}}


@torch.no_grad()
def compare_on_heldout(trainer: PPOTrainer, sft: GPT, prompts: list[list[int]], references: list) -> dict:
    """Greedy answers of SFT and PPO to held-out prompts, scored by the training reward (RM and/or rule):
    mean rewards, PPO's win rate, and how many answers are right where a reference exists."""
    from chatforge.train.verifiable import rule_reward

    policy = trainer.gen_policy
    out = {}
    for name, model in (("sft", sft), ("ppo", policy)):
        trainer.gen_policy = model
        answers, ended, _ = trainer.generate(prompts, seed=0, temperature=1e-6)
        out[name] = trainer.score(prompts, answers, ended, references)
        out[name + "_ended"] = sum(ended)
        checks = [rule_reward(trainer.tok.decode(a), r) for a, r in zip(answers, references)]
        checks = [c for c in checks if c is not None]
        out[name + "_correct"] = sum(checks) / len(checks) if checks else None
    trainer.gen_policy = policy
    wins = (out["ppo"] > out["sft"]).float() + 0.5 * (out["ppo"] == out["sft"]).float()
    return {"prompts": len(prompts), "sft_reward": float(out["sft"].mean()), "ppo_reward": float(out["ppo"].mean()),
            "ppo_win_rate_vs_sft": float(wins.mean()), "sft_ended": out["sft_ended"], "ppo_ended": out["ppo_ended"],
            "sft_correct": out["sft_correct"], "ppo_correct": out["ppo_correct"]}


def run_ppo(run: str | Path, cfg: PPOConfig, fresh: bool = False) -> dict:
    """Train (or resume) <run>/ppo. Under torchrun, every process answers its share of each iteration's
    prompts and DDP averages the gradients; the trajectory is the single-process one (tested)."""
    from chatforge.train import dist

    run = require_run(run)
    cfg.validate()
    info = dist.setup(cfg.device)
    try:
        return _run_ppo(run, cfg, fresh, info)
    finally:
        dist.teardown()


def _run_ppo(run: Path, cfg: PPOConfig, fresh: bool, info) -> dict:
    from chatforge.train import ckpt
    from chatforge.train.dist import barrier

    sft_dir, rm_dir, out = stage_dir(run, "sft"), stage_dir(run, "rm"), stage_dir(run, "ppo")
    for d in (sft_dir, rm_dir):
        if not read_stage_info(d).get("complete"):
            raise ChatforgeError(f"{d}: not finished; PPO needs the SFT model and the reward model")
    device, main = info.device, info.is_main
    tok = Tokenizer.load(sft_dir)
    mcfg = load_config(sft_dir)
    torch.manual_seed(cfg.seed)
    policy, reference, sft_copy = GPT(mcfg), GPT(mcfg), GPT(mcfg)
    for m in (policy, reference, sft_copy):
        m.load_state_dict(load_state(sft_dir, mcfg))
    rm, rm_tok = load_reward_model(rm_dir)
    if rm_tok.fingerprint() != tok.fingerprint():
        raise ChatforgeError(f"{rm_dir} and {sft_dir} use different tokenizers")
    value, _ = load_reward_model(rm_dir)
    ptx = None
    if cfg.ptx_coef > 0:
        from chatforge.data.shards import load_split

        ptx = WindowSampler(load_split(stage_dir(run, "data"), "train"), cfg.ptx_seq_len, cfg.seed)
    frozen_home = "cpu" if cfg.offload_frozen else device
    trainer = PPOTrainer(policy.to(device), reference.to(frozen_home), value.to(device), rm.to(frozen_home), tok,
                         cfg, ptx, info)
    train_prompts, train_refs, held, held_refs = _prompts(run, tok)
    order = EpochOrder(len(train_prompts), cfg.seed)
    settings = ppo_settings(run, cfg)
    metrics = out / "metrics.jsonl"
    sharded = ckpt.is_sharded(cfg.checkpoint_format, info.distributed and cfg.dist == "fsdp")
    if main:
        out.mkdir(parents=True, exist_ok=True)
        if fresh:
            ckpt.remove_checkpoints(out)
            metrics.unlink(missing_ok=True)
        (out / "stage.json").unlink(missing_ok=True)
    barrier()
    start = 0
    payload = ckpt.load_checkpoint(out, main)
    if payload is not None:
        if payload["settings"] != json.loads(json.dumps(settings)):
            raise ChatforgeError(f"{ckpt.checkpoint_path(out)} was made with other settings; re-run with the same ones or --force")
        ckpt.restore(trainer.container, trainer.opt, payload, info.rank)  # reshards: any process count
        trainer.sync_generation_weights()
        trainer.kl_coef, start = payload["kl_coef"], payload["step"]
        trainer.ema = payload.get("ema")
        if main:
            print(f"[ppo] resuming from {ckpt.checkpoint_path(out)} at iteration {start}", flush=True)
            kept = [line for line in (metrics.read_text().split("\n") if metrics.is_file() else [])
                    if line.strip() and json.loads(line)["iteration"] <= start]
            atomic_write_text(metrics, "".join(line + "\n" for line in kept))
    if main:
        print(f"[ppo] {len(train_prompts)} training prompts, {len(held)} held out; {cfg.rollout_prompts} rollouts "
              f"per iteration over {info.world_size} process(es), beta {trainer.kl_coef}, ptx {cfg.ptx_coef}",
              flush=True)
    bar = tqdm(total=cfg.iterations, initial=start, desc="ppo", dynamic_ncols=True, mininterval=1.0, disable=not main)
    for it in range(start, cfg.iterations):
        picked = [order(it * cfg.rollout_prompts + i) for i in range(cfg.rollout_prompts)]
        rec = {"iteration": it + 1, **trainer.iteration([train_prompts[j] for j in picked], it,
                                                        [train_refs[j] for j in picked])}
        if main:
            with open(metrics, "a") as f:
                f.write(json.dumps(rec) + "\n")
        extra = {"step": it + 1, "kl_coef": trainer.kl_coef, "settings": json.loads(json.dumps(settings)),
                 **({"ema": trainer.ema} if trainer.ema is not None else {})}
        ckpt.save_checkpoint(out, trainer.container, trainer.opt, extra, main, sharded)  # collective; atomic
        barrier()
        bar.update(1)
        bar.set_postfix(score=f"{rec['objective/scores']:.2f}", kl=f"{rec['objective/kl']:.2f}", refresh=False)
    bar.close()
    if main:
        final = trainer.gen_policy  # the full weights (the trained policy itself unless FSDP2 sharded it)
        if trainer.ema is not None:  # the EMA weights are the PPO model
            final.load_state_dict(trainer.ema)
        result = compare_on_heldout(trainer, sft_copy.to(device), held[:cfg.eval_prompts],
                                    held_refs[:cfg.eval_prompts])
        save_model(final, out)
        copy_tokenizer_files(sft_dir, out)
        atomic_write_text(out / "eval.json", json.dumps(result, indent=2))
        mark_complete(out, settings=settings, stage="ppo", iterations=cfg.iterations, **result)
    barrier()
    return {"model_dir": str(out), **json.loads((out / "eval.json").read_text())}
