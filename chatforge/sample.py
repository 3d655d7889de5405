"""Simple sampling from a trained model folder (the full engine with batching and stops comes later).

    chatforge sample --run runs/demo --stage base "The town of"
    chatforge sample --run runs/demo --stage base --interactive
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from chatforge.model import GPT, KVCache
from chatforge.tokenizer import Tokenizer


@torch.no_grad()
def sample_ids(model: GPT, prompt_ids: list[int], max_new_tokens: int, temperature: float = 0.8,
               top_k: int = 50, seed: int = 0, stop_ids: tuple[int, ...] = (),
               stop_fn: Callable[[list[int]], bool] | None = None) -> list[int]:
    """Prefill the prompt into a KV cache, then sample token by token (greedy when temperature == 0).
    Stops at a token in `stop_ids` (not returned) or when `stop_fn(generated_ids)` is true."""
    model.eval()
    device = next(model.parameters()).device
    limit = model.cfg.max_seq_len
    prompt_ids = prompt_ids[-(limit - 1):]  # keep room for at least one new token
    max_new_tokens = min(max_new_tokens, limit - len(prompt_ids))
    gen = torch.Generator(device=device).manual_seed(seed)
    cache = KVCache(model.cfg, 1, device=device, dtype=next(model.parameters()).dtype)
    logits, _ = model(torch.tensor([prompt_ids], device=device), cache=cache)
    out: list[int] = []
    for _ in range(max_new_tokens):
        last = logits[0, -1].float()
        if temperature <= 0:
            nxt = int(last.argmax())
        else:
            last = last / temperature
            if top_k > 0:
                kth = torch.topk(last, min(top_k, last.numel())).values[-1]
                last = last.masked_fill(last < kth, float("-inf"))
            nxt = int(torch.multinomial(torch.softmax(last, -1), 1, generator=gen))
        if nxt in stop_ids:
            break
        out.append(nxt)
        if len(out) == max_new_tokens or (stop_fn is not None and stop_fn(out)):
            break
        logits, _ = model(torch.tensor([[nxt]], device=device), cache=cache)
    return out


def continue_text(model: GPT, tok: Tokenizer, prompt: str, **kw) -> str:
    ids = sample_ids(model, [tok.bos_id, *tok.encode(prompt)], stop_ids=(tok.eos_id, tok.end_id), **kw)
    return tok.decode(ids)
