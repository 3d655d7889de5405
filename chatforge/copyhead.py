"""The copy head: a pointer over the context mixed into the next-token distribution (`ModelConfig.copy_head`).

    cfg = ModelConfig(..., copy_head=64)   # the pointer's query/key width; 0 (the default) = no copy head

A small Transformer does not learn to copy what it has read (an "induction head") in a CPU-sized budget:
the 1.3M-parameter demo model trained on the world scored about 0 on the in-context copying probe, and
answered retrieved passages with invented values. The copy head makes copying one learned step, as
pointer-generator networks do for extractive summarisation and QA:

    p(v | x_<=t) = (1 - g_t) * softmax(lm_head(h_t))[v]  +  g_t * sum_{p < t, x_{p+1} = v} a_{t,p}
    a_{t,p} = softmax_p( q(h_t) . k(h_p) / sqrt(d) ),   g_t = sigmoid(gate(h_t) + G(h_t) . sum_p a_{t,p} e(x_{p+1}))

Pointing at position p predicts the token that followed it (x_{p+1}): the head finds an earlier place in
the context that looks like "now" and copies what came next — an induction head in one step, with the
copied token taken from the context ids rather than from the residual stream.

Lookahead (`ModelConfig.copy_lookahead` = L): the key of p also sees the L tokens after it,
    k_p = k(h_p) + k_next(e(x_{p+1})) + sum_{j=2..L} a_j * u(e(x_{p+j}))      (e: the token embedding)
and query t may point at p only when p + L <= t (those tokens are then context, not the future). Why: a
causal h_p knows nothing of the sentence that starts after p, so when an answer starts copying a passage
sentence ("The Bridorhas has 2 legs."), the head could not tell it from the entity's other sentences that
start the same way ("The Bridorhas is a red animal.") — the relation word comes later. With lookahead the
key of the place before a sentence says what the sentence is about, as the bidirectional encoder of a
pointer-generator network does. L = 1 is the plain head (and what checkpoints without the field load as). The model returns log p as its
logits, so sampling, log-probs (PPO, DPO), losses and the engine need no change; the KV cache keeps the
head's keys and the ids (`KVCache.update_copy`). Models with a copy head have no HF export (no HF
architecture has one).
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

GATE_BIAS = -1.0  # the gate starts mostly closed (g = 0.27): early training is the plain model's


class CopyHead(nn.Module):
    def __init__(self, d_model: int, width: int, lookahead: int = 1):
        super().__init__()
        self.q = nn.Linear(d_model, width, bias=False)
        self.k = nn.Linear(d_model, width, bias=False)
        self.k_next = nn.Linear(d_model, width, bias=False)
        self.gate = nn.Linear(d_model, 1)
        # the gate also sees (the embedding of) the token the pointer would copy: after a number's last digit the
        # pointer's next pick is the word after it, which is worth copying only inside a name, never after a number
        self.gate_tok = nn.Linear(d_model, d_model, bias=False)
        self.scale = 1.0 / math.sqrt(width)
        self.lookahead = lookahead
        if lookahead > 1:  # tokens x_{p+2..p+L}: one shared projection, a per-offset weight on each channel
            self.ahead = nn.Linear(d_model, width, bias=False)
            self.ahead_w = nn.Parameter(torch.ones(lookahead - 1, width))

    def reset_gate(self) -> None:
        nn.init.zeros_(self.gate.weight)
        nn.init.constant_(self.gate.bias, GATE_BIAS)
        nn.init.zeros_(self.gate_tok.weight)  # starts as the plain gate
        if self.lookahead > 1:
            nn.init.ones_(self.ahead_w)

    def _keys(self, keys, ids, e):
        """keys (B, S, w) from h, e (B, S, d) the embeddings of ids; -> the keys (B, S-1, w) of positions 0..S-2
        with what follows each (above). Positions whose lookahead runs past the end get zeros there; the pointer
        mask never lets them be used."""
        keys = keys[:, :-1] + self.k_next(e[:, 1:])
        if self.lookahead > 1:
            S = ids.shape[1]
            u = F.pad(self.ahead(e), (0, 0, 0, self.lookahead))  # (B, S + L, w)
            for j in range(2, self.lookahead + 1):
                keys = keys + self.ahead_w[j - 2].to(keys.dtype) * u[:, j:j + S - 1]
        return keys

    def _pointer(self, h, keys, ids, allowed, embedding):
        """-> (attention (B, T, S-1) over the positions p whose next token x_{p+1} it copies, gate logit (B, T, 1))."""
        # the key of p also says which token pointing at it copies (x_{p+1}, already in the context) and, with
        # lookahead, what follows: the query can pick a sentence by its words, not only by where the last one was
        e = F.embedding(ids, embedding).to(keys.dtype)
        keys = self._keys(keys, ids, e)
        scores = (self.q(h) @ keys.transpose(1, 2)).float() * self.scale  # (B, T, S-1)
        empty = ~allowed.any(-1, keepdim=True)  # the first position has nothing to point at
        scores = scores.masked_fill(~allowed, float("-inf")).masked_fill(empty, 0.0)
        attn = torch.softmax(scores, dim=-1).masked_fill(~allowed, 0.0)
        candidate = attn.to(e.dtype) @ e[:, 1:]  # (B, T, d): the embedding of what the pointer copies
        z = self.gate(h) + (self.gate_tok(h) * candidate).sum(-1, keepdim=True)
        return attn, z.float().masked_fill(empty, -float("inf"))  # no context: the plain head

    def mix(self, h: torch.Tensor, logits: torch.Tensor, keys: torch.Tensor, ids: torch.Tensor,
            allowed: torch.Tensor, embedding: torch.Tensor) -> torch.Tensor:
        """h (B, T, d) final hidden states; logits (B, T, V); keys (B, S, w) of positions 0..S-1 and ids (B, S)
        the tokens at them; allowed (B or 1, T, S-1): query t may point at position p (p < t, same sample);
        embedding: the token embedding table. -> log of the mixed distribution (B, T, V), float32."""
        attn, z = self._pointer(h, keys, ids, allowed, embedding)
        B, T = attn.shape[:2]
        copy = torch.zeros(B, T, logits.size(-1), device=h.device, dtype=torch.float32)
        copy.scatter_add_(2, ids[:, None, 1:].expand(B, T, -1), attn)  # pointing at p copies x_{p+1}
        vocab = F.log_softmax(logits.float(), dim=-1) + F.logsigmoid(-z)
        return torch.logaddexp(vocab, copy.clamp_min(1e-30).log() + F.logsigmoid(z))

    def nll(self, h: torch.Tensor, logits: torch.Tensor, keys: torch.Tensor, ids: torch.Tensor,
            allowed: torch.Tensor, embedding: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """Mean -log p(target) of the mixture (targets -100 ignored), as cross-entropy of `mix` would give, but
        without the (B, T, V) mixture: only each target's vocabulary and pointer probabilities are formed (the
        training step costs about what the plain model's does)."""
        attn, z = self._pointer(h, keys, ids, allowed, embedding)
        valid = targets != -100
        y = targets.clamp_min(0)
        logits = logits.float()
        vocab = logits.gather(-1, y[..., None]).squeeze(-1) - logits.logsumexp(-1) + F.logsigmoid(-z[..., 0])
        copied = (attn * (ids[:, None, 1:] == y[..., None])).sum(-1)  # the pointer's mass on the target
        logp = torch.logaddexp(vocab, copied.clamp_min(1e-30).log() + F.logsigmoid(z[..., 0]))
        return -(logp * valid).sum() / valid.sum().clamp_min(1)


def allowed_in_sequence(T: int, device, segment_ids: torch.Tensor | None, lookahead: int = 1) -> torch.Tensor:
    """Pointer mask of a cache-free forward: (1 or B, T, T-1), p + lookahead <= t; in packed rows, p and p+1 in
    t's sample (samples are contiguous, so everything from p to t is then t's sample)."""
    p = torch.arange(T - 1, device=device)
    allowed = (p[None, :] <= torch.arange(T, device=device)[:, None] - lookahead)[None]
    if segment_ids is not None:
        seg = segment_ids[:, :, None]
        allowed = allowed & (segment_ids[:, None, :-1] == seg) & (segment_ids[:, None, 1:] == seg)
    return allowed


def allowed_from_positions(positions: torch.Tensor, S: int, lookahead: int = 1) -> torch.Tensor:
    """Pointer mask of a cached forward: queries at `positions` ((T,) or (B, T)) may point at cached p with
    p + lookahead <= position."""
    p = torch.arange(S - 1, device=positions.device)
    allowed = p <= positions[..., None] - lookahead
    return allowed if allowed.dim() == 3 else allowed[None]
