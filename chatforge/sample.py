"""Continue a text with a model (base models especially), through the engine.

    chatforge sample --run runs/demo --stage base "The town of"
    chatforge sample --run runs/demo --stage base --interactive
    chatforge sample --run runs/demo --stage base --few-shot shots.jsonl "How many people live in Elqui?"
"""

from __future__ import annotations

from chatforge.engine import Engine, SamplingParams


def continue_text(engine: Engine, prompt: str, max_new_tokens: int = 100, temperature: float = 0.8,
                  top_k: int = 50, seed: int | None = 0, stop: list[str] | None = None) -> str:
    """The model's continuation of `prompt` (after <|bos|>); a prompt longer than the context keeps its end."""
    tok, ctx = engine.tok, engine.model.cfg.max_seq_len
    ids = [tok.bos_id, *tok.encode(prompt)][-(ctx - 1):]
    params = SamplingParams(max_tokens=max(1, min(max_new_tokens, ctx - len(ids))), temperature=temperature,
                            top_k=top_k, seed=seed, stop=list(stop or []))
    return engine.generate([ids], params)[0].text
