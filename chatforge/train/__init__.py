"""Training stages (pretrain; later sft, rm, ppo, dpo) over one shared loop (loop.py)."""
