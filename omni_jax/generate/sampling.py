"""Token sampling with repetition penalty, temperature, top-k and top-p, on static shapes.

Numerically transformers' logits processors in the order `generate(do_sample=True)` applies
them: RepetitionPenaltyLogitsProcessor (a token seen before: score / p if > 0 else score * p),
TemperatureLogitsWarper, TopKLogitsWarper, TopPLogitsWarper (filtered scores are -inf), then a
categorical draw (or argmax when do_sample is False). "Seen" is a boolean (batch, vocab) mask
kept by the caller, so history never changes shape.

Released settings (ARCHITECTURE.md 1.7): text T 0.8, top-k 20, top-p 0.85, penalty 1.1;
audio T 0.5, top-k 5, top-p 0.85, penalty 1.3.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping

import jax
import jax.numpy as jnp

from omni_jax.models.config import config_from_dict

Array = jax.Array


@dataclasses.dataclass(frozen=True)
class SamplingParams:
    temperature: float = 1.0
    top_k: int = 0  # 0 = off
    top_p: float = 1.0  # 1.0 = off
    repetition_penalty: float = 1.0  # 1.0 = off
    do_sample: bool = True  # False = greedy (argmax of the processed scores)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], where: str = "sampling") -> "SamplingParams":
        return config_from_dict(cls, d, where)

    def validate(self) -> None:
        if self.temperature <= 0:
            raise ValueError(f"sampling temperature must be > 0 (got {self.temperature}); use do_sample=False for greedy")
        if not 0.0 < self.top_p <= 1.0:
            raise ValueError(f"sampling top_p must be in (0, 1], got {self.top_p}")
        if self.top_k < 0 or self.repetition_penalty <= 0:
            raise ValueError(f"sampling top_k must be >= 0 and repetition_penalty > 0 (got {self.top_k}, {self.repetition_penalty})")


TEXT_RELEASE = SamplingParams(temperature=0.8, top_k=20, top_p=0.85, repetition_penalty=1.1)
AUDIO_RELEASE = SamplingParams(temperature=0.5, top_k=5, top_p=0.85, repetition_penalty=1.3)


def process_logits(logits: Array, seen: Array | None, p: SamplingParams) -> Array:
    """logits (B, V) -> processed fp32 scores (B, V); filtered entries are -inf."""
    s = logits.astype(jnp.float32)
    if p.repetition_penalty != 1.0 and seen is not None:
        s = jnp.where(seen, jnp.where(s < 0, s * p.repetition_penalty, s / p.repetition_penalty), s)
    if p.temperature != 1.0:
        s = s / p.temperature
    v = s.shape[-1]
    if 0 < p.top_k < v:
        kth = jax.lax.top_k(s, p.top_k)[0][..., -1:]
        s = jnp.where(s < kth, -jnp.inf, s)
    if p.top_p < 1.0:
        order = jnp.argsort(s, axis=-1)  # ascending
        srt = jnp.take_along_axis(s, order, axis=-1)
        cum = jnp.cumsum(jax.nn.softmax(srt, axis=-1), axis=-1)
        remove = cum <= (1.0 - p.top_p)
        remove = remove.at[..., -1].set(False)  # keep at least one token
        rows = jnp.arange(s.shape[0])[:, None]
        remove_orig = jnp.zeros_like(remove).at[rows, order].set(remove)
        s = jnp.where(remove_orig, -jnp.inf, s)
    return s


def sample(key: Array, logits: Array, seen: Array | None, p: SamplingParams) -> Array:
    """One token per row (B,) int32 from logits (B, V)."""
    s = process_logits(logits, seen, p)
    if not p.do_sample:
        return jnp.argmax(s, axis=-1).astype(jnp.int32)
    return jax.random.categorical(key, s, axis=-1).astype(jnp.int32)


def mark_seen(seen: Array, ids: Array, where: Array | None = None) -> Array:
    """seen (B, V) with ids (B,) set (only rows where `where` is True)."""
    rows = jnp.arange(seen.shape[0])
    val = jnp.ones(ids.shape, bool) if where is None else where
    return seen.at[rows, jnp.clip(ids, 0, seen.shape[1] - 1)].max(val)
