r"""Speech-output inference speed: omni_jax vs the PyTorch references (tests/speech_reference.py), same run.

    python benchmarks/speech_output.py                  # release shapes of the decoders, 2 s of audio
    python benchmarks/speech_output.py --frames 50 --head_hidden 512 --reps 3

Rows (fp32, CPU, batch 1 except the train step):
  audio head, one frame      sample 8 codebooks from an LLM state. Ours: incremental depth
                             decoding with a depth KV cache (one position per codebook); the
                             release re-runs the whole depth-8 sequence for every codebook.
  audio head train step      teacher-forced loss + gradient over --train_frames frames (default
                             1216 = the tiny main job's gather, 8 rows x 152), tiny head shape.
  flow-matching decode       prenet + 10 Euler steps with classifier-free guidance (batch 2
                             per step) on `frames` mel frames, release decoder shape.
  HiFT vocoder               mel -> waveform, release generator shape.
Times are medians over --reps after a warm-up call (jit compile excluded and printed apart).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import torch

sys.path.insert(0, ".")


def _median(f, reps):
    t = []
    for _ in range(reps):
        t0 = time.perf_counter()
        f()
        t.append(time.perf_counter() - t0)
    return statistics.median(t)


def _head_pair(d, codebook_sizes=None, head_dim=None):
    """Our audio embedding + head and the PyTorch reference's, with the reference's weights imported."""
    from omni_jax.convert import speech as conv
    from omni_jax.convert.mapping import import_params, prefixed
    from omni_jax.models.audio_head import AudioEmbed, AudioHead, AudioHeadConfig
    from omni_jax import sharding as shd
    from tests.speech_reference import TorchAudioEmbed, TorchAudioHead

    kw = {} if codebook_sizes is None else dict(codebook_sizes=tuple(codebook_sizes))
    head_dim = head_dim or (128 if d % 128 == 0 else 64)
    cfg = AudioHeadConfig(hidden_size=d, head_dim=head_dim, **kw)
    th = TorchAudioHead(d, cfg.codebook_sizes, cfg.num_layers, cfg.num_heads)
    te = TorchAudioEmbed(d, cfg.codebook_sizes)
    k = jax.random.PRNGKey(0)
    emb, head = AudioEmbed(cfg), AudioHead(cfg)
    abstract = shd.unbox({"audio_embed": jax.eval_shape(emb.init, k, jnp.zeros((1, 8), jnp.int32))["params"],
                          "audio_head": jax.eval_shape(head.init, k, jnp.zeros((1, d)), jnp.zeros((1, 8, d)))["params"]})
    sd = {"model." + n: v.numpy() for n, v in te.state_dict().items()}
    sd.update({"audio_head." + n: v.numpy() for n, v in th.state_dict().items()})
    rules = prefixed(conv.audio_embed_rules(cfg), ours="audio_embed/") + prefixed(conv.audio_head_rules(cfg), ours="audio_head/")
    params = jax.device_put(import_params(sd, rules, abstract))  # on the device once, not per call
    return cfg, emb, head, params, th, te


def bench_head(a):
    from omni_jax.generate.sampling import SamplingParams, sample
    from omni_jax.models.audio_head import AudioEmbed, AudioHead, init_depth_cache

    d = a.head_hidden
    cfg, emb, head, params, th, te = _head_pair(d)
    th.eval()
    te.eval()
    k = jax.random.PRNGKey(0)
    greedy = SamplingParams(do_sample=False)

    @jax.jit
    def ours(params, h0):
        cache, x, cum, codes = init_depth_cache(cfg, 1), h0, None, []
        for i in range(cfg.depth):
            lg, cache = head.apply({"params": params["audio_head"]}, x, i, cache, method=AudioHead.step)
            c = sample(k, lg if i == 0 else lg[:, :-1], None, greedy)
            codes.append(c)
            e = emb.apply({"params": params["audio_embed"]}, c, i, method=AudioEmbed.lookup)
            cum = e if cum is None else cum + e
            x = cum
        return jnp.stack(codes, -1)

    h0 = np.random.RandomState(0).randn(1, d).astype(np.float32)
    t0 = time.perf_counter()
    ours(params, h0).block_until_ready()
    compile_s = time.perf_counter() - t0

    def ref():
        codes = torch.zeros(1, 8, dtype=torch.long)
        with torch.no_grad():
            for i in range(8):
                lg = th(torch.from_numpy(h0), codes, te.audio_embed_layers)[i]
                codes[:, i] = (lg if i == 0 else lg[:, :-1]).argmax(-1)
        return codes

    same = np.array_equal(np.asarray(ours(params, h0)), ref().numpy())
    return ("audio head, one frame (8 codebooks)", f"hidden {d}",
            _median(lambda: ours(params, h0).block_until_ready(), a.reps), _median(ref, a.reps), compile_s,
            "same codes" if same else "codes differ")


def bench_head_train(a):
    """Teacher-forced loss + gradient of embedding and head (audio_head_loss_sum) at the main job's
    gather size: `--train_frames` frames x 8 codebooks, the tiny model's head (hidden 128, its
    codebooks). PyTorch: the reference head's forward, the same summed cross entropy, backward."""
    from omni_jax.models.audio_head import audio_head_loss_sum

    d, n = a.train_hidden, a.train_frames
    tiny = d == 128  # the main job's head: 4 heads of 32, codebooks of the tiny tokenizer
    cfg, emb, head, params, th, te = _head_pair(d, (128, 64, 64, 32, 32, 32, 32, 32) if tiny else None,
                                                32 if tiny else None)
    rng = np.random.RandomState(0)
    h0 = rng.randn(n, d).astype(np.float32)
    codes = np.stack([rng.randint(0, cs, n) for cs in cfg.codebook_sizes], -1).astype(np.int32)
    mask = np.ones((n, cfg.depth), np.float32)
    f = jax.jit(jax.value_and_grad(lambda p: audio_head_loss_sum(emb, head, p, h0, codes, mask)[0]))
    t0 = time.perf_counter()
    jax.block_until_ready(f(params))
    compile_s = time.perf_counter() - t0
    h0_t, codes_t = torch.from_numpy(h0), torch.from_numpy(codes).long()

    def ref():
        th.zero_grad()
        te.zero_grad()
        logits = th(h0_t, codes_t, te.audio_embed_layers)
        loss = sum(torch.nn.functional.cross_entropy(lg, codes_t[:, i], reduction="sum") for i, lg in enumerate(logits))
        loss.backward()
        return loss

    ref_loss = float(ref().detach())
    diff = abs(float(f(params)[0]) - ref_loss) / ref_loss
    return ("audio head train step (loss + grad)", f"{n} frames, hid {d}",
            _median(lambda: jax.block_until_ready(f(params)), a.reps), _median(ref, a.reps), compile_s,
            f"loss rel diff {diff:.1e}")


