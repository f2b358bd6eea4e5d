"""PyTorch references for the speech-output modules, written from torch.nn primitives.

There is no transformers module for these. Each class mirrors the public release code it
names (module structure, parameter names, forward arithmetic), so that its state_dict has
the release's tensor names and the parity tests exercise our conversion rules:

  TorchAudioHead       Baichuan-Omni-1.5 modeling_omni.py OmniAudioHead / CasualDepthTransformerLayer
                       (nn.MultiheadAttention with its packed in_proj, per-depth einsum FFN)
  TorchAudioEmbed      OmniModel.audio_embed_layers
  TorchPrenet          audio_modeling_omni.py FlowmatchingPrenet (+ OmniWhisperTransformerLayer, RMSNorm)
  TorchConditionalDecoder  CosyVoice flow/decoder.py causal U-Net with Matcha-TTS blocks
                       (CausalConv1d, CausalBlock1D, CausalResnetBlock1D, BasicTransformerBlock)
                       and a chunk-causal attention mask (cosyvoice utils/mask.py)
  TorchCFM             CosyVoice flow_matching.py ConditionalCFM: cosine Euler + CFG; loss
  TorchHiFT            CosyVoice hifigan/generator.py HiFTGenerator + f0_predictor.py
                       ConvRNNF0Predictor, with torch weight_norm; the stochastic source
                       (random phases, noise) can be injected for parity.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn as tnn
import torch.nn.functional as F
from torch.nn.utils import weight_norm


class RMSNorm(tnn.Module):
    """audio_modeling_omni.py RMSNorm.forward (fp32 variance, weight * x)."""

    def __init__(self, hidden_size, eps=1e-6):
        super().__init__()
        self.weight = tnn.Parameter(torch.ones(hidden_size))
        self.variance_epsilon = eps

    def forward(self, hidden_states):
        variance = hidden_states.to(torch.float32).pow(2).mean(-1, keepdim=True)
        hidden_states = hidden_states * torch.rsqrt(variance + self.variance_epsilon)
        return self.weight * hidden_states


# ------------------------------------------------------------------ audio head


class TorchDepthLayer(tnn.Module):
    """modeling_omni.py CasualDepthTransformerLayer.forward (per-depth einsum FFN, unused linear biases)."""

    def __init__(self, hidden, depth, num_heads):
        super().__init__()
        self.hidden, self.depth = hidden, depth
        self.self_attention = tnn.MultiheadAttention(embed_dim=hidden, num_heads=num_heads, batch_first=True)
        self.layernorm1 = RMSNorm(hidden)
        self.layernorm2 = RMSNorm(hidden)
        self.linear1 = tnn.Linear(hidden * depth, 2 * hidden)
        self.linear2 = tnn.Linear(2 * hidden * depth, hidden)

    def forward(self, x):
        seq_len = x.size(1)
        res = x
        x = self.layernorm1(x)
        src_mask = torch.triu(torch.ones(seq_len, seq_len), diagonal=1).bool()
        _x, _ = self.self_attention(x, x, x, is_causal=True, attn_mask=src_mask)
        res = _x + res
        res = self.layernorm2(res)
        x = torch.einsum("bld,tld->blt", res, torch.reshape(self.linear1.weight, (2 * self.hidden, -1, self.hidden)))
        x = F.gelu(x)
        x = torch.einsum("blt,dlt->bld", x, torch.reshape(self.linear2.weight, (self.hidden, -1, 2 * self.hidden)))
        return res + x


class TorchAudioHead(tnn.Module):
    """modeling_omni.py OmniAudioHead.forward (depth transformer, headnorm, 8 heads)."""

    def __init__(self, hidden, codebook_sizes, num_layers, num_heads):
        super().__init__()
        self.hidden, self.codebook_sizes = hidden, list(codebook_sizes)
        self.transformer_layers = tnn.ModuleList(
            [TorchDepthLayer(hidden, len(codebook_sizes), num_heads) for _ in range(num_layers)])
        self.headnorm = RMSNorm(hidden)
        self.heads = tnn.ModuleList([tnn.Linear(hidden, cs + 1) for cs in codebook_sizes])

    def forward(self, x, audios_tokens, audio_emb_layers):
        cum = torch.stack([audio_emb_layers[i](audios_tokens[..., i]) for i in range(len(self.codebook_sizes) - 1)], dim=1)
        cum = torch.cumsum(cum, dim=1)
        h = torch.concat([x.reshape(-1, 1, self.hidden), cum], dim=1)
        for layer in self.transformer_layers:
            h = layer(h)
        h = self.headnorm(h)
        return [head(h[:, i]) for i, head in enumerate(self.heads)]


class TorchAudioEmbed(tnn.Module):
    """modeling_omni.py OmniModel.audio_embed_layers: holds the tables (state-dict names audio_embed_layers.{i}.weight)."""

    def __init__(self, hidden, codebook_sizes):
        super().__init__()
        self.audio_embed_layers = tnn.ModuleList([tnn.Embedding(cs + 1, hidden) for cs in codebook_sizes])

    def forward(self, codes):
        out = 0
        for i, layer in enumerate(self.audio_embed_layers):
            out = out + layer(codes[..., i])
        return out


def randomize_(module: tnn.Module, seed: int, scale: float = 0.1) -> tnn.Module:
    """Random values in every parameter (norm weights around 1) so nothing is trivially zero."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in module.named_parameters():
            noise = torch.randn(p.shape, generator=g) * scale
            if name.endswith("weight") and p.ndim == 1:
                p.copy_(1.0 + noise)
            else:
                p.copy_(noise if p.ndim == 1 else p + noise)
    return module


