"""The omni batch schema: what one packed row of omni training data carries.

Every field has the batch rows first and a static shape fixed by `OmniShapes`
(`config.data.shapes` + `config.data.seq_len`). B = rows, T = seq_len,
P = max_patches, V = max_vision_items, A = max_audio_chunks, G = max_speech_chunks,
F = mel_frames (per audio chunk buffer), TPS = tokens per audio chunk slot =
((F - 1) // 2 + 1) // pool (media.chunk_audio_tokens), pool = config.data.media.audio_pool (4 in 1.5). A modality whose budget is 0 has no fields (e.g. text-only rows).

Text (always; the same five fields as the `lm` task, plus `component`):
  tokens       int32 (B, T)  input ids; media placeholders keep their placeholder ids
  targets      int32 (B, T)  next-token ids within each packed sample
  loss_mask    f32   (B, T)  1 where the text head is trained (omni_jax/data/layout.py)
  segment_ids  int32 (B, T)  packed sample id 1, 2, ... in the row; 0 = padding
  positions    int32 (B, T)  1-D rotary positions, restarting at 0 in each sample
  component    int32 (B, T)  index of the mixture component the sample came from
                             (sorted component names, config order); -1 = padding

Vision (NaViT, ARCHITECTURE.md 1.2; images and video frames alike, in row order):
  vision_patches      f32   (B, P, 1176)  patches of every image/frame of the row, each
                                          item's patches contiguous, in 2x2 merge-window
                                          order (vision_preprocessing.patchify); zeros pad
  vision_positions    int32 (B, P, 2)     (h, w) patch coordinates for the 2-D rotary
                                          embedding, in the same merge-window order
  vision_segment_ids  int32 (B, P)        1-based index of the item (image or frame) in the
                                          row: attention is block-diagonal over it; 0 = pad
  vision_grids        int32 (B, V, 3)     (t=1, h, w) in patches of item v+1; 0 rows = unused
  vision_token_index  int32 (B, T)        at an <img_pad>/<video_palce> position: the index
                                          of its merged token among the row's merged vision
                                          tokens, i.e. patches [4j, 4j + 4) after the 2x2
                                          PatchMerger (the bridge output, shape (B, P/4, D));
                                          -1 elsewhere

Vision, v1 (`config.data.media.vision_mode="tiles"`: SigLIP AnyRes, ARCHITECTURE.md 2;
K = max_tiles, S = tile_size, SLOT = max(tokens_per_tile, video_tokens_per_frame)) instead
of the NaViT fields above:
  vision_tiles        f32   (B, K, 3, S, S)  normalised tiles of every image/frame of the row:
                                             per image its global view then its AnyRes crops
                                             (row-major); per video frame one global view
  vision_tile_items   int32 (B, K)           1-based item (image or frame) of each tile; 0 = unused
  vision_tile_video   int32 (B, K)           1 where the tile is a video frame (video projector)
  vision_grids        int32 (B, V, 3)        (tiles, grid rows, grid cols) of item v+1
  vision_token_index  int32 (B, T)           tile k's j-th token -> k * SLOT + j; -1 elsewhere

Input audio (Whisper encoder + bridge, ARCHITECTURE.md 1.3-1.4):
  audio_mels         f32   (B, A, 128, F)  log-mel chunks (<= 30 s each), zero beyond length
  audio_mel_lengths  int32 (B, A)          valid frames of each chunk; 0 = unused slot
  audio_token_index  int32 (B, T)          at an <audio_pad> of an input-audio span: the
                                           index into the row's audio tokens, laid out
                                           slot-major: chunk slot a, token k -> a * TPS + k
                                           (k < ((length - 1) // 2 + 1) // 4); -1 elsewhere

Output speech / audio in history (audiogen spans, ARCHITECTURE.md 1.5):
  speech_mels          f32   (B, G, 128, F)  log-mel chunks of the speech, for the frozen
                                             audio tokenizer to turn into RVQ codes in-model
  speech_mel_lengths   int32 (B, G)          valid frames; 0 = unused slot
  speech_token_index   int32 (B, T)          at the k-th <audio_pad> of a speech span: its
                                             frame (slot-major like audio: g * TPS + k');
                                             the input embedding there is the sum of that
                                             frame's 8 code embeddings; -1 elsewhere
  speech_target_index  int32 (B, T)          frame the audio head predicts from this
                                             position's hidden state (<audiogen_start> ->
                                             frame 0, pad k -> frame k + 1); -1 elsewhere
                                             (including end-of-audio positions)
  speech_target_end    int32 (B, T)          1 where the audio-head target is end-of-audio
                                             (the last pad of a span; codebook 0 end code)
  speech_loss_mask     f32   (B, T)          1 where the audio-head loss is taken (spans with
                                             audio loss: TTS-style and speech replies; not
                                             interleaved history audio)
  speech_waves         f32   (B, G, W)       only if `speech_wave_rate` > 0: the raw chunk
                                             waveforms at that rate (W samples per chunk), for
                                             tokenizer / flow-matching / vocoder stages
  speech_wave_lengths  int32 (B, G)          valid samples of each waveform chunk

Host-side verification (omni_jax/data/omni_pipeline.py): when a sample is built, the
decoded media must give exactly as many tokens as it has placeholders; otherwise the
record is skipped as `count_mismatch` under the error budget.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Mapping

import numpy as np

from omni_jax.data import media
from omni_jax.data.media_io import frames_to_tokens
from omni_jax.data.vision_preprocessing import PATCH_DIM

TOKEN_AXES = ("activation_batch", "activation_length")
TEXT_FIELDS = ("tokens", "targets", "loss_mask", "segment_ids", "positions")


@dataclasses.dataclass(frozen=True)
class OmniShapes:
    """Static per-row budgets. `config.data.seq_len` + `config.data.shapes`."""

    seq_len: int
    max_patches: int = 0
    max_vision_items: int = 0
    max_audio_chunks: int = 0
    max_speech_chunks: int = 0
    # audio-head positions per row (the `<audiogen_start>` and pads of spans with audio loss);
    # 0 = the bound the chunk and token budgets imply, min(seq_len, max_speech_chunks *
    # (tokens per chunk + 1))
    max_speech_frames: int = 0
    mel_frames: int = 3000
    n_mels: int = 128
    speech_wave_rate: int = 0
    max_tiles: int = 0  # v1 tiles mode only
    audio_chunk_seconds: int = media.CHUNK_SECONDS
    vision_mode: str = "navit"
    tile_size: int = 384
    tile_slot: int = 182
    audio_pool: int = media.POOL

    def __post_init__(self):
        where = "config.data.shapes"
        if self.vision_mode == "tiles":
            if self.max_patches or (self.max_tiles > 0) != (self.max_vision_items > 0):
                raise ValueError(f"{where}: with media.vision_mode='tiles' set max_tiles and max_vision_items "
                                 f"(both > 0, or both 0) and max_patches=0; got max_tiles={self.max_tiles}, "
                                 f"max_vision_items={self.max_vision_items}, max_patches={self.max_patches}")
        elif self.max_tiles:
            raise ValueError(f"{where}.max_tiles={self.max_tiles} needs config.data.media.vision_mode='tiles'")
        if self.seq_len < 2:
            raise ValueError(f"config.data.seq_len must be >= 2, got {self.seq_len}")
        if self.max_patches % (media.MERGE * media.MERGE):
            raise ValueError(f"{where}.max_patches={self.max_patches} must be a multiple of 4 (2x2 merge windows)")
        if self.vision_mode == "navit" and (self.max_patches > 0) != (self.max_vision_items > 0):
            raise ValueError(f"{where}: max_patches and max_vision_items must both be 0 (no vision) or both > 0, "
                             f"got {self.max_patches} and {self.max_vision_items}")
        if self.max_speech_frames < 0 or (self.max_speech_frames and not self.max_speech_chunks):
            raise ValueError(f"{where}.max_speech_frames={self.max_speech_frames} needs max_speech_chunks > 0 (got "
                             f"{self.max_speech_chunks}); set it to 0 for rows without speech")
        if not 0 < self.mel_frames <= 3000:
            raise ValueError(f"{where}.mel_frames={self.mel_frames} must be in (0, 3000] (30 s Whisper chunks)")

    @classmethod
    def from_config(cls, data: Any) -> "OmniShapes":
        from omni_jax.data.media_io import MediaConfig

        d = dict(data.get("shapes", {}) or {})
        derived = {"seq_len", "audio_chunk_seconds", "vision_mode", "tile_size", "tile_slot", "audio_pool"}
        names = {f.name for f in dataclasses.fields(cls)} - derived
        unknown = sorted(set(d) - names)
        if unknown:
            raise ValueError(f"config.data.shapes: unknown key(s) {unknown}; valid: {sorted(names)}")
        m = MediaConfig.from_dict(data.get("media"))
        return cls(seq_len=int(data.seq_len), audio_chunk_seconds=m.audio_chunk_seconds, vision_mode=m.vision_mode,
                   tile_size=m.tile_size, tile_slot=m.tile_slot, audio_pool=m.audio_pool, **d)

    @property
    def vision(self) -> bool:
        return self.max_patches > 0 or self.max_tiles > 0

    @property
    def audio(self) -> bool:
        return self.max_audio_chunks > 0

    @property
    def speech(self) -> bool:
        return self.max_speech_chunks > 0

    @property
    def chunk_samples(self) -> int:
        """16 kHz samples per audio chunk: 30 s, or what the mel buffer holds."""
        return min(self.audio_chunk_seconds * media.SAMPLE_RATE, self.mel_frames * media.HOP)

    @property
    def tokens_per_chunk(self) -> int:
        return frames_to_tokens(self.mel_frames, self.audio_pool)

    @property
    def speech_frame_budget(self) -> int:
        """Audio-head positions per row: the static size of the head's gather (tasks/omni.py)
        and a packing capacity (a row never holds more)."""
        if not self.max_speech_chunks:
            return 0
        return self.max_speech_frames or min(self.seq_len, self.max_speech_chunks * (self.tokens_per_chunk + 1))

    @property
    def wave_samples(self) -> int:
        return math.ceil(self.chunk_samples * self.speech_wave_rate / media.SAMPLE_RATE)

    def capacity(self) -> np.ndarray:
        """Budgets in FOOTPRINT_NAMES order."""
        return np.array([self.seq_len, self.max_patches, self.max_vision_items, self.max_audio_chunks,
                         self.max_speech_chunks, self.max_tiles, self.speech_frame_budget], np.int64)


FOOTPRINT_NAMES = ("tokens", "patches", "vision_items", "audio_chunks", "speech_chunks", "tiles", "speech_frames")
CAPACITY_KEYS = ("config.data.seq_len", "config.data.shapes.max_patches", "config.data.shapes.max_vision_items",
                 "config.data.shapes.max_audio_chunks", "config.data.shapes.max_speech_chunks",
                 "config.data.shapes.max_tiles", "config.data.shapes.max_speech_frames")


def field_specs(shapes: OmniShapes, rows: int) -> dict[str, tuple[tuple[int, ...], Any, tuple]]:
    """{field: (shape, numpy dtype, logical axes)} of a batch of `rows` rows."""
    B, T = rows, shapes.seq_len
    i32, f32 = np.int32, np.float32
    tok = lambda dt: ((B, T), dt, TOKEN_AXES)
    out = {"tokens": tok(i32), "targets": tok(i32), "loss_mask": tok(f32), "segment_ids": tok(i32),
           "positions": tok(i32), "component": tok(i32)}
    if shapes.vision and shapes.vision_mode == "tiles":
        K, V, S = shapes.max_tiles, shapes.max_vision_items, shapes.tile_size
        out.update({
            "vision_tiles": ((B, K, 3, S, S), f32, ("activation_batch", None, None, None, None)),
            "vision_tile_items": ((B, K), i32, ("activation_batch", None)),
            "vision_tile_video": ((B, K), i32, ("activation_batch", None)),
            "vision_grids": ((B, V, 3), i32, ("activation_batch", None, None)),
            "vision_token_index": tok(i32),
        })
    elif shapes.vision:
        P, V = shapes.max_patches, shapes.max_vision_items
        out.update({
            "vision_patches": ((B, P, PATCH_DIM), f32, ("activation_batch", None, None)),
            "vision_positions": ((B, P, 2), i32, ("activation_batch", None, None)),
            "vision_segment_ids": ((B, P), i32, ("activation_batch", None)),
            "vision_grids": ((B, V, 3), i32, ("activation_batch", None, None)),
            "vision_token_index": tok(i32),
        })
    F, M = shapes.mel_frames, shapes.n_mels
    if shapes.audio:
        A = shapes.max_audio_chunks
        out.update({
            "audio_mels": ((B, A, M, F), f32, ("activation_batch", None, "activation_mel", None)),
            "audio_mel_lengths": ((B, A), i32, ("activation_batch", None)),
            "audio_token_index": tok(i32),
        })
    if shapes.speech:
        G = shapes.max_speech_chunks
        out.update({
            "speech_mels": ((B, G, M, F), f32, ("activation_batch", None, "activation_mel", None)),
            "speech_mel_lengths": ((B, G), i32, ("activation_batch", None)),
            "speech_token_index": tok(i32),
            "speech_target_index": tok(i32),
            "speech_target_end": tok(i32),
            "speech_loss_mask": tok(f32),
        })
        if shapes.speech_wave_rate:
            out.update({
                "speech_waves": ((B, G, shapes.wave_samples), f32, ("activation_batch", None, None)),
                "speech_wave_lengths": ((B, G), i32, ("activation_batch", None)),
            })
    return out


def batch_spec(shapes: OmniShapes, global_batch: int, fields: Any = None):
    """The `Task.batch_spec` of omni batches: {field: (jax.ShapeDtypeStruct, axes)}."""
    import jax

    specs = field_specs(shapes, global_batch)
    if fields is not None:
        specs = {k: specs[k] for k in fields}
    return {k: (jax.ShapeDtypeStruct(s, dt), ax) for k, (s, dt, ax) in specs.items()}


_FILL = {"component": -1, "vision_token_index": -1, "audio_token_index": -1, "speech_token_index": -1,
         "speech_target_index": -1}


def empty_rows(shapes: OmniShapes, rows: int) -> dict[str, np.ndarray]:
    return {k: np.full(s, _FILL.get(k, 0), dt) for k, (s, dt, _) in field_specs(shapes, rows).items()}


def describe(batch: Mapping[str, np.ndarray]) -> str:
    """One line per field: name, shape, dtype (for logs and error messages)."""
    return "\n".join(f"  {k}: {tuple(v.shape)} {v.dtype}" for k, v in batch.items())
