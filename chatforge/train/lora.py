"""LoRA adapters for fine-tuning large (imported) models on one GPU, via `peft`; merged back on save.

    chatforge sft --run runs/qwen --init-from /models/Qwen2-0.5B --lora-rank 16 [--lora-alpha 32]

Adapters go on every attention and MLP projection (qkv, proj, up, down); everything else is frozen, so
the optimizer holds state only for the adapters. The saved SFT model is the merged one: a plain model
folder that loads, exports and serves like any other (the adapter weights are saved beside it too).

Embeddings stay frozen: LoRA suits a model that already knows the chat special tokens. A base model
pre-trained on plain text has never trained their rows, and adapters on the projections learn the chat
format far more slowly than full fine-tuning (README, Results); fine-tune such a model fully.
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


def add_lora(model: GPT, rank: int, alpha: float | None = None) -> GPT:
    """Inject LoRA adapters into `model` in place (it stays our GPT class); only adapters train."""
    if rank <= 0:
        raise ChatforgeError(f"--lora-rank {rank}: must be positive")
    peft = _peft()
    config = peft.LoraConfig(r=rank, lora_alpha=alpha or 2 * rank, target_modules=TARGETS, lora_dropout=0.0,
                             bias="none")
    model = peft.inject_adapter_in_model(config, model)
    for name, p in model.named_parameters():
        p.requires_grad = "lora_" in name
    return model


def is_lora_state(state: dict) -> bool:
    return any("lora_" in k for k in state)


def merge_lora(model: GPT) -> GPT:
    """Fold every adapter into its base weight (peft's merge) and put the plain Linear back."""
    from peft.tuners.lora import LoraLayer

    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, LoraLayer):
                child.merge()
                setattr(parent, name, child.get_base_layer())
    for p in model.parameters():
        p.requires_grad = True
    return model


def merged_state(model_cfg, state: dict, rank: int, alpha: float | None) -> dict:
    """A LoRA model's full state dict -> the equivalent plain model's state dict."""
    model = add_lora(GPT(model_cfg), rank, alpha)
    model.load_state_dict(state)
    with torch.no_grad():
        return merge_lora(model).state_dict()


def adapter_state(state: dict) -> dict:
    return {k: v for k, v in state.items() if "lora_" in k}
