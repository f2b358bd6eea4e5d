"""PyTorch <-> omni_jax weight conversion (rule tables per model, safetensors I/O, no pickle)."""
