"""Flax linen models, one module per branch of the omni model."""
