"""The decoder-only Transformer used by every stage (policy, reference, reward and value models).

One class, configured by `ModelConfig`, covers
- GPT-2 style: learned positions, LayerNorm, GELU (tanh) MLP, biases, tied embeddings;
- Llama / Qwen2 style: RoPE, RMSNorm, SwiGLU, grouped-query attention, no biases (Qwen2: q/k/v biases).
Attention goes through `F.scaled_dot_product_attention` (flash / memory-efficient kernels on GPU).

KV cache: `KVCache` holds preallocated keys/values for all layers; `model(ids, cache=cache)` appends the
new positions and attends to everything cached, so prefill + token-by-token decode equals a full forward
(tested). Distributed wrapping (DDP / FSDP2), autocast and compile are applied from outside.

    from chatforge.model import GPT, ModelConfig
    model = GPT(ModelConfig.preset_style("llama", vocab_size=4096, n_layer=4, d_model=128, n_head=4))
    logits, loss = model(idx, targets)
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F
import torch.utils.checkpoint

from chatforge import ChatforgeError
from chatforge.copyhead import CopyHead, allowed_from_positions, allowed_in_sequence

STYLES: dict[str, dict] = {
    "gpt2": dict(pos="learned", norm="layernorm", mlp="gelu", bias=True, tie_embeddings=True),
    "llama": dict(pos="rope", norm="rmsnorm", mlp="swiglu", bias=False, tie_embeddings=False),
    "qwen2": dict(pos="rope", norm="rmsnorm", mlp="swiglu", bias=False, qkv_bias=True, tie_embeddings=False,
                  rope_theta=1_000_000.0, norm_eps=1e-6),
}


@dataclass
class ModelConfig:
    vocab_size: int = 4096
    n_layer: int = 4
    n_head: int = 4
    n_kv_head: int = 0  # 0 -> n_head (plain multi-head attention)
    d_model: int = 128
    d_ff: int = 0  # 0 -> 4*d (gelu) or ~8/3*d rounded up to a multiple of 64 (swiglu)
    max_seq_len: int = 256
    pos: str = "rope"  # "learned" | "rope"
    norm: str = "rmsnorm"  # "layernorm" | "rmsnorm"
    mlp: str = "swiglu"  # "gelu" | "swiglu"
    bias: bool = False  # biases in every linear layer and norm (GPT-2)
    qkv_bias: bool = False  # biases on q/k/v only (Qwen2)
    tie_embeddings: bool = True
    rope_theta: float = 10000.0
    norm_eps: float = 1e-5
    dropout: float = 0.0
    init_std: float = 0.02
    copy_head: int = 0  # width of the copy head's pointer (chatforge/copyhead.py); 0 = none
    copy_lookahead: int = 1  # tokens after a position its copy-head key sees (copyhead.py); 1 = the copied one

    def __post_init__(self) -> None:
        if not self.n_kv_head:
            self.n_kv_head = self.n_head
        if not self.d_ff:
            self.d_ff = 4 * self.d_model if self.mlp == "gelu" else 64 * math.ceil(8 * self.d_model / 3 / 64)
        problems = []
        if self.pos not in ("learned", "rope"):
            problems.append(f"pos={self.pos!r} (expected 'learned' or 'rope')")
        if self.norm not in ("layernorm", "rmsnorm"):
            problems.append(f"norm={self.norm!r} (expected 'layernorm' or 'rmsnorm')")
        if self.mlp not in ("gelu", "swiglu"):
            problems.append(f"mlp={self.mlp!r} (expected 'gelu' or 'swiglu')")
        if self.d_model % self.n_head:
            problems.append(f"d_model={self.d_model} is not divisible by n_head={self.n_head}")
        if self.n_head % self.n_kv_head:
            problems.append(f"n_head={self.n_head} is not divisible by n_kv_head={self.n_kv_head}")
        if self.pos == "rope" and (self.d_model // self.n_head) % 2:
            problems.append("RoPE needs an even head dimension")
        if self.copy_head < 0:
            problems.append(f"copy_head={self.copy_head} must be >= 0 (0 = no copy head)")
        if self.copy_lookahead < 1:
            problems.append(f"copy_lookahead={self.copy_lookahead} must be >= 1 (1 = the copied token only)")
        for name in ("vocab_size", "n_layer", "n_head", "d_model", "max_seq_len"):
            if getattr(self, name) <= 0:
                problems.append(f"{name}={getattr(self, name)} must be positive")
        if problems:
            raise ChatforgeError("invalid model config: " + "; ".join(problems))

    @property
    def head_dim(self) -> int:
        return self.d_model // self.n_head

    @classmethod
    def preset_style(cls, style: str, **kw) -> ModelConfig:
        if style not in STYLES:
            raise ChatforgeError(f"unknown model style {style!r}; expected one of {sorted(STYLES)}")
        return cls(**{**STYLES[style], **kw})

    @classmethod
    def from_dict(cls, d: dict) -> ModelConfig:
        known = {f.name for f in fields(cls)}
        unknown = set(d) - known - {"architecture", "chatforge_version"}
        if unknown:
            raise ChatforgeError(f"unknown model config fields {sorted(unknown)}")
        return cls(**{k: v for k, v in d.items() if k in known})

    def to_dict(self) -> dict:
        return {"architecture": "chatforge-gpt", **asdict(self)}


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.rms_norm(x, (x.shape[-1],), self.weight, self.eps)


def make_norm(cfg: ModelConfig) -> nn.Module:
    if cfg.norm == "rmsnorm":
        return RMSNorm(cfg.d_model, cfg.norm_eps)
    return nn.LayerNorm(cfg.d_model, eps=cfg.norm_eps, bias=cfg.bias)


def rope_tables(cfg: ModelConfig, length: int, device=None) -> tuple[torch.Tensor, torch.Tensor]:
    """cos/sin of shape (length, head_dim) in the rotate-half layout used by HF Llama/Qwen2."""
    hd = cfg.head_dim
    inv_freq = 1.0 / (cfg.rope_theta ** (torch.arange(0, hd, 2, dtype=torch.float32, device=device) / hd))
    angles = torch.outer(torch.arange(length, dtype=torch.float32, device=device), inv_freq)
    angles = torch.cat([angles, angles], dim=-1)
    return angles.cos(), angles.sin()


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x: (B, T, heads, hd); cos/sin: (T, 1, hd) or (B, T, 1, hd)."""
    half = x.shape[-1] // 2
    rotated = torch.cat([-x[..., half:], x[..., :half]], dim=-1)
    return (x * cos + rotated * sin).to(x.dtype)


