"""Capability suite: scorers and the runner that scores a model folder on the world's held-out tasks."""

# the rates a suite row stores beside its score (refusal / honesty decisions, retrieval and citations,
# moderation), by key suffix: the suite's table and the report card print them; here, free of torch, so the
# report can read it without loading a model stack
RATE_KEYS = ("_harmful", "_benign", "_nonexistent", "_real", "retrieval_recall", "answers_citing",
             "citation_precision", "cited_and_right", "_other_prompts", "in_context_copying")
