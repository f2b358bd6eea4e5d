"""Speech output on the LLM: the audio code embedding and the depth-transformer audio head
(ARCHITECTURE.md 1.5; release modules `model.audio_embed_layers` and `audio_head`).

AudioEmbed: 8 tables of (codebook_size + 1) rows (the last row is the end-of-audio code);
a frame's embedding is the SUM of its 8 lookups (torch.nn.Embedding layout, no padding row).

AudioHead (release `OmniAudioHead` / `CasualDepthTransformerLayer`), run per audio frame over
a depth-8 sequence: position 0 = the LLM's final normed hidden state, position k = the sum of
the embeddings of codes 0..k-1 (the AudioEmbed tables 0..6). `num_layers` layers of

    a = causal MHA(RMSNorm1(x))          # torch.nn.MultiheadAttention: in_proj [q|k|v] + bias
    r = RMSNorm2(x + a)                  # the residual stream continues NORMALISED
    out = r + W2[l] gelu(W1[l] r)        # feed-forward weights differ per depth position l

then RMSNorm `headnorm` and 8 biased heads (hidden -> codebook_size_i + 1). The release
stores W1 as linear1 (2D, 8*D) and W2 as linear2 (D, 8*2D) (flattened over depth) with biases
that its forward never adds: we keep them as parameters (`linear1/bias`, `linear2/bias`) so
export is complete; they get zero gradients and are excluded from weight decay by name, so a
train step leaves them bit-identical. No positional embedding.

Parameter tree:
  audio_embed/tables_{i}/embedding          (codebook_i + 1, embed)
  audio_head/layers/layernorm{1,2}/scale    (L, embed)
  audio_head/layers/in_proj/{kernel,bias}   (L, embed, 3, heads, head_dim), (L, 3, heads, head_dim)
  audio_head/layers/out_proj/{kernel,bias}  (L, heads, head_dim, embed), (L, embed)
  audio_head/layers/linear1/{kernel,bias}   (L, depth, embed, mlp), (L, mlp)
  audio_head/layers/linear2/{kernel,bias}   (L, depth, mlp, embed), (L, embed)
  audio_head/headnorm/scale                 (embed,)
  audio_head/heads_{i}/{kernel,bias}        (embed, codebook_i + 1)

Teacher forcing (`speech_targets`): in `<audiogen_start> pad_1 .. pad_N <audiogen_end>`
(pad_k carries frame k's summed code embedding) the LLM hidden state at `<audiogen_start>`
predicts frame 1, the one at pad_k predicts frame k + 1, and the one at pad_N predicts the
end frame, whose codebook-0 target is the end row (only codebook 0 may end the audio; the
other codebooks take no loss there, matching the release sampler that drops their end rows).
"""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar, Mapping, Sequence

import jax
import jax.numpy as jnp
from flax import linen as nn

from omni_jax.layers import Dense, Embed, RMSNorm, dot_product_attention, dtype_of
from omni_jax.models.config import ModelConfig

Array = jax.Array
RELEASE_CODEBOOK_SIZES = (8192, 4096, 2048, 1024, 1024, 1024, 1024, 1024)


@dataclasses.dataclass(frozen=True)
class AudioHeadConfig(ModelConfig):
    WHERE: ClassVar[str] = "config.model.audio_head"

    hidden_size: int = 3584
    codebook_sizes: tuple[int, ...] = RELEASE_CODEBOOK_SIZES
    num_layers: int = 3
    head_dim: int = 128  # heads = hidden_size // head_dim (release: 28 x 128)
    ffn_mult: int = 2  # per-position feed-forward width = ffn_mult * hidden_size (release 7168)
    rms_norm_eps: float = 1e-6
    initializer_range: float = 0.02

    def validate(self) -> None:
        if self.hidden_size % self.head_dim:
            raise ValueError(f"audio head: hidden_size={self.hidden_size} must be a multiple of head_dim={self.head_dim}")
        if len(self.codebook_sizes) < 1:
            raise ValueError("audio head: codebook_sizes must name at least one codebook")

    @property
    def depth(self) -> int:
        return len(self.codebook_sizes)

    @property
    def num_heads(self) -> int:
        return self.hidden_size // self.head_dim

    @property
    def end_codes(self) -> tuple[int, ...]:
        """The end-of-audio code of each codebook: its last row (= codebook size)."""
        return tuple(self.codebook_sizes)


