"""Baichuan-Omni-1.5 assembled (ARCHITECTURE.md 1.1-1.6): one parameter tree, functional forward.

The omni model is the branch modules side by side, each under its top-level name:

  llm            Qwen2LM (omni_jax/models/qwen2.py)
  visual         NaViT vision encoder          } omni_jax/models/navit.py (VisionTower)
  visual_bridge  PatchMerger                   }
  audio_encoder  Whisper encoder               } omni_jax/models/audio_tokenizer.py
  audio_bridge   Conv-GMLP + RVQ + proj_decoder } (AudioTokenizer); the RVQ codebooks are
  audio_decoder  mel decoder                   }  model state `vq_stats`, not parameters
  audio_embed    8 code tables                 } omni_jax/models/audio_head.py
  audio_head     depth-transformer audio head  }
  flow_matching  prenet + causal U-Net (codes -> 24 kHz mel; omni_jax/models/flow_matching.py)
  vocoder        HiFT (mel -> waveform; omni_jax/models/hift.py; released as its own state dict)

`Omni15` holds the modules and applies each to its own subtree (params[name]); there is no
wrapper module, so every branch's tree, logical axes and conversion rules stay exactly as the
branch defined them.

Forward (`hidden`): text embeddings; input audio -> frozen tokenizer -> RVQ codes -> summed
code embeddings (in 1.5 the LLM sees audio only as code embeddings, for input and output
audio alike); images / video frames -> NaViT -> PatchMerger; speech in audiogen spans -> codes
-> summed code embeddings; each placed at its placeholders through the host-built gather
indices of the batch (omni_jax/data/omni_batch.py; counts were verified there); the text
embedding at those positions is dropped (`place`, the one placement). Then the LLM.
The audio tokenizer is always applied under stop_gradient here: in every stage of 1.8 it is
frozen (it trains in its own stage, omni_jax/tasks/audio_tokenizer.py).

Public API mirroring the release's `forward(input_ids, audios_tokens, images, images_grid)` (no
batch fields, no private helpers; the release's placement / position rules are in
omni_jax/models/release_inputs.py): `encode_audio_states`, `encode_audio` (mel -> codes with the
release's length rules), `code_embeddings`, `embed_vision` (patches + grid), `forward_release_style`
(-> logits; `hidden_release_style` -> hidden states), `tokenizer_variables`.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping

import jax
import jax.numpy as jnp

from omni_jax.models.audio_head import AudioEmbed, AudioHead, AudioHeadConfig
from omni_jax.models.audio_tokenizer import AudioTokenizer, AudioTokenizerConfig
from omni_jax.models.config import xla_attention
from omni_jax.models.flow_matching import FlowMatchingConfig, FlowMatchingDecoder
from omni_jax.models.hift import HiFTConfig, HiFTGenerator
from omni_jax.models.navit import NaViTConfig, VisionTower
from omni_jax.models import release_inputs
from omni_jax.models.qwen2 import Qwen2Config, Qwen2LM
from omni_jax.models.release_inputs import placeholder_ids

Array = jax.Array

COMPONENTS = ("llm", "visual", "visual_bridge", "audio_encoder", "audio_bridge", "audio_decoder",
              "audio_embed", "audio_head", "flow_matching", "vocoder")
def parts_from_config(model: Mapping[str, Any], parts: Mapping[str, Any], where: str, what: str) -> dict[str, Any]:
    """{key: part config} from `config.model`, whose keys must be exactly those of `parts`
    (key -> config class with `from_dict`); errors name the unknown and the missing keys."""
    d = {k: (v.to_dict() if hasattr(v, "to_dict") else dict(v)) for k, v in dict(model).items()}
    unknown, missing = sorted(set(d) - set(parts)), sorted(set(parts) - set(d))
    if unknown or missing:
        raise ValueError(f"{where}: the {what} needs exactly the keys {list(parts)}; "
                         f"unknown {unknown}, missing {missing}")
    return {k: c.from_dict(d[k], f"{where}.{k}") for k, c in parts.items()}


def check_fit(checks: list[tuple[bool, str]], header: str) -> None:
    """Raises one error, `header` then every failed (ok, message) cross-part check."""
    bad = [m for ok, m in checks if not ok]
    if bad:
        raise ValueError(header + ":\n  " + "\n  ".join(bad))


@dataclasses.dataclass(frozen=True)
class Omni15Config:
    llm: Qwen2Config
    vision: NaViTConfig
    audio: AudioTokenizerConfig
    audio_head: AudioHeadConfig
    flow_matching: FlowMatchingConfig
    vocoder: HiFTConfig

    @classmethod
    def from_config(cls, model: Mapping[str, Any], where: str = "config.model") -> "Omni15Config":
        """From `config.model` (configs/common.py `omni15_model`), checking that the parts fit."""
        cfg = cls(**parts_from_config(model, PARTS, where, "omni model"))
        cfg.validate(where)
        return cfg

    def validate(self, where: str = "config.model") -> None:
        h = self.llm.hidden_size
        checks = [
            (self.vision.out_hidden_size == h, f"{where}.vision.out_hidden_size={self.vision.out_hidden_size} "
                                               f"must equal {where}.llm.hidden_size={h}"),
            (self.audio_head.hidden_size == h, f"{where}.audio_head.hidden_size={self.audio_head.hidden_size} "
                                               f"must equal {where}.llm.hidden_size={h}"),
            (tuple(self.audio_head.codebook_sizes) == tuple(self.audio.bridge.codebook_sizes),
             f"{where}.audio_head.codebook_sizes {tuple(self.audio_head.codebook_sizes)} must equal "
             f"{where}.audio.bridge.codebook_sizes {tuple(self.audio.bridge.codebook_sizes)}"),
            (self.flow_matching.prenet_in_dim == self.audio.decoder.d_model,
             f"{where}.flow_matching.prenet_in_dim={self.flow_matching.prenet_in_dim} must equal "
             f"{where}.audio.decoder.d_model={self.audio.decoder.d_model} (it reads the decoder's hidden states)"),
            (self.flow_matching.n_mels == self.vocoder.n_mels,
             f"{where}.flow_matching.n_mels={self.flow_matching.n_mels} must equal {where}.vocoder.n_mels="
             f"{self.vocoder.n_mels}"),
        ]
        check_fit(checks, "the omni model's parts do not fit together")


PARTS = dict(llm=Qwen2Config, vision=NaViTConfig, audio=AudioTokenizerConfig, audio_head=AudioHeadConfig,
             flow_matching=FlowMatchingConfig, vocoder=HiFTConfig)
MODEL_KEYS = tuple(PARTS)


def gather(buffer: Array, index: Array) -> Array:
    """buffer (B, N, D) at index (B, T) (-1 = none, clipped) -> (B, T, D)."""
    idx = jnp.clip(index, 0, buffer.shape[1] - 1)
    return jnp.take_along_axis(buffer, idx[..., None], axis=1)


def place(x: Array, buffer: Array, index: Array) -> Array:
    """x (B, T, D) with buffer rows put where index >= 0 (the host-built placeholder indices).

    THE placement of modality embeddings (the release's `get_multimodal_embed`): row b's
    placeholders take row b's buffer rows, the text embedding there is dropped, and gradients
    reach exactly the placed buffer rows. The counts were checked on the host
    (omni_jax/data/omni_pipeline.py `load_media`)."""
    if buffer.ndim != 3 or index.shape != x.shape[:2] or buffer.shape[0] != x.shape[0] or buffer.shape[2] != x.shape[2]:
        raise ValueError(f"place: embeddings of shape {buffer.shape} with index {index.shape} cannot fill text "
                         f"embeddings {x.shape}; expected ({x.shape[0]}, tokens, {x.shape[2]}) with an index "
                         f"{x.shape[:2]} (the batch rows and width of the text embeddings)")
    return jnp.where((index >= 0)[..., None], gather(buffer, index).astype(x.dtype), x)


def place_in_order(x: Array, input_ids: Array, embeds: Array, pad_id: int) -> Array:
    """The release's placement (release_inputs.py): x (B, T, D) with the k-th `pad_id` of the batch
    (row-major) replaced by embeds[k] ((N, D), N >= 1); `place` on the flattened batch."""
    b, t, d = x.shape
    index = release_inputs.placeholder_index(input_ids, pad_id)
    return place(x.reshape(1, b * t, d), embeds[None], index).reshape(b, t, d)


def embed_release_style(llm: Qwen2LM, llm_params, input_ids: Array, media: Mapping[str, tuple], ids) -> Array:
    """The release's input embeddings: `media` {audio | image | video: (count, embed thunk)} placed,
    each modality in the release's row-major order, at its placeholder id `ids[name]`; the counts
    are checked (an error names the modality and both counts) before any encoder runs."""
    for name in ("audio", "image", "video"):
        release_inputs.check_count(input_ids, ids[name], media.get(name, (0,))[0], name)
    input_ids = jnp.asarray(input_ids, jnp.int32)
    x = llm.apply({"params": llm_params}, input_ids, method=Qwen2LM.embed)
    for name, (count, embed) in media.items():
        if count:
            x = place_in_order(x, input_ids, embed(), ids[name])
    return x


def release_style_hidden(llm: Qwen2LM, llm_params, x: Array, input_ids: Array) -> Array:
    """The LLM over release-style embeddings: 1-D positions, one causal segment per row."""
    positions, segment_ids = release_inputs.positions_and_segments(jnp.asarray(input_ids))
    h, _ = llm.apply({"params": llm_params}, x, positions, segment_ids, method=Qwen2LM.hidden)
    return h


class Omni15:
    """The 1.5 model as modules + functions over `params` (a dict keyed by COMPONENTS) and the
    model state `{"audio_bridge": vq_stats}`."""

    def __init__(self, cfg: Omni15Config):
        self.cfg = cfg
        self.llm = Qwen2LM(cfg.llm)
        self.vision = VisionTower(cfg.vision)
        self.tokenizer = AudioTokenizer(cfg.audio)
        self.audio_embed = AudioEmbed(cfg.audio_head)
        self.audio_head = AudioHead(cfg.audio_head)
        self.flow_matching = FlowMatchingDecoder(cfg.flow_matching)
        self.vocoder = HiFTGenerator(cfg.vocoder)

    # ---- parameters ----

    def init(self, rng: Array, mel_frames: int = 200) -> dict[str, Any]:
        """Boxed params for every component (use under jax.eval_shape for shapes/axes)."""
        c = self.cfg
        k = dict(zip(COMPONENTS, jax.random.split(rng, len(COMPONENTS))))
        ids = jnp.zeros((1, 4), jnp.int32)
        # the parameters do not depend on the attention kernel; the dummy inputs here are too short
        # for splash / blockwise / ring blocks (and for a context axis), so they are traced with xla
        out = {"llm": Qwen2LM(xla_attention(c.llm)).init(k["llm"], ids, ids, ids + 1)["params"]}
        p = 4 * c.vision.spatial_merge_size ** 2
        vis = VisionTower(xla_attention(c.vision)).init(k["visual"], jnp.zeros((1, p, 3 * c.vision.temporal_patch_size * c.vision.patch_size ** 2)),
                               jnp.zeros((1, p, 2), jnp.int32), jnp.ones((1, p), jnp.int32))["params"]
        out.update(vis)
        mel = jnp.zeros((1, c.audio.encoder.num_mel_bins, mel_frames))
        tok = self.tokenizer.init(k["audio_encoder"], mel, jnp.full((1,), mel_frames, jnp.int32))["params"]
        out.update(tok)
        codes = jnp.zeros((1, 2, c.audio_head.depth), jnp.int32)
        out["audio_embed"] = self.audio_embed.init(k["audio_embed"], codes)["params"]
        h = jnp.zeros((2, c.llm.hidden_size))
        out["audio_head"] = self.audio_head.init(k["audio_head"], h, jnp.zeros((2, c.audio_head.depth, c.llm.hidden_size)))["params"]
        fm = c.flow_matching
        t = 8
        out["flow_matching"] = self.flow_matching.init(
            k["flow_matching"], jnp.zeros((1, t, fm.prenet_in_dim)), jnp.ones((1, t)), jnp.zeros((1, t, fm.n_mels)),
            jnp.zeros((1,)))["params"]
        k_voc, k_src = jax.random.split(k["vocoder"])
        out["vocoder"] = self.vocoder.init(k_voc, jnp.zeros((1, 4, c.vocoder.n_mels)), k_src)["params"]
        return out

    def init_state(self, rng: Array) -> dict[str, Any]:
        """The RVQ codebooks and their EMA statistics: {"audio_bridge": {"vq_i": ...}}."""
        return self.tokenizer.init(rng, method=AudioTokenizer.init_codebooks)["vq_stats"]

    # ---- public API: the release's forward, piece by piece (omni_jax/models/release_inputs.py) ----
    #
    #   tokenizer_variables(params, state)                      the audio tokenizer's variable dict
    #   encode_audio_states(params, state, mels, mel_lengths)   mel chunks -> Whisper encoder states
    #   encode_audio(params, state, mels, mel_lengths)          mel chunks -> RVQ codes (+ lengths)
    #   code_embeddings(params, codes)                          codes -> summed code embeddings
    #   embed_vision(params, patches, grid)                     images / video frames -> LLM tokens
    #   forward_release_style(params, state, input_ids, ...)    the release's forward -> logits

    def tokenizer_variables(self, params, state) -> dict[str, Any]:
        """{"params": audio_encoder / audio_bridge / audio_decoder, "vq_stats": state}: what
        `self.tokenizer.apply` (AudioTokenizer) takes."""
        return {"params": {k: params[k] for k in ("audio_encoder", "audio_bridge", "audio_decoder")},
                "vq_stats": state}

    def encode_audio_states(self, params, state, mels: Array, mel_lengths: Array) -> tuple[Array, Array]:
        """(N, n_mels, F) log-mel chunks (<= 30 s each, zero beyond the valid frames; the release's
        `extract_fbank_features`) + (N,) valid frames -> Whisper encoder states (N, (F - 1) // 2 + 1, d)
        and their lengths (L - 1) // 2 + 1 (the release's `inference_output_length`)."""
        def enc(m, mel, n):
            return m.audio_encoder(mel, n)
        return self.tokenizer.apply(self.tokenizer_variables(params, state), mels, mel_lengths, method=enc)

    def encode_audio(self, params, state, mels: Array, mel_lengths: Array) -> tuple[Array, Array]:
        """(N, n_mels, F) log-mel chunks + (N,) valid frames -> RVQ codes (N, ceil(F' / 4), depth) and
        per-chunk code lengths floor(((L - 1) // 2 + 1) / 4) (the release's `bridge_length`; codes
        beyond it are 0). `release_inputs.valid_codes` concatenates the valid ones into the release's
        `audios_tokens`. Frozen: no gradient reaches the tokenizer."""
        codes, lengths = self.tokenizer.apply(self.tokenizer_variables(params, state), mels, mel_lengths,
                                              method=AudioTokenizer.encode)
        return jax.lax.stop_gradient(codes), lengths

    def audio_codes(self, params, state, mels: Array, lengths: Array) -> tuple[Array, Array]:
        """The batch layout of `encode_audio`: (B, S, n_mels, F) mel chunks + (B, S) valid frames ->
        codes (B, S * N, depth) in slot-major order (chunk s, frame k -> s * N + k) and per-chunk code
        lengths (B, S)."""
        b, s = mels.shape[:2]
        codes, clen = self.encode_audio(params, state, mels.reshape((b * s,) + mels.shape[2:]), lengths.reshape(-1))
        return codes.reshape(b, s * codes.shape[1], codes.shape[2]), clen.reshape(b, s)

    def code_embeddings(self, params, codes: Array) -> Array:
        """Codes (..., depth) -> the sum of their `depth` code embeddings (..., D): how the LLM sees
        a frame of audio (input or generated); the end code of each table is its last row."""
        return self.audio_embed.apply({"params": params["audio_embed"]}, codes)

    def embed_vision(self, params, patches: Array, grid) -> Array:
        """Images and video frames as the release passes them: patches (P, 1176) of every item back to
        back in 2x2 merge-window order (the release's / Qwen2-VL's processor) and their (n, 3)
        (t, h, w) grids (host values) -> (P / 4, D) LLM-width tokens, item after item. The encoder's
        2-D rotary positions and per-item attention blocks are built from the grids."""
        pos, seg = release_inputs.vision_layout(grid, patches.shape[0])
        return self.vision_tokens(params, patches[None], jnp.asarray(pos)[None], jnp.asarray(seg)[None])[0]

    def vision_tokens(self, params, patches: Array, positions: Array, segment_ids: Array) -> Array:
        """The batch layout of `embed_vision`: (B, P, 1176) patches, (B, P, 2) positions, (B, P)
        segment ids (omni_jax/data/omni_batch.py) -> (B, P / 4, D)."""
        return self.vision.apply({"params": {"visual": params["visual"], "visual_bridge": params["visual_bridge"]}},
                                 patches, positions, segment_ids)

    # ---- the LLM over merged embeddings ----

    def input_embeddings(self, params, state, batch: Mapping[str, Array]) -> tuple[Array, dict]:
        """Text embeddings with every modality placed at its placeholders; also returns
        the speech frames' codes (for the audio-head targets)."""
        x = self.llm.apply({"params": params["llm"]}, batch["tokens"], method=Qwen2LM.embed)
        extras = {}
        if "audio_mels" in batch:
            codes, _ = self.audio_codes(params, state, batch["audio_mels"], batch["audio_mel_lengths"])
            x = place(x, self.code_embeddings(params, codes), batch["audio_token_index"])
        if "vision_patches" in batch:
            vt = self.vision_tokens(params, batch["vision_patches"], batch["vision_positions"], batch["vision_segment_ids"])
            x = place(x, vt, batch["vision_token_index"])
        if "speech_mels" in batch:
            codes, _ = self.audio_codes(params, state, batch["speech_mels"], batch["speech_mel_lengths"])
            x = place(x, self.code_embeddings(params, codes), batch["speech_token_index"])
            extras["speech_codes"] = codes
        return x, extras

    def hidden(self, params, state, batch: Mapping[str, Array]) -> tuple[Array, dict]:
        x, extras = self.input_embeddings(params, state, batch)
        h, _ = self.llm.apply({"params": params["llm"]}, x, batch["positions"], batch["segment_ids"],
                              method=Qwen2LM.hidden)
        return h, extras

    def logits(self, params, hidden: Array) -> Array:
        return self.llm.apply({"params": params["llm"]}, hidden, method=Qwen2LM.logits)

    # ---- the release's forward ----

    def release_style_embeddings(self, params, state, input_ids: Array, *, audio_codes: Array | None = None,
                                 images: Array | None = None, grid=None, videos: Array | None = None,
                                 video_grid=None, placeholders: Mapping[str, int] | None = None) -> Array:
        """Input embeddings (B, T, D) of the release's forward (release_inputs.py): text embeddings;
        the k-th `<audio_pad>` of the batch (row-major) gets the summed embeddings of audio_codes[k]
        ((N, depth), the release's `audios_tokens`; e.g. `valid_codes(*encode_audio(...))`), then the
        k-th `<img_pad>` the k-th token of `embed_vision(images, grid)`, then the k-th `<video_palce>`
        the k-th token of `embed_vision(videos, video_grid)`. Counts that differ are an error naming
        the modality and both counts (checked when input_ids is concrete)."""
        ids = placeholder_ids(placeholders)
        media = {}  # name -> (count, function giving the (count, D) embeddings); counts checked first
        if audio_codes is not None:
            codes = jnp.asarray(audio_codes, jnp.int32)
            media["audio"] = (codes.shape[0], lambda codes=codes: self.code_embeddings(params, codes))
        for name, p, g in (("image", images, grid), ("video", videos, video_grid)):
            if (p is None) != (g is None):
                raise ValueError(f"{name}: give both the patches and their grid, or neither")
            if p is not None:
                p = jnp.asarray(p)
                release_inputs.vision_layout(g, p.shape[0])  # the grids must match the patches
                n = p.shape[0] // self.cfg.vision.spatial_merge_size ** 2
                media[name] = (n, lambda p=p, g=g: self.embed_vision(params, p, g))
        return embed_release_style(self.llm, params["llm"], input_ids, media, ids)

    def hidden_release_style(self, params, state, input_ids: Array, **media) -> Array:
        """Final normed hidden states (B, T, D) of `forward_release_style` (same arguments)."""
        x = self.release_style_embeddings(params, state, input_ids, **media)
        return release_style_hidden(self.llm, params["llm"], x, input_ids)

    def forward_release_style(self, params, state, input_ids: Array, *, audio_codes: Array | None = None,
                              images: Array | None = None, grid=None, videos: Array | None = None,
                              video_grid=None, placeholders: Mapping[str, int] | None = None) -> Array:
        """The release's `forward(input_ids, audios_tokens, images, images_grid, videos, videos_grid)`
        -> logits (B, T, vocab). input_ids (B, T): unpadded rows; placements, 1-D positions
        (arange(T) per row) and one causal segment per row are built here (release_style_embeddings).
        placeholders: {audio, image, video} token ids if not the release's (a byte-tokenizer model).
        Grids are host values: under jax.jit close over them (functools.partial / a lambda); the
        placeholder counts are checked only when input_ids is concrete."""
        h = self.hidden_release_style(params, state, input_ids, audio_codes=audio_codes, images=images, grid=grid,
                                      videos=videos, video_grid=video_grid, placeholders=placeholders)
        return self.logits(params, h)


def speech_head_targets(batch: Mapping[str, Array], speech_codes: Array, codebook_sizes) -> tuple[Array, Array]:
    """Audio-head targets from the batch's host-built indices (omni_jax/data/omni_batch.py):
    at a predicting position the codes of frame `speech_target_index`, or the end code on
    codebook 0 where `speech_target_end`; weights = speech_loss_mask (codebook 0 only at ends).
    Returns (codes (B, T, depth) int32, weights (B, T, depth) f32)."""
    depth = len(codebook_sizes)
    tidx = batch["speech_target_index"]
    end = batch["speech_target_end"] > 0
    frame = (tidx >= 0) & ~end
    codes = jnp.take_along_axis(speech_codes, jnp.clip(tidx, 0, speech_codes.shape[1] - 1)[..., None], axis=1)
    end_codes = jnp.broadcast_to(jnp.asarray(codebook_sizes, jnp.int32), codes.shape)
    codes = jnp.where(end[..., None], end_codes, jnp.where(frame[..., None], codes, 0)).astype(jnp.int32)
    first = jnp.arange(depth) == 0
    w = batch["speech_loss_mask"][..., None] * (frame[..., None] | (end[..., None] & first))
    return codes, w.astype(jnp.float32)