# ------------------------------------------------------------------ flow matching


def sinusoids_t(length, channels, max_timescale=10000):
    log_timescale_increment = np.log(max_timescale) / (channels // 2 - 1)
    inv_timescales = torch.exp(-log_timescale_increment * torch.arange(channels // 2))
    scaled_time = torch.arange(length)[:, np.newaxis] * inv_timescales[np.newaxis, :]
    return torch.cat([torch.sin(scaled_time), torch.cos(scaled_time)], dim=1)


class WhisperAttention(tnn.Module):
    """audio_modeling_omni.py OmniWhisperAttention(causal=True) over one unpacked sequence."""

    def __init__(self, d, heads):
        super().__init__()
        self.d, self.heads = d, heads
        self.k_proj = tnn.Linear(d, d, bias=False)
        self.v_proj = tnn.Linear(d, d, bias=True)
        self.q_proj = tnn.Linear(d, d, bias=True)
        self.out_proj = tnn.Linear(d, d, bias=True)

    def forward(self, x):  # one unpacked sequence (L, d), causal (flash varlen causal=True)
        L = x.shape[0]
        hd = self.d // self.heads
        q = self.q_proj(x).view(L, self.heads, hd).transpose(0, 1)
        k = self.k_proj(x).view(L, self.heads, hd).transpose(0, 1)
        v = self.v_proj(x).view(L, self.heads, hd).transpose(0, 1)
        a = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        return self.out_proj(a.transpose(0, 1).reshape(L, self.d))


class WhisperLayerRMS(tnn.Module):
    """audio_modeling_omni.py OmniWhisperTransformerLayer(ln_type='RMSNorm').forward."""

    def __init__(self, d, heads, ffn):
        super().__init__()
        self.self_attn = WhisperAttention(d, heads)
        self.self_attn_layer_norm = RMSNorm(d)
        self.fc1 = tnn.Linear(d, ffn)
        self.fc2 = tnn.Linear(ffn, d)
        self.final_layer_norm = RMSNorm(d)

    def forward(self, x):
        x = x + self.self_attn(self.self_attn_layer_norm(x))
        return x + self.fc2(F.gelu(self.fc1(self.final_layer_norm(x))))


class TorchPrenet(tnn.Module):
    """audio_modeling_omni.py FlowmatchingPrenet.forward (length ratio 1.0); packing emulated by running each row's valid prefix."""

    def __init__(self, in_dim, out_dim, d, heads, ffn, nlayers, max_pos):
        super().__init__()
        self.register_buffer("positional_embedding", sinusoids_t(max_pos, d))
        self.in_mlp = tnn.Sequential(tnn.Linear(in_dim, d * 4), tnn.SiLU(), tnn.Linear(d * 4, d))
        self.transformer_layers = tnn.ModuleList([WhisperLayerRMS(d, heads, ffn) for _ in range(nlayers)])
        self.final_norm = RMSNorm(d)
        self.out_proj = tnn.Linear(d, out_dim, bias=False)

    def forward(self, x, lengths):
        h = self.in_mlp(x)
        out = torch.zeros_like(h)
        for b, L in enumerate(lengths.tolist()):
            hb = h[b, :L]
            for layer in self.transformer_layers:
                hb = layer(hb)
            out[b, :L] = hb
        return self.out_proj(self.final_norm(out))


class Transpose(tnn.Module):
    """CosyVoice cosyvoice/flow/decoder.py Transpose (the release's flow_matching.py)."""

    def __init__(self, a, b):
        super().__init__()
        self.a, self.b = a, b

    def forward(self, x):
        return x.transpose(self.a, self.b)


class CausalConv1d(tnn.Conv1d):
    """CosyVoice cosyvoice/flow/decoder.py CausalConv1d: left pad k-1, then Conv1d."""

    def __init__(self, cin, cout, k):
        super().__init__(cin, cout, k, padding=0)
        self.causal_padding = k - 1

    def forward(self, x):
        return super().forward(F.pad(x, (self.causal_padding, 0)))


class CausalBlock1D(tnn.Module):
    """CosyVoice cosyvoice/flow/decoder.py CausalBlock1D: CausalConv1d, LayerNorm, Mish, masked."""

    def __init__(self, dim, dim_out):
        super().__init__()
        self.block = tnn.Sequential(CausalConv1d(dim, dim_out, 3), Transpose(1, 2), tnn.LayerNorm(dim_out),
                                    Transpose(1, 2), tnn.Mish())

    def forward(self, x, mask):
        return self.block(x * mask) * mask


class CausalResnetBlock1D(tnn.Module):
    """CosyVoice cosyvoice/flow/decoder.py CausalResnetBlock1D (time MLP, 1x1 residual conv)."""

    def __init__(self, dim, dim_out, time_emb_dim):
        super().__init__()
        self.mlp = tnn.Sequential(tnn.Mish(), tnn.Linear(time_emb_dim, dim_out))
        self.block1 = CausalBlock1D(dim, dim_out)
        self.block2 = CausalBlock1D(dim_out, dim_out)
        self.res_conv = tnn.Conv1d(dim, dim_out, 1)

    def forward(self, x, mask, t):
        h = self.block1(x, mask)
        h = h + self.mlp(t).unsqueeze(-1)
        h = self.block2(h, mask)
        return h + self.res_conv(x * mask)


class DiffusersAttention(tnn.Module):
    """diffusers Attention as Matcha-TTS matcha/models/components/transformer.py uses it (bias-free q/k/v)."""

    def __init__(self, dim, heads, dim_head):
        super().__init__()
        inner = heads * dim_head
        self.heads = heads
        self.to_q = tnn.Linear(dim, inner, bias=False)
        self.to_k = tnn.Linear(dim, inner, bias=False)
        self.to_v = tnn.Linear(dim, inner, bias=False)
        self.to_out = tnn.ModuleList([tnn.Linear(inner, dim), tnn.Dropout(0.0)])

    def forward(self, x, bias):  # bias (B, T, T) additive
        b, t, _ = x.shape
        q, k, v = (f(x).view(b, t, self.heads, -1).transpose(1, 2) for f in (self.to_q, self.to_k, self.to_v))
        a = F.scaled_dot_product_attention(q, k, v, attn_mask=bias[:, None])
        return self.to_out[1](self.to_out[0](a.transpose(1, 2).reshape(b, t, -1)))


class GELUProj(tnn.Module):
    """diffusers GELU (Linear + gelu) inside Matcha-TTS FeedForward."""

    def __init__(self, dim, inner):
        super().__init__()
        self.proj = tnn.Linear(dim, inner)

    def forward(self, x):
        return F.gelu(self.proj(x))


class FeedForward(tnn.Module):
    """Matcha-TTS matcha/models/components/transformer.py FeedForward (GELU proj, Linear)."""

    def __init__(self, dim, mult=4):
        super().__init__()
        self.net = tnn.ModuleList([GELUProj(dim, dim * mult), tnn.Dropout(0.0), tnn.Linear(dim * mult, dim)])

    def forward(self, x):
        for m in self.net:
            x = m(x)
        return x


class BasicTransformerBlock(tnn.Module):
    """Matcha-TTS matcha/models/components/transformer.py BasicTransformerBlock.forward."""

    def __init__(self, dim, heads, dim_head):
        super().__init__()
        self.norm1 = tnn.LayerNorm(dim)
        self.attn1 = DiffusersAttention(dim, heads, dim_head)
        self.norm3 = tnn.LayerNorm(dim)
        self.ff = FeedForward(dim)

    def forward(self, x, bias):
        x = self.attn1(self.norm1(x), bias) + x
        return self.ff(self.norm3(x)) + x


class SinusoidalPosEmb(tnn.Module):
    """Matcha-TTS matcha/models/components/decoder.py SinusoidalPosEmb (scale 1000)."""

    def __init__(self, dim):
        super().__init__()
        self.dim = dim

    def forward(self, x, scale=1000):
        half = self.dim // 2
        emb = math.log(10000) / (half - 1)
        emb = torch.exp(torch.arange(half).float() * -emb)
        emb = scale * x.unsqueeze(1) * emb.unsqueeze(0)
        return torch.cat((emb.sin(), emb.cos()), dim=-1)


class TimestepEmbedding(tnn.Module):
    """Matcha-TTS matcha/models/components/decoder.py TimestepEmbedding (Linear, SiLU, Linear)."""

    def __init__(self, cin, dim):
        super().__init__()
        self.linear_1 = tnn.Linear(cin, dim)
        self.act = tnn.SiLU()
        self.linear_2 = tnn.Linear(dim, dim)

    def forward(self, x):
        return self.linear_2(self.act(self.linear_1(x)))


def chunk_bias(mask, chunk):  # mask (B, 1, T) float -> additive bias (B, T, T)
    t = mask.shape[-1]
    keys = mask.bool()  # (B, 1, T)
    if chunk > 0:
        pos = torch.arange(t)
        ret = pos.unsqueeze(0) < ((pos // chunk + 1) * chunk).unsqueeze(1)
        keys = keys & ret.unsqueeze(0)
    else:
        keys = keys.repeat(1, t, 1)
    return (1.0 - keys.float()) * -1.0e10


class TorchConditionalDecoder(tnn.Module):
    """The release's flow_matching.py ConditionalDecoder = CosyVoice cosyvoice/flow/decoder.py
    ConditionalDecoder (causal U-Net, chunk-causal mask)."""

    def __init__(self, in_channels, out_channels, channels=(256,), attention_head_dim=64, n_blocks=4,
                 num_mid_blocks=12, num_heads=8, chunk_size=100):
        super().__init__()
        self.chunk_size = chunk_size
        self.time_embeddings = SinusoidalPosEmb(in_channels)
        ted = channels[0] * 4
        self.time_mlp = TimestepEmbedding(in_channels, ted)
        ch = channels[0]
        tb = lambda: tnn.ModuleList([BasicTransformerBlock(ch, num_heads, attention_head_dim) for _ in range(n_blocks)])
        self.down_blocks = tnn.ModuleList([tnn.ModuleList([CausalResnetBlock1D(in_channels, ch, ted), tb(), CausalConv1d(ch, ch, 3)])])
        self.mid_blocks = tnn.ModuleList([tnn.ModuleList([CausalResnetBlock1D(ch, ch, ted), tb()]) for _ in range(num_mid_blocks)])
        self.up_blocks = tnn.ModuleList([tnn.ModuleList([CausalResnetBlock1D(2 * ch, ch, ted), tb(), CausalConv1d(ch, ch, 3)])])
        self.final_block = CausalBlock1D(ch, ch)
        self.final_proj = tnn.Conv1d(ch, out_channels, 1)

    def forward(self, x, mask, mu, t):  # x, mu (B, C, T); mask (B, 1, T); t (B,)
        t = self.time_mlp(self.time_embeddings(t))
        x = torch.cat([x, mu], dim=1)
        bias = chunk_bias(mask, self.chunk_size)

        def run(blocks, x):
            x = x.transpose(1, 2)
            for blk in blocks:
                x = blk(x, bias)
            return x.transpose(1, 2)

        resnet, tblocks, down = self.down_blocks[0]
        x = run(tblocks, resnet(x, mask, t))
        skip = x
        x = down(x * mask)
        for resnet, tblocks in self.mid_blocks:
            x = run(tblocks, resnet(x, mask, t))
        resnet, tblocks, up = self.up_blocks[0]
        x = torch.cat([x[:, :, :skip.shape[-1]], skip], dim=1)
        x = run(tblocks, resnet(x, mask, t))
        x = up(x * mask)
        x = self.final_block(x, mask)
        return self.final_proj(x * mask) * mask


class TorchFlowMatching(tnn.Module):
    """modeling_omni.py OmniModel.audio_flow_matching_decoder = audio_modeling_omni.py
    OmniFlowMatchingDecoder: prenet + conditional_decoder (release state-dict names)."""

    def __init__(self, prenet: TorchPrenet, decoder: TorchConditionalDecoder):
        super().__init__()
        self.prenet = prenet
        self.conditional_decoder = decoder


def torch_cfm_sample(estimator, mu, mask, z, n_timesteps, cfg_rate, cosine=True):
    """ConditionalCFM.solve_euler with the noise z given (mu, z (B, C, T); mask (B, 1, T))."""
    t_span = torch.linspace(0, 1, n_timesteps + 1)
    if cosine:
        t_span = 1 - torch.cos(t_span * 0.5 * torch.pi)
    x, t, dt = z, t_span[0], t_span[1] - t_span[0]
    b = mu.shape[0]
    for step in range(1, len(t_span)):
        x_in = torch.cat([x, x]); mask_in = torch.cat([mask, mask])
        mu_in = torch.cat([mu, torch.zeros_like(mu)]); t_in = torch.full((2 * b,), float(t))
        v = estimator(x_in, mask_in, mu_in, t_in)
        v, cfg_v = torch.split(v, [b, b], dim=0)
        v = (1.0 + cfg_rate) * v - cfg_rate * cfg_v
        x = x + dt * v
        t = t + dt
        if step < len(t_span) - 1:
            dt = t_span[step + 1] - t
    return x


def torch_cfm_loss(estimator, x1, mask, mu, t, z, keep, sigma_min=1e-6):
    """ConditionalCFM.compute_loss with t (already scheduled), z and the cfg keep mask given; L1 sum."""
    t = t.view(-1, 1, 1)
    y = (1 - (1 - sigma_min) * t) * z + t * x1
    u = x1 - (1 - sigma_min) * z
    mu = mu * keep.view(-1, 1, 1)
    pred = estimator(y, mask, mu, t.view(-1))
    return (pred * mask - u * mask).abs().sum()


# ------------------------------------------------------------------ HiFT vocoder


def get_padding(kernel_size, dilation=1):
    return int((kernel_size * dilation - dilation) / 2)


class Snake(tnn.Module):
    """CosyVoice cosyvoice/transformer/activation.py Snake (x + sin^2(alpha x) / alpha)."""

    def __init__(self, channels):
        super().__init__()
        self.alpha = tnn.Parameter(torch.ones(channels))

    def forward(self, x):  # (B, C, T)
        alpha = self.alpha.unsqueeze(0).unsqueeze(-1)
        return x + (1.0 / (alpha + 1e-9)) * torch.pow(torch.sin(x * alpha), 2)


class TorchResBlock(tnn.Module):
    """CosyVoice cosyvoice/hifigan/generator.py ResBlock (Snake, dilated weight-normed convs)."""

    def __init__(self, channels, kernel_size, dilations):
        super().__init__()
        self.convs1 = tnn.ModuleList([weight_norm(tnn.Conv1d(channels, channels, kernel_size, 1, dilation=d,
                                                             padding=get_padding(kernel_size, d))) for d in dilations])
        self.convs2 = tnn.ModuleList([weight_norm(tnn.Conv1d(channels, channels, kernel_size, 1, dilation=1,
                                                             padding=get_padding(kernel_size, 1))) for _ in dilations])
        self.activations1 = tnn.ModuleList([Snake(channels) for _ in dilations])
        self.activations2 = tnn.ModuleList([Snake(channels) for _ in dilations])

    def forward(self, x):
        for i in range(len(self.convs1)):
            xt = self.convs2[i](self.activations2[i](self.convs1[i](self.activations1[i](x))))
            x = xt + x
        return x


class TorchSineGen(tnn.Module):
    """CosyVoice cosyvoice/hifigan/generator.py SineGen.forward with the random phase / noise injected; `dtype` float64 gives exact phases."""

    def __init__(self, samp_rate, harmonic_num, sine_amp=0.1, noise_std=0.003, voiced_threshold=10, dtype=torch.float32):
        super().__init__()
        self.sine_amp, self.noise_std, self.harmonic_num = sine_amp, noise_std, harmonic_num
        self.sampling_rate, self.voiced_threshold, self.dtype = samp_rate, voiced_threshold, dtype

    def forward(self, f0, phase_vec, noise):  # f0 (B, 1, L); phase_vec (B, H+1, 1); noise (B, H+1, L)
        f0 = f0.to(self.dtype)
        F_mat = torch.zeros((f0.size(0), self.harmonic_num + 1, f0.size(-1)), dtype=self.dtype)
        for i in range(self.harmonic_num + 1):
            F_mat[:, i: i + 1, :] = f0 * (i + 1) / self.sampling_rate
        theta_mat = 2 * np.pi * (torch.cumsum(F_mat, dim=-1) % 1)
        phase_vec = phase_vec.clone().to(self.dtype)
        phase_vec[:, 0, :] = 0
        sine_waves = self.sine_amp * torch.sin(theta_mat + phase_vec)
        uv = (f0 > self.voiced_threshold).to(self.dtype)
        noise_amp = uv * self.noise_std + (1 - uv) * self.sine_amp / 3
        sine_waves = sine_waves * uv + noise_amp * noise.to(self.dtype)
        return sine_waves.to(torch.float32)


class TorchSource(tnn.Module):
    """CosyVoice cosyvoice/hifigan/generator.py SourceModuleHnNSF (SineGen + Linear + tanh)."""

    def __init__(self, sampling_rate, harmonic_num, dtype):
        super().__init__()
        self.l_sin_gen = TorchSineGen(sampling_rate, harmonic_num, dtype=dtype)
        self.l_linear = tnn.Linear(harmonic_num + 1, 1)

    def forward(self, x, phase_vec, noise):  # x (B, L, 1)
        sine = self.l_sin_gen(x.transpose(1, 2), phase_vec, noise).transpose(1, 2)
        return torch.tanh(self.l_linear(sine))


class TorchF0Predictor(tnn.Module):
    """CosyVoice cosyvoice/hifigan/f0_predictor.py ConvRNNF0Predictor.forward."""

    def __init__(self, in_channels=80, cond_channels=512, layers=5):
        super().__init__()
        mods = []
        for n in range(layers):
            mods += [weight_norm(tnn.Conv1d(in_channels if n == 0 else cond_channels, cond_channels, 3, padding=1)), tnn.ELU()]
        self.condnet = tnn.Sequential(*mods)
        self.classifier = tnn.Linear(cond_channels, 1)

    def forward(self, x):
        x = self.condnet(x).transpose(1, 2)
        return torch.abs(self.classifier(x).squeeze(-1))


class TorchHiFT(tnn.Module):
    """CosyVoice cosyvoice/hifigan/generator.py HiFTGenerator.forward / decode (source injected)."""

    def __init__(self, in_channels=80, base_channels=512, nb_harmonics=8, sampling_rate=24000,
                 upsample_rates=(8, 5, 3), upsample_kernel_sizes=(16, 11, 7), n_fft=16, hop_len=4,
                 resblock_kernel_sizes=(3, 7, 11), resblock_dilation_sizes=((1, 3, 5),) * 3,
                 source_resblock_kernel_sizes=(7, 7, 11), source_resblock_dilation_sizes=((1, 3, 5),) * 3,
                 f0_channels=512, f0_layers=5, source_dtype=torch.float32):
        super().__init__()
        self.n_fft, self.hop_len = n_fft, hop_len
        self.num_kernels = len(resblock_kernel_sizes)
        self.num_upsamples = len(upsample_rates)
        self.upsample = int(np.prod(upsample_rates) * hop_len)
        self.m_source = TorchSource(sampling_rate, nb_harmonics, source_dtype)
        self.conv_pre = weight_norm(tnn.Conv1d(in_channels, base_channels, 7, 1, padding=3))
        self.ups = tnn.ModuleList()
        for i, (u, k) in enumerate(zip(upsample_rates, upsample_kernel_sizes)):
            self.ups.append(weight_norm(tnn.ConvTranspose1d(base_channels // (2 ** i), base_channels // (2 ** (i + 1)),
                                                            k, u, padding=(k - u) // 2)))
        self.source_downs = tnn.ModuleList()
        self.source_resblocks = tnn.ModuleList()
        downsample_rates = [1] + list(upsample_rates[::-1][:-1])
        cum = np.cumprod(downsample_rates)
        for i, (u, k, d) in enumerate(zip(cum[::-1], source_resblock_kernel_sizes, source_resblock_dilation_sizes)):
            u = int(u)
            ch = base_channels // (2 ** (i + 1))
            if u == 1:
                self.source_downs.append(tnn.Conv1d(n_fft + 2, ch, 1, 1))
            else:
                self.source_downs.append(tnn.Conv1d(n_fft + 2, ch, u * 2, u, padding=(u // 2)))
            self.source_resblocks.append(TorchResBlock(ch, k, d))
        self.resblocks = tnn.ModuleList()
        for i in range(len(self.ups)):
            ch = base_channels // (2 ** (i + 1))
            for k, d in zip(resblock_kernel_sizes, resblock_dilation_sizes):
                self.resblocks.append(TorchResBlock(ch, k, d))
        self.conv_post = weight_norm(tnn.Conv1d(ch, n_fft + 2, 7, 1, padding=3))
        self.reflection_pad = tnn.ReflectionPad1d((1, 0))
        self.register_buffer("stft_window", torch.hann_window(n_fft), persistent=False)
        self.f0_predictor = TorchF0Predictor(in_channels, f0_channels, f0_layers)

    def forward(self, x, phase_vec, noise):  # x (B, 80, T); phase_vec (B, H+1, 1); noise (B, H+1, L)
        f0 = self.f0_predictor(x)
        f0_up = F.interpolate(f0[:, None], scale_factor=self.upsample, mode="nearest").transpose(1, 2)
        s = self.m_source(f0_up, phase_vec, noise).transpose(1, 2).squeeze(1)
        spec = torch.view_as_real(torch.stft(s, self.n_fft, self.hop_len, self.n_fft, window=self.stft_window,
                                             return_complex=True))
        s_stft = torch.cat([spec[..., 0], spec[..., 1]], dim=1)
        x = self.conv_pre(x)
        for i in range(self.num_upsamples):
            x = F.leaky_relu(x, 0.1)
            x = self.ups[i](x)
            if i == self.num_upsamples - 1:
                x = self.reflection_pad(x)
            si = self.source_resblocks[i](self.source_downs[i](s_stft))
            x = x + si
            xs = None
            for j in range(self.num_kernels):
                r = self.resblocks[i * self.num_kernels + j](x)
                xs = r if xs is None else xs + r
            x = xs / self.num_kernels
        x = F.leaky_relu(x)
        x = self.conv_post(x)
        magnitude = torch.clip(torch.exp(x[:, : self.n_fft // 2 + 1, :]), max=1e2)
        phase = torch.sin(x[:, self.n_fft // 2 + 1:, :])
        wav = torch.istft(torch.complex(magnitude * torch.cos(phase), magnitude * torch.sin(phase)),
                          self.n_fft, self.hop_len, self.n_fft, window=self.stft_window)
        return torch.clamp(wav, -0.99, 0.99), f0


def random_params(module, *init_args, seed: int = 0, scale: float = 0.05):
    """Params for `module` without compiling its init: shapes from jax.eval_shape, values random
    normal * scale (norm scales and Snake alphas 1, biases small). For tests that need some
    weights, not a particular initialisation."""
    import jax
    from flax import traverse_util

    from omni_jax import sharding as shd

    abstract = shd.unbox(jax.eval_shape(module.init, jax.random.PRNGKey(0), *init_args))["params"]
    rs = np.random.RandomState(seed)
    flat = {}
    for path, a in traverse_util.flatten_dict(abstract).items():
        name = path[-1]
        if name in ("scale", "alpha"):
            flat[path] = (1.0 + 0.1 * rs.randn(*a.shape)).astype(a.dtype)
        elif name == "positional_embedding":
            flat[path] = np.zeros(a.shape, a.dtype)
        else:
            flat[path] = (scale * rs.randn(*a.shape)).astype(a.dtype)
    return traverse_util.unflatten_dict(flat)