class AudioEmbed(nn.Module):
    """8 code tables; `__call__` sums a frame's lookups, `per_codebook` keeps them apart."""

    cfg: AudioHeadConfig

    def setup(self):
        cfg = self.cfg
        self.tables = [
            Embed(cs + 1, cfg.hidden_size, dtype=dtype_of(cfg.dtype), param_dtype=dtype_of(cfg.param_dtype),
                  embedding_init=nn.initializers.normal(cfg.initializer_range), axes=("codebook", "embed"))
            for cs in cfg.codebook_sizes
        ]

    def per_codebook(self, codes: Array) -> Array:
        """codes (..., depth) -> (..., depth, embed)."""
        if codes.shape[-1] != self.cfg.depth:
            raise ValueError(f"audio codes have {codes.shape[-1]} codebooks, the model has {self.cfg.depth}")
        return jnp.stack([t(codes[..., i]) for i, t in enumerate(self.tables)], axis=-2)

    def lookup(self, codes: Array, i: int) -> Array:
        return self.tables[i](codes)

    def __call__(self, codes: Array) -> Array:
        """codes (..., depth) -> the frame embedding (..., embed) = sum of the lookups."""
        e = self.per_codebook(codes)
        return e.sum(axis=-2)


class PerPositionLinear(nn.Module):
    """y[n, s] = x[n, s] @ kernel[offset + s]; the stored bias is never added (release)."""

    depth: int
    features: int
    kernel_axes: tuple[str, str, str]
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32
    kernel_init: Any = nn.initializers.normal(0.02)

    @nn.compact
    def __call__(self, x: Array, offset: Array | int) -> Array:
        kernel = self.param("kernel", nn.with_logical_partitioning(self.kernel_init, self.kernel_axes),
                            (self.depth, x.shape[-1], self.features), self.param_dtype)
        self.param("bias", nn.with_logical_partitioning(nn.initializers.zeros, (self.kernel_axes[-1],)),
                   (self.features,), self.param_dtype)  # stored, unused (release forward skips it)
        s = x.shape[-2]
        if s == 1:  # one depth position (sampling): a plain matmul with that position's matrix
            w = jax.lax.dynamic_index_in_dim(kernel, offset, axis=0, keepdims=False)
            return jnp.dot(x[:, 0].astype(self.dtype), w.astype(self.dtype))[:, None]
        w = jax.lax.dynamic_slice_in_dim(kernel, offset, s, axis=0) if s != self.depth else kernel
        # depth-major (s, n, d): the batched matmul's natural layout. Written as "nsd,sdf->nsf",
        # XLA's CPU layout assignment ran the gelu between linear1 and linear2 inside transposing
        # copies (64 ms per layer at 1216 frames); the tiny head's train step 1.18 s -> 0.33 s
        # (benchmarks/README.md, "Where the omni stages' step time went")
        y = jnp.einsum("snd,sdf->snf", jnp.swapaxes(x.astype(self.dtype), 0, 1), w.astype(self.dtype))
        return jnp.swapaxes(y, 0, 1)


class DepthLayer(nn.Module):
    """One CasualDepthTransformerLayer; scan-compatible (x, cache) -> (x, cache)."""

    cfg: AudioHeadConfig

    @nn.compact
    def __call__(self, x: Array, layer_cache: Mapping[str, Array] | None, offset: Array | int):
        cfg = self.cfg
        dtype, pdtype = dtype_of(cfg.dtype), dtype_of(cfg.param_dtype)
        init = nn.initializers.normal(cfg.initializer_range)
        h = RMSNorm(cfg.rms_norm_eps, dtype, pdtype, name="layernorm1")(x)
        qkv = Dense((3, cfg.num_heads, cfg.head_dim), kernel_axes=("embed", "qkv", "heads", "head_dim"),
                    use_bias=True, dtype=dtype, param_dtype=pdtype, kernel_init=init, name="in_proj")(h)
        q, k, v = qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2]
        new_cache = None
        if layer_cache is not None:
            ck = jax.lax.dynamic_update_slice_in_dim(layer_cache["k"], k.astype(layer_cache["k"].dtype), offset, axis=1)
            cv = jax.lax.dynamic_update_slice_in_dim(layer_cache["v"], v.astype(layer_cache["v"].dtype), offset, axis=1)
            new_cache = {"k": ck, "v": cv}
            k, v = ck.astype(dtype), cv.astype(dtype)
        a = dot_product_attention(q, k, v, causal=True, q_offset=offset)
        a = Dense(cfg.hidden_size, kernel_axes=("heads", "head_dim", "embed"), in_dims=2, use_bias=True,
                  dtype=dtype, param_dtype=pdtype, kernel_init=init, name="out_proj")(a)
        r = RMSNorm(cfg.rms_norm_eps, dtype, pdtype, name="layernorm2")(x + a)
        ffn = cfg.ffn_mult * cfg.hidden_size
        f = PerPositionLinear(cfg.depth, ffn, ("depth", "embed", "mlp"), dtype, pdtype, init, name="linear1")(r, offset)
        f = nn.with_logical_constraint(nn.gelu(f, approximate=False), ("activation_batch", "activation_codebooks", "activation_mlp"))
        f = PerPositionLinear(cfg.depth, cfg.hidden_size, ("depth", "mlp", "embed"), dtype, pdtype, init, name="linear2")(f, offset)
        return r + f, new_cache


