"""Baichuan-Omni-1.5 experiments: one file per stage of ARCHITECTURE.md 1.8 (plus the audio
tokenizer, flow-matching and vocoder stages) and `pipeline.py`, which runs them all in order.
Every file is `get_config("tiny" | "small" | "7b")` (default tiny)."""
