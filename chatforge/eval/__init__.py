"""Capability suite: scorers and the runner that scores a model folder on the world's held-out tasks."""