class AudioHead(nn.Module):
    """Methods:
      __call__(h0, code_embeds) -> list of depth logits (N, codebook_i + 1), fp32: teacher
          forced; h0 (N, embed) LLM states, code_embeds (N, depth, embed) from
          AudioEmbed.per_codebook(target codes).
      step(x, depth, cache) -> (logits (N, codebook_depth + 1), cache): one depth position for
          sampling; x is h0 at depth 0, else the cumulative code embedding.
    """

    cfg: AudioHeadConfig

    def setup(self):
        cfg = self.cfg
        dtype, pdtype = dtype_of(cfg.dtype), dtype_of(cfg.param_dtype)
        self.layers = nn.scan(
            DepthLayer,
            variable_axes={"params": 0},
            split_rngs={"params": True},
            in_axes=(0, nn.broadcast),
            out_axes=0,
            length=cfg.num_layers,
            metadata_params={nn.PARTITION_NAME: "layers"},
        )(cfg)
        self.headnorm = RMSNorm(cfg.rms_norm_eps, dtype, pdtype)
        self.heads = [
            Dense(cs + 1, kernel_axes=("embed", "codebook"), use_bias=True, dtype=dtype, param_dtype=pdtype,
                  kernel_init=nn.initializers.normal(cfg.initializer_range))
            for cs in cfg.codebook_sizes
        ]

    def __call__(self, h0: Array, code_embeds: Array) -> list[Array]:
        depth = self.cfg.depth
        if code_embeds.shape[-2] != depth:
            raise ValueError(f"code_embeds has {code_embeds.shape[-2]} codebooks, the head has {depth}")
        dtype = dtype_of(self.cfg.dtype)  # the scan carry is in the compute dtype, whatever h0's dtype
        cum = jnp.cumsum(code_embeds[:, : depth - 1].astype(jnp.float32), axis=1).astype(dtype)
        x = jnp.concatenate([h0[:, None, :].astype(dtype), cum], axis=1)  # (N, depth, embed)
        x = nn.with_logical_constraint(x, ("activation_batch", "activation_codebooks", "activation_embed"))
        x, _ = self.layers(x, None, 0)
        x = self.headnorm(x)
        return [self.heads[i](x[:, i]).astype(jnp.float32) for i in range(depth)]

    def step(self, x: Array, depth: int, cache: Mapping[str, Array]) -> tuple[Array, dict]:
        h, cache = self.layers(x[:, None, :].astype(dtype_of(self.cfg.dtype)), cache, depth)
        h = self.headnorm(h[:, 0])
        return self.heads[depth](h).astype(jnp.float32), cache


def init_depth_cache(cfg: AudioHeadConfig, n: int, dtype: Any = None) -> dict[str, Array]:
    """Zeroed per-layer keys/values for one frame's depth sequence, (L, n, depth, heads, head_dim)."""
    dtype = dtype_of(cfg.dtype) if dtype is None else dtype
    shape = (cfg.num_layers, n, cfg.depth, cfg.num_heads, cfg.head_dim)
    return {"k": jnp.zeros(shape, dtype), "v": jnp.zeros(shape, dtype)}


# ---------------------------------------------------------------------------------
# Teacher forcing and the training loss.
# ---------------------------------------------------------------------------------


