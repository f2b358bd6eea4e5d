"""PyTorch references for the audio branch (no downloads).

* The Whisper encoder: transformers' WhisperEncoder from a tiny WhisperConfig.
* The release's audio tokenizer modules (Baichuan-Omni-1.5 audio_modeling_omni.py and
  vector_quantize.py are not in transformers): re-typed here from torch.nn primitives with
  the release's module names, so their state_dict keys are the release's. They process ONE
  clip at a time (the release packs clips and uses flash-attention varlen; for a single clip
  that is plain attention over the clip, causal in the decoder).
* `whisper_encoder_release_batch`: the release's batched encoder forward on a padded batch
  (conv stem over the padding, per-clip attention), where batching and padding can differ
  from one clip at a time.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from transformers import WhisperConfig
from transformers.models.whisper.modeling_whisper import WhisperEncoder, sinusoids


def randomize_(model: nn.Module, scale: float = 0.1) -> nn.Module:
    """Random (not zero / one) biases and norm weights so every parameter is exercised."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("bias") or "norm" in name:
                p.add_(torch.randn_like(p) * scale)
    return model


def tiny_hf_whisper_encoder(seed: int = 0, **overrides) -> WhisperEncoder:
    torch.manual_seed(seed)
    kw = dict(d_model=64, encoder_layers=2, encoder_attention_heads=4, encoder_ffn_dim=96,
              num_mel_bins=128, max_source_positions=16, attn_implementation="eager")
    kw.update(overrides)
    return randomize_(WhisperEncoder(WhisperConfig(**kw)).eval())


def whisper_encoder_one_clip(ref: WhisperEncoder, mel: np.ndarray) -> np.ndarray:
    """The encoder on one clip's valid mel frames (128, L) only, as the release runs it."""
    with torch.no_grad():
        x = torch.tensor(mel)[None]
        x = F.gelu(ref.conv2(F.gelu(ref.conv1(x)))).permute(0, 2, 1)
        h = x + ref.embed_positions.weight[: x.shape[1]]
        for layer in ref.layers:
            h = layer(h, None)
        return ref.layer_norm(h)[0].numpy()


