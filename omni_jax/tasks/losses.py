"""Token-level losses in fp32, and the LM-head loss computed without full logits.

`cross_entropy_sum` takes materialised logits; `ctc_nll_sum` is the CTC loss of the two CTC heads
(omni_jax/tasks/audio_tokenizer.py, omni_jax/tasks/omni_v1_audio_ctc.py). `lm_head_cross_entropy_sum` takes the LLM's
final normed hidden states and the untied `lm_head` kernel and never materialises the
(tokens x vocab) logits: the sequence is cut into `token_chunk`-long pieces (a rematerialised
`lax.scan`: the backward pass recomputes one piece's logits at a time) and, optionally, the
vocabulary into `vocab_chunk`-wide slices (an online log-sum-exp, also rematerialised). The
result and its gradient equal the plain loss up to fp32 summation order; the memory for
logits drops from B*T*V to B*token_chunk*V (or B*token_chunk*vocab_chunk) floats. This is
the sequence-tiled loss MaxText calls vocabulary tiling, plus a vocabulary split.

Optional z-loss (PaLM): z_loss * log(Z)^2 per weighted target, returned as its own sum.

`sharded_lm_head_cross_entropy_sum` (what the tasks call) computes the same loss per shard
under a mesh (`jax.shard_map`): each device gathers the kernel's feature shards once (in the
compute dtype), runs the tiled loss on its own tokens over its own vocabulary rows (combining
log-sum-exp, target logit and argmax over `tensor` when the vocabulary is split), and the sums
are added over the token-sharding axes. Its gradient is the transpose of that: every device
accumulates the whole kernel's gradient of its tokens locally across the pieces and one
reduce-scatter returns it to the fsdp shards. Left to the SPMD partitioner, the tiled loss's
backward all-reduced the whole bf16 (3584 x 152064) partial gradient over every chip once per
piece (the 7B 64k TPU plans' HLO, benchmarks/README.md). The price is a whole gathered kernel
and its gradient accumulator per device (2 x 1.1 GB in bf16 at 7B), accumulated in the compute
dtype. Without a mesh, or when no mesh axis splits the kernel, it is the plain tiled loss.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import optax

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


def ctc_nll_sum(logits: Array, logit_lengths: Array, labels: Array, label_lengths: Array, blank_id: int) -> Array:
    """Sum over rows of the CTC negative log-likelihood (optax.ctc_loss) of each row's first
    `label_lengths` labels given its first `logit_lengths` frames; rows without labels add 0.
    logits (N, T, K) fp32, labels (N, L) int; the lengths (N,)."""
    logit_pad = (jnp.arange(logits.shape[1])[None] >= logit_lengths[:, None]).astype(jnp.float32)
    label_pad = (jnp.arange(labels.shape[1])[None] >= label_lengths[:, None]).astype(jnp.float32)
    nll = optax.ctc_loss(logits, logit_pad, labels, label_pad, blank_id=blank_id)
    return jnp.sum(jnp.where(label_lengths > 0, nll, 0.0))


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
    return _sums(lse, tgt, best, targets, weights, z_loss)


def _sums(lse: Array, tgt: Array, best: Array, targets: Array, weights: Array, z_loss: float
          ) -> tuple[Array, Array, Array]:
    """(nll, correct, z) sums from per-position log-sum-exp, target logit and argmax."""
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
    chunking.check(targets.shape[1], kernel.shape[-1])
    piece = lambda hh, tt, ww: _piece_sums(hh, kernel, tt, ww, dtype, chunking.vocab_chunk, chunking.z_loss)
    return _tiled(piece, h, targets, weights, chunking.token_chunk)


def _tiled(piece, h: Array, targets: Array, weights: Array, tc: int) -> tuple[Array, Array, Array]:
    """The sums of `piece` over `tc`-long sequence pieces (a rematerialised scan; 0 = one piece)."""
    b, t = targets.shape
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


def _local_stats(x: Array, kernel: Array, targets: Array, dtype: Any, vocab_chunk: int, offset: Array
                 ) -> tuple[Array, Array, Array, Array, Array]:
    """(max, sum of exp(logit - max), target logit (0 where the target is not in these rows),
    best logit, its global index) over the vocabulary rows [offset, offset + V_local) that
    `kernel` (D, V_local) holds, for x (..., D) already in the compute dtype."""
    vocab = kernel.shape[-1]
    vc = vocab_chunk if vocab_chunk and vocab_chunk < vocab else vocab
    n = vocab // vc
    slices = jnp.moveaxis(kernel.reshape(kernel.shape[0], n, vc), 1, 0)  # (n, D, vc)
    lead = targets.shape
    neg = jnp.full(lead, -jnp.inf, jnp.float32)

    def body(carry, xs):
        m, s, tgt, bval, bidx = carry
        w, i = xs
        lg = jnp.einsum("...d,dv->...v", x, w.astype(dtype)).astype(jnp.float32)
        cmax = lg.max(axis=-1)
        new_m = jnp.maximum(m, jax.lax.stop_gradient(cmax))  # log-sum-exp does not depend on it
        s = s * jnp.exp(m - new_m) + jnp.exp(lg - new_m[..., None]).sum(axis=-1)
        local = targets - offset - i * vc
        inside = (local >= 0) & (local < vc)
        t = jnp.take_along_axis(lg, jnp.clip(local, 0, vc - 1)[..., None], axis=-1)[..., 0]
        tgt = jnp.where(inside, t, tgt)
        better = cmax > bval  # strict: the earlier slice keeps ties (jnp.argmax semantics)
        bidx = jnp.where(better, jnp.argmax(lg, axis=-1) + offset + i * vc, bidx)
        bval = jnp.where(better, cmax, bval)
        return (new_m, s, tgt, bval, bidx), None

    init = (neg, jnp.zeros(lead, jnp.float32), jnp.zeros(lead, jnp.float32), neg, jnp.zeros(lead, jnp.int32))
    if n == 1:
        return body(init, (slices[0], 0))[0]
    return jax.lax.scan(jax.checkpoint(body), init, (slices, jnp.arange(n)))[0]


def _sharded_piece_sums(x: Array, kernel: Array, targets: Array, weights: Array, dtype: Any, vocab_chunk: int,
                        z_loss: float, vocab_axes: tuple[str, ...], offset: Array) -> tuple[Array, Array, Array]:
    """`_piece_sums` inside shard_map: this device's vocabulary rows, combined over `vocab_axes`."""
    m, s, tgt, bval, bidx = _local_stats(x.astype(dtype), kernel, targets, dtype, vocab_chunk, offset)
    if vocab_axes:
        top = jax.lax.pmax(jax.lax.stop_gradient(m), vocab_axes)  # pmax has no derivative; lse needs none
        s = jax.lax.psum(s * jnp.exp(m - top), vocab_axes)
        m = top
        tgt = jax.lax.psum(tgt, vocab_axes)  # the one shard holding the target contributes its logit
        bval = jax.lax.stop_gradient(bval)
        best_val = jax.lax.pmax(bval, vocab_axes)
        # the lowest index among the shards holding the best logit (jnp.argmax's first maximum)
        bidx = jax.lax.pmin(jnp.where(bval == best_val, bidx, jnp.iinfo(jnp.int32).max), vocab_axes)
    return _sums(m + jnp.log(s), tgt, bidx, targets, weights, z_loss)


