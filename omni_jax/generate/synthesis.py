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

Randomness is position-indexed: the flow-matching start noise of mel frame j and the vocoder's
source noise of mel frame j's samples are drawn from fold_in(key, j), so synthesising a prefix
of a piece draws exactly the values the whole piece draws there (what lets
omni_jax/generate/streaming.py decode a piece incrementally and still equal the whole piece).

Receptive field (`stream_receptive_field`): mel frame t of a piece depends on the decoder hidden
frames up to the end of its flow-matching attention chunk (`chunk_size`; the prenet and the
U-Net's convolutions are causal), and a waveform sample of mel frame t on mel frames up to
t + `hift_right_context(cfg)` (the vocoder's non-causal convolutions, F0 predictor and STFTs).

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


def frame_noise(key: jax.Array, frames: int, shape: tuple[int, ...]) -> jax.Array:
    """(frames,) + shape standard normals; frame j's from fold_in(key, j), so any prefix of a
    piece draws the same values as the whole piece."""
    return jax.vmap(lambda j: jax.random.normal(jax.random.fold_in(key, j), shape, jnp.float32))(jnp.arange(frames))


def hift_right_context(cfg) -> int:
    """Mel frames after frame t that can change the HiFT waveform samples of frame t (an upper
    bound from the config: conv_pre, each upsampling ConvTranspose1d and its ResBlocks, conv_post,
    the iSTFT, plus the source branch: F0 predictor convs, the source STFT, source_downs and the
    source ResBlocks). Checked against the real vocoder in tests/generate/test_streaming.py."""
    def res(k, dils):
        return sum((k * d - d) // 2 + (k - 1) // 2 for d in dils)

    rates, s4 = list(cfg.upsample_rates), cfg.istft_hop
    frame = math.prod(rates) * s4  # samples per mel frame
    main = 3 * frame  # conv_pre k7
    src = max(cfg.f0_layers * frame, 3 * frame)  # F0 predictor convs (k3 each); at least conv_pre's reach
    src += cfg.istft_n_fft // 2  # the source STFT (centred)
    src_extra = 0
    for i, (u, k) in enumerate(zip(rates, cfg.upsample_kernel_sizes)):
        unit_in = s4 * math.prod(rates[i:])
        unit_out = s4 * math.prod(rates[i + 1:])
        main += ((k - u) // 2 // u + 1) * unit_in
        main += max(res(kr, dl) for kr, dl in zip(cfg.resblock_kernel_sizes, cfg.resblock_dilations)) * unit_out
        d = math.prod(rates[i + 1:])
        down = 0 if d == 1 else (2 * d - 1 - d // 2) * s4
        src_extra = max(src_extra, down + res(cfg.source_resblock_kernel_sizes[i], cfg.source_resblock_dilations[i]) * unit_out)
    tail = 3 * s4 + cfg.istft_n_fft // 2 + s4  # conv_post k7, the iSTFT, the left reflection pad
    return int(math.ceil((main + src + src_extra + tail) / frame))


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
                 cfg_rate: float | None = None, frames_per_code: int = 4):
        self.codes_to_decoder_hidden = codes_to_decoder_hidden
        self.fm_model, self.fm_params = fm_model, fm_params
        self.vocoder, self.vocoder_params = vocoder, vocoder_params
        self.bucket, self.max_chunk_frames = bucket, max_chunk_frames
        self.sample_rate = vocoder.cfg.sampling_rate
        self.hop = vocoder.cfg.hop
        self.overlap = int(round(crossfade_ms * self.sample_rate / 1000.0))
        self.frames_per_code = int(frames_per_code)  # decoder hidden frames per code: F codes -> fpc * F - 1
        n_mels, hop, harm = fm_model.cfg.n_mels, vocoder.cfg.hop, vocoder.cfg.nb_harmonics + 1

        def mel_fn(p, h, m, r):
            x0 = frame_noise(r, h.shape[1], (n_mels,))[None]
            return decode_mel(fm_model, p, h, m, r, n_timesteps=n_timesteps, cfg_rate=cfg_rate, noise=x0)

        def wav_fn(p, mel, r):
            k_phase, k_noise = jax.random.split(r)
            phase = jax.random.uniform(k_phase, (1, harm), jnp.float32, -jnp.pi, jnp.pi)
            noise = frame_noise(k_noise, mel.shape[1], (hop, harm)).reshape(1, mel.shape[1] * hop, harm)
            return vocoder.apply({"params": p}, mel, phase=phase, noise=noise)

        self._mel = jax.jit(mel_fn)
        self._wav = jax.jit(wav_fn)

    def stream_receptive_field(self) -> dict:
        """What incremental decoding of a piece needs (omni_jax/generate/streaming.py):
        chunk = the flow-matching attention chunk (mel frames), right = hift_right_context,
        min_codes = the fewest codes after which some audio of a piece is final
        (fpc * F - 1 decoder frames must cover a whole attention chunk reaching past `right`)."""
        c, r, fpc = int(self.fm_model.cfg.chunk_size), hift_right_context(self.vocoder.cfg), self.frames_per_code
        if c <= 0:  # no chunking: the U-Net attends over the whole piece, nothing is final before its end
            return dict(chunk=c, right=r, min_codes=self.max_chunk_frames)
        need = c * int(math.ceil((r + 1) / c))  # mel frames decoded before frame `need - r - 1` is final
        return dict(chunk=c, right=r, min_codes=int(math.ceil((need + 1) / fpc)))

    def hidden(self, codes: np.ndarray) -> np.ndarray:
        hidden = np.asarray(self.codes_to_decoder_hidden(np.asarray(codes)), np.float32)
        if hidden.ndim != 2:
            raise ValueError(f"codes_to_decoder_hidden must return (frames, width), got shape {hidden.shape}")
        return hidden

    def _padded(self, t: int) -> int:
        return max(self.bucket, int(math.ceil(t / self.bucket)) * self.bucket)

    def mel(self, codes: np.ndarray, rng: jax.Array) -> np.ndarray:
        """One piece of codes (F, depth) -> mel (T, n_mels)."""
        return self.mel_of_hidden(self.hidden(codes), rng)

    def mel_of_hidden(self, hidden: np.ndarray, rng: jax.Array) -> np.ndarray:
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
