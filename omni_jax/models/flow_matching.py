"""The flow-matching mel decoder: prenet + causal 1-D U-Net estimator + conditional flow
matching (ARCHITECTURE.md 1.5; release `audio_tokenizer.audio_flow_matching_decoder`).

Numerical references (tests/speech_reference.py mirrors them in torch):
  prenet     Baichuan-Omni-1.5 audio_modeling_omni.py `FlowmatchingPrenet`: Linear -> SiLU ->
             Linear, `prenet_layers` causal Whisper-style layers with RMSNorm (k_proj without
             bias), final RMSNorm, Linear without bias = mu. The release registers a sinusoid
             position table it never adds; we keep it as the parameter
             `prenet/positional_embedding` (zero gradient; freeze it in stage rules) so the
             checkpoint round-trips.
  estimator  CosyVoice `flow/decoder.py` causal ConditionalDecoder with Matcha-TTS blocks:
             input concat(x_t, mu) (2 * n_mels channels); time embedding sinusoid(2 * n_mels,
             scale 1000) -> Linear -> SiLU -> Linear; one down block, `num_mid_blocks` mid
             blocks (scanned), one up block (skip concat); each = causal ResNet block
             (CausalConv1d k3 + LayerNorm + Mish twice, Mish + Linear time projection, 1x1
             residual conv) and `n_blocks` transformer blocks (LayerNorm, attention with
             bias-free q/k/v and biased output, LayerNorm, GELU feed-forward x4); down/up
             samplers are CausalConv1d k3; final causal block; 1x1 conv to n_mels. Attention
             is chunk-causal (a query in chunk c sees keys of chunks <= c, `chunk_size` 100)
             and never sees padding.
  CFM        CosyVoice `flow/flow_matching.py` ConditionalCFM: t ~ U(0, 1) through the cosine
             schedule, x_t = (1 - (1 - sigma_min) t) z + t x1, target u = x1 - (1 - sigma_min) z,
             the condition mu dropped with probability `training_cfg_rate`, L1 (release
             `reg_loss_type`) over valid frames and bins. Sampling: z ~ N(0, I), `n_timesteps`
             Euler steps on t = 1 - cos(pi s / 2), v = (1 + w) v(mu) - w v(0) with
             w = `inference_cfg_rate`.
  prior loss mean |mu - x1| over valid frames and bins (the release's prenet regression loss,
             `prenet_loss_weight`; `prior_loss_type` "l2" gives the squared error instead).

Layout: activations are (batch, frames, channels); masks (batch, frames) with 1 = valid.
Mel frames are 50 Hz (hop 480 at 24 kHz), one per input hidden frame (length ratio 1.0).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, ClassVar

import jax
import jax.numpy as jnp
from flax import linen as nn

from omni_jax.layers import Dense, LayerNorm, RMSNorm, dot_product_attention, dtype_of
from omni_jax.layers.conv1d import Conv1d
from omni_jax.models.config import ModelConfig
from omni_jax.models.remat import remat_policy
from omni_jax.models.whisper import sinusoids

Array = jax.Array


@dataclasses.dataclass(frozen=True)
class FlowMatchingConfig(ModelConfig):
    WHERE: ClassVar[str] = "config.model.flow_matching"

    n_mels: int = 80
    # prenet
    prenet_in_dim: int = 1280
    prenet_d_model: int = 512
    prenet_heads: int = 8
    prenet_ffn_dim: int = 2048
    prenet_layers: int = 12
    prenet_max_positions: int = 5000
    prenet_length_ratio: float = 1.0
    # estimator (U-Net)
    channels: tuple[int, ...] = (256,)
    num_heads: int = 8
    attention_head_dim: int = 64
    n_blocks: int = 4
    num_mid_blocks: int = 12
    ff_mult: int = 4
    chunk_size: int = 100  # chunk-causal attention; 0 = padding mask only
    time_scale: float = 1000.0
    # conditional flow matching
    sigma_min: float = 1e-6
    t_scheduler: str = "cosine"  # cosine | linear
    training_cfg_rate: float = 0.2
    inference_cfg_rate: float = 0.7
    n_timesteps: int = 10
    reg_loss_type: str = "l1"  # l1 | l2
    loss_weight: float = 1.0
    prior_loss_weight: float = 1.0
    prior_loss_type: str = "l1"  # l1 | l2
    initializer_range: float = 0.02
    remat_policy: str = "none"

    def validate(self) -> None:
        if len(self.channels) != 1:
            raise ValueError(f"flow matching: channels={list(self.channels)}; only the single-level U-Net of the "
                             "release (one down, mid blocks, one up; e.g. channels=[256]) is implemented")
        if self.prenet_length_ratio != 1.0:
            raise ValueError(f"flow matching: prenet_length_ratio={self.prenet_length_ratio}; only 1.0 (one mel frame "
                             "per hidden frame, the release setting) is implemented")
        if self.prenet_d_model % self.prenet_heads:
            raise ValueError(f"flow matching: prenet_d_model={self.prenet_d_model} is not a multiple of prenet_heads={self.prenet_heads}")
        for key, val, ok in (("t_scheduler", self.t_scheduler, ("cosine", "linear")),
                             ("reg_loss_type", self.reg_loss_type, ("l1", "l2")),
                             ("prior_loss_type", self.prior_loss_type, ("l1", "l2"))):
            if val not in ok:
                raise ValueError(f"flow matching: {key}={val!r}; use one of {ok}")
        if (2 * self.n_mels) % 2:
            raise ValueError("flow matching: the time sinusoid needs an even width")

    @property
    def time_embed_dim(self) -> int:
        return self.channels[0] * 4


def time_sinusoid(t: Array, dim: int, scale: float = 1000.0) -> Array:
    """Matcha-TTS SinusoidalPosEmb: t (B,) -> (B, dim) = [sin | cos](scale * t * freqs)."""
    half = dim // 2
    freqs = jnp.exp(jnp.arange(half, dtype=jnp.float32) * -(math.log(10000.0) / (half - 1)))
    arg = scale * t.astype(jnp.float32)[:, None] * freqs[None, :]
    return jnp.concatenate([jnp.sin(arg), jnp.cos(arg)], axis=-1)


def mish(x: Array) -> Array:
    return x * jnp.tanh(jax.nn.softplus(x))


def chunk_attention_mask(mask: Array, chunk_size: int) -> Array:
    """(B, T) valid mask -> (B, T, T): query i sees key j iff j is valid and j lies in
    i's chunk or an earlier one (cosyvoice subsequent_chunk_mask & key padding)."""
    t = mask.shape[1]
    keys = mask.astype(bool)[:, None, :]
    if chunk_size <= 0:
        return jnp.broadcast_to(keys, (mask.shape[0], t, t))
    i = jnp.arange(t)
    allowed = i[None, :] < ((i[:, None] // chunk_size) + 1) * chunk_size
    return allowed[None] & keys


def _kaiming(in_axis, out_axis):
    return nn.initializers.variance_scaling(2.0, "fan_in", "normal", in_axis=in_axis, out_axis=out_axis)


# ------------------------------------------------------------------------- prenet


class PrenetLayer(nn.Module):
    """OmniWhisperTransformerLayer with RMSNorm, causal within each sequence (scan body)."""

    cfg: FlowMatchingConfig

    @nn.compact
    def __call__(self, x, segment_ids):
        cfg = self.cfg
        dtype, pdtype = dtype_of(cfg.dtype), dtype_of(cfg.param_dtype)
        kw = dict(dtype=dtype, param_dtype=pdtype, kernel_init=nn.initializers.normal(cfg.initializer_range))
        h_, hd = cfg.prenet_heads, cfg.prenet_d_model // cfg.prenet_heads
        x = nn.with_logical_constraint(x, ("activation_batch", "activation_length", "activation_embed"))
        h = RMSNorm(1e-6, dtype, pdtype, name="self_attn_layer_norm")(x)
        q = Dense((h_, hd), kernel_axes=("embed", "heads", "head_dim"), use_bias=True, name="q_proj", **kw)(h)
        k = Dense((h_, hd), kernel_axes=("embed", "heads", "head_dim"), use_bias=False, name="k_proj", **kw)(h)
        v = Dense((h_, hd), kernel_axes=("embed", "heads", "head_dim"), use_bias=True, name="v_proj", **kw)(h)
        a = dot_product_attention(q, k, v, q_segment_ids=segment_ids, kv_segment_ids=segment_ids, causal=True)
        x = x + Dense(cfg.prenet_d_model, kernel_axes=("heads", "head_dim", "embed"), in_dims=2, use_bias=True,
                      name="out_proj", **kw)(a)
        h = RMSNorm(1e-6, dtype, pdtype, name="final_layer_norm")(x)
        h = Dense(cfg.prenet_ffn_dim, kernel_axes=("embed", "mlp"), use_bias=True, name="fc1", **kw)(h)
        h = nn.with_logical_constraint(nn.gelu(h, approximate=False), ("activation_batch", "activation_length", "activation_mlp"))
        x = x + Dense(cfg.prenet_d_model, kernel_axes=("mlp", "embed"), use_bias=True, name="fc2", **kw)(h)
        return x, None


class Prenet(nn.Module):
    cfg: FlowMatchingConfig

    @nn.compact
    def __call__(self, hidden: Array, mask: Array) -> Array:
        """hidden (B, T, prenet_in_dim), mask (B, T) -> mu (B, T, n_mels)."""
        cfg = self.cfg
        dtype, pdtype = dtype_of(cfg.dtype), dtype_of(cfg.param_dtype)
        kw = dict(dtype=dtype, param_dtype=pdtype, kernel_init=nn.initializers.normal(cfg.initializer_range))
        if hidden.shape[-1] != cfg.prenet_in_dim:
            raise ValueError(f"flow-matching prenet input has width {hidden.shape[-1]}, config.prenet_in_dim is {cfg.prenet_in_dim}")
        # stored in the release, never added to the activations
        self.param("positional_embedding",
                   nn.with_logical_partitioning(
                       lambda *_: jnp.asarray(sinusoids(cfg.prenet_max_positions, cfg.prenet_d_model), pdtype),
                       ("positions", "embed")),
                   (cfg.prenet_max_positions, cfg.prenet_d_model))
        h = Dense(4 * cfg.prenet_d_model, kernel_axes=("embed", "mlp"), use_bias=True, name="in_mlp_0", **kw)(hidden)
        h = Dense(cfg.prenet_d_model, kernel_axes=("mlp", "embed"), use_bias=True, name="in_mlp_2", **kw)(nn.silu(h))
        seg = mask.astype(jnp.int32)
        layer = PrenetLayer
        if cfg.remat_policy != "none":
            layer = nn.remat(PrenetLayer, policy=remat_policy(cfg.remat_policy), prevent_cse=False)
        h, _ = nn.scan(layer, variable_axes={"params": 0}, split_rngs={"params": True}, in_axes=(nn.broadcast,),
                       length=cfg.prenet_layers, metadata_params={nn.PARTITION_NAME: "layers"},
                       )(cfg, name="layers")(h, seg)
        h = jnp.where(mask[..., None] > 0, h, 0)
        h = RMSNorm(1e-6, dtype, pdtype, name="final_norm")(h)
        mu = Dense(cfg.n_mels, kernel_axes=("embed", "channels"), use_bias=False, name="out_proj", **kw)(h)
        return mu.astype(jnp.float32)


# ---------------------------------------------------------------------- estimator


class CausalBlock1D(nn.Module):
    """CausalConv1d(k3) -> LayerNorm over channels -> Mish, masked in and out."""

    features: int
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x, m):
        y = Conv1d(self.features, 3, padding="causal", dtype=self.dtype, param_dtype=self.param_dtype,
                   kernel_init=_kaiming((0, 1), 2), name="conv")(x * m)
        y = LayerNorm(1e-5, dtype=self.dtype, param_dtype=self.param_dtype, name="norm")(y)
        return mish(y) * m


class ResnetBlock(nn.Module):
    features: int
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x, m, temb):
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        h = CausalBlock1D(self.features, name="block1", **kw)(x, m)
        h = h + Dense(self.features, kernel_axes=("mlp", "channels"), use_bias=True, kernel_init=_kaiming(0, 1),
                      name="mlp", **kw)(mish(temb))[:, None, :]
        h = CausalBlock1D(self.features, name="block2", **kw)(h, m)
        return h + Conv1d(self.features, 1, kernel_init=_kaiming((0, 1), 2), name="res_conv", **kw)(x * m)