class KVCache:
    """Preallocated keys/values for every layer: (n_layer, rows, n_kv_head, max_len, head_dim), with a length
    per row, so rows hold sequences of different lengths (the engine prefills one request into a free row
    while other rows are mid-generation: continuous batching).

    `GPT.forward(ids, cache=cache, rows=r)` appends ids[b] to cache row r[b] (all rows when `rows` is None).

    `static=True` makes one-token steps over all rows shape-static: positions come from a device tensor
    (`positions_buf`, which `sync_positions()` fills from the lengths) and attention always spans the whole
    cache under a mask. Every tensor then has the same shape and address at every step, so the step can be
    recorded once as a CUDA graph and replayed (the engine's GPU decode: no per-kernel launch cost).
    """

    def __init__(self, cfg: ModelConfig, batch_size: int, max_len: int | None = None,
                 device=None, dtype=torch.float32, static: bool = False):
        self.max_len = min(max_len or cfg.max_seq_len, cfg.max_seq_len)
        shape = (cfg.n_layer, batch_size, cfg.n_kv_head, self.max_len, cfg.head_dim)
        self.k = torch.zeros(shape, device=device, dtype=dtype)
        self.v = torch.zeros(shape, device=device, dtype=dtype)
        if cfg.copy_head:  # the copy head's keys and the token ids it copies from
            self.copy_k = torch.zeros(batch_size, self.max_len, cfg.copy_head, device=device, dtype=dtype)
            self.ids = torch.zeros(batch_size, self.max_len, dtype=torch.long, device=device)
        self.device = self.k.device
        # lengths as Python ints, not a tensor: the per-step bookkeeping reads them, so a decode step never
        # waits on a tensor -> int conversion (a device sync on GPU) and costs no extra tensor ops
        self._lens = [0] * batch_size
        self._step: dict = {}
        self.static = static
        if static:
            self.positions_buf = torch.zeros(batch_size, 1, dtype=torch.long, device=self.device)
            self._key_index = torch.arange(self.max_len, device=self.device)
            self._all_rows = torch.arange(batch_size, device=self.device)

    def sync_positions(self) -> None:
        """Static mode: copy the rows' lengths (= the next token's positions) into the device buffer."""
        self.positions_buf.copy_(torch.tensor(self._lens, device="cpu")[:, None], non_blocking=False)

    @property
    def lengths(self) -> list[int]:
        return list(self._lens)

    @property
    def length(self) -> int:
        """Cached positions of the longest row (all rows, when they are filled together)."""
        return max(self._lens)

    def begin(self, T: int, rows: torch.Tensor | None) -> torch.Tensor:
        """Set up one forward of T new tokens per row; returns their positions: (B, T), or (T,) when every row
        is at the same length (then they broadcast, and RoPE tables are read by a slice)."""
        n = len(self._lens)
        all_rows = rows is None
        if self.static and all_rows and T == 1:
            return self._begin_static(n)
        row_list = list(range(n)) if all_rows else rows.tolist()
        starts = [self._lens[r] for r in row_list]
        lo, hi = min(starts), max(starts) + T
        if hi > self.max_len:
            raise ChatforgeError(f"sequence of {hi} tokens exceeds the context of {self.max_len}")
        dev = self.device
        # fast path (all rows, same length): plain slices and the cheapest mask
        uniform = all_rows and lo == hi - T
        if uniform:
            positions = torch.arange(lo, hi, device=dev)  # (T,): broadcasts over rows
            mask = None if T == 1 or lo == 0 else \
                torch.ones(T, hi, dtype=torch.bool, device=dev).tril(diagonal=hi - T)
        else:  # key j is visible to the query at position p iff j <= p (and j was written for this row)
            positions = torch.tensor(starts, device=dev)[:, None] + torch.arange(T, device=dev)
            mask = (torch.arange(hi, device=dev)[None, None, :] <= positions[:, :, None])[:, None]
            rows = torch.arange(n, device=dev) if all_rows else rows
        self._step = {"rows": rows, "row_list": row_list, "positions": positions, "start": lo, "end": hi, "T": T,
                      "all_rows": all_rows, "uniform": uniform, "mask": mask, "causal": uniform and lo == 0 and T > 1}
        return positions

    def _begin_static(self, n: int) -> torch.Tensor:
        if max(self._lens) >= self.max_len:
            raise ChatforgeError(f"sequence of {max(self._lens) + 1} tokens exceeds the context of {self.max_len}")
        pos = self.positions_buf  # (B, 1), filled by sync_positions() before the step (or a graph replay)
        mask = (self._key_index[None, :] <= pos)[:, None, None, :]  # (B, 1, 1, max_len)
        self._step = {"row_list": list(range(n)), "positions": pos, "T": 1, "static": True, "uniform": False,
                      "mask": mask, "causal": False}
        return pos

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        st = self._step
        if st.get("static"):  # one token per row, written at each row's own position; attend to the whole cache
            pos = st["positions"][:, 0]
            self.k[layer][self._all_rows, :, pos] = k[:, :, 0]
            self.v[layer][self._all_rows, :, pos] = v[:, :, 0]
            return self.k[layer], self.v[layer]
        if st["uniform"]:
            self.k[layer, :, :, st["start"]:st["end"]] = k
            self.v[layer, :, :, st["start"]:st["end"]] = v
            return self.k[layer, :, :, :st["end"]], self.v[layer, :, :, :st["end"]]
        rows, pos = st["rows"], st["positions"]
        # advanced indices on dims 0 and 2 put (B, T) first: values are (B, T, n_kv, hd)
        self.k[layer][rows[:, None], :, pos] = k.permute(0, 2, 1, 3)
        self.v[layer][rows[:, None], :, pos] = v.permute(0, 2, 1, 3)
        if st["all_rows"]:  # every row, in order: a view, no copy (the mask hides what a row hasn't written)
            return self.k[layer, :, :, :st["end"]], self.v[layer, :, :, :st["end"]]
        return self.k[layer, rows, :, :st["end"]], self.v[layer, rows, :, :st["end"]]

    def update_copy(self, k: torch.Tensor, ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Write the new positions' copy-head keys (B, T, w) and ids (B, T) as `update` writes k/v; -> (keys,
        ids) of the step's rows up to the longest row's end, and the new tokens' positions."""
        st = self._step
        if st.get("static"):
            pos = st["positions"][:, 0]
            self.copy_k[self._all_rows, pos] = k[:, 0]
            self.ids[self._all_rows, pos] = ids[:, 0]
            return self.copy_k, self.ids, st["positions"]
        if st["uniform"]:
            self.copy_k[:, st["start"]:st["end"]] = k
            self.ids[:, st["start"]:st["end"]] = ids
        else:
            rows, pos = st["rows"], st["positions"]
            self.copy_k[rows[:, None], pos] = k
            self.ids[rows[:, None], pos] = ids
            if not st["all_rows"]:
                return self.copy_k[rows, :st["end"]], self.ids[rows, :st["end"]], pos
        return self.copy_k[:, :st["end"]], self.ids[:, :st["end"]], st["positions"]

    def attention_mask(self) -> tuple[torch.Tensor | None, bool]:
        return self._step["mask"], self._step["causal"]

    def finish(self) -> None:
        self.set_lengths(self._step["row_list"], [self._lens[r] + self._step["T"] for r in self._step["row_list"]])
        self._step = {}

    def advance(self) -> None:
        """Every row one position further (what a replayed static step did on the device)."""
        self._lens = [n + 1 for n in self._lens]

    def set_lengths(self, rows: list[int], lengths: list[int]) -> None:
        """Declare how many positions of each row are real (the engine's prefill pads rows to one width)."""
        for r, n in zip(rows, lengths):
            self._lens[r] = n

    def reset(self, rows: torch.Tensor | list[int] | None = None) -> None:
        rows = list(range(len(self._lens))) if rows is None else torch.as_tensor(rows).tolist()
        self.set_lengths(rows, [0] * len(rows))


