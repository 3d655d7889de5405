"""LoRA adapters for fine-tuning large (imported) models on one GPU, via `peft`; merged back on save.

    chatforge sft --run runs/qwen --init-from /models/Qwen2-0.5B --lora-rank 16 [--lora-alpha 32]

Adapters go on every attention and MLP projection (qkv, proj, up, down); everything else is frozen, so
the optimizer holds state only for the adapters. The saved SFT model is the merged one: a plain model
folder that loads, exports and serves like any other (the adapter weights are saved beside it too).

Embeddings stay frozen except the rows of the chat special tokens (<|user|>, <|assistant|>, <|end|>, ...):
a base model pre-trained on plain text never trained them, and without them LoRA learns the chat format
far more slowly (README, Results). Those rows are trained as peft "trainable tokens", separately for the
input embedding and the lm_head; so a model with tied embeddings is saved untied after LoRA (the rest of
both matrices stays identical).
"""

from __future__ import annotations

import torch

from chatforge import ChatforgeError
from chatforge.model import GPT

TARGETS = ["qkv", "proj", "up", "down"]


def _peft():
    try:
        import peft
    except ImportError:
        raise ChatforgeError("LoRA needs `peft`: pip install 'chatforge[lora]' (or pip install peft)") from None
    return peft


def add_lora(model: GPT, rank: int, alpha: float | None = None, token_ids: list[int] | None = None) -> GPT:
    """Inject LoRA adapters into `model` in place (it stays our GPT class); only adapters train, plus the
    embedding and lm_head rows of `token_ids` (the chat special tokens)."""
    if rank <= 0:
        raise ChatforgeError(f"--lora-rank {rank}: must be positive")
    peft = _peft()
    tokens = {"wte": sorted(token_ids), "lm_head": sorted(token_ids)} if token_ids else None
    config = peft.LoraConfig(r=rank, lora_alpha=alpha or 2 * rank, target_modules=TARGETS, lora_dropout=0.0,
                             bias="none", trainable_token_indices=tokens)
    model = peft.inject_adapter_in_model(config, model)
    for name, p in model.named_parameters():
        p.requires_grad = "lora_" in name or "trainable_tokens_delta" in name
    return model


def is_lora_state(state: dict) -> bool:
    return any("lora_" in k or "trainable_tokens_delta" in k for k in state)


def merge_lora(model: GPT) -> GPT:
    """Fold every adapter into its base weight (peft's merge) and put the plain modules back. Trained token
    rows go into the input embedding and the lm_head separately, so tied embeddings become untied."""
    from dataclasses import replace

    from peft.tuners.lora import LoraLayer
    from peft.utils.other import TrainableTokensWrapper

    tokens_trained = isinstance(model.wte, TrainableTokensWrapper)
    if tokens_trained and model.cfg.tie_embeddings:
        head = model.lm_head.token_adapter.base_layer
        head.weight = torch.nn.Parameter(head.weight.detach().clone())  # untie before the two merges
        model.cfg = replace(model.cfg, tie_embeddings=False)
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, LoraLayer):
                child.merge()
                setattr(parent, name, child.get_base_layer())
            elif isinstance(child, TrainableTokensWrapper):
                child.token_adapter.merge()
                setattr(parent, name, child.token_adapter.get_base_layer())
    for p in model.parameters():
        p.requires_grad = True
    return model


def merged_model(model_cfg, state: dict, rank: int, alpha: float | None,
                 token_ids: list[int] | None) -> GPT:
    """A LoRA model's full state dict -> the equivalent plain model (its config may be untied, above)."""
    model = add_lora(GPT(model_cfg), rank, alpha, token_ids)
    model.load_state_dict(state)
    with torch.no_grad():
        return merge_lora(model)


def adapter_state(state: dict) -> dict:
    return {k: v for k, v in state.items() if "lora_" in k or "trainable_tokens_delta" in k}