class TransformerBlock(nn.Module):
    """Matcha-TTS BasicTransformerBlock (layer_norm, self-attention only, GELU feed-forward)."""

    cfg: FlowMatchingConfig
    dim: int

    @nn.compact
    def __call__(self, x, attn_mask):
        cfg = self.cfg
        kw = dict(dtype=dtype_of(cfg.dtype), param_dtype=dtype_of(cfg.param_dtype))
        hd, nh = cfg.attention_head_dim, cfg.num_heads
        h = LayerNorm(1e-5, name="norm1", **kw)(x)
        q = Dense((nh, hd), kernel_axes=("channels", "heads", "head_dim"), kernel_init=_kaiming(0, (1, 2)), name="to_q", **kw)(h)
        k = Dense((nh, hd), kernel_axes=("channels", "heads", "head_dim"), kernel_init=_kaiming(0, (1, 2)), name="to_k", **kw)(h)
        v = Dense((nh, hd), kernel_axes=("channels", "heads", "head_dim"), kernel_init=_kaiming(0, (1, 2)), name="to_v", **kw)(h)
        a = dot_product_attention(q, k, v, mask=attn_mask)
        x = x + Dense(self.dim, kernel_axes=("heads", "head_dim", "channels"), in_dims=2, use_bias=True,
                      kernel_init=_kaiming((0, 1), 2), name="to_out", **kw)(a)
        h = LayerNorm(1e-5, name="norm3", **kw)(x)
        h = Dense(cfg.ff_mult * self.dim, kernel_axes=("channels", "mlp"), use_bias=True, kernel_init=_kaiming(0, 1),
                  name="ff_proj", **kw)(h)
        h = nn.gelu(h, approximate=False)
        return x + Dense(self.dim, kernel_axes=("mlp", "channels"), use_bias=True, kernel_init=_kaiming(0, 1),
                         name="ff_out", **kw)(h)


