"""The reward model: the shared Transformer backbone with a scalar head, read at the answer's end token.

    from chatforge.reward import load_reward_model, score_conversations
    rm, tok = load_reward_model("runs/demo/rm")
    scores = score_conversations(rm, tok, [[{"role": "user", ...}, {"role": "assistant", ...}]])

A reward-model folder is a model folder (config.json, model.safetensors, tokenizer) plus
`reward_head.safetensors` (the head's weight and bias) and `reward.json` (the normalisation applied after
training: score = gain * (head output) + bias, so that SFT answers score mean 0, std 1). Scores are read at
the last token of each conversation, which for a finished answer is its <|end|>.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from torch import nn

from chatforge import ChatforgeError
from chatforge.model import GPT, ModelConfig, load_config, load_state, save_model


class RewardModel(GPT):
    """A GPT whose `scores()` maps each packed conversation to one number (the lm_head is kept, unused, so
    the backbone stays an ordinary model folder that PPO's value model can start from)."""

    def __init__(self, cfg: ModelConfig):
        super().__init__(cfg)
        self.reward_head = nn.Linear(cfg.d_model, 1)
        nn.init.normal_(self.reward_head.weight, std=1.0 / (cfg.d_model + 1) ** 0.5)
        nn.init.zeros_(self.reward_head.bias)
        if not cfg.tie_embeddings:  # unused by scores(): frozen, so DDP doesn't wait for its gradient
            self.lm_head.weight.requires_grad_(False)
        if self.copy is not None:  # the copy head only shapes next-token logits: unused too, frozen likewise
            self.copy.requires_grad_(False)
        self.register_buffer("norm_gain", torch.ones(()), persistent=False)
        self.register_buffer("norm_bias", torch.zeros(()), persistent=False)

    def reset_parameters(self) -> None:
        super().reset_parameters()
        if hasattr(self, "reward_head"):
            nn.init.normal_(self.reward_head.weight, std=1.0 / (self.cfg.d_model + 1) ** 0.5)
            nn.init.zeros_(self.reward_head.bias)

    def forward(self, idx, *args, ends: torch.Tensor | None = None, normalised: bool = False,
                all_positions: bool = False, **kwargs):
        """With `ends` (N, 2) of (row, column): packed rows -> (N,) rewards read at those positions (pass
        segment_ids / positions as for packed SFT rows). With `all_positions`: the head at every position
        -> (B, T) (PPO's value model). Otherwise the plain GPT forward. Scoring goes through forward so
        DDP / FSDP wrappers see it."""
        if all_positions:
            hidden, _ = super().forward(idx, return_hidden=True, **kwargs)
            return self.reward_head(hidden).squeeze(-1).float()
        if ends is None:
            return super().forward(idx, *args, **kwargs)
        hidden, _ = super().forward(idx, return_hidden=True, **kwargs)
        raw = self.reward_head(hidden[ends[:, 0], ends[:, 1]]).squeeze(-1).float()
        return raw * self.norm_gain + self.norm_bias if normalised else raw

    def scores(self, x: torch.Tensor, seg: torch.Tensor, pos: torch.Tensor, ends: torch.Tensor,
               normalised: bool = False) -> torch.Tensor:
        """Packed rows (x, seg, pos: (R, T)) and `ends` (N, 2) of (row, column) -> (N,) rewards."""
        return self(x, segment_ids=seg, positions=pos, ends=ends, normalised=normalised)


def save_reward_model(model: RewardModel, out: Path, state: dict | None = None, norm: dict | None = None) -> None:
    from safetensors.torch import save_file

    state = state if state is not None else model.state_dict()
    backbone = {k: v for k, v in state.items() if not k.startswith("reward_head.")}
    save_model(model, out, backbone)
    save_file({"weight": state["reward_head.weight"].detach().cpu().contiguous(),
               "bias": state["reward_head.bias"].detach().cpu().contiguous()}, str(out / "reward_head.safetensors"))
    (out / "reward.json").write_text(json.dumps({"score_token": "<|end|>", "normalisation": norm or
                                                 {"gain": 1.0, "bias": 0.0}}, indent=2))


def load_reward_model(folder: str | Path, device: str | torch.device = "cpu"):
    """-> (RewardModel in eval mode with its normalisation, Tokenizer)."""
    from safetensors.torch import load_file

    from chatforge.tokenizer import Tokenizer

    folder = Path(folder)
    head = folder / "reward_head.safetensors"
    if not head.is_file():
        raise ChatforgeError(f"{head}: missing; is {folder} a reward model? (run `chatforge rm --run ...`)")
    cfg = load_config(folder)
    model = RewardModel(cfg)
    sd = load_state(folder, cfg)
    h = load_file(str(head))
    sd.update({"reward_head.weight": h["weight"], "reward_head.bias": h["bias"]})
    model.load_state_dict(sd)
    norm = json.loads((folder / "reward.json").read_text())["normalisation"]
    model.norm_gain.fill_(norm["gain"])
    model.norm_bias.fill_(norm["bias"])
    return model.to(device).eval(), Tokenizer.load(folder)


@torch.no_grad()
def score_conversations(model: RewardModel, tok, conversations: list[list[dict]], normalised: bool = True,
                        batch_rows: int = 16) -> list[float]:
    """Rewards of whole conversations (each ends with the assistant answer being judged)."""
    from chatforge.train.sft_data import tokenize_conversation

    ctx = model.cfg.max_seq_len
    seqs = []
    for i, c in enumerate(conversations):
        ids = tokenize_conversation(tok, c)[0]
        if len(ids) > ctx:
            raise ChatforgeError(f"conversation {i}: {len(ids)} tokens exceed the reward model's context {ctx}")
        seqs.append(ids)
    return score_ids(model, seqs, tok.pad_id, normalised, batch_rows)


@torch.no_grad()
def score_ids(model: RewardModel, seqs: list, pad_id: int, normalised: bool = True, batch_rows: int = 16) -> list[float]:
    """Rewards of token sequences (read at each one's last token), packed `batch_rows` rows at a time."""
    import numpy as np

    from chatforge.train.rm_data import Scored, build_score_rows

    device = next(model.parameters()).device
    ctx = model.cfg.max_seq_len
    items = [Scored(np.asarray(s, dtype=np.int64)) for s in seqs]
    too_long = [i for i, it in enumerate(items) if it.width > ctx]
    if too_long:
        raise ChatforgeError(f"sequence {too_long[0]} has {items[too_long[0]].width} tokens; the reward model's "
                             f"context is {ctx}")
    out: list[float] = [0.0] * len(items)
    chunk = max(1, batch_rows * 2)  # conversations per forward (packed into rows of the context)
    for start in range(0, len(items), chunk):
        idx = list(range(start, min(start + chunk, len(items))))
        b = build_score_rows([items[i] for i in idx], ctx, pad_id)
        t = {k: torch.from_numpy(v).to(device) for k, v in b.items()}
        r = model.scores(t["x"], t["seg"], t["pos"], t["ends"], normalised=normalised)
        for i, v in zip(idx, r.tolist()):
            out[i] = v
    return out
