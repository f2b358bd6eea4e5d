"""Baichuan-Omni (v1) in PyTorch, exported by omni_jax (transformers remote code).

Written by omni_jax (omni_jax/convert/torch_v1/); numerically it is omni_jax/models/omni_v1.py
(OmniV1), checked to <= 1e-5 fp32 on logits by tests/convert/test_export_torch_v1.py. The parts
are transformers' own classes; the small modules are ours:

  vision_model      SiglipVisionModel (last_hidden_state = post-layernorm patch tokens)
  vision_projector  V1Projector: adaptive average pooling of the SigLIP grid to `pool_grid`
                    (729 -> 182 tokens at 384 px) + Linear -> act -> Linear
  video_projector   V1VideoProjector: a k x k Conv2d on the grid, then the image projector's
                    MLP after pooling to `video_pool_grid` (546 tokens per frame at 384 px)
  audio_encoder     WhisperEncoder, run on each clip's valid mel frames (any length up to
                    2 * max_source_positions), positions from its embed_positions table
  audio_projector   ConvGMLP: gate/up strided Conv1d (kernel = stride = rate), silu(gate) * up
                    + a Linear (or identity) shortcut of the stacked frames, out Linear
  language_model    Qwen2ForCausalLM over the merged input embeddings
  audio_boundary_head  AudioBoundaryHead (streaming input, not used by forward): on the Whisper
                    features joined with the log-mel averaged per encoder frame, Linear
                    (d + n_mels) -> d, GELU, Conv1d k5 same, GELU, Linear d -> 3: per 20 ms
                    frame the logits of (start, inside, end) of the user's speech
                    (`audio_boundary_logits`)

Placeholder merge: the text embeddings of `input_ids`; every position holding
`config.image_token_id` takes the next image token (tiles in order, `pool_grid` tokens each),
`video_token_id` the next video-frame token, `audio_token_id` the next audio token (clips in
order, (encoder frames of the clip) // audio_rate tokens each). The count of placeholders must
equal the count of tokens (an error says which).

    model = AutoModelForCausalLM.from_pretrained(DIR, trust_remote_code=True)
    out = model(input_ids, pixel_values=tiles, video_frames=frames, audio_features=mels,
                audio_feature_lengths=lengths)                     # logits
    ids = model.generate(input_ids, pixel_values=tiles, max_new_tokens=32, do_sample=False)

pixel_values / video_frames: (N, 3, S, S) normalised tiles / frames; audio_features: (A, n_mels, F)
log-mel chunks with audio_feature_lengths (A,) valid frames (default: all F).
"""

import torch
import torch.nn.functional as F
from torch import nn
from transformers import PreTrainedModel, Qwen2Config, Qwen2ForCausalLM, SiglipVisionConfig, SiglipVisionModel
from transformers import WhisperConfig
from transformers.activations import ACT2FN
from transformers.models.whisper.modeling_whisper import WhisperEncoder

from .configuration_omni_v1 import OmniV1Config


class V1Projector(nn.Module):
    """SigLIP grid (n, C, H, W) -> adaptive average pool to `out_grid` -> MLP -> (n, rows * cols, D)."""

    def __init__(self, vision_width, llm_width, act):
        super().__init__()
        self.mlp = nn.Sequential(nn.Linear(vision_width, llm_width), ACT2FN[act], nn.Linear(llm_width, llm_width))

    def forward(self, grid_map, out_grid):
        x = F.adaptive_avg_pool2d(grid_map, tuple(out_grid))
        return self.mlp(x.flatten(2).transpose(1, 2))


class V1VideoProjector(nn.Module):
    """A k x k Conv2d (stride 1, no padding, with bias) on a frame's SigLIP grid."""

    def __init__(self, width, kernel):
        super().__init__()
        self.conv = nn.Conv2d(width, width, kernel)

    def forward(self, grid_map):
        return self.conv(grid_map)