class UNetBlock(nn.Module):
    """ResNet block + `n_blocks` transformer blocks (+ a CausalConv1d k3 sampler)."""

    cfg: FlowMatchingConfig
    features: int
    sampler: str | None = None  # "downsample" | "upsample" | None (mid blocks)

    @nn.compact
    def __call__(self, x, m, temb, attn_mask):
        cfg = self.cfg
        kw = dict(dtype=dtype_of(cfg.dtype), param_dtype=dtype_of(cfg.param_dtype))
        x = ResnetBlock(self.features, name="resnet", **kw)(x, m, temb)
        x = nn.with_logical_constraint(x, ("activation_batch", "activation_length", "activation_embed"))
        for j in range(cfg.n_blocks):
            x = TransformerBlock(cfg, self.features, name=f"transformer_{j}")(x, attn_mask)
        if self.sampler is None:
            return x
        skip = x
        x = Conv1d(self.features, 3, padding="causal", kernel_init=_kaiming((0, 1), 2), name=self.sampler, **kw)(x * m)
        return x, skip


class MidBlock(nn.Module):
    cfg: FlowMatchingConfig

    @nn.compact
    def __call__(self, x, m, temb, attn_mask):
        return UNetBlock(self.cfg, self.cfg.channels[0], name="block")(x, m, temb, attn_mask), None


