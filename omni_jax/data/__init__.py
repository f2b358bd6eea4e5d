"""Data: tokenizers, packing, deterministic step-indexed pipelines, embedded default data."""