def sharded_lm_head_cross_entropy_sum(h: Array, kernel: Array, targets: Array, weights: Array, *,
                                      dtype: Any = jnp.float32, chunking: LossChunking = LossChunking(),
                                      kernel_axes: tuple[str, str] = ("embed", "vocab"),
                                      ) -> tuple[Array, Array, Array]:
    """`lm_head_cross_entropy_sum` computed per shard of the mesh in context (module docstring);
    the plain tiled loss when there is no mesh or no mesh axis splits the kernel."""
    from flax import linen as nn

    from omni_jax import sharding as shd
    from omni_jax.layers.ring_attention import fit

    b, t = targets.shape
    chunking.check(t, kernel.shape[-1])
    mesh = jax.sharding.get_abstract_mesh()
    plain = lambda: lm_head_cross_entropy_sum(h, kernel, targets, weights, dtype=dtype, chunking=chunking)
    if mesh.empty:
        return plain()
    feat_axes, vocab_axes = (tuple(a for a in shd.spec_axes(ax) if mesh.shape[a] > 1)
                             for ax in nn.logical_to_mesh_axes(kernel_axes))
    if not feat_axes and not vocab_axes:
        return plain()
    tok = nn.logical_to_mesh_axes(("activation_batch", "activation_length"))
    tok = jax.P(fit(tok[0], b, mesh), fit(tok[1], t, mesh))
    token_axes = tuple(a for e in tok for a in shd.spec_axes(e) if mesh.shape[a] > 1)
    t_local = t // shd.axes_size(tok[1], mesh)
    tc = chunking.token_chunk
    if tc and tc < t_local and t_local % tc:
        raise ValueError(f"config.model.llm.loss_token_chunk={tc} does not divide the {t_local} positions each "
                         f"device holds (sequence {t} over the mesh's `context` axis): choose a divisor of {t_local}")
    rows = kernel.shape[-1] // shd.axes_size(vocab_axes, mesh)
    vc = chunking.vocab_chunk
    if vc and vc < rows and rows % vc:
        raise ValueError(f"config.model.llm.loss_vocab_chunk={vc} does not divide the {rows} vocabulary rows each "
                         f"device holds (vocabulary {kernel.shape[-1]} over the mesh's `tensor` axis): choose a "
                         f"divisor of {rows}")

    def body(h, k, tg, w):
        k = k.astype(dtype)  # gathered in the compute dtype: half the bytes in bf16
        if feat_axes:
            k = jax.lax.all_gather(k, feat_axes, axis=0, tiled=True)
        offset = jax.lax.axis_index(vocab_axes) * rows if vocab_axes else jnp.zeros((), jnp.int32)
        piece = lambda hh, tt, ww: _sharded_piece_sums(hh, k, tt, ww, dtype, chunking.vocab_chunk,
                                                       chunking.z_loss, vocab_axes, offset)
        sums = _tiled(piece, h, tg, w, tc)
        return tuple(jax.lax.psum(x, token_axes) if token_axes else x for x in sums)

    return jax.shard_map(body, mesh=mesh, in_specs=(jax.P(tok[0], tok[1], None), jax.P(feat_axes or None,
                         vocab_axes or None), tok, tok), out_specs=(jax.P(), jax.P(), jax.P()),
                         check_vma=False)(h, kernel, targets, weights)


def llm_loss_sums(cfg: Any, llm_params: Any, h: Array, targets: Array, weights: Array) -> tuple[Array, Array, Array]:
    """(nll, correct, z) sums of the Qwen2 LM head's loss on final hidden states `h`, tiled as
    `cfg` (a Qwen2Config: loss_token_chunk, loss_vocab_chunk, z_loss, loss_per_shard) says."""
    from omni_jax.layers import dtype_of

    chunking = LossChunking(cfg.loss_token_chunk, cfg.loss_vocab_chunk, cfg.z_loss)
    loss = sharded_lm_head_cross_entropy_sum if cfg.loss_per_shard else lm_head_cross_entropy_sum
    return loss(h, llm_params["lm_head"]["kernel"], targets, weights, dtype=dtype_of(cfg.dtype), chunking=chunking)