class Estimator(nn.Module):
    """The causal U-Net velocity field v(x_t, mu, t) (CosyVoice ConditionalDecoder, causal)."""

    cfg: FlowMatchingConfig

    @nn.compact
    def __call__(self, x: Array, mask: Array, mu: Array, t: Array) -> Array:
        """x, mu (B, T, n_mels); mask (B, T); t (B,) -> velocity (B, T, n_mels), fp32."""
        cfg = self.cfg
        dtype, pdtype = dtype_of(cfg.dtype), dtype_of(cfg.param_dtype)
        kw = dict(dtype=dtype, param_dtype=pdtype)
        ch = cfg.channels[0]
        temb = time_sinusoid(t, 2 * cfg.n_mels, cfg.time_scale)
        temb = Dense(cfg.time_embed_dim, kernel_axes=("channels", "mlp"), use_bias=True, kernel_init=_kaiming(0, 1),
                     name="time_mlp_1", **kw)(temb)
        temb = Dense(cfg.time_embed_dim, kernel_axes=("mlp", "channels_out"), use_bias=True, kernel_init=_kaiming(0, 1),
                     name="time_mlp_2", **kw)(nn.silu(temb))
        m = mask.astype(dtype)[..., None]
        attn_mask = chunk_attention_mask(mask, cfg.chunk_size)
        h = jnp.concatenate([x.astype(dtype), mu.astype(dtype)], axis=-1)
        h, skip = UNetBlock(cfg, ch, "downsample", name="down")(h, m, temb, attn_mask)
        mid = MidBlock
        if cfg.remat_policy != "none":
            mid = nn.remat(MidBlock, policy=remat_policy(cfg.remat_policy), prevent_cse=False)
        h, _ = nn.scan(mid, variable_axes={"params": 0}, split_rngs={"params": True},
                       in_axes=(nn.broadcast, nn.broadcast, nn.broadcast), length=cfg.num_mid_blocks,
                       metadata_params={nn.PARTITION_NAME: "layers"})(cfg, name="mid")(h, m, temb, attn_mask)
        h = jnp.concatenate([h, skip], axis=-1)
        h, _ = UNetBlock(cfg, ch, "upsample", name="up")(h, m, temb, attn_mask)
        h = CausalBlock1D(ch, name="final_block", **kw)(h, m)
        out = Conv1d(cfg.n_mels, 1, kernel_init=_kaiming((0, 1), 2), name="final_proj", **kw)(h * m)
        return (out * m).astype(jnp.float32)


