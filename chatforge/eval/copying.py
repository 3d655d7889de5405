"""In-context copying: does the model predict a token sequence it has just read?

    copy_probe(model, tok) -> {"in_context_copying": 0.99, "copy_first_nats": 9.1, "copy_repeat_nats": 0.1}
    (an empty dict for a context under 19 tokens: too short to show a sequence twice)

Rows of random ordinary token ids (BPE merges; no bytes, no special tokens) are shown twice after <|bos|>.
The first showing can't be predicted; the repeat can, by copying from the context (what "induction heads"
do). `in_context_copying` is the share of the first showing's loss the repeat saves: near 1 for a model that
copies, near 0 for one that doesn't. Reading retrieved passages needs it: the eval reports it on the `bpb`
row, so a low retrieval score can be told apart from a retrieval failure (README: the demo's models score
about 0 here). Deterministic (fixed seed), a few forward passes.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

SKIP = 4  # the first tokens of each showing: too little context for either to mean anything


@torch.no_grad()
def copy_probe(model, tok, length: int = 64, rows: int = 16, seed: int = 0) -> dict:
    special = set(tok.special_ids.values())
    ordinary = torch.tensor([i for i in range(256, min(model.cfg.vocab_size, tok.vocab_size)) if i not in special])
    length = min(length, (model.cfg.max_seq_len - 1) // 2)
    if length <= 2 * SKIP:  # a context too short to show a sequence twice: no figure rather than noise
        return {}
    g = torch.Generator().manual_seed(seed)
    seq = ordinary[torch.randint(len(ordinary), (rows, length), generator=g)]
    x = torch.cat([torch.full((rows, 1), tok.bos_id), seq, seq], dim=1).to(next(model.parameters()).device)
    logits, _ = model(x[:, :-1])
    nll = F.cross_entropy(logits.float().transpose(1, 2), x[:, 1:], reduction="none")  # (rows, 2 * length)
    first, repeat = nll[:, SKIP:length].mean().item(), nll[:, length + SKIP:].mean().item()
    return {"in_context_copying": round(1 - repeat / first, 4), "copy_first_nats": round(first, 3),
            "copy_repeat_nats": round(repeat, 3)}
