"""Configuration of Baichuan-Omni (v1) exported by omni_jax (transformers remote code).

Written by omni_jax (omni_jax/convert/torch_v1/); it matches omni_jax/models/omni_v1.py
OmniV1Config. The parts keep their own transformers configs as dicts:

  llm_config    Qwen2Config          the LLM (Qwen2ForCausalLM)
  vision_config  SiglipVisionConfig   SigLIP (SiglipVisionModel, no pooling head)
  audio_config   WhisperConfig        the Whisper encoder (WhisperEncoder; only encoder_* keys matter)

and the v1 projector settings: `pool_grid` (image tokens per tile = rows * cols, adaptive
average pooling of the SigLIP grid), `video_kernel` / `video_pool_grid` (the video projector's
conv and its pooling), `projector_act`, `audio_rate` / `audio_shortcut` (the Conv-GMLP audio
projector), and the placeholder token ids the merge fills: `image_token_id` (one per image
tile token), `video_token_id` (one per video frame token), `audio_token_id` (one per audio token).
"""

from transformers import PretrainedConfig


class OmniV1Config(PretrainedConfig):
    model_type = "omni_v1"

    def __init__(self, llm_config=None, vision_config=None, audio_config=None, pool_grid=(14, 13), video_kernel=2,
                 video_pool_grid=(21, 26), projector_act="gelu", audio_rate=4, audio_shortcut="linear",
                 image_token_id=None, video_token_id=None, audio_token_id=None, initializer_range=0.02, **kwargs):
        self.llm_config = dict(llm_config or {})
        self.vision_config = dict(vision_config or {})
        self.audio_config = dict(audio_config or {})
        self.pool_grid = list(pool_grid)
        self.video_kernel = int(video_kernel)
        self.video_pool_grid = list(video_pool_grid)
        self.projector_act = projector_act
        self.audio_rate = int(audio_rate)
        self.audio_shortcut = audio_shortcut
        self.image_token_id = image_token_id
        self.video_token_id = video_token_id
        self.audio_token_id = audio_token_id
        self.initializer_range = initializer_range
        kwargs.setdefault("tie_word_embeddings", False)  # the LLM's lm_head is its own matrix
        super().__init__(**kwargs)
