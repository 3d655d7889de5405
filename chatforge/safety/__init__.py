"""Safety: moderation of a chat server's inputs and outputs (see `chatforge.safety.moderation`)."""

from chatforge.safety.moderation import Moderator, moderation_decisions, train_moderation

__all__ = ["Moderator", "moderation_decisions", "train_moderation"]
