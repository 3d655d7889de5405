"""Rule-based (verifiable) rewards for prompts with a reference answer, e.g. the world's arithmetic.

    chatforge ppo --run runs/demo --reward rm+rule     # RM score + rule_weight x (1 if the answer is right)
    chatforge ppo --run runs/demo --reward rule        # the rule alone (prompts without a reference: 0)

A cage problem's reference is {"chickens": n, "rabbits": m}: right when the answer states both counts
(read as the capability suite reads them); any other reference is right when the answer contains it as
a whole token (numbers compared by value). Both use the suite's scorers, so "right" means the same thing
in training and in evaluation.
"""

from __future__ import annotations

from chatforge.eval.scorers import contains_match, counts_match
from chatforge.world.evalsets import CAGE_LABELS


def rule_reward(answer: str, reference) -> float | None:
    """1.0 / 0.0 for a checkable reference, None when there is nothing to check against."""
    if reference is None:
        return None
    if isinstance(reference, dict):
        if not reference or not set(reference) <= set(CAGE_LABELS):
            return None
        return counts_match(answer, reference, {k: CAGE_LABELS[k] for k in reference})
    return contains_match(answer, [str(reference)])