def whisper_encoder_release_batch(ref: WhisperEncoder, mel: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """The release's batched encoder (audio_modeling_omni.py OmniAudioEncoder.forward) on a
    padded batch (B, 128, T) whose frames beyond each valid length are zero (as
    processor_omni.py extract_fbank_features leaves them): the conv stem runs over the whole
    padded batch, output_length follows OmniAudioProcessor.inference_output_length, the valid
    frames are packed and each clip attends only to itself (flash_attn_varlen_func), then
    unpacked with zeros. Returns (B, T // 2, d)."""
    with torch.no_grad():
        x = torch.tensor(mel)
        x = F.gelu(ref.conv2(F.gelu(ref.conv1(x)))).permute(0, 2, 1)
        h = x + ref.embed_positions.weight[: x.shape[1]]
        out = torch.zeros_like(h)
        for b, n in enumerate(lengths.tolist()):
            m = (n + 2 - 3) // 1 + 1  # conv1, pad 1
            m = (m + 2 - 3) // 2 + 1  # conv2, stride 2, pad 1
            hb = h[b:b + 1, :m]
            for layer in ref.layers:
                hb = layer(hb, None)
            out[b, :m] = ref.layer_norm(hb)[0]
        return out.numpy()


# ---------------------------------------------------------------------------------
# The release's audio tokenizer modules (one clip at a time).
# ---------------------------------------------------------------------------------


class ReleaseAttention(nn.Module):
    """audio_modeling_omni.py OmniWhisperAttention (flash_attn_varlen_func over one clip = plain attention)."""

    def __init__(self, d, heads, causal):
        super().__init__()
        self.heads, self.causal = heads, causal
        self.k_proj = nn.Linear(d, d, bias=False)
        self.v_proj = nn.Linear(d, d, bias=True)
        self.q_proj = nn.Linear(d, d, bias=True)
        self.out_proj = nn.Linear(d, d, bias=True)

    def forward(self, x):  # (T, d): one clip
        t, d = x.shape
        split = lambda y: y.view(t, self.heads, d // self.heads).transpose(0, 1)
        q, k, v = split(self.q_proj(x)), split(self.k_proj(x)), split(self.v_proj(x))
        o = F.scaled_dot_product_attention(q, k, v, is_causal=self.causal)
        return self.out_proj(o.transpose(0, 1).reshape(t, d))


class ReleaseTransformerLayer(nn.Module):
    """audio_modeling_omni.py OmniWhisperTransformerLayer.forward (LayerNorm variant)."""

    def __init__(self, d, heads, ffn, causal):
        super().__init__()
        self.self_attn = ReleaseAttention(d, heads, causal)
        self.self_attn_layer_norm = nn.LayerNorm(d)
        self.fc1 = nn.Linear(d, ffn)
        self.fc2 = nn.Linear(ffn, d)
        self.final_layer_norm = nn.LayerNorm(d)

    def forward(self, x):
        x = x + self.self_attn(self.self_attn_layer_norm(x))
        return x + self.fc2(F.gelu(self.fc1(self.final_layer_norm(x))))


class ReleaseCodebook(nn.Module):
    """vector_quantize.py EuclideanCodebook.forward (inference): nearest codeword by -sqrt(clamp(|x|^2+|e|^2-2xe, 0))."""

    def __init__(self, dim, size):
        super().__init__()
        embed = torch.zeros(size, dim)
        nn.init.kaiming_uniform_(embed)
        self.cluster_size = nn.Parameter(torch.ones(size))
        self.embed_avg = nn.Parameter(embed.clone())
        self.embed = nn.Parameter(embed)

    def forward(self, x):  # (N, d) fp32
        e = self.embed.detach()
        x2 = (x ** 2).sum(-1, keepdim=True)
        y2 = (e ** 2).sum(-1).reshape(1, -1)
        xy = torch.einsum("bd,cd->bc", x, e) * -2
        ind = (-(x2 + y2 + xy).clamp(min=0).sqrt()).argmax(-1)
        return e[ind], ind


class ReleaseVQ(nn.Module):
    """vector_quantize.py VectorQuantize (holds `codebook`; one stage of the residual VQ)."""

    def __init__(self, dim, size):
        super().__init__()
        self.codebook = ReleaseCodebook(dim, size)


class ReleaseBridge(nn.Module):
    """audio_modeling_omni.py OmniAudioVQBridgeTokenizer.encode / decode: Conv-GMLP (pool p) + RVQ + proj_decoder, one clip."""

    def __init__(self, d, pool, codebook_sizes):
        super().__init__()
        self.pool, self.dim = pool, d * pool
        self.gate_proj = nn.Conv1d(d, d * pool, pool, pool, bias=False)
        self.up_proj = nn.Conv1d(d, d * pool, pool, pool, bias=False)
        self.down_proj = nn.Linear(d * pool, d * pool, bias=False)
        self.layer_norm = nn.LayerNorm(d * pool)
        self.proj_decoder = nn.Linear(d * pool, d)
        self.vq_list = nn.ModuleList([ReleaseVQ(d * pool, k) for k in codebook_sizes])

    def features(self, x):  # (T, d) encoder output of one clip (its valid frames)
        if x.shape[0] % self.pool:
            x = F.pad(x, (0, 0, 0, self.pool - x.shape[0] % self.pool))
        xt = x.T[None]
        g = self.gate_proj(xt)[0].T
        u = self.up_proj(xt)[0].T
        return self.layer_norm(self.down_proj(F.silu(g) * u) + x.reshape(-1, self.dim))

    def forward(self, x, length):  # -> codes (length, n_stages)
        res = self.features(x)[:length].float()
        codes = []
        for vq in self.vq_list:
            q, ind = vq.codebook(res)
            res = res - q
            codes.append(ind)
        return torch.stack(codes, -1)

    def forward_batch(self, x, lengths):  # (B, T, d) padded encoder output, (B,) bridge lengths
        """OmniAudioVQBridgeTokenizer.forward on a padded batch (zeros beyond each clip, as the
        encoder unpacks): pad time to a multiple of the pool, Conv-GMLP over the whole batch,
        RVQ, then masked_select of the valid frames -> (sum(lengths), n_stages) packed codes."""
        b = x.shape[0]
        if x.shape[1] % self.pool:
            x = F.pad(x, (0, 0, 0, self.pool - x.shape[1] % self.pool))
        xt = x.permute(0, 2, 1)
        g, u = self.gate_proj(xt).permute(0, 2, 1), self.up_proj(xt).permute(0, 2, 1)
        res = self.layer_norm(self.down_proj(F.silu(g) * u) + x.reshape(b, -1, self.dim)).float()
        codes = []
        for vq in self.vq_list:
            q, ind = vq.codebook(res.reshape(-1, self.dim))
            res = res - q.reshape(res.shape)
            codes.append(ind.reshape(b, -1))
        codes = torch.stack(codes, -1)
        valid = torch.arange(codes.shape[1])[None] < lengths[:, None]
        return codes[valid]

    def decode(self, codes):
        n = codes.shape[-1]
        res = sum(self.vq_list[i].codebook.embed[codes[:, i]].float() for i in range(n - 1, -1, -1))
        return self.proj_decoder(res)


class ReleaseConvT(nn.Module):
    """audio_modeling_omni.py CasualConvTranspose1d.forward: ConvTranspose1d + GroupNorm(1) over the full output, then the last
    max(0, k - stride) frames are dropped."""

    def __init__(self, cin, cout, k, stride):
        super().__init__()
        self.conv = nn.ConvTranspose1d(cin, cout, k, stride)
        self.norm = nn.GroupNorm(1, cout)

    def forward(self, x):  # (T, C)
        k, s = self.conv.kernel_size[0], self.conv.stride[0]
        y = self.norm(self.conv(x.T[None]))[0].T
        return y[: y.shape[0] - max(0, k - s)]

    def forward_batch(self, x, lengths):  # (B, T, C) padded, (B,) -> (B, T', C), (B,)
        """The release's 3-D path of CasualConvTranspose1d.forward: zero beyond each length,
        ConvTranspose1d + GroupNorm over the whole padded row, trim, zero beyond each output
        length, cut to the longest."""
        k, s = self.conv.kernel_size[0], self.conv.stride[0]
        keep = (torch.arange(x.shape[1])[None] < lengths[:, None])[..., None]
        y = self.norm(self.conv(torch.where(keep, x, 0).transpose(2, 1))).transpose(2, 1)
        y = y[:, : y.shape[1] - max(0, k - s)]
        out_len = (lengths - 1) * s + k - max(0, k - s)
        y = torch.where((torch.arange(y.shape[1])[None] < out_len[:, None])[..., None], y, 0)
        return y[:, : int(out_len.max())], out_len


class ReleasePostNet(nn.Module):
    """audio_modeling_omni.py MelSpecRefineNet.forward (nearest resample, conv/GroupNorm/Mish stack, residual)."""

    def __init__(self, mels, channels, hop, sr, voc_hop, voc_sr):
        super().__init__()
        self.hop, self.sr, self.voc_hop, self.voc_sr = hop, sr, voc_hop, voc_sr
        layers, cin = [], mels
        for c in channels[:-1]:
            layers += [nn.Conv1d(cin, c, 5, 1, 2), nn.GroupNorm(1, c), nn.Mish()]
            cin = c
        layers.append(nn.Conv1d(cin, mels, 1, 1))
        self.layers = nn.Sequential(*layers)

    def output_length(self, n):
        t = torch.tensor([n]).to(torch.float32) * self.hop / self.sr
        return int((t * self.voc_sr / self.voc_hop).to(torch.int64)[0])

    def forward(self, coarse, out_len=None):  # (T, mels)
        out_len = self.output_length(coarse.shape[0]) if out_len is None else out_len
        c = F.interpolate(coarse.T[None].float(), size=out_len, mode="nearest")
        refined = self.layers(c) + c
        return refined[0].T, c[0].T


class ReleaseAudioDecoder(nn.Module):
    """audio_modeling_omni.py OmniAudioDecoder.forward for one clip: dconv1 -> +sinusoids -> causal layers -> LN ->
    (hidden states before dconv2) -> dconv2 -> post-net."""

    def __init__(self, d, heads, ffn, layers, pool, stride2, mels, channels, max_pos,
                 hop=160, sr=16000, voc_hop=256, voc_sr=16000):
        super().__init__()
        self.register_buffer("positional_embedding", sinusoids(max_pos, d))
        self.dconv1 = ReleaseConvT(d, d, 3, pool)
        self.layers = nn.ModuleList([ReleaseTransformerLayer(d, heads, ffn, True) for _ in range(layers)])
        self.layer_norm = nn.LayerNorm(d)
        self.dconv2 = ReleaseConvT(d, mels, 3, stride2)
        self.post_net = ReleasePostNet(mels, channels, hop, sr, voc_hop, voc_sr)

    def hidden_batch(self, x, lengths):  # (B, T, d) padded, (B,) -> hidden states before dconv2
        """OmniAudioDecoder.forward's batched path up to `hidden_states_before_dconv2`: dconv1 on
        the padded batch (forward_batch), + sinusoids, causal layers per clip (varlen), LN."""
        h, n = self.dconv1.forward_batch(x, lengths)
        h = h + self.positional_embedding[: h.shape[1]]
        out = torch.zeros_like(h)
        for b, m in enumerate(n.tolist()):
            hb = h[b, :m]
            for layer in self.layers:
                hb = layer(hb)
            out[b, :m] = self.layer_norm(hb)
        return out, n

    def forward(self, x, out_len=None):  # (L, d) one clip's decoder embeddings
        h = self.dconv1(x)
        h = h + self.positional_embedding[: h.shape[0]]
        for layer in self.layers:
            h = layer(h)
        h = self.layer_norm(h)
        coarse100 = self.dconv2(h)
        refined, coarse = self.post_net(coarse100, out_len)
        return dict(hidden=h, coarse100=coarse100, refined=refined, coarse=coarse)


class ReleaseEncoder(nn.Module):
    """audio_modeling_omni.py OmniAudioEncoder.forward for one clip: conv stem, + stored sinusoid buffer, layers, layer_norm."""

    def __init__(self, mels, d, heads, ffn, layers, max_pos):
        super().__init__()
        self.conv1 = nn.Conv1d(mels, d, 3, padding=1)
        self.conv2 = nn.Conv1d(d, d, 3, stride=2, padding=1)
        self.register_buffer("positional_embedding", sinusoids(max_pos, d))
        self.layers = nn.ModuleList([ReleaseTransformerLayer(d, heads, ffn, False) for _ in range(layers)])
        self.layer_norm = nn.LayerNorm(d)

    def forward(self, mel):  # (mels, L)
        x = F.gelu(self.conv2(F.gelu(self.conv1(mel[None]))))[0].T
        h = x + self.positional_embedding[: x.shape[0]]
        for layer in self.layers:
            h = layer(h)
        return self.layer_norm(h)


class ReleaseAudioTokenizer(nn.Module):
    """modeling_omni.py OmniModel.audio_tokenizer = audio_modeling_omni.py OmniAudioTokenizer:
    `audio_model`, `audio_bridge_model`, `audio_decoder` (state-dict names as released)."""

    def __init__(self, mels, d, heads, ffn, enc_layers, dec_layers, pool, codebook_sizes, out_mels, channels,
                 max_pos):
        super().__init__()
        self.audio_model = ReleaseEncoder(mels, d, heads, ffn, enc_layers, max_pos // 2)
        self.audio_bridge_model = ReleaseBridge(d, pool, codebook_sizes)
        self.audio_decoder = ReleaseAudioDecoder(d, heads, ffn, dec_layers, pool, 2, out_mels, channels, max_pos)

    def forward(self, mel):  # one clip's valid mel frames (mels, L) -> codes, decoder outputs
        h = self.audio_model(mel)
        n = h.shape[0] // self.audio_bridge_model.pool
        codes = self.audio_bridge_model(h, n)
        return codes, self.audio_decoder(self.audio_bridge_model.decode(codes))


class Container(nn.Module):
    """Mounts references under release prefixes (no release counterpart; only names the children)."""

    def __init__(self, **children):
        super().__init__()
        for k, v in children.items():
            setattr(self, k, v)
