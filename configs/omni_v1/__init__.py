"""Baichuan-Omni (v1) experiments: one file per stage of ARCHITECTURE.md 2 and `pipeline.py`,
which runs them all in order. Every file is `get_config("tiny" | "small" | "7b")` (default tiny)."""
