"""omni_jax: a JAX/Flax, TPU-first training stack for Baichuan-Omni (v1) and Baichuan-Omni-1.5.

Subpackages:
  layers/   shared Flax building blocks (dense, norms, rotary, the attention function)
  models/   one module per branch (the Qwen2.5 backbone lives in models/qwen2.py)
  convert/  PyTorch <-> omni_jax weight maps, safetensors I/O (no pickle anywhere)
  train/    stage-aware optimizer, jitted sharded train step, checkpoints, the trainer loop
  data/     tokenizers, packing, deterministic step-indexed pipelines, embedded default data
  tasks/    model + loss + batch layout bundles the trainer runs
  sharding.py  the mesh and THE logical-axis rules table
"""

__version__ = "0.1.0"
