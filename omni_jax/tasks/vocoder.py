"""Training the HiFT vocoder's generator on (mel, waveform, f0) segments.

Batch fields (fixed-length segments, HiFi-GAN style; T mel frames, hop 480):
  mel  f32 (B, T, n_mels)   24 kHz vocoder log-mel of the waveform
  wav  f32 (B, T * hop)     the waveform
  f0   f32 (B, T)           pitch per mel frame in Hz (0 = unvoiced)

Loss = mel_loss_weight * L1(log-mel(generated), mel) + stft_loss_weight * multi-resolution
STFT loss (per resolution: spectral convergence + mean |log magnitude difference|, averaged
over resolutions and rows) + f0_loss_weight * L1(predicted f0, f0) (CosyVoice HiFiGan's
generator terms without the adversarial and feature-matching ones: no discriminators here).

`config.data.source`: "synthetic" (default; harmonic tones with vibrato and noise,
omni_jax/data/synthetic_speech.py) or "speech" (stretches of the embedded speech with the
synthesiser's pitch as f0, omni_jax/data/speech_decoder_data.py: what the model's replies sound like).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp

from omni_jax.layers.spectral import hann_window, stft
from omni_jax.models.hift import HiFTConfig, HiFTGenerator
from omni_jax.ops.mel_jax import log_mel_24k
from omni_jax.tasks.base import Task, config_section
from omni_jax.train.rng import ROW_IDS, row_keys

DEFAULT_RESOLUTIONS = ((512, 128), (1024, 256), (256, 64))
# config.loss (HiFT's generator weights: mel 45, the multi-resolution STFT and f0 1 each)
LOSS_DEFAULTS = dict(mel_loss_weight=45.0, stft_loss_weight=1.0, f0_loss_weight=1.0, resolutions=DEFAULT_RESOLUTIONS)


def stft_magnitude(wav: jax.Array, n_fft: int, hop: int) -> jax.Array:
    spec = stft(wav, n_fft, hop, hann_window(n_fft))
    return jnp.sqrt(jnp.maximum(jnp.real(spec) ** 2 + jnp.imag(spec) ** 2, 1e-7))


def multi_resolution_stft_per_row(pred: jax.Array, target: jax.Array, resolutions=DEFAULT_RESOLUTIONS) -> jax.Array:
    """(B, L) waveforms -> (B,) mean over resolutions of spectral convergence + log-magnitude L1."""
    total = 0.0
    for n_fft, hop in resolutions:
        p, t = stft_magnitude(pred, n_fft, hop), stft_magnitude(target, n_fft, hop)
        sc = jnp.sqrt(jnp.sum(jnp.square(t - p), axis=(1, 2))) / jnp.maximum(jnp.sqrt(jnp.sum(jnp.square(t), axis=(1, 2))), 1e-7)
        mag = jnp.mean(jnp.abs(jnp.log(t) - jnp.log(p)), axis=(1, 2))
        total = total + sc + mag
    return total / len(resolutions)


class VocoderTask(Task):
    row_rng = True  # the source's harmonic phases and noise are drawn per global row

    def __init__(self, config: Any):
        super().__init__(config)
        self.model_cfg = HiFTConfig.from_dict(config.model.vocoder.to_dict(), "config.model.vocoder")
        self.model = HiFTGenerator(self.model_cfg)
        self.frames = int(config.data.frames)
        self.source = str(config.data.get("source", "synthetic"))
        if self.source not in ("synthetic", "speech"):
            raise ValueError(f"config.data.source={self.source!r}; use 'synthetic' (harmonic tones, "
                             "omni_jax/data/synthetic_speech.py) or 'speech' (the embedded speech, "
                             "omni_jax/data/speech_decoder_data.py)")
        lw = config_section(config, "loss", LOSS_DEFAULTS)
        self.mel_w = float(lw["mel_loss_weight"])
        self.stft_w = float(lw["stft_loss_weight"])
        self.f0_w = float(lw["f0_loss_weight"])
        self.resolutions = tuple(tuple(int(v) for v in r) for r in lw["resolutions"])

    def init(self, rng):
        k1, k2 = jax.random.split(rng)
        return {"vocoder": self.model.init(k1, jnp.zeros((1, self.frames, self.model_cfg.n_mels)), k2)["params"]}

    def batch_spec(self, global_batch: int):
        c, t, f32 = self.model_cfg, self.frames, jnp.float32
        return {
            "mel": (jax.ShapeDtypeStruct((global_batch, t, c.n_mels), f32), ("activation_batch", "activation_length", "activation_mel")),
            "wav": (jax.ShapeDtypeStruct((global_batch, t * c.hop), f32), ("activation_batch", "activation_length")),
            "f0": (jax.ShapeDtypeStruct((global_batch, t), f32), ("activation_batch", "activation_length")),
        }

    def norms(self, batch):
        b, t = batch["f0"].shape
        return {"rows": jnp.asarray(b, jnp.float32), "frames": jnp.asarray(b * t, jnp.float32),
                "mel_values": jnp.asarray(b * t * self.model_cfg.n_mels, jnp.float32)}

    def loss_terms(self, params, batch, rng):
        """Sums (divide by norms) of the three terms, and the generated waveform."""
        if ROW_IDS in batch:  # one key per global row: the same source phases and noise for any microbatch split
            rng = row_keys(rng, batch[ROW_IDS])
        wav, f0 = self.model.apply({"params": params["vocoder"]}, batch["mel"], rng, return_f0=True)
        mel = log_mel_24k(wav)
        return {
            "mel": jnp.abs(mel - batch["mel"]).sum(),
            "stft": multi_resolution_stft_per_row(wav, batch["wav"], self.resolutions).sum(),
            "f0": jnp.abs(f0 - batch["f0"]).sum(),
        }, wav

    def loss(self, params, batch, rng, norms):
        s, _ = self.loss_terms(params, batch, rng)
        mel, st, f0 = s["mel"] / norms["mel_values"], s["stft"] / norms["rows"], s["f0"] / norms["frames"]
        loss = self.mel_w * mel + self.stft_w * st + self.f0_w * f0
        return loss, {"loss": loss, "mel_l1": mel, "mr_stft": st, "f0_l1": f0}

    def make_data(self, stage, *, start_step, process_index, process_count, rows=None):
        from omni_jax.data.speech_decoder_data import make_speech_voice_iterator
        from omni_jax.data.synthetic_speech import make_voice_iterator

        make = make_speech_voice_iterator if self.source == "speech" else make_voice_iterator
        return make(self.config, start_step=start_step, process_index=process_index, process_count=process_count,
                    rows=rows)

    def import_params(self, path, abstract_params):
        """A HiFT state dict in safetensors (weight-normed or folded names)."""
        from omni_jax.convert import speech as conv
        from omni_jax.convert.safetensors_io import load_state_dict

        return {"vocoder": conv.import_vocoder(load_state_dict(path), self.model_cfg, abstract_params["vocoder"], source=path)}

    def export_state_dict(self, params, flavour: str = "weight_norm", dtype=None) -> dict:
        """Our params -> a HiFT state dict: "weight_norm" (weight_g / weight_v, like hift.pt) or
        "folded" (plain .weight, torch's remove_weight_norm layout)."""
        from omni_jax.convert import speech as conv
        from omni_jax.convert.mapping import export_params

        return export_params(params["vocoder"], conv.vocoder_rules(self.model_cfg, flavour), dtype=dtype)

    def export_config(self, flavour: str = "weight_norm") -> dict:
        return {"vocoder_config": dataclasses.asdict(self.model_cfg), "weight_norm": flavour == "weight_norm"}
