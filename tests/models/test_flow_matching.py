"""omni_jax/models/flow_matching.py: parity of the prenet, the causal U-Net, the CFM loss and
the 10-step cosine Euler sampler with torch references; causality and padding; training the
decoder with the foundation trainer brings sampled mels closer to the targets."""

import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from configs import flow_matching_tiny
from omni_jax import sharding as shd
from omni_jax.convert import speech as conv
from omni_jax.convert.mapping import import_params
from omni_jax.data.synthetic_speech import SyntheticMelSet
from omni_jax.models.flow_matching import (FlowMatchingConfig, FlowMatchingDecoder, chunk_attention_mask, decode_mel,
                                           flow_matching_loss_sums)
from tests import compile_flags
from tests.speech_reference import (TorchConditionalDecoder, TorchFlowMatching, TorchPrenet, randomize_,
                                    torch_cfm_loss, torch_cfm_sample)

CFG = FlowMatchingConfig.from_dict(flow_matching_tiny.get_config().model.flow_matching.to_dict())
MODEL = FlowMatchingDecoder(CFG)
B, T = 4, 20
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SAMPLE = jax.jit(lambda p, h, m, r: decode_mel(MODEL, p, h, m, r))  # shared by the parity and training tests


def _abstract():
    c = CFG
    return shd.unbox(jax.eval_shape(MODEL.init, jax.random.PRNGKey(0), jnp.zeros((1, 4, c.prenet_in_dim)), jnp.ones((1, 4)),
                                    jnp.zeros((1, 4, c.n_mels)), jnp.zeros((1,)))["params"])


@pytest.fixture(scope="module")
def ref_and_ours():
    c = CFG
    tp = TorchPrenet(c.prenet_in_dim, c.n_mels, c.prenet_d_model, c.prenet_heads, c.prenet_ffn_dim, c.prenet_layers,
                     c.prenet_max_positions)
    td = TorchConditionalDecoder(2 * c.n_mels, c.n_mels, c.channels, c.attention_head_dim, c.n_blocks,
                                 c.num_mid_blocks, c.num_heads, chunk_size=c.chunk_size)
    tf = randomize_(TorchFlowMatching(tp, td), 0, 0.1).eval()
    sd = {k: v.detach().numpy() for k, v in tf.state_dict().items()}
    params = import_params(sd, conv.flow_matching_rules(CFG), _abstract())
    rs = np.random.RandomState(0)
    lengths = np.array([T, 13, 7, T - 1])
    mask = (np.arange(T)[None] < lengths[:, None]).astype(np.float32)
    hidden = rs.randn(B, T, c.prenet_in_dim).astype(np.float32) * mask[..., None]
    mel = (rs.randn(B, T, c.n_mels).astype(np.float32) * 2 - 4) * mask[..., None]
    return tf, params, hidden, mask, lengths, mel


def _cf(x):  # (B, T, C) -> torch (B, C, T)
    return torch.tensor(np.ascontiguousarray(np.asarray(x).transpose(0, 2, 1)))