class Attention(nn.Module):
    def __init__(self, cfg: ModelConfig, layer: int):
        super().__init__()
        self.cfg, self.layer = cfg, layer
        hd = cfg.head_dim
        self.qkv = nn.Linear(cfg.d_model, (cfg.n_head + 2 * cfg.n_kv_head) * hd, bias=cfg.bias or cfg.qkv_bias)
        self.proj = nn.Linear(cfg.n_head * hd, cfg.d_model, bias=cfg.bias)

    def forward(self, x, rope, cache: KVCache | None, mask: torch.Tensor | None = None):
        cfg = self.cfg
        B, T, _ = x.shape
        hd = cfg.head_dim
        n_qk = cfg.n_head + cfg.n_kv_head
        qkv = self.qkv(x)
        qk = qkv[..., :n_qk * hd].view(B, T, n_qk, hd)
        if rope is not None:  # q and k rotated together: half the elementwise ops (matters when decoding)
            qk = apply_rope(qk, *rope)
        q, k = qk[:, :, :cfg.n_head].transpose(1, 2), qk[:, :, cfg.n_head:].transpose(1, 2)
        v = qkv[..., n_qk * hd:].view(B, T, cfg.n_kv_head, hd).transpose(1, 2)
        if cache is not None:
            k, v = cache.update(self.layer, k, v)
            mask, causal = cache.attention_mask()
        elif mask is not None:  # packed rows: a causal mask that also stops at sample boundaries
            causal = False
        else:
            causal = T > 1
        y = F.scaled_dot_product_attention(
            q, k, v, attn_mask=mask, is_causal=causal,
            dropout_p=cfg.dropout if self.training else 0.0,
            enable_gqa=cfg.n_kv_head != cfg.n_head)
        return self.proj(y.transpose(1, 2).reshape(B, T, cfg.n_head * hd))


