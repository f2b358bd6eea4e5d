"""Token-level losses in fp32, and the LM-head loss computed without full logits.

`cross_entropy_sum` takes materialised logits. `lm_head_cross_entropy_sum` takes the LLM's
final normed hidden states and the untied `lm_head` kernel and never materialises the
(tokens x vocab) logits: the sequence is cut into `token_chunk`-long pieces (a rematerialised
`lax.scan`: the backward pass recomputes one piece's logits at a time) and, optionally, the
vocabulary into `vocab_chunk`-wide slices (an online log-sum-exp, also rematerialised). The
result and its gradient equal the plain loss up to fp32 summation order; the memory for
logits drops from B*T*V to B*token_chunk*V (or B*token_chunk*vocab_chunk) floats. This is
the sequence-tiled loss MaxText calls vocabulary tiling, plus a vocabulary split.

Optional z-loss (PaLM): z_loss * log(Z)^2 per weighted target, returned as its own sum.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp

Array = jax.Array


def cross_entropy_sum(logits: jax.Array, targets: jax.Array, weights: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Sum over positions of weight * -log p(target), and the number of correct argmax
    predictions among weighted positions. logits (..., V) any dtype, computed in fp32."""
    logits = logits.astype(jnp.float32)
    lse = jax.nn.logsumexp(logits, axis=-1)
    tgt = jnp.take_along_axis(logits, targets[..., None], axis=-1)[..., 0]
    nll = (lse - tgt) * weights
    correct = (jnp.argmax(logits, axis=-1) == targets) * (weights > 0)
    return nll.sum(), correct.sum().astype(jnp.float32)


@dataclasses.dataclass(frozen=True)
class LossChunking:
    """How the LM-head loss is tiled. 0 = no tiling on that axis (the plain loss)."""

    token_chunk: int = 0  # positions per sequence piece (must divide the sequence length)
    vocab_chunk: int = 0  # vocabulary rows per slice (must divide the vocabulary size)
    z_loss: float = 0.0  # weight of log(Z)^2

    def check(self, seq_len: int, vocab: int, where: str = "config.model.llm") -> None:
        if self.token_chunk < 0 or self.vocab_chunk < 0:
            raise ValueError(f"{where}.loss_token_chunk / loss_vocab_chunk must be >= 0 (0 = off), got "
                             f"{self.token_chunk} / {self.vocab_chunk}")
        if self.token_chunk and seq_len % self.token_chunk:
            raise ValueError(f"{where}.loss_token_chunk={self.token_chunk} does not divide the sequence length "
                             f"{seq_len}: choose a divisor of {seq_len} (or 0 to turn sequence tiling off)")
        if self.vocab_chunk and vocab % self.vocab_chunk:
            raise ValueError(f"{where}.loss_vocab_chunk={self.vocab_chunk} does not divide the vocabulary size "
                             f"{vocab}: choose a divisor of {vocab} (or 0 to turn vocabulary tiling off)")