def test_prenet_estimator_and_cfm_loss_match_references(ref_and_ours):
    tf, params, hidden, mask, lengths, mel = ref_and_ours
    x = np.random.RandomState(1).randn(B, T, CFG.n_mels).astype(np.float32)
    t = np.array([0.1, 0.5, 0.7, 0.95], np.float32)
    rng = jax.random.PRNGKey(3)

    @jax.jit
    def ours(params):
        mu = MODEL.apply({"params": params}, hidden, mask, method=FlowMatchingDecoder.prenet)
        v = MODEL.apply({"params": params}, x, mask, mu, t, method=FlowMatchingDecoder.estimate)
        return mu, v, flow_matching_loss_sums(MODEL, params, hidden, mel, mask, rng)

    mu, v, sums = ours(params)
    m = torch.tensor(mask[:, None])
    with torch.no_grad():
        mu_ref = tf.prenet(torch.tensor(hidden), torch.tensor(lengths))
        v_ref = tf.conditional_decoder(_cf(x), m, mu_ref.transpose(1, 2), torch.tensor(t))
        # the same random draws as flow_matching_loss_sums: t (cosine), z, condition dropout
        k_t, k_z, k_cfg = jax.random.split(rng, 3)
        tt = 1.0 - np.cos(np.asarray(jax.random.uniform(k_t, (B,))) * 0.5 * np.pi)
        z = np.asarray(jax.random.normal(k_z, mel.shape))
        keep = (np.asarray(jax.random.uniform(k_cfg, (B,))) > CFG.training_cfg_rate).astype(np.float32)
        cfm_ref = torch_cfm_loss(tf.conditional_decoder, _cf(mel), m, mu_ref.transpose(1, 2), torch.tensor(tt, dtype=torch.float32),
                                 _cf(z), torch.tensor(keep), CFG.sigma_min)
    d_mu = float(np.abs((np.asarray(mu) - mu_ref.numpy()) * mask[..., None]).max())
    d_v = float(np.abs(np.asarray(v) - v_ref.numpy().transpose(0, 2, 1)).max())
    d_loss = abs(float(sums["cfm"]) - float(cfm_ref)) / float(cfm_ref)
    prior_ref = float((np.abs(mu_ref.numpy() - mel) * mask[..., None]).sum())
    print(f"prenet mu max abs diff {d_mu:.3e}; estimator velocity {d_v:.3e}; CFM loss rel diff {d_loss:.3e}")
    assert d_mu <= 2e-5 and d_v <= 2e-5 and d_loss <= 1e-5
    assert abs(float(sums["prior"]) - prior_ref) / prior_ref <= 1e-5


def test_cosine_euler_sampler_with_guidance_matches_reference(ref_and_ours):
    tf, params, hidden, mask, lengths, _ = ref_and_ours
    rng = jax.random.PRNGKey(7)
    ours = np.asarray(SAMPLE(params, hidden, mask, rng))
    z = np.asarray(jax.random.normal(rng, (B, T, CFG.n_mels)))  # the sampler's own x0 draw
    with torch.no_grad():
        mu = tf.prenet(torch.tensor(hidden), torch.tensor(lengths)).transpose(1, 2)
        ref = torch_cfm_sample(tf.conditional_decoder, mu, torch.tensor(mask[:, None]), _cf(z), CFG.n_timesteps,
                               CFG.inference_cfg_rate).numpy().transpose(0, 2, 1)
    d = float(np.abs((ours - ref) * mask[..., None]).max())
    print(f"10-step CFM sample (guidance 0.7) max abs diff vs reference: {d:.3e}")
    assert d <= 1e-4
    assert np.all(ours[mask == 0] == 0)


def test_chunk_causal_mask_and_causality(ref_and_ours):
    _, params, hidden, mask, _, _ = ref_and_ours
    m = np.asarray(chunk_attention_mask(jnp.asarray(mask[:2, :8]), 3))
    assert m[0, 0].tolist() == [1, 1, 1, 0, 0, 0, 0, 0] and m[0, 4].tolist() == [1, 1, 1, 1, 1, 1, 0, 0]
    assert m[1, 7].tolist() == [1, 1, 1, 1, 1, 1, 1, 1] and not m[0, :, 8:].any()
    # a change at frame 17 (chunk 1 of size 16) leaves frames 0..15 (chunk 0) unchanged
    fwd = jax.jit(lambda h: MODEL.apply({"params": params}, h, mask, jnp.zeros((B, T, CFG.n_mels)), jnp.full((B,), 0.5)))
    h2 = hidden.copy()
    h2[:, 17] += 3.0
    a, b = np.asarray(fwd(hidden)), np.asarray(fwd(h2))
    assert np.abs(a[0, :16] - b[0, :16]).max() == 0.0 and np.abs(a[0, 17:] - b[0, 17:]).max() > 1e-3
    # padding inside the same chunk (row 2 is 7 frames long) is never seen by valid frames
    h3 = hidden.copy()
    h3[2, 7:] = np.random.RandomState(9).randn(T - 7, CFG.prenet_in_dim)
    c = np.asarray(fwd(h3))
    assert np.abs(a[2, :7] - c[2, :7]).max() == 0.0 and np.all(c[2, 7:] == 0)