def speech_targets(tokens: Array, frame_codes: Array, segment_ids: Array, *, audiogen_start: int,
                   audiogen_end: int, audio_pad: int, codebook_sizes: Sequence[int]) -> tuple[Array, Array]:
    """Per-position audio-head targets for a token batch (the shift of ARCHITECTURE.md 1.5).

    tokens, segment_ids (B, T); frame_codes (B, T, depth): the codes of the frame whose
    embedding sits at each `audio_pad` position (ignored elsewhere). Returns
    target_codes (B, T, depth) int32 and target_mask (B, T, depth) float32: position p inside
    an `<audiogen_start> ... <audiogen_end>` segment (the start marker or one of its pads)
    predicts the frame at p + 1, or the end frame if p + 1 is `<audiogen_end>` (mask only on
    codebook 0, target its end row). Input audio (`<audio_start> ... <audio_end>`), text and
    truncated segments (no next position in the same packed sample) take no loss.
    """
    b, t = tokens.shape
    depth = len(codebook_sizes)
    idx = jnp.broadcast_to(jnp.arange(t), (b, t))
    is_start, is_end, is_pad = tokens == audiogen_start, tokens == audiogen_end, tokens == audio_pad
    last_start = jax.lax.cummax(jnp.where(is_start, idx, -1), axis=1)
    last_end = jax.lax.cummax(jnp.where(is_end, idx, -1), axis=1)
    boundary = jnp.concatenate([jnp.ones((b, 1), bool), segment_ids[:, 1:] != segment_ids[:, :-1]], axis=1)
    seg_first = jax.lax.cummax(jnp.where(boundary, idx, -1), axis=1)
    in_gen = (last_start > last_end) & (last_start >= seg_first) & (segment_ids > 0)
    predicting = in_gen & (is_start | is_pad)
    nxt_tok = jnp.concatenate([tokens[:, 1:], jnp.full((b, 1), -1, tokens.dtype)], axis=1)
    nxt_seg = jnp.concatenate([segment_ids[:, 1:], jnp.zeros((b, 1), segment_ids.dtype)], axis=1)
    same = nxt_seg == segment_ids
    to_frame = predicting & same & (nxt_tok == audio_pad)
    to_end = predicting & same & (nxt_tok == audiogen_end)
    nxt_codes = jnp.concatenate([frame_codes[:, 1:], jnp.zeros((b, 1, depth), frame_codes.dtype)], axis=1)
    end = jnp.asarray(codebook_sizes, jnp.int32)
    codes = jnp.where(to_frame[..., None], nxt_codes.astype(jnp.int32),
                      jnp.where(to_end[..., None], end, 0))
    first_only = jnp.arange(depth) == 0
    mask = to_frame[..., None] | (to_end[..., None] & first_only)
    return codes.astype(jnp.int32), mask.astype(jnp.float32)


def gather_frames(target_mask: Array, max_frames: int) -> tuple[Array, Array, Array]:
    """Static-size selection of the positions that carry an audio-head target.

    target_mask (B, T, depth) -> index (B, F) int32, valid (B, F) bool, and the number of
    target positions per row (B,) (more than `max_frames` means some were dropped: raise F).
    """
    has = target_mask[..., 0] > 0

    def row(h):
        (i,) = jnp.nonzero(h, size=max_frames, fill_value=0)
        return i.astype(jnp.int32)

    index = jax.vmap(row)(has)
    count = has.sum(axis=1).astype(jnp.int32)
    valid = jnp.arange(max_frames)[None, :] < count[:, None]
    return index, valid, count


def take_positions(x: Array, index: Array) -> Array:
    """x (B, T, ...) at index (B, F) -> (B, F, ...)."""
    idx = index.reshape(index.shape + (1,) * (x.ndim - 2))
    return jnp.take_along_axis(x, idx, axis=1)


def codebook_cross_entropy(logits: Sequence[Array], targets: Array, weights: Array) -> tuple[Array, dict]:
    """Sum over frames and codebooks of weight * -log p(target), per-codebook sums and hits.

    logits: depth arrays (N, codebook_i + 1); targets, weights (N, depth)."""
    total = jnp.zeros((), jnp.float32)
    per = {}
    for i, lg in enumerate(logits):
        lg = lg.astype(jnp.float32)
        lse = jax.nn.logsumexp(lg, axis=-1)
        tgt = jnp.take_along_axis(lg, targets[:, i, None], axis=-1)[:, 0]
        nll = ((lse - tgt) * weights[:, i]).sum()
        hits = ((jnp.argmax(lg, -1) == targets[:, i]) * (weights[:, i] > 0)).sum().astype(jnp.float32)
        per[f"nll_{i}"], per[f"correct_{i}"] = nll, hits
        total = total + nll
    return total, per


def audio_head_loss_sum(embed: AudioEmbed, head: AudioHead, params: Mapping[str, Any], hidden: Array,
                        target_codes: Array, target_mask: Array) -> tuple[Array, dict]:
    """Teacher-forced audio-head loss (a SUM; divide by a global count such as
    `target_mask.sum()` from Task.norms for exact gradient accumulation).

    params: {"audio_embed": ..., "audio_head": ...}; hidden (..., embed) = the LLM's final
    normed hidden state at the predicting positions; target_codes / target_mask (..., depth)
    from `speech_targets` (optionally gathered with `gather_frames` + `take_positions`).
    """
    depth = target_codes.shape[-1]
    h = hidden.reshape(-1, hidden.shape[-1])
    codes = target_codes.reshape(-1, depth)
    w = target_mask.reshape(-1, depth)
    code_embeds = embed.apply({"params": params["audio_embed"]}, codes, method=AudioEmbed.per_codebook)
    logits = head.apply({"params": params["audio_head"]}, h, code_embeds)
    return codebook_cross_entropy(logits, codes, w)