class FlowMatchingDecoder(nn.Module):
    """prenet + estimator. Methods: prenet(hidden, mask) -> mu; estimate(x, mask, mu, t) -> v;
    __call__(hidden, mask, x, t) runs both (for init)."""

    cfg: FlowMatchingConfig

    def setup(self):
        self.prenet_module = Prenet(self.cfg, name="prenet")
        self.estimator = Estimator(self.cfg)

    def prenet(self, hidden: Array, mask: Array) -> Array:
        return self.prenet_module(hidden, mask)

    def estimate(self, x: Array, mask: Array, mu: Array, t: Array) -> Array:
        return self.estimator(x, mask, mu, t)

    def __call__(self, hidden: Array, mask: Array, x: Array, t: Array) -> Array:
        return self.estimate(x, mask, self.prenet(hidden, mask), t)


# ----------------------------------------------------------- conditional flow matching


def _schedule(cfg: FlowMatchingConfig, s: Array) -> Array:
    return 1.0 - jnp.cos(s * 0.5 * jnp.pi) if cfg.t_scheduler == "cosine" else s


def flow_matching_loss_sums(model: FlowMatchingDecoder, params: Any, hidden: Array, mel: Array, mask: Array,
                            rng: Array) -> dict[str, Array]:
    """Sums for the CFM loss and the prenet prior loss (divide by frames * n_mels).

    hidden (B, T, prenet_in_dim), mel (B, T, n_mels) target x1, mask (B, T); rng one key or (B, 2)
    per-row keys.
    Returns {"cfm": sum |v - u| (or squared), "prior": sum |mu - x1| (or squared),
             "prior_abs": sum |mu - x1| (the MAE metric)}.
    """
    cfg = model.cfg
    b = mel.shape[0]
    x1 = mel.astype(jnp.float32)
    if rng.ndim == 2:  # one key per row (omni_jax/train/rng.py row_keys): draws independent of the batch split
        ks = jax.vmap(lambda k: jax.random.split(k, 3))(rng)
        t_raw = jax.vmap(lambda k: jax.random.uniform(k, (), jnp.float32))(ks[:, 0])
        z = jax.vmap(lambda k: jax.random.normal(k, x1.shape[1:], jnp.float32))(ks[:, 1])
        keep_raw = jax.vmap(lambda k: jax.random.uniform(k, ()))(ks[:, 2])
    else:
        k_t, k_z, k_cfg = jax.random.split(rng, 3)
        t_raw = jax.random.uniform(k_t, (b,), jnp.float32)
        z = jax.random.normal(k_z, x1.shape, jnp.float32)
        keep_raw = jax.random.uniform(k_cfg, (b,))
    variables = {"params": params}
    m = mask.astype(jnp.float32)[..., None]
    mu = model.apply(variables, hidden, mask, method=FlowMatchingDecoder.prenet)
    t = _schedule(cfg, t_raw)
    tt = t[:, None, None]
    y = (1.0 - (1.0 - cfg.sigma_min) * tt) * z + tt * x1
    u = x1 - (1.0 - cfg.sigma_min) * z
    keep = (keep_raw > cfg.training_cfg_rate).astype(jnp.float32)
    pred = model.apply(variables, y, mask, mu * keep[:, None, None], t, method=FlowMatchingDecoder.estimate)
    d = (pred - u) * m
    cfm = jnp.abs(d).sum() if cfg.reg_loss_type == "l1" else jnp.square(d).sum()
    dp = (mu - x1) * m
    prior = jnp.abs(dp).sum() if cfg.prior_loss_type == "l1" else jnp.square(dp).sum()
    return {"cfm": cfm, "prior": prior, "prior_abs": jnp.abs(dp).sum()}