def test_cli_training_brings_sampled_mels_closer(tmp_path, ref_and_ours):
    """`python -m launch.train --config=configs/flow_matching_tiny.py` (one CPU device, as a user
    runs it), then the restored params sample held-out mels much closer to their targets."""
    from omni_jax.convert.workdir import restore_params
    from omni_jax.tasks import get_task

    steps = 100
    overrides = [f"--config.train.steps={steps}", f"--config.data.max_frames={T}", "--config.train.batch_size=8",
                 f"--config.checkpoint.every={steps}", "--config.train.log_every=25"]
    env = dict(os.environ)
    env["XLA_FLAGS"] = compile_flags.FLAGS  # one CPU device
    env["PYTHONPATH"] = ROOT + os.pathsep + env.get("PYTHONPATH", "")
    out = subprocess.run([sys.executable, "-m", "launch.train", "--config=configs/flow_matching_tiny.py:runlocal",
                          f"--workdir={tmp_path}", *overrides], cwd=ROOT, env=env, capture_output=True, text=True,
                         timeout=900)
    assert out.returncode == 0, out.stderr[-3000:]
    assert f"done at step {steps}" in out.stdout
    logs = [json.loads(line) for line in open(tmp_path / "metrics.jsonl")]
    assert logs[-1]["prior_loss"] < 0.5 * logs[0]["prior_loss"] and logs[-1]["cfm_loss"] < logs[0]["cfm_loss"]

    c = flow_matching_tiny.get_config("runlocal")
    c.data.max_frames, c.train.batch_size, c.train.steps = T, 8, steps
    untrained = shd.unbox(jax.jit(get_task(c).init)(jax.random.PRNGKey(c.train.seed)))["flow_matching"]
    trained = restore_params(c, str(tmp_path))["flow_matching"]
    # the frozen stored position table is untouched
    assert np.array_equal(np.asarray(trained["prenet"]["positional_embedding"]),
                          np.asarray(untrained["prenet"]["positional_embedding"]))
    held_out = SyntheticMelSet(n_mels=CFG.n_mels, cond_dim=CFG.prenet_in_dim, max_frames=T, num_units=c.data.num_units,
                               corpus_seed=c.data.corpus_seed, seed=12345).batch(0, B)
    err = {}
    for name, p in (("untrained", untrained), ("trained", trained)):
        mel = np.asarray(SAMPLE(p, held_out["hidden"], held_out["mel_mask"], jax.random.PRNGKey(0)))
        w = held_out["mel_mask"][..., None]
        err[name] = float((np.abs(mel - held_out["mel"]) * w).sum() / (w.sum() * CFG.n_mels))
    print(f"held-out sampled mel L1 to target: untrained {err['untrained']:.3f}, trained ({steps} steps) {err['trained']:.3f}")
    assert err["trained"] < 0.5 * err["untrained"]

    # launch/convert.py exports the run with the release names; importing that back is bit-exact
    from launch.convert import export
    from omni_jax.convert.safetensors_io import load_state_dict

    export(c, str(tmp_path), str(tmp_path / "exported"), "release")
    sd = load_state_dict(str(tmp_path / "exported"))
    assert "audio_tokenizer.audio_flow_matching_decoder.conditional_decoder.final_proj.weight" in sd
    back = get_task(c).import_params(str(tmp_path / "exported"), {"flow_matching": trained})["flow_matching"]
    assert all(np.array_equal(a, b) for a, b in zip(jax.tree.leaves(trained), jax.tree.leaves(back)))


def test_config_errors_name_the_key():
    with pytest.raises(ValueError, match=r"channels=\[256, 256\]"):
        FlowMatchingConfig.from_dict({"channels": [256, 256]})
    with pytest.raises(ValueError, match="reg_loss_type='huber'"):
        FlowMatchingConfig.from_dict({"reg_loss_type": "huber"})
    with pytest.raises(ValueError, match="prenet input has width 7, config.prenet_in_dim is 64"):
        MODEL.init(jax.random.PRNGKey(0), jnp.zeros((1, 4, 7)), jnp.ones((1, 4)), jnp.zeros((1, 4, 80)), jnp.zeros((1,)))
