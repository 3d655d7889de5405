"""Data stages: text -> token shards (the cleaning/dedup/mixture pipeline builds on this)."""
