"""Baichuan-Omni (v1) as a transformers remote-code model: the two files here are copied into
every v1 export directory (omni_jax/convert/export_torch.py) and loaded from there by
`AutoModelForCausalLM.from_pretrained(dir, trust_remote_code=True)`.

  configuration_omni_v1.py   OmniV1Config (the parts' transformers configs + projector settings)
  modeling_omni_v1.py        OmniV1ForCausalLM (SiglipVisionModel, WhisperEncoder,
                             Qwen2ForCausalLM + the v1 projectors and the placeholder merge)

They import only torch and transformers (never omni_jax), so an export directory works on a
machine without JAX. Nothing here is imported by omni_jax itself except through
`MODEL_FILES`, the list of files to copy.
"""

MODEL_FILES = ("configuration_omni_v1.py", "modeling_omni_v1.py")
