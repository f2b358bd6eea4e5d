"""Baichuan-Omni (v1) assembled (ARCHITECTURE.md 2): one parameter tree, functional forward.

No v1 code is public; the parts follow the report and are each checked against their
references in their own files:

  llm                 Qwen2LM, the 1.5 backbone shape (omni_jax/models/qwen2.py)
  siglip              SigLIP so400m/14 at 384 px         } omni_jax/models/siglip.py,
  v1_projector        mean pool 729 -> 182 + 2-layer MLP } omni_jax/models/v1_projectors.py
  v1_video_projector  2x2 conv (182 -> 546 video tokens) }   (V1VisionTower)
  audio_encoder       Whisper-large-v3 encoder, continuous features (omni_jax/models/whisper.py)
  v1_audio_projector  Conv-GMLP, downsampling 2 / 4 / 8 (omni_jax/models/v1_audio_projector.py)
  v1_boundary_head    per-frame start / inside / end of the user's speech on the Whisper states
                      (streaming input; omni_jax/models/v1_boundary_head.py, trained in the v1
                      stage `audio_boundary`, not part of the LLM forward)

Training only (TRAINING_ONLY, in a run's tree when its stages add it, never exported):
  v1_audio_ctc_head   a linear CTC head on the Whisper states (omni_jax/tasks/omni_v1_audio_ctc.py:
                      the from-scratch sizes' stand-in for Whisper's own ASR pre-training)

Unlike 1.5, v1 reads audio as CONTINUOUS Whisper features (no RVQ, no model state) and has
no speech output (no audio embedding tables, no audio head).

Forward (`hidden`): text embeddings; input audio chunks -> Whisper -> Conv-GMLP -> LLM-width
tokens; AnyRes tiles (images: global view + crops; video frames: one tile each) -> SigLIP ->
the image projector, or for video frames the 2x2 conv then the projector; each placed at its
placeholders through the host-built gather indices of the batch (omni_jax/data/omni_batch.py,
`vision_mode="tiles"`: tile k's j-th token at k * tile_slot + j; audio chunk a's k-th token at
a * tokens_per_chunk + k). Then the LLM.

Public API (no batch fields needed; the 1.5 release's placement / position conventions of
omni_jax/models/release_inputs.py): `encode_audio_states`, `encode_audio` (mel -> tokens with the
length rules), `embed_tiles`, `forward_release_style` (-> logits; `hidden_release_style`).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping

import jax
import jax.numpy as jnp
import numpy as np

from omni_jax.models.omni import check_fit, embed_release_style, parts_from_config, place, release_style_hidden
from omni_jax.models.release_inputs import placeholder_ids
from omni_jax.models.config import xla_attention
from omni_jax.models.qwen2 import Qwen2Config, Qwen2LM
from omni_jax.models.siglip import SiglipConfig
from omni_jax.models.v1_audio_projector import V1AudioProjector, V1AudioProjectorConfig
from omni_jax.models.v1_boundary_head import V1BoundaryHead, pooled_mel
from omni_jax.models.v1_projectors import V1ProjectorConfig, V1VisionTower
from omni_jax.models.whisper import WhisperEncoder, WhisperEncoderConfig

Array = jax.Array

COMPONENTS = ("llm", "siglip", "v1_projector", "v1_video_projector", "audio_encoder", "v1_audio_projector",
              "v1_boundary_head")
CTC_HEAD = "v1_audio_ctc_head"
TRAINING_ONLY = (CTC_HEAD,)


@dataclasses.dataclass(frozen=True)
class OmniV1Config:
    llm: Qwen2Config
    siglip: SiglipConfig
    v1_projector: V1ProjectorConfig
    audio_encoder: WhisperEncoderConfig
    v1_audio_projector: V1AudioProjectorConfig

    @classmethod
    def from_config(cls, model: Mapping[str, Any], where: str = "config.model") -> "OmniV1Config":
        """From `config.model` (configs/common.py `omni_v1_model`), checking that the parts fit."""
        cfg = cls(**parts_from_config(model, PARTS, where, "v1 omni model"))
        cfg.validate(where)
        return cfg

    def validate(self, where: str = "config.model") -> None:
        h, s, p, a, ap = self.llm.hidden_size, self.siglip, self.v1_projector, self.audio_encoder, self.v1_audio_projector
        for part in (s, p, a, ap):
            part.validate()
        checks = [
            (p.llm_width == h, f"{where}.v1_projector.llm_width={p.llm_width} must equal {where}.llm.hidden_size={h}"),
            (p.vision_width == s.hidden_size, f"{where}.v1_projector.vision_width={p.vision_width} must equal "
                                              f"{where}.siglip.hidden_size={s.hidden_size}"),
            (p.vision_grid == s.grid, f"{where}.v1_projector.vision_grid={p.vision_grid} must equal the SigLIP patch "
                                      f"grid {where}.siglip.image_size // patch_size = {s.grid}"),
            (ap.d_model == a.d_model, f"{where}.v1_audio_projector.d_model={ap.d_model} must equal "
                                      f"{where}.audio_encoder.d_model={a.d_model}"),
            (ap.llm_hidden_size == h, f"{where}.v1_audio_projector.llm_hidden_size={ap.llm_hidden_size} must equal "
                                      f"{where}.llm.hidden_size={h}"),
        ]
        check_fit(checks, "the v1 omni model's parts do not fit together")


PARTS = dict(llm=Qwen2Config, siglip=SiglipConfig, v1_projector=V1ProjectorConfig, audio_encoder=WhisperEncoderConfig,
             v1_audio_projector=V1AudioProjectorConfig)
MODEL_KEYS = tuple(PARTS)


class OmniV1:
    """The v1 model as modules + functions over `params` (a dict keyed by COMPONENTS)."""

    def __init__(self, cfg: OmniV1Config):
        self.cfg = cfg
        self.llm = Qwen2LM(cfg.llm)
        self.vision = V1VisionTower(cfg.siglip, cfg.v1_projector)
        self.audio_encoder = WhisperEncoder(cfg.audio_encoder)
        self.audio_projector = V1AudioProjector(cfg.v1_audio_projector)
        self.boundary_head = V1BoundaryHead(cfg.audio_encoder)

    def init(self, rng: Array, mel_frames: int = 200) -> dict[str, Any]:
        """Boxed params for every component (use under jax.eval_shape for shapes/axes)."""
        c = self.cfg
        k = jax.random.split(rng, 4)
        ids = jnp.zeros((1, 4), jnp.int32)
        # shape-only dummies: traced with xla attention (models/config.py xla_attention)
        out = {"llm": Qwen2LM(xla_attention(c.llm)).init(k[0], ids, ids, ids + 1)["params"]}
        tile = jnp.zeros((1, c.siglip.image_size, c.siglip.image_size, c.siglip.num_channels))
        out.update(V1VisionTower(xla_attention(c.siglip), c.v1_projector).init(k[1], tile, tile)["params"])
        mel = jnp.zeros((1, c.audio_encoder.num_mel_bins, mel_frames))
        n = jnp.full((1,), mel_frames, jnp.int32)
        out["audio_encoder"] = self.audio_encoder.init(k[2], mel, n)["params"]
        feats = jnp.zeros((1, c.v1_audio_projector.rate, c.audio_encoder.d_model))
        out["v1_audio_projector"] = self.audio_projector.init(k[3], feats, jnp.ones((1,), jnp.int32))["params"]
        states = jnp.zeros((1, 2, c.audio_encoder.d_model))  # its own key: the other components keep their values
        pooled = jnp.zeros((1, 2, c.audio_encoder.num_mel_bins))
        out["v1_boundary_head"] = self.boundary_head.init(jax.random.fold_in(rng, 5), states, pooled,
                                                          jnp.full((1,), 2, jnp.int32))["params"]
        return out

    def init_state(self, rng: Array) -> None:
        return None  # v1 has no model state (no RVQ)

    # ---- public API: the 1.5 release's forward conventions (omni_jax/models/release_inputs.py) ----
    #
    #   encode_audio_states(params, mels, mel_lengths)   mel chunks -> Whisper encoder states
    #   encode_audio(params, mels, mel_lengths)          mel chunks -> LLM-width audio tokens (+ lengths)
    #   embed_tiles(params, tiles, is_video)             AnyRes tiles / video frames -> LLM tokens
    #   forward_release_style(params, state, input_ids, ...)  -> logits

    def encode_audio_states(self, params, mels: Array, mel_lengths: Array) -> tuple[Array, Array]:
        """(N, n_mels, F) log-mel chunks (<= 30 s each) + (N,) valid frames -> Whisper states
        (N, (F - 1) // 2 + 1, d) and their lengths (L - 1) // 2 + 1."""
        return self.audio_encoder.apply({"params": params["audio_encoder"]}, mels, mel_lengths)

    def encode_audio(self, params, mels: Array, mel_lengths: Array) -> tuple[Array, Array]:
        """(N, n_mels, F) log-mel chunks + (N,) valid frames -> continuous Conv-GMLP tokens
        (N, TPS, D) and per-chunk token lengths floor(((L - 1) // 2 + 1) / rate) (tokens beyond are 0;
        `release_inputs.valid_codes` concatenates the valid ones, as for 1.5's codes)."""
        h, n = self.encode_audio_states(params, mels, mel_lengths)
        return self.audio_projector.apply({"params": params["v1_audio_projector"]}, h, n)

    def boundary_logits(self, params, mels: Array, mel_lengths: Array) -> tuple[Array, Array]:
        """(N, n_mels, F) log-mel windows + (N,) valid frames -> per encoder frame (20 ms) logits
        (N, (F - 1) // 2 + 1, 3) of (start, inside, end) of the user's speech, and the valid lengths."""
        h, n = self.encode_audio_states(params, mels, mel_lengths)
        mel = pooled_mel(jnp.asarray(mels), h.shape[1])
        return self.boundary_head.apply({"params": params["v1_boundary_head"]}, h, mel, n), n

    def audio_tokens(self, params, mels: Array, lengths: Array) -> Array:
        """The batch layout of `encode_audio`: (B, A, n_mels, F) mel chunks + (B, A) valid frames ->
        (B, A * TPS, D) tokens, slot-major (chunk a, token k -> a * TPS + k; TPS = encoder frames of
        F // rate)."""
        b, a = mels.shape[:2]
        y, _ = self.encode_audio(params, mels.reshape((b * a,) + mels.shape[2:]), lengths.reshape(-1))
        return y.reshape(b, a * y.shape[1], y.shape[2])

    @property
    def tile_slot(self) -> int:
        """Token slots per tile in a row's tile-token space (= the data's MediaConfig.tile_slot)."""
        p = self.cfg.v1_projector
        return max(p.image_tokens, p.video_tokens)

    def embed_tiles(self, params, tiles: Array, is_video) -> Array:
        """(K, 3, S, S) normalised tiles (AnyRes: per image its global view then its crops; per
        video frame one view) + (K,) video flags (host values) -> (n, D): every tile's tokens in
        tile order, image_tokens per image tile, video_tokens per video frame."""
        is_video = np.asarray(is_video, bool).reshape(-1)
        y = self.vision_tokens(params, jnp.asarray(tiles)[None], jnp.asarray(is_video, jnp.int32)[None])[0]
        p, slot = self.cfg.v1_projector, self.tile_slot
        keep = np.concatenate([k * slot + np.arange(p.video_tokens if v else p.image_tokens)
                               for k, v in enumerate(is_video)] or [np.zeros(0, int)])
        return jnp.take(y, jnp.asarray(keep, jnp.int32), axis=0)

    def vision_tokens(self, params, tiles: Array, is_video: Array) -> Array:
        """The batch layout of `embed_tiles`: (B, K, 3, S, S) normalised tiles + (B, K) video flags
        -> (B, K * tile_slot, D) (tile k's j-th token at k * tile_slot + j)."""
        b, k = tiles.shape[:2]
        slot = self.tile_slot
        v = {"params": {n: params[n] for n in ("siglip", "v1_projector", "v1_video_projector")}}
        y = self.vision.apply(v, jnp.moveaxis(tiles, 2, -1), is_video, slot, method=V1VisionTower.mixed)
        return y.reshape(b, k * slot, y.shape[-1])

    # ---- the LLM over merged embeddings ----

    def input_embeddings(self, params, state, batch: Mapping[str, Array]) -> tuple[Array, dict]:
        del state
        x = self.llm.apply({"params": params["llm"]}, batch["tokens"], method=Qwen2LM.embed)
        if "audio_mels" in batch:
            x = place(x, self.audio_tokens(params, batch["audio_mels"], batch["audio_mel_lengths"]),
                      batch["audio_token_index"])
        if "vision_tiles" in batch:
            x = place(x, self.vision_tokens(params, batch["vision_tiles"], batch["vision_tile_video"]),
                      batch["vision_token_index"])
        return x, {}

    def hidden(self, params, state, batch: Mapping[str, Array]) -> tuple[Array, dict]:
        x, extras = self.input_embeddings(params, state, batch)
        h, _ = self.llm.apply({"params": params["llm"]}, x, batch["positions"], batch["segment_ids"],
                              method=Qwen2LM.hidden)
        return h, extras

    def logits(self, params, hidden: Array) -> Array:
        return self.llm.apply({"params": params["llm"]}, hidden, method=Qwen2LM.logits)

    # ---- the forward in the 1.5 release's conventions (v1 itself has no public code) ----

    def release_style_embeddings(self, params, state, input_ids: Array, *, audio_mels: Array | None = None,
                                 audio_lengths: Array | None = None, tiles: Array | None = None, tile_video=None,
                                 placeholders: Mapping[str, int] | None = None) -> Array:
        """Input embeddings (B, T, D): text embeddings; the k-th `<audio_pad>` of the batch (row-major)
        gets the k-th valid audio token of `encode_audio(audio_mels, audio_lengths)` (chunks in order),
        the k-th `<img_pad>` the k-th token of the image tiles, the k-th `<video_palce>` the k-th token
        of the video-frame tiles (`embed_tiles`, tile order). Counts that differ are an error naming the
        modality and both counts (checked when input_ids is concrete)."""
        del state
        ids = placeholder_ids(placeholders)
        p = self.cfg.v1_projector
        media = {}
        if (audio_mels is None) != (audio_lengths is None):
            raise ValueError("audio: give both audio_mels and audio_lengths, or neither")
        if audio_mels is not None:
            lengths = np.asarray(audio_lengths).reshape(-1)
            per_chunk = [self.cfg.v1_audio_projector.output_lengths(self.cfg.audio_encoder.output_lengths(int(x)))
                         for x in lengths]  # the length rules on the host: the layout is static

            def audio():
                y, _ = self.encode_audio(params, jnp.asarray(audio_mels), jnp.asarray(lengths, jnp.int32))
                keep = np.concatenate([a * y.shape[1] + np.arange(k) for a, k in enumerate(per_chunk)])
                return jnp.take(y.reshape(-1, y.shape[-1]), jnp.asarray(keep, jnp.int32), axis=0)
            media["audio"] = (int(sum(per_chunk)), audio)
        if (tiles is None) != (tile_video is None):
            raise ValueError("vision: give both tiles and tile_video, or neither")
        if tiles is not None:
            video = np.asarray(tile_video, bool).reshape(-1)
            tok = self.embed_tiles(params, tiles, video)
            n_img = int((~video).sum()) * p.image_tokens
            order = np.argsort(video, kind="stable")  # image tiles first, then video frames, each in tile order
            sizes = np.where(video, p.video_tokens, p.image_tokens)
            starts = np.concatenate([[0], np.cumsum(sizes)[:-1]])
            idx = np.concatenate([starts[k] + np.arange(sizes[k]) for k in order] or [np.zeros(0, int)])
            tok = jnp.take(tok, jnp.asarray(idx, jnp.int32), axis=0)
            media["image"] = (n_img, lambda tok=tok, n=n_img: tok[:n])
            media["video"] = (int(video.sum()) * p.video_tokens, lambda tok=tok, n=n_img: tok[n:])
        return embed_release_style(self.llm, params["llm"], input_ids, media, ids)

    def hidden_release_style(self, params, state, input_ids: Array, **media) -> Array:
        """Final normed hidden states (B, T, D) of `forward_release_style` (same arguments)."""
        x = self.release_style_embeddings(params, state, input_ids, **media)
        return release_style_hidden(self.llm, params["llm"], x, input_ids)

    def forward_release_style(self, params, state, input_ids: Array, **media) -> Array:
        """Logits (B, T, vocab) of unpadded rows of token ids and the batch's media as flat lists
        (audio_mels (N, n_mels, F) + audio_lengths (N,), tiles (K, 3, S, S) + tile_video (K,),
        placeholders {audio, image, video} ids if not the release's): placements, 1-D positions
        arange(T) and one causal segment per row are built here, as 1.5's `forward_release_style`."""
        return self.logits(params, self.hidden_release_style(params, state, input_ids, **media))