def _piece_sums(h: Array, kernel: Array, targets: Array, weights: Array, dtype: Any, vocab_chunk: int,
                z_loss: float) -> tuple[Array, Array, Array]:
    """(nll, correct, z) sums of one piece: h (..., D), targets/weights (...)."""
    x = h.astype(dtype)
    vocab = kernel.shape[-1]
    if not vocab_chunk or vocab_chunk >= vocab:
        logits = jnp.einsum("...d,dv->...v", x, kernel.astype(dtype)).astype(jnp.float32)
        lse = jax.nn.logsumexp(logits, axis=-1)
        tgt = jnp.take_along_axis(logits, targets[..., None], axis=-1)[..., 0]
        best = jnp.argmax(logits, axis=-1)
    else:
        n = vocab // vocab_chunk
        slices = jnp.moveaxis(kernel.reshape(kernel.shape[0], n, vocab_chunk), 1, 0)  # (n, D, vc)
        lead = targets.shape
        neg = jnp.full(lead, -jnp.inf, jnp.float32)

        @jax.checkpoint
        def body(carry, xs):
            m, s, tgt, bval, bidx = carry
            w, i = xs
            lg = jnp.einsum("...d,dv->...v", x, w.astype(dtype)).astype(jnp.float32)
            cmax = lg.max(axis=-1)
            new_m = jnp.maximum(m, cmax)
            s = s * jnp.exp(m - new_m) + jnp.exp(lg - new_m[..., None]).sum(axis=-1)
            local = targets - i * vocab_chunk
            inside = (local >= 0) & (local < vocab_chunk)
            t = jnp.take_along_axis(lg, jnp.clip(local, 0, vocab_chunk - 1)[..., None], axis=-1)[..., 0]
            tgt = jnp.where(inside, t, tgt)
            better = cmax > bval  # strict: the earlier slice keeps ties (jnp.argmax semantics)
            bidx = jnp.where(better, jnp.argmax(lg, axis=-1) + i * vocab_chunk, bidx)
            bval = jnp.where(better, cmax, bval)
            return (new_m, s, tgt, bval, bidx), None

        init = (neg, jnp.zeros(lead, jnp.float32), jnp.zeros(lead, jnp.float32), neg, jnp.zeros(lead, jnp.int32))
        (m, s, tgt, _, best), _ = jax.lax.scan(body, init, (slices, jnp.arange(n)))
        lse = m + jnp.log(s)
    nll = ((lse - tgt) * weights).sum()
    correct = ((best == targets) * (weights > 0)).sum().astype(jnp.float32)
    z = (z_loss * jnp.square(lse) * weights).sum() if z_loss else jnp.zeros((), jnp.float32)
    return nll, correct, z


def lm_head_cross_entropy_sum(h: Array, kernel: Array, targets: Array, weights: Array, *,
                              dtype: Any = jnp.float32, chunking: LossChunking = LossChunking()
                              ) -> tuple[Array, Array, Array]:
    """Sums (nll, correct, z) of the loss on logits = h @ kernel without materialising them.

    h (B, T, D) final normed hidden states; kernel (D, V) the lm_head kernel (cast to `dtype`
    like the LM head's Dense); targets, weights (B, T). Equal to
    `cross_entropy_sum((h @ kernel).astype(f32), ...)` (+ z-loss) with no chunking.
    """
    b, t = targets.shape
    chunking.check(t, kernel.shape[-1])
    tc = chunking.token_chunk
    piece = lambda hh, tt, ww: _piece_sums(hh, kernel, tt, ww, dtype, chunking.vocab_chunk, chunking.z_loss)
    if not tc or tc >= t:
        return piece(h, targets, weights)
    n = t // tc
    split = lambda a: jnp.moveaxis(a.reshape((b, n, tc) + a.shape[2:]), 1, 0)  # rows stay leading per piece

    @jax.checkpoint
    def body(acc, xs):
        out = piece(*xs)
        return jax.tree.map(jnp.add, acc, out), None

    zero = jnp.zeros((), jnp.float32)
    (nll, correct, z), _ = jax.lax.scan(body, (zero, zero, zero), (split(h), split(targets), split(weights)))
    return nll, correct, z


def llm_loss_sums(cfg: Any, llm_params: Any, h: Array, targets: Array, weights: Array) -> tuple[Array, Array, Array]:
    """(nll, correct, z) sums of the Qwen2 LM head's loss on final hidden states `h`, tiled as
    `cfg` (a Qwen2Config: loss_token_chunk, loss_vocab_chunk, z_loss) says."""
    from omni_jax.layers import dtype_of

    chunking = LossChunking(cfg.loss_token_chunk, cfg.loss_vocab_chunk, cfg.z_loss)
    return lm_head_cross_entropy_sum(h, llm_params["lm_head"]["kernel"], targets, weights,
                                     dtype=dtype_of(cfg.dtype), chunking=chunking)
