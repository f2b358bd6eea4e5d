"""Training: stage-aware optimizer, sharded jitted step, orbax checkpoints, the trainer loop."""
