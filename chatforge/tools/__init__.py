"""Tools a chat model can call (see calculator.py)."""
