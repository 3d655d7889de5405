"""Retrieval: documents -> passages -> a persisted BM25 index in the run directory (see index.py)."""