class ConvGMLP(nn.Module):
    """One clip's Whisper features (T, d) -> (T // rate, D); a trailing partial group is dropped."""

    def __init__(self, d, llm_width, rate, shortcut):
        super().__init__()
        self.rate = rate
        self.gate_proj = nn.Conv1d(d, rate * d, rate, rate, bias=False)
        self.up_proj = nn.Conv1d(d, rate * d, rate, rate, bias=False)
        self.shortcut = nn.Linear(rate * d, rate * d) if shortcut == "linear" else nn.Identity()
        self.out_proj = nn.Linear(rate * d, llm_width)

    def forward(self, x):
        n = self.rate
        x = x[: x.shape[0] // n * n]
        g = self.gate_proj(x.T[None])[0].T
        u = self.up_proj(x.T[None])[0].T
        return self.out_proj(F.silu(g) * u + self.shortcut(x.reshape(-1, n * x.shape[1])))


class AudioBoundaryHead(nn.Module):
    """Whisper features (T, d) + pooled log-mel (T, n_mels) -> (T, 3) logits: start, inside, end."""

    def __init__(self, d, n_mels):
        super().__init__()
        self.fc1 = nn.Linear(d + n_mels, d)
        self.conv = nn.Conv1d(d, d, 5, padding=2)
        self.fc2 = nn.Linear(d, 3)

    def forward(self, x, mel):
        h = F.gelu(self.fc1(torch.cat([x, mel], -1)))
        return self.fc2(F.gelu(self.conv(h.T[None])[0].T))


class OmniV1PreTrainedModel(PreTrainedModel):
    config_class = OmniV1Config
    base_model_prefix = "omni_v1"
    supports_gradient_checkpointing = False
    _no_split_modules = ["Qwen2DecoderLayer", "SiglipEncoderLayer", "WhisperEncoderLayer"]
    _supports_sdpa = True
    _supports_flash_attn = False


class OmniV1ForCausalLM(OmniV1PreTrainedModel):
    def __init__(self, config: OmniV1Config):
        super().__init__(config)
        attn = getattr(config, "_attn_implementation", None)
        sub = lambda cls, d: cls(**d, **({"attn_implementation": attn} if attn else {}))
        self.language_model = Qwen2ForCausalLM(sub(Qwen2Config, config.llm_config))
        self.vision_model = SiglipVisionModel(sub(SiglipVisionConfig, config.vision_config))
        vw, lw = config.vision_config["hidden_size"], config.llm_config["hidden_size"]
        self.vision_projector = V1Projector(vw, lw, config.projector_act)
        self.video_projector = V1VideoProjector(vw, config.video_kernel)
        self.audio_encoder = WhisperEncoder(sub(WhisperConfig, config.audio_config))
        self.audio_projector = ConvGMLP(config.audio_config["d_model"], lw, config.audio_rate, config.audio_shortcut)
        self.audio_boundary_head = AudioBoundaryHead(config.audio_config["d_model"], config.audio_config["num_mel_bins"])
        self.post_init()

    def get_input_embeddings(self):
        return self.language_model.get_input_embeddings()

    def get_output_embeddings(self):
        return self.language_model.get_output_embeddings()

    # ---- modality encoders ----

    def _siglip_grid(self, pixel_values):
        h = self.vision_model(pixel_values=pixel_values).last_hidden_state  # (n, g*g, C)
        g = int(round(h.shape[1] ** 0.5))
        return h.transpose(1, 2).reshape(h.shape[0], h.shape[2], g, g)

    def image_tokens(self, pixel_values):
        """(N, 3, S, S) tiles -> (N * prod(pool_grid), D)."""
        y = self.vision_projector(self._siglip_grid(pixel_values), self.config.pool_grid)
        return y.reshape(-1, y.shape[-1])

    def video_tokens(self, video_frames):
        """(N, 3, S, S) frames -> (N * prod(video_pool_grid), D)."""
        y = self.vision_projector(self.video_projector(self._siglip_grid(video_frames)), self.config.video_pool_grid)
        return y.reshape(-1, y.shape[-1])

    def _encode_clip(self, mel):
        """One clip's valid mel frames (n_mels, L) -> Whisper features (frames, d)."""
        enc = self.audio_encoder
        x = F.gelu(enc.conv2(F.gelu(enc.conv1(mel[None])))).permute(0, 2, 1)
        if x.shape[1] > enc.embed_positions.weight.shape[0]:
            raise ValueError(f"an audio clip of {mel.shape[-1]} mel frames gives {x.shape[1]} encoder frames, more than "
                             f"the encoder's {enc.embed_positions.weight.shape[0]} positions")
        h = x + enc.embed_positions.weight[: x.shape[1]].to(x.dtype)
        for layer in enc.layers:
            h = layer(h, None)
            h = h[0] if isinstance(h, tuple) else h
        return enc.layer_norm(h)[0]

    def audio_boundary_logits(self, mel):
        """One window's valid mel frames (n_mels, L) -> (frames, 3) logits of start / inside / end."""
        h = self._encode_clip(mel)
        m = F.pad(mel.T, (0, 0, 0, 2 * h.shape[0] - mel.shape[1]))
        return self.audio_boundary_head(h, m.reshape(h.shape[0], 2, -1).mean(1))

    def audio_tokens(self, audio_features, audio_feature_lengths=None):
        """(A, n_mels, F) chunks + (A,) valid mel frames -> (sum_a frames_a // rate, D)."""
        if audio_feature_lengths is None:
            audio_feature_lengths = [audio_features.shape[-1]] * audio_features.shape[0]
        d = self.config.llm_config["hidden_size"]
        out = [self.audio_projector(self._encode_clip(m[:, : int(n)])) if int(n) > 0 else m.new_zeros((0, d))
               for m, n in zip(audio_features, audio_feature_lengths)]  # an empty clip gives no token
        return torch.cat(out, 0)

    # ---- the placeholder merge ----

    def embed_inputs(self, input_ids, pixel_values=None, video_frames=None, audio_features=None,
                     audio_feature_lengths=None):
        """Text embeddings with every placeholder replaced by its modality token, in order."""
        x = self.get_input_embeddings()(input_ids)
        c = self.config
        for what, token_id, arg, make in (
                ("image", c.image_token_id, pixel_values, lambda: self.image_tokens(pixel_values)),
                ("video", c.video_token_id, video_frames, lambda: self.video_tokens(video_frames)),
                ("audio", c.audio_token_id, audio_features,
                 lambda: self.audio_tokens(audio_features, audio_feature_lengths))):
            mask = (input_ids == token_id) if token_id is not None else torch.zeros_like(input_ids, dtype=torch.bool)
            n = int(mask.sum())
            if arg is None:
                if n:
                    raise ValueError(f"input_ids hold {n} {what} placeholder(s) (id {token_id}) but no {what} input "
                                     "was given")
                continue
            if token_id is None:
                raise ValueError(f"a {what} input was given but config.{what}_token_id is not set")
            tokens = make()
            if tokens.shape[0] != n:
                raise ValueError(f"input_ids hold {n} {what} placeholder(s) (id {token_id}) but the {what} input gives "
                                 f"{tokens.shape[0]} tokens")
            x = x.masked_scatter(mask[..., None].expand_as(x), tokens.to(x.dtype))
        return x

    def forward(self, input_ids=None, pixel_values=None, video_frames=None, audio_features=None,
                audio_feature_lengths=None, attention_mask=None, position_ids=None, past_key_values=None,
                inputs_embeds=None, labels=None, use_cache=None, **kwargs):
        if inputs_embeds is None:
            inputs_embeds = self.embed_inputs(input_ids, pixel_values, video_frames, audio_features,
                                              audio_feature_lengths)
        return self.language_model(inputs_embeds=inputs_embeds, attention_mask=attention_mask,
                                   position_ids=position_ids, past_key_values=past_key_values, labels=labels,
                                   use_cache=use_cache, **kwargs)

    @torch.no_grad()
    def generate(self, input_ids, pixel_values=None, video_frames=None, audio_features=None,
                 audio_feature_lengths=None, attention_mask=None, **generate_kwargs):
        """The prompt merged once, then Qwen2ForCausalLM.generate from its embeddings (KV cache);
        returns the prompt ids followed by the new tokens, like transformers' generate."""
        embeds = self.embed_inputs(input_ids, pixel_values, video_frames, audio_features, audio_feature_lengths)
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        return self.language_model.generate(input_ids=input_ids, inputs_embeds=embeds, attention_mask=attention_mask,
                                            **generate_kwargs)
