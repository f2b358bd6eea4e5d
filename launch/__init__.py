"""Command-line entry points: train (the trainer), convert (weights), aot (TPU planning)."""
