"""Audio codes -> mel -> 24 kHz waveform -> WAV (ARCHITECTURE.md 1.7, last line).

    codes (frames, 8) --codes_to_decoder_hidden--> hidden (T, 1280) at 50 Hz
        --flow-matching prenet + 10-step CFM--> mel (T, 80) --HiFT--> waveform (T * 480)

`codes_to_decoder_hidden` is injected: in the omni model it is the audio tokenizer's RVQ sum
-> proj_decoder -> audio decoder up to the hidden states before dconv2 (another module);
tests plug in a small stand-in. Each generated audio chunk (one `<audiogen_start> ...
<audiogen_end>` segment) is synthesised on its own, and chunks longer than
`max_chunk_frames` codes are split; consecutive pieces are joined with a linear cross-fade
of `crossfade_ms` (10 ms = 240 samples). Shapes are bucketed (frames padded to a multiple of
`bucket`; masks keep the padding out of attention) so jit compiles once per bucket.

Note: the released demo's `wave_concat` inserts the blended overlap IN ADDITION to both full
chunks (the overlapped audio is heard twice); here the overlap replaces the two ends, so the
output is sum(lengths) - overlap * (pieces - 1) samples long.
"""

from __future__ import annotations

import math
import os
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from omni_jax.data.audio_features import encode_wav
from omni_jax.models.flow_matching import FlowMatchingDecoder, decode_mel
from omni_jax.models.hift import HiFTGenerator

SILENT_LOG_MEL = float(np.log(1e-5))  # the vocoder mel's floor (log of the clamp value)


def crossfade_concat(waves: Sequence[np.ndarray], overlap: int) -> np.ndarray:
    """Joins 1-D waveforms; each junction fades the previous end out and the next start in
    linearly over `overlap` samples (skipped when either side is shorter)."""
    waves = [np.asarray(w, np.float32) for w in waves if len(w)]
    if not waves:
        return np.zeros((0,), np.float32)
    out = waves[0]
    for w in waves[1:]:
        if overlap > 0 and len(out) >= overlap and len(w) >= overlap:
            fade = np.linspace(0.0, 1.0, overlap, dtype=np.float32)
            blend = out[-overlap:] * (1.0 - fade) + w[:overlap] * fade
            out = np.concatenate([out[:-overlap], blend, w[overlap:]])
        else:
            out = np.concatenate([out, w])
    return out


def split_codes(codes: np.ndarray, max_frames: int) -> list[np.ndarray]:
    """(F, depth) -> pieces of at most max_frames frames."""
    return [codes[i:i + max_frames] for i in range(0, len(codes), max_frames)] if len(codes) else []


class Synthesizer:
    """codes -> waveform with a flow-matching decoder and a HiFT vocoder.

    fm_model / fm_params: FlowMatchingDecoder and its params; vocoder / vocoder_params: HiFTGenerator.
    codes_to_decoder_hidden: (frames, depth) int codes -> (T, prenet_in_dim) hidden states.
    """

    def __init__(self, codes_to_decoder_hidden: Callable[[np.ndarray], Any], fm_model: FlowMatchingDecoder,
                 fm_params: Any, vocoder: HiFTGenerator, vocoder_params: Any, *, bucket: int = 100,
                 max_chunk_frames: int = 250, crossfade_ms: float = 10.0, n_timesteps: int | None = None,
                 cfg_rate: float | None = None):
        self.codes_to_decoder_hidden = codes_to_decoder_hidden
        self.fm_model, self.fm_params = fm_model, fm_params
        self.vocoder, self.vocoder_params = vocoder, vocoder_params
        self.bucket, self.max_chunk_frames = bucket, max_chunk_frames
        self.sample_rate = vocoder.cfg.sampling_rate
        self.hop = vocoder.cfg.hop
        self.overlap = int(round(crossfade_ms * self.sample_rate / 1000.0))
        self._mel = jax.jit(lambda p, h, m, r: decode_mel(fm_model, p, h, m, r, n_timesteps=n_timesteps, cfg_rate=cfg_rate))
        self._wav = jax.jit(lambda p, mel, r: vocoder.apply({"params": p}, mel, r))

    def _padded(self, t: int) -> int:
        return max(self.bucket, int(math.ceil(t / self.bucket)) * self.bucket)

    def mel(self, codes: np.ndarray, rng: jax.Array) -> np.ndarray:
        """One piece of codes (F, depth) -> mel (T, n_mels)."""
        hidden = np.asarray(self.codes_to_decoder_hidden(np.asarray(codes)), np.float32)
        if hidden.ndim != 2:
            raise ValueError(f"codes_to_decoder_hidden must return (frames, width), got shape {hidden.shape}")
        t = hidden.shape[0]
        tp = self._padded(t)
        h = np.zeros((1, tp, hidden.shape[1]), np.float32)
        h[0, :t] = hidden
        mask = (np.arange(tp) < t).astype(np.float32)[None]
        return np.asarray(self._mel(self.fm_params, h, mask, rng))[0, :t]

    def waveform_of_mel(self, mel: np.ndarray, rng: jax.Array) -> np.ndarray:
        t = mel.shape[0]
        tp = self._padded(t)
        m = np.full((1, tp, mel.shape[1]), SILENT_LOG_MEL, np.float32)
        m[0, :t] = mel
        return np.asarray(self._wav(self.vocoder_params, m, rng))[0, : t * self.hop]

    def waveform(self, chunks: Sequence[np.ndarray], rng: jax.Array) -> np.ndarray:
        """Audio chunks (each (frames, depth) codes) -> one cross-faded waveform (float32, 24 kHz)."""
        waves, n = [], 0
        for chunk in chunks:
            for piece in split_codes(np.asarray(chunk), self.max_chunk_frames):
                k_mel, k_voc = jax.random.split(jax.random.fold_in(rng, n))
                waves.append(self.waveform_of_mel(self.mel(piece, k_mel), k_voc))
                n += 1
        return crossfade_concat(waves, self.overlap)

    def write_wav(self, path: str | os.PathLike, chunks: Sequence[np.ndarray], rng: jax.Array) -> np.ndarray:
        """Writes through etils.epath, so `path` may be local or on an object store (gs://...)."""
        from etils import epath

        wav = self.waveform(chunks, rng)
        epath.Path(path).write_bytes(encode_wav(wav, self.sample_rate))
        return wav