def bench_flow(a):
    from configs import common
    from omni_jax.convert import speech as conv
    from omni_jax.convert.mapping import import_params
    from omni_jax.models.flow_matching import FlowMatchingConfig, FlowMatchingDecoder, decode_mel
    from omni_jax import sharding as shd
    from tests.speech_reference import TorchConditionalDecoder, TorchFlowMatching, TorchPrenet, torch_cfm_sample

    c = FlowMatchingConfig.from_dict(common.flow_matching("release").to_dict())
    tf = TorchFlowMatching(TorchPrenet(c.prenet_in_dim, c.n_mels, c.prenet_d_model, c.prenet_heads, c.prenet_ffn_dim,
                                       c.prenet_layers, c.prenet_max_positions),
                           TorchConditionalDecoder(2 * c.n_mels, c.n_mels, c.channels, c.attention_head_dim, c.n_blocks,
                                                   c.num_mid_blocks, c.num_heads, c.chunk_size)).eval()
    model = FlowMatchingDecoder(c)
    abstract = shd.unbox(jax.eval_shape(model.init, jax.random.PRNGKey(0), jnp.zeros((1, 4, c.prenet_in_dim)),
                                        jnp.ones((1, 4)), jnp.zeros((1, 4, 80)), jnp.zeros((1,))))["params"]
    params = jax.device_put(import_params({k: v.numpy() for k, v in tf.state_dict().items()}, conv.flow_matching_rules(c), abstract))
    t = a.frames
    hidden = np.random.RandomState(0).randn(1, t, c.prenet_in_dim).astype(np.float32)
    mask = np.ones((1, t), np.float32)
    f = jax.jit(lambda p, h, m, r: decode_mel(model, p, h, m, r))
    rng = jax.random.PRNGKey(0)
    t0 = time.perf_counter()
    f(params, hidden, mask, rng).block_until_ready()
    compile_s = time.perf_counter() - t0
    z = torch.from_numpy(np.asarray(jax.random.normal(rng, (1, t, 80))).transpose(0, 2, 1).copy())

    def ref():
        with torch.no_grad():
            mu = tf.prenet(torch.from_numpy(hidden), torch.tensor([t])).transpose(1, 2)
            return torch_cfm_sample(tf.conditional_decoder, mu, torch.ones(1, 1, t), z, c.n_timesteps, c.inference_cfg_rate)

    d = float(np.abs(np.asarray(f(params, hidden, mask, rng)) - ref().numpy().transpose(0, 2, 1)).max())
    return ("flow-matching decode (prenet + 10 CFG steps)", f"{t} frames",
            _median(lambda: f(params, hidden, mask, rng).block_until_ready(), a.reps), _median(ref, a.reps), compile_s,
            f"max diff {d:.1e}")


