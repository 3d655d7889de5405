"""The built-in bilingual world: a small, consistent, fictional corpus every stage can train on offline.

    chatforge world --run runs/demo --seed 0 --size tiny

Writes `world/raw/*.jsonl` ({"text", "source", "lang"} per line) and `world/facts.json`. Facts are
invented (towns, people, creatures) and stated through several paraphrase templates in English and
Chinese, so a tiny model can learn them and later stages can be scored on them. This is the minimal
world the foundation needs; the full world (SFT, rankings, eval suites, web noise) builds on it.
"""

from chatforge.world.generate import SIZES, generate_world, world_settings

__all__ = ["SIZES", "generate_world", "world_settings"]