def sample_mel(model: FlowMatchingDecoder, params: Any, mu: Array, mask: Array, rng: Array, *,
               n_timesteps: int | None = None, cfg_rate: float | None = None, temperature: float = 1.0,
               noise: Array | None = None) -> Array:
    """Euler ODE from noise to mel with classifier-free guidance. mu (B, T, n_mels), mask (B, T).
    `noise` (B, T, n_mels): the starting x0 (default: drawn from `rng`)."""
    cfg = model.cfg
    n = cfg.n_timesteps if n_timesteps is None else n_timesteps
    w = cfg.inference_cfg_rate if cfg_rate is None else cfg_rate
    b = mu.shape[0]
    x = (jax.random.normal(rng, mu.shape, jnp.float32) if noise is None else noise.astype(jnp.float32)) * temperature
    t_span = _schedule(cfg, jnp.linspace(0.0, 1.0, n + 1, dtype=jnp.float32))
    mu2 = jnp.concatenate([mu, jnp.zeros_like(mu)], axis=0)
    mask2 = jnp.concatenate([mask, mask], axis=0)

    def step(x, ts):
        t0, t1 = ts
        v = model.apply({"params": params}, jnp.concatenate([x, x], 0), mask2, mu2, jnp.full((2 * b,), t0),
                        method=FlowMatchingDecoder.estimate)
        v = (1.0 + w) * v[:b] - w * v[b:]
        return x + (t1 - t0) * v, None

    x, _ = jax.lax.scan(step, x, (t_span[:-1], t_span[1:]))
    return x * mask.astype(jnp.float32)[..., None]


def decode_mel(model: FlowMatchingDecoder, params: Any, hidden: Array, mask: Array, rng: Array, **kw) -> Array:
    """Audio-decoder hidden states (before dconv2) -> mel (B, T, n_mels): prenet, then CFM."""
    mu = model.apply({"params": params}, hidden, mask, method=FlowMatchingDecoder.prenet)
    return sample_mel(model, params, mu, mask, rng, **kw)