def bench_vocoder(a):
    from omni_jax.convert import speech as conv
    from omni_jax.convert.mapping import import_params
    from omni_jax.models.hift import HiFTConfig, HiFTGenerator
    from omni_jax import sharding as shd
    from tests.speech_reference import TorchHiFT

    cfg = HiFTConfig()
    th = TorchHiFT().eval()
    model = HiFTGenerator(cfg)
    k = jax.random.PRNGKey(0)
    abstract = shd.unbox(jax.eval_shape(model.init, k, jnp.zeros((1, 4, 80)), k))["params"]
    params = jax.device_put(import_params({n: v.detach().numpy() for n, v in th.state_dict().items()}, conv.vocoder_rules(cfg), abstract))
    t = a.frames
    rs = np.random.RandomState(0)
    mel = rs.randn(1, t, 80).astype(np.float32)
    phase = rs.uniform(-np.pi, np.pi, (1, 9)).astype(np.float32)
    noise = rs.randn(1, t * 480, 9).astype(np.float32)
    f = jax.jit(lambda p, m, ph, nz: model.apply({"params": p}, m, phase=ph, noise=nz))
    t0 = time.perf_counter()
    f(params, mel, phase, noise).block_until_ready()
    compile_s = time.perf_counter() - t0
    args = (torch.from_numpy(mel.transpose(0, 2, 1).copy()), torch.from_numpy(phase[:, :, None]),
            torch.from_numpy(noise.transpose(0, 2, 1).copy()))

    def ref():
        with torch.no_grad():
            return th(*args)[0]

    d = float(np.abs(np.asarray(f(params, mel, phase, noise)) - ref().numpy()).max())
    return ("HiFT vocoder", f"{t} frames = {t * 480 / 24000:.1f} s",
            _median(lambda: f(params, mel, phase, noise).block_until_ready(), a.reps), _median(ref, a.reps), compile_s,
            f"max diff {d:.1e}")


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--frames", type=int, default=100)
    p.add_argument("--head_hidden", type=int, default=1024)
    p.add_argument("--reps", type=int, default=5)
    p.add_argument("--train_frames", type=int, default=1216)  # the tiny main job's gather: 8 rows x 152
    p.add_argument("--train_hidden", type=int, default=128)
    p.add_argument("--only", default="head,head_train,flow,vocoder")
    a = p.parse_args()
    torch.set_num_threads(max(1, torch.get_num_threads()))
    rows = []
    for name, fn in (("head", bench_head), ("head_train", bench_head_train), ("flow", bench_flow), ("vocoder", bench_vocoder)):
        if name in a.only.split(","):
            rows.append(fn(a))
    print(f"\n{'module':46s} {'size':18s} {'jax ms':>9s} {'torch ms':>9s} {'torch/jax':>9s} {'jit s':>7s}  check")
    for name, size, tj, tt, comp, check in rows:
        print(f"{name:46s} {size:18s} {tj * 1e3:9.1f} {tt * 1e3:9.1f} {tt / tj:9.2f} {comp:7.1f}  {check}")


if __name__ == "__main__":
    main()