class MLP(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.swiglu = cfg.mlp == "swiglu"
        # SwiGLU: gate and up projections fused in one matmul.
        self.up = nn.Linear(cfg.d_model, cfg.d_ff * (2 if self.swiglu else 1), bias=cfg.bias)
        self.down = nn.Linear(cfg.d_ff, cfg.d_model, bias=cfg.bias)

    def forward(self, x):
        h = self.up(x)
        if self.swiglu:
            gate, up = h.chunk(2, dim=-1)
            h = F.silu(gate) * up
        else:
            h = F.gelu(h, approximate="tanh")
        return self.down(h)


class Block(nn.Module):
    def __init__(self, cfg: ModelConfig, layer: int):
        super().__init__()
        self.norm1, self.attn = make_norm(cfg), Attention(cfg, layer)
        self.norm2, self.mlp = make_norm(cfg), MLP(cfg)
        self.dropout = cfg.dropout

    def _drop(self, h: torch.Tensor) -> torch.Tensor:
        # a plain call, not a module: at p = 0 (inference, most training) it costs nothing per layer
        return F.dropout(h, self.dropout, True) if self.dropout and self.training else h

    def forward(self, x, rope, cache, mask=None):
        x = x + self._drop(self.attn(self.norm1(x), rope, cache, mask))
        return x + self._drop(self.mlp(self.norm2(x)))


class GPT(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        self.activation_checkpointing = False
        self.wte = nn.Embedding(cfg.vocab_size, cfg.d_model)
        self.wpe = nn.Embedding(cfg.max_seq_len, cfg.d_model) if cfg.pos == "learned" else None
        self.drop = nn.Dropout(cfg.dropout)
        self.blocks = nn.ModuleList(Block(cfg, i) for i in range(cfg.n_layer))
        self.norm_f = make_norm(cfg)
        self.lm_head = nn.Linear(cfg.d_model, cfg.vocab_size, bias=False)
        if cfg.tie_embeddings:
            self.lm_head.weight = self.wte.weight
        self.copy = CopyHead(cfg.d_model, cfg.copy_head, cfg.copy_lookahead) if cfg.copy_head else None
        if cfg.pos == "rope":
            cos, sin = rope_tables(cfg, cfg.max_seq_len)
            self.register_buffer("rope_cos", cos, persistent=False)
            self.register_buffer("rope_sin", sin, persistent=False)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        std = self.cfg.init_std
        for name, p in self.named_parameters():
            if p.dim() == 1:  # norm gains start at 1, biases at 0
                is_gain = name.endswith("weight") and "norm" in name.rsplit(".", 2)[-2]
                nn.init.ones_(p) if is_gain else nn.init.zeros_(p)
            elif name.endswith("proj.weight") or name.endswith("down.weight"):
                # residual-stream writers scaled so the stream's variance doesn't grow with depth (GPT-2)
                nn.init.normal_(p, 0.0, std / math.sqrt(2 * self.cfg.n_layer))
            else:
                nn.init.normal_(p, 0.0, std)
        if getattr(self, "copy", None) is not None:
            self.copy.reset_gate()

    def forward(self, idx: torch.Tensor, targets: torch.Tensor | None = None, cache: KVCache | None = None,
                return_hidden: bool = False, rows: torch.Tensor | None = None,
                segment_ids: torch.Tensor | None = None, positions: torch.Tensor | None = None):
        """idx (B, T) -> (logits (B, T, V), loss or None). Targets of -100 are ignored in the loss. With a copy
        head (copyhead.py) the logits are the log-probabilities of its mixture, and a forward with targets
        returns (None, loss): training reads only the loss, and the mixture over the vocabulary is not formed.

        With a `cache`, idx is appended to cache rows `rows` (default: all rows, in order) and attends to
        everything cached for its row. With `return_hidden`, returns the final normed hidden states
        instead of logits (reward/value heads).
        Packed rows (several samples in one row): `segment_ids` (B, T) says which sample each token belongs
        to — attention never crosses samples — and `positions` (B, T) restarts at 0 for every sample, so a
        packed sample computes exactly what it would alone.
        """
        B, T = idx.shape
        mask = None
        if cache is not None:
            positions = cache.begin(T, rows)
        else:
            if T > self.cfg.max_seq_len:
                raise ChatforgeError(f"sequence of {T} tokens exceeds max_seq_len {self.cfg.max_seq_len}")
            if segment_ids is not None:
                causal = torch.ones(T, T, dtype=torch.bool, device=idx.device).tril()
                mask = (causal & (segment_ids[:, :, None] == segment_ids[:, None, :]))[:, None]  # (B, 1, T, T)
        x = self.wte(idx)
        rope = None
        if self.wpe is not None:
            x = x + self.wpe(positions if positions is not None else torch.arange(T, device=idx.device))
        elif cache is not None and positions.dim() == 1:
            lo, hi = cache._step["start"], cache._step["end"]
            rope = (self.rope_cos[lo:hi, None], self.rope_sin[lo:hi, None])  # (T, 1, hd)
        elif positions is not None:
            rope = (self.rope_cos[positions][:, :, None], self.rope_sin[positions][:, :, None])  # (B, T, 1, hd)
        else:
            rope = (self.rope_cos[:T, None], self.rope_sin[:T, None])  # (T, 1, hd)
        x = self.drop(x)
        for block in self.blocks:
            if self.activation_checkpointing and self.training and cache is None:
                # recompute block activations in backward: memory for compute (set by the training loop)
                x = torch.utils.checkpoint.checkpoint(block, x, rope, cache, mask, use_reentrant=False)
            else:
                x = block(x, rope, cache, mask)
        x = self.norm_f(x)
        if return_hidden:
            if cache is not None:
                cache.finish()
            return x, None
        logits = self.lm_head(x)
        if self.copy is not None:
            pointer = (*self._copy_context(x, idx, cache, segment_ids), self.wte.weight)
            if cache is None and targets is not None:  # training: the loss only, no mixture over the vocabulary
                return None, self.copy.nll(x, logits, *pointer, targets)
            logits = self.copy.mix(x, logits, *pointer)
        if cache is not None:
            cache.finish()
        loss = None
        if targets is not None:
            loss = F.cross_entropy(logits.float().view(-1, logits.size(-1)), targets.reshape(-1), ignore_index=-100)
        return logits, loss

    def _copy_context(self, h, idx, cache, segment_ids):
        """The copy head's (keys, ids, pointer mask) over what it may point at: this sequence, or the cache."""
        keys = self.copy.k(h)
        if cache is None:
            return keys, idx, allowed_in_sequence(idx.shape[1], idx.device, segment_ids, self.cfg.copy_lookahead)
        keys, ids, positions = cache.update_copy(keys.to(cache.copy_k.dtype), idx)
        return keys, ids, allowed_from_positions(positions, keys.shape[1], self.cfg.copy_lookahead)

    # -- accounting -----------------------------------------------------------------------------------
    def num_params(self, non_embedding: bool = False) -> int:
        n = sum(p.numel() for p in self.parameters())  # tied weights are counted once by parameters()
        if non_embedding:
            n -= self.wte.weight.numel() + (self.wpe.weight.numel() if self.wpe is not None else 0)
            if not self.cfg.tie_embeddings:
                n -= self.lm_head.weight.numel()
        return n

    def flops_per_token(self, seq_len: int) -> float:
        """Training FLOPs per token (forward + backward), the PaLM-paper convention used for MFU:
        6 x (matmul weights, lm_head included) + 12 x n_layer x d_model x seq_len for attention scores."""
        cfg = self.cfg
        matmul = sum(m.weight.numel() for m in self.modules() if isinstance(m, nn.Linear))
        return 6.0 * matmul + 12.0 * cfg.n_layer * cfg.n_head * cfg.head_dim * seq_len


# -- model folders: config.json + model.safetensors ------------------------------------------------------

def save_model(model: GPT, out_dir: str | Path, state_dict: dict | None = None) -> None:
    """Write config.json and model.safetensors (tied lm_head stored once, as HF does)."""
    from safetensors.torch import save_file

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    sd = state_dict if state_dict is not None else model.state_dict()
    sd = {k: v.detach().to("cpu").contiguous() for k, v in sd.items()
          if not (model.cfg.tie_embeddings and k == "lm_head.weight")}
    tmp = out / "model.safetensors.tmp"
    save_file(sd, str(tmp), metadata={"format": "pt"})
    tmp.replace(out / "model.safetensors")
    (out / "config.json").write_text(json.dumps(model.cfg.to_dict(), indent=2))


def load_config(model_dir: str | Path) -> ModelConfig:
    f = Path(model_dir) / "config.json"
    if not f.is_file():
        raise ChatforgeError(f"{f}: missing; is {model_dir} a trained model folder?")
    try:
        return ModelConfig.from_dict(json.loads(f.read_text()))
    except json.JSONDecodeError as e:
        raise ChatforgeError(f"{f}: not valid JSON ({e.msg})") from None


def load_state(model_dir: str | Path, cfg: ModelConfig | None = None, device: str | torch.device = "cpu") -> dict:
    """A model folder's weights as a state dict (a tied lm_head filled in from the embedding, weights added to
    the model since the file was written filled in at their neutral value)."""
    from safetensors.torch import load_file

    f = Path(model_dir) / "model.safetensors"
    if not f.is_file():
        raise ChatforgeError(f"{f}: missing; the stage that writes {model_dir} has not finished")
    cfg = cfg or load_config(model_dir)
    try:
        sd = load_file(str(f), device=str(device))
    except Exception as e:
        raise ChatforgeError(f"{f}: cannot read weights ({e}); the file is corrupt or truncated") from None
    if cfg.tie_embeddings and "wte.weight" in sd:
        sd.setdefault("lm_head.weight", sd["wte.weight"])
    return with_added_weights(sd, cfg)


def with_added_weights(sd: dict, cfg: ModelConfig) -> dict:
    """Weights added to the model after a checkpoint was written, at the value that keeps its behaviour: the
    copy head's token-aware gate (copy.gate_tok) is zero in a head trained without it."""
    if cfg.copy_head and "copy.gate.weight" in sd and "copy.gate_tok.weight" not in sd:
        sd["copy.gate_tok.weight"] = sd["copy.gate.weight"].new_zeros(cfg.d_model, cfg.d_model)
    return sd


def load_model(model_dir: str | Path, device: str | torch.device = "cpu") -> GPT:
    cfg = load_config(model_dir)
    sd = load_state(model_dir, cfg, device)
    model = GPT(cfg).to(device)
    missing, unexpected = model.load_state_dict(sd, strict=False)
    if missing or unexpected:
        f = Path(model_dir) / "model.safetensors"
        raise ChatforgeError(f"{f}: weights don't match config.json (missing {missing[:5]}, "
                             f"unexpected {unexpected[:5]})")
    return model
