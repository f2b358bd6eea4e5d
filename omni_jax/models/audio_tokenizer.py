"""Baichuan-Audio-Tokenizer: Conv-GMLP bridge + 8-stage residual VQ (ARCHITECTURE.md 1.4).

Numerical reference: the release's `OmniAudioVQBridgeTokenizer` and `VectorQuantize` /
`EuclideanCodebook` (audio_modeling_omni.py, vector_quantize.py; re-typed from torch.nn
primitives in tests/audio_reference.py, names `audio_tokenizer.audio_bridge_model.*`).

  features   pad time to a multiple of `pool`; g = gate_proj(x), u = up_proj(x) (Conv1d d -> pool*d,
             kernel = stride = pool, no bias); shortcut = pool consecutive frames stacked;
             z = LayerNorm(down_proj(silu(g) * u) + shortcut). Lengths: floor(enc_len / pool).
  quantize   8 stages; each picks the nearest codeword of the current residual (Euclidean, fp32,
             HIGHEST-precision matmul, the release's -sqrt(clamp(|x|^2+|e|^2-2xe, 0)) argmax, first
             index on ties) and subtracts it: codes (B, N, 8); padding frames get code 0.
  decode     sum of the 8 codewords (fp32, stage 7 down to 0 as the release sums) -> proj_decoder.

Codebooks are STATE, not parameters. Every stage's `embed`, `embed_avg` and `cluster_size` live in
the "vq_stats" collection (vq_stats/audio_bridge/vq_N/...). They are moved only by the EMA update
(`ema_update`), never by gradients or Adam: the stage regex table (which must cover every
`params` leaf) never sees them, checkpoints carry them in TrainState.model_state, and a frozen
tokenizer in later stages simply keeps them. Apply with {"params": ..., "vq_stats": ...}.

Training (`quantize_train`): straight-through estimator (forward = codewords, gradient = identity
to the continuous features), commitment loss sum_i ||r_i - sg(q_i)||^2 (r_i the residual entering
stage i), quantizer dropout (with probability `stage_dropout` a clip keeps only its first n stages,
n uniform in [min_stages, 8]: stages >= 2 are the ones dropped), and the statistics the EMA update
needs (per-code counts and residual sums, and reservoir candidates for dead-code restarts).
`ema_update`: cluster_size and embed_avg decay toward the batch statistics, embed =
embed_avg / Laplace-smoothed cluster_size; codes whose cluster_size falls below
`dead_code_threshold` are restarted at residual vectors sampled from the batch.

`AudioTokenizer` composes encoder (`audio_encoder`), bridge (`audio_bridge`) and decoder
(`audio_decoder`): mel -> codes -> mel.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, ClassVar, Mapping

import jax
import jax.numpy as jnp
from flax import linen as nn

from omni_jax.layers import Dense, LayerNorm, dtype_of
from omni_jax.models.config import ModelConfig
from omni_jax.models.audio_decoder import AudioDecoder, AudioDecoderConfig
from omni_jax.models.whisper import WhisperEncoder, WhisperEncoderConfig, length_mask

Array = jax.Array
_HI = jax.lax.Precision.HIGHEST
CODE_AXES = ("activation_batch", "activation_length", "activation_embed")
RELEASE_CODEBOOK_SIZES = (8192, 4096, 2048, 1024, 1024, 1024, 1024, 1024)


@dataclasses.dataclass(frozen=True)
class AudioBridgeConfig(ModelConfig):
    WHERE: ClassVar[str] = "config.model.audio_bridge"

    d_model: int = 1280  # encoder width in, decoder width out (proj_decoder)
    pool: int = 4  # avg_pooler: 50 Hz -> 12.5 Hz; the code dim is pool * d_model
    codebook_sizes: tuple[int, ...] = RELEASE_CODEBOOK_SIZES
    layer_norm_eps: float = 1e-5
    initializer_range: float = 0.02
    # ---- training the tokenizer ----
    ema_decay: float = 0.99
    ema_eps: float = 1e-5  # Laplace smoothing of cluster sizes
    dead_code_threshold: float = 0.1  # EMA cluster size below which a code is restarted
    restart_candidates: int = 512  # residual vectors sampled per stage and step for restarts
    stage_dropout: float = 0.0  # probability that a clip keeps only its first n stages
    min_stages: int = 1  # n is uniform in [min_stages, num_stages]

    def __post_init__(self):
        object.__setattr__(self, "codebook_sizes", tuple(int(k) for k in self.codebook_sizes))

    def validate(self) -> None:
        if not self.codebook_sizes:
            raise ValueError("audio bridge: codebook_sizes is empty")
        if not 1 <= self.min_stages <= len(self.codebook_sizes):
            raise ValueError(f"audio bridge: min_stages={self.min_stages} must be in [1, {len(self.codebook_sizes)}]")
        if not 0.0 <= self.stage_dropout <= 1.0 or not 0.0 < self.ema_decay < 1.0:
            raise ValueError("audio bridge: stage_dropout must be in [0, 1] and ema_decay in (0, 1)")

    @property
    def code_dim(self) -> int:
        return self.pool * self.d_model

    @property
    def num_stages(self) -> int:
        return len(self.codebook_sizes)


def nearest_codes(x: Array, embed: Array) -> Array:
    """Index of the nearest codeword, the release's way: argmax of -sqrt(clamp(|x|^2 + |e|^2 - 2 x.e, 0))
    in fp32 (HIGHEST precision), the first index on ties. x (..., D), embed (K, D) -> (...) int32."""
    x = x.astype(jnp.float32)
    e = embed.astype(jnp.float32)
    x2 = jnp.sum(x * x, axis=-1, keepdims=True)
    e2 = jnp.sum(e * e, axis=-1)
    xe = jnp.einsum("...d,kd->...k", x, e, precision=_HI) * -2.0
    dist = jnp.sqrt(jnp.maximum(x2 + e2 + xe, 0.0))
    return jnp.argmin(dist, axis=-1).astype(jnp.int32)


class Codebook(nn.Module):
    """One RVQ stage's state in the "vq_stats" collection: embed (K, D), embed_avg (K, D),
    cluster_size (K,). Initialised like the release (kaiming-uniform embed, embed_avg = embed,
    cluster_size = 1, so embed == embed_avg / cluster_size)."""

    size: int
    dim: int

    def setup(self):
        if not self.is_initializing() and not self.has_variable("vq_stats", "embed"):
            raise ValueError(
                f"audio bridge: the 'vq_stats' collection (RVQ codebooks) is missing for {self.name}; "
                "apply with {'params': ..., 'vq_stats': ...} (see AudioTokenizerTask.init_state)")
        bound = math.sqrt(6.0 / self.dim)
        axes = ("codebook", "embed")
        self.embed = self.variable("vq_stats", "embed", lambda: nn.LogicallyPartitioned(
            jax.random.uniform(self.make_rng("params"), (self.size, self.dim), jnp.float32, -bound, bound), axes))
        self.embed_avg = self.variable("vq_stats", "embed_avg", lambda: nn.LogicallyPartitioned(self.embed.value, axes))
        self.cluster_size = self.variable("vq_stats", "cluster_size", lambda: nn.LogicallyPartitioned(
            jnp.ones((self.size,), jnp.float32), ("codebook",)))

    def __call__(self) -> Array:
        return self.embed.value


class AudioBridge(nn.Module):
    """Conv-GMLP + RVQ + proj_decoder. Methods (via apply(..., method=...)):

      features(x, enc_lengths) -> (z (B, N, pool*d), lengths (B,))   N = ceil(T / pool)
      quantize(z, lengths) -> (codes (B, N, S) int32, quantized (B, N, pool*d) fp32)
      quantize_train(z, lengths, rng) -> dict(quantized (STE), codes, commit_sq_sum, stats, num_stages)
          rng: one key, or one key per row ((B, 2), omni_jax/train/rng.py row_keys: the draws then do
          not depend on how the batch is split into microbatches)
      decode(codes, lengths) -> (B, N, d)                      proj_decoder(sum of codewords)
      project(quantized, lengths) -> (B, N, d)                 proj_decoder of given code vectors
      __call__(x, enc_lengths) -> (codes, lengths)             encoder output -> codes
    """

    cfg: AudioBridgeConfig

    def setup(self):
        cfg = self.cfg
        kw = dict(dtype=dtype_of(cfg.dtype), param_dtype=dtype_of(cfg.param_dtype),
                  kernel_init=nn.initializers.normal(cfg.initializer_range))
        D = cfg.code_dim
        self.gate_proj = Dense(D, ("conv_window", "embed", "mlp"), in_dims=2, **kw)
        self.up_proj = Dense(D, ("conv_window", "embed", "mlp"), in_dims=2, **kw)
        self.down_proj = Dense(D, ("mlp", "embed"), **kw)
        self.layer_norm = LayerNorm(cfg.layer_norm_eps, dtype=kw["dtype"], param_dtype=kw["param_dtype"])
        self.proj_decoder = Dense(cfg.d_model, ("embed", "mlp"), use_bias=True, **kw)
        self.codebooks = [Codebook(k, D, name=f"vq_{i}") for i, k in enumerate(cfg.codebook_sizes)]

    def features(self, x: Array, enc_lengths: Array) -> tuple[Array, Array]:
        cfg = self.cfg
        if x.ndim != 3 or x.shape[-1] != cfg.d_model:
            raise ValueError(f"audio bridge expects encoder output (batch, frames, {cfg.d_model}), got {x.shape}")
        b, t, d = x.shape
        enc_lengths = jnp.asarray(enc_lengths, jnp.int32)
        x = jnp.where(length_mask(enc_lengths, t)[..., None], x, 0)
        pad = (-t) % cfg.pool
        x = jnp.pad(x, ((0, 0), (0, pad), (0, 0)))
        groups = x.reshape(b, (t + pad) // cfg.pool, cfg.pool, d)
        g, u = self.gate_proj(groups), self.up_proj(groups)
        h = nn.with_logical_constraint(nn.silu(g) * u, ("activation_batch", "activation_length", "activation_mlp"))
        z = self.layer_norm(self.down_proj(h) + groups.reshape(b, groups.shape[1], cfg.code_dim).astype(h.dtype))
        return nn.with_logical_constraint(z, CODE_AXES), enc_lengths // cfg.pool

    def quantize(self, z: Array, lengths: Array) -> tuple[Array, Array]:
        valid = length_mask(lengths, z.shape[1])
        residual, codes, total = z, [], jnp.zeros(z.shape, jnp.float32)
        for cb in self.codebooks:
            embed = cb()
            idx = jnp.where(valid, nearest_codes(residual, embed), 0)
            q = jnp.where(valid[..., None], jnp.take(embed, idx, axis=0), 0.0)
            residual = (residual.astype(jnp.float32) - q).astype(z.dtype)  # the release casts back
            total = total + q
            codes.append(idx)
        return jnp.stack(codes, axis=-1), total

    def quantize_train(self, z: Array, lengths: Array, rng: Array, *, dropout: bool = True) -> dict[str, Any]:
        cfg = self.cfg
        b, n, dim = z.shape
        valid = length_mask(lengths, n)
        s = cfg.num_stages
        if rng.ndim == 2:  # one key per row (omni_jax/train/rng.py row_keys): draws independent of the batch split
            k_drop, k_num, k_cand = jnp.moveaxis(jax.vmap(lambda k: jax.random.split(k, 3))(rng), 1, 0)
            short_u = jax.vmap(lambda k: jax.random.uniform(k, ()))(k_drop)
            short_n = jax.vmap(lambda k: jax.random.randint(k, (), cfg.min_stages, s + 1))(k_num)
            prio_u = lambda i: jax.vmap(lambda k: jax.random.uniform(jax.random.fold_in(k, i), (n,), minval=1e-6,
                                                                     maxval=1.0))(k_cand)
        else:
            k_drop, k_num, k_cand = jax.random.split(rng, 3)
            short_u = jax.random.uniform(k_drop, (b,))
            short_n = jax.random.randint(k_num, (b,), cfg.min_stages, s + 1)
            prio_u = lambda i: jax.random.uniform(jax.random.fold_in(k_cand, i), (b, n), minval=1e-6, maxval=1.0)
        num = jnp.full((b,), s, jnp.int32)
        if dropout and cfg.stage_dropout > 0:
            num = jnp.where(short_u < cfg.stage_dropout, short_n, s)
        # always `restart_candidates` slots (priority -1 = empty when the batch has fewer vectors), so
        # the statistics of m microbatches merge to exactly those of the whole batch
        n_cand, pad = cfg.restart_candidates, max(cfg.restart_candidates - b * n, 0)
        residual = z.astype(jnp.float32)
        q_sum = jnp.zeros_like(residual)
        commit = jnp.zeros((), jnp.float32)
        codes, stats = [], {}
        for i, cb in enumerate(self.codebooks):
            embed = cb()
            r_sg = jax.lax.stop_gradient(residual)
            idx = nearest_codes(r_sg, embed)
            q = jnp.take(embed, idx, axis=0)
            keep = valid & (i < num)[:, None]
            w = keep.astype(jnp.float32)
            commit = commit + jnp.sum(w * jnp.sum(jnp.square(residual - q), axis=-1))
            q_sum = q_sum + q * w[..., None]
            flat_idx, flat_w = idx.reshape(-1), w.reshape(-1)
            prio = jnp.pad(jnp.where(keep, prio_u(i), -1.0).reshape(-1), (0, pad), constant_values=-1.0)
            top_p, top_i = jax.lax.top_k(prio, n_cand)
            stats[cb.name] = dict(
                counts=jax.ops.segment_sum(flat_w, flat_idx, num_segments=cb.size),
                sums=jax.ops.segment_sum(r_sg.reshape(-1, dim) * flat_w[:, None], flat_idx, num_segments=cb.size),
                candidates=jnp.pad(r_sg.reshape(-1, dim), ((0, pad), (0, 0)))[top_i],
                priority=top_p,
            )
            codes.append(jnp.where(valid, idx, 0))
            residual = (residual - q).astype(z.dtype).astype(jnp.float32)
        ste = z + jax.lax.stop_gradient(q_sum.astype(z.dtype) - z)
        return dict(quantized=nn.with_logical_constraint(ste, CODE_AXES), codes=jnp.stack(codes, -1),
                    commit_sq_sum=commit, stats=stats, num_stages=num)

    def decode(self, codes: Array, lengths: Array) -> Array:
        cfg = self.cfg
        if codes.ndim != 3 or codes.shape[-1] != cfg.num_stages:
            raise ValueError(f"audio bridge: codes must be (batch, frames, {cfg.num_stages}), got {codes.shape}")
        total = None
        for i in range(cfg.num_stages - 1, -1, -1):  # the release sums stage 7 first
            e = jnp.take(self.codebooks[i](), codes[..., i], axis=0)
            total = e if total is None else total + e
        return self.project(total, lengths)

    def project(self, quantized: Array, lengths: Array) -> Array:
        y = self.proj_decoder(quantized.astype(dtype_of(self.cfg.dtype)))
        return jnp.where(length_mask(lengths, y.shape[1])[..., None], y, 0)

    def __call__(self, x: Array, enc_lengths: Array) -> tuple[Array, Array]:
        z, lengths = self.features(x, enc_lengths)
        codes, q = self.quantize(z, lengths)
        if self.is_initializing():  # create proj_decoder too
            self.project(q, lengths)
        return codes, lengths


# ---------------------------------------------------------------------------------
# EMA codebook update (outside the model: a pure function of state and batch statistics).
# ---------------------------------------------------------------------------------


def merge_stats(a: Mapping[str, Any], b: Mapping[str, Any]) -> dict[str, Any]:
    """Combines the statistics of two microbatches: counts and sums add; restart candidates keep
    the highest random priorities of both (so the result is a uniform sample of the union)."""
    out = {}
    for name in a:
        x, y = a[name], b[name]
        prio = jnp.concatenate([x["priority"], y["priority"]])
        cand = jnp.concatenate([x["candidates"], y["candidates"]])
        top_p, top_i = jax.lax.top_k(prio, x["priority"].shape[0])
        out[name] = dict(counts=x["counts"] + y["counts"], sums=x["sums"] + y["sums"],
                         candidates=cand[top_i], priority=top_p)
    return out


def ema_update(vq_stats: Mapping[str, Any], stats: Mapping[str, Any], cfg: AudioBridgeConfig) -> tuple[dict, dict]:
    """One EMA step of every codebook + dead-code restarts.

    vq_stats: {"vq_N": {"embed", "embed_avg", "cluster_size"}} (the bridge's state);
    stats: quantize_train's `stats` (summed over the batch with merge_stats).
    Returns (new vq_stats, metrics: restarted codes, used codes, stage-0 perplexity).
    """
    new, metrics = {}, {}
    d, eps = cfg.ema_decay, cfg.ema_eps
    for i, name in enumerate(sorted(vq_stats, key=lambda s: int(s.split("_")[-1]))):
        st, bs = vq_stats[name], stats[name]
        k = st["cluster_size"].shape[0]
        cs = d * st["cluster_size"] + (1 - d) * bs["counts"]
        ea = d * st["embed_avg"] + (1 - d) * bs["sums"]
        total = cs.sum()
        smoothed = (cs + eps) / (total + k * eps) * total
        embed = ea / smoothed[:, None]
        # dead-code restart: the m-th dead code takes the (m mod n_valid)-th sampled residual
        dead = cs < cfg.dead_code_threshold
        n_valid = jnp.sum(bs["priority"] > 0)
        rank = jnp.cumsum(dead) - 1
        pick = jnp.take(bs["candidates"], rank % jnp.maximum(n_valid, 1), axis=0)
        restart = dead & (n_valid > 0)
        embed = jnp.where(restart[:, None], pick, embed)
        ea = jnp.where(restart[:, None], pick, ea)
        cs = jnp.where(restart, 1.0, cs)
        new[name] = dict(embed=embed, embed_avg=ea, cluster_size=cs)
        metrics[f"vq/{i}_restarted"] = restart.sum().astype(jnp.float32)
        metrics[f"vq/{i}_used"] = (bs["counts"] > 0).sum().astype(jnp.float32)
        if i == 0:
            p = bs["counts"] / jnp.maximum(bs["counts"].sum(), 1.0)
            metrics["vq/0_perplexity"] = jnp.exp(-jnp.sum(jnp.where(p > 0, p * jnp.log(jnp.where(p > 0, p, 1.0)), 0.0)))
    return new, metrics


# ---------------------------------------------------------------------------------
# The whole tokenizer.
# ---------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class AudioTokenizerConfig:
    encoder: WhisperEncoderConfig = WhisperEncoderConfig()
    bridge: AudioBridgeConfig = AudioBridgeConfig()
    decoder: AudioDecoderConfig = AudioDecoderConfig()

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], where: str = "config.model.audio") -> "AudioTokenizerConfig":
        d = dict(d)
        unknown = sorted(set(d) - {"encoder", "bridge", "decoder"})
        if unknown:
            raise ValueError(f"{where}: unknown key(s) {unknown}. Valid keys: ['bridge', 'decoder', 'encoder']")
        cfg = cls(encoder=WhisperEncoderConfig.from_dict(d.get("encoder", {}), f"{where}.encoder"),
                  bridge=AudioBridgeConfig.from_dict(d.get("bridge", {}), f"{where}.bridge"),
                  decoder=AudioDecoderConfig.from_dict(d.get("decoder", {}), f"{where}.decoder"))
        cfg.validate()
        return cfg

    def code_lengths(self, mel_lengths):
        """Codes of a clip with `mel_lengths` valid Whisper mel frames (an int or an array): its
        encoder frames // the bridge's pool (`AudioBridge.features`)."""
        return self.encoder.output_lengths(mel_lengths) // self.bridge.pool

    def validate(self) -> None:
        e, b, d = self.encoder, self.bridge, self.decoder
        if not (e.d_model == b.d_model == d.d_model):
            raise ValueError(f"audio tokenizer: encoder ({e.d_model}), bridge ({b.d_model}) and decoder "
                             f"({d.d_model}) widths must agree (d_model)")
        if d.upsample1 != b.pool:
            raise ValueError(f"audio tokenizer: decoder upsample1 ({d.upsample1}) must equal the bridge pool ({b.pool})")

    @classmethod
    def from_release(cls, config: Mapping[str, Any], dtype: str = "float32",
                     param_dtype: str = "float32") -> "AudioTokenizerConfig":
        """From the release's config.json (audio_config, vocoder_config)."""
        overrides = dict(dtype=dtype, param_dtype=param_dtype)
        a, v = config["audio_config"], config["vocoder_config"]
        chunk = a["max_audio_seconds"] * a["sampling_rate"] // a["hop_length"]
        enc = WhisperEncoderConfig(num_mel_bins=a["num_mel_bins"], d_model=a["d_model"], num_layers=a["encoder_layers"],
                                   num_heads=a["encoder_attention_heads"], ffn_dim=a["encoder_ffn_dim"],
                                   max_source_positions=chunk // a["stride_size"], kernel_size=a["kernel_size"],
                                   stride=a["stride_size"], **overrides)
        bridge = AudioBridgeConfig(d_model=a["d_model"], pool=a["avg_pooler"],
                                   codebook_sizes=tuple(a["vq_config"]["codebook_sizes"]), **overrides)
        dec = AudioDecoderConfig(d_model=a["d_model"], num_layers=a["decoder_layers"],
                                 num_heads=a["decoder_attention_heads"], ffn_dim=a["decoder_ffn_dim"],
                                 kernel_size=a["decoder_kernel_size"], upsample1=a["avg_pooler"],
                                 upsample2=a["decoder_stride_size"], max_positions=chunk,
                                 num_mel_bins=v["num_mel_bins"], postnet_channels=tuple(v["channels"][:-1]),
                                 hop_length=a["hop_length"], sample_rate=a["sampling_rate"],
                                 mel_hop_length=v["hop_length"], mel_sample_rate=v["sampling_rate"], **overrides)
        cfg = cls(enc, bridge, dec)
        cfg.validate()
        return cfg


class AudioTokenizer(nn.Module):
    """mel -> codes -> mel. Submodules audio_encoder, audio_bridge, audio_decoder.

      encode(mel, mel_lengths) -> (codes (B, N, 8), lengths (B,))
      decode(codes, lengths, mel_lengths=None, mel_frames=None) -> AudioDecoder outputs
      embed_codes(codes, lengths) -> (B, N, d) decoder embeddings (proj_decoder of the code sums)
      hidden_states_before_dconv2(codes, lengths) -> ((B, 4N - 1, d), (B,) lengths 4L - 1): the
          flow-matching decoder's input (ARCHITECTURE.md 1.5), without running dconv2/post-net
      features(mel, mel_lengths) -> (z (B, N, pool*d), lengths)  continuous bridge features
      train_forward(mel, mel_lengths, rng, quant_prob, mel_target_lengths, mel_frames) -> dict
          training: quantize_train (STE, commitment, EMA statistics, stage dropout), progressive
          replacement (each frame feeds the decoder its quantised vector with probability
          quant_prob, else its continuous one), decoder outputs; rng as in AudioBridge.quantize_train
      __call__(mel, mel_lengths) -> decoder outputs of the encoded codes (the inference round trip)
    """

    cfg: AudioTokenizerConfig

    def setup(self):
        self.audio_encoder = WhisperEncoder(self.cfg.encoder)
        self.audio_bridge = AudioBridge(self.cfg.bridge)
        self.audio_decoder = AudioDecoder(self.cfg.decoder)

    def features(self, mel: Array, mel_lengths: Array) -> tuple[Array, Array]:
        h, enc_len = self.audio_encoder(mel, mel_lengths)
        return self.audio_bridge.features(h, enc_len)

    def encode(self, mel: Array, mel_lengths: Array) -> tuple[Array, Array]:
        z, lengths = self.features(mel, mel_lengths)
        return self.audio_bridge.quantize(z, lengths)[0], lengths

    def embed_codes(self, codes: Array, lengths: Array) -> Array:
        return self.audio_bridge.decode(codes, lengths)

    def init_codebooks(self) -> list[Array]:
        """Touches only the RVQ codebooks: `init(rng, method=AudioTokenizer.init_codebooks)` returns
        just the "vq_stats" collection (a cheap state initialiser, no forward pass)."""
        return [cb() for cb in self.audio_bridge.codebooks]

    def hidden_states_before_dconv2(self, codes: Array, lengths: Array) -> tuple[Array, Array]:
        return self.audio_decoder.hidden_states_before_dconv2(self.embed_codes(codes, lengths), lengths)

    def decode(self, codes: Array, lengths: Array, mel_lengths: Array | None = None,
               mel_frames: int | None = None) -> dict[str, Array]:
        return self.audio_decoder(self.embed_codes(codes, lengths), lengths, mel_lengths, mel_frames)

    def train_forward(self, mel: Array, mel_lengths: Array, rng: Array, quant_prob: Array,
                      mel_target_lengths: Array | None = None, mel_frames: int | None = None) -> dict[str, Any]:
        z, lengths = self.features(mel, mel_lengths)
        if rng.ndim == 2:  # one key per row: the same draws whatever the microbatch split
            k_q, k_mix = jnp.moveaxis(jax.vmap(jax.random.split)(rng), 1, 0)
            mix_u = jax.vmap(lambda k: jax.random.uniform(k, z.shape[1:2]))(k_mix)
        else:
            k_q, k_mix = jax.random.split(rng)
            mix_u = jax.random.uniform(k_mix, z.shape[:2])
        q = self.audio_bridge.quantize_train(z, lengths, k_q)
        use_q = mix_u < jnp.asarray(quant_prob)[..., None]
        mixed = jnp.where(use_q[..., None], q["quantized"], z)
        out = self.audio_decoder(self.audio_bridge.project(mixed, lengths), lengths, mel_target_lengths, mel_frames)
        return dict(out, mixed=mixed, continuous=z, lengths=lengths, codes=q["codes"], replaced=use_q,
                    commit_sq_sum=q["commit_sq_sum"], stats=q["stats"], num_stages=q["num_stages"])

    def __call__(self, mel: Array, mel_lengths: Array) -> dict[str, Array]:
        codes, lengths = self.encode(mel, mel_lengths)
        return self.decode(codes, lengths)
