"""The built-in bilingual world: a small, consistent, fictional world every stage can train on offline.

    chatforge world --run runs/demo --seed 0 --size tiny

Fictional towns, people, creatures, companies and products (entities.py) whose facts are stated through
paraphrase templates in English and Chinese (templates.py); pre-training documents with labelled web
noise (corpus.py); demonstrations, rankings and RL prompts (chat_data.py); held-out, decontaminated eval
items (evalsets.py, decontam.py). generate.py writes it all; see its docstring for the files.
"""

from chatforge.world.generate import SIZES, generate_world, world_settings

__all__ = ["SIZES", "generate_world", "world_settings"]
