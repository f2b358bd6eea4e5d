"""omni_jax/models/audio_tokenizer.py: Conv-GMLP + RVQ parity with the release, and the training
machinery (straight-through estimator, commitment loss, EMA update, dead-code restart, stage dropout)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from omni_jax import sharding as shd
from omni_jax.convert import audio as conv
from omni_jax.convert.mapping import import_params
from omni_jax.models.audio_tokenizer import AudioBridge, AudioBridgeConfig, ema_update, merge_stats, nearest_codes
from tests.audio_reference import ReleaseBridge, randomize_
from tests.reference_models import state_dict_numpy

D_MODEL, POOL, SIZES = 16, 4, (64, 32, 16, 8)  # 4 stages keep compiles short; the release's 8 are in test_audio_convert
T = 24  # encoder frames per row


def _cfg(**kw):
    return AudioBridgeConfig(d_model=D_MODEL, pool=POOL, codebook_sizes=SIZES, **kw)


def _init(model, t=T):
    return jax.eval_shape(model.init, jax.random.PRNGKey(0), jnp.zeros((1, t, D_MODEL)), jnp.full((1,), t, jnp.int32))


@pytest.fixture(scope="module")
def ref_and_ours():
    torch.manual_seed(0)
    ref = randomize_(ReleaseBridge(D_MODEL, POOL, SIZES)).eval()
    with torch.no_grad():  # codewords on the scale of the LayerNormed features (realistic distances)
        for i, vq in enumerate(ref.vq_list):
            vq.codebook.embed.normal_(0, 1.0 / (i + 1))
            vq.codebook.embed_avg.copy_(vq.codebook.embed)
    cfg = _cfg()
    model = AudioBridge(cfg)
    abstract = shd.unbox(_init(model))
    variables = import_params(state_dict_numpy(ref), conv.bridge_rules(cfg, params="params/", stats="vq_stats/"),
                              abstract)
    return ref, cfg, model, variables


def _enc(seed=0, lengths=(24, 17, 9, 3)):
    x = np.random.RandomState(seed).randn(len(lengths), T, D_MODEL).astype(np.float32)
    return x, np.array(lengths, np.int32)


def test_codes_and_decode_match_release(ref_and_ours):
    ref, cfg, model, variables = ref_and_ours
    x, enc_len = _enc()

    def run(v, x, n):
        z, lengths = model.apply(v, x, n, method=AudioBridge.features)
        codes, q = model.apply(v, z, lengths, method=AudioBridge.quantize)
        return z, lengths, codes, model.apply(v, codes, lengths, method=AudioBridge.decode)

    z, lengths, codes, dec = jax.jit(run)(variables, x, enc_len)
    assert lengths.tolist() == [6, 4, 2, 0] and codes.shape == (4, 6, len(SIZES))
    worst_z = worst_d = 0.0
    for b in range(4):
        n = int(lengths[b])
        with torch.no_grad():
            clip = torch.tensor(x[b, : enc_len[b]])
            want_z = ref.features(clip)[:n].numpy()
            want_codes = ref(clip, n).numpy()
            want_dec = ref.decode(torch.tensor(want_codes)).numpy()
        assert np.array_equal(np.asarray(codes[b, :n]), want_codes), b  # exact code agreement
        assert not np.asarray(codes[b, n:]).any() and not np.asarray(dec[b, n:]).any()
        if n:
            worst_z = max(worst_z, float(np.abs(np.asarray(z[b, :n]) - want_z).max()))
            worst_d = max(worst_d, float(np.abs(np.asarray(dec[b, :n]) - want_dec).max()))
    print(f"audio bridge: codes identical to the release; features max abs diff {worst_z:.3e}, "
          f"decode max abs diff {worst_d:.3e}")
    assert worst_z <= 1e-5 and worst_d <= 1e-5


def test_padded_batch_codes_match_the_release_batched_forward(ref_and_ours):
    """The release's batched bridge (tests/audio_reference.py ReleaseBridge.forward_batch) on a
    padded batch as its encoder leaves it (zeros beyond each clip), lengths not multiples of 4."""
    ref, cfg, model, variables = ref_and_ours
    x, enc_len = _enc(7, lengths=(24, 22, 13, 5, 2))
    x *= np.arange(T)[None, :, None] < enc_len[:, None, None]
    codes, lengths = jax.jit(lambda v, x, n: (lambda z, m: (model.apply(v, z, m, method=AudioBridge.quantize)[0], m))(
        *model.apply(v, x, n, method=AudioBridge.features)))(variables, x, enc_len)
    assert lengths.tolist() == [n // POOL for n in enc_len.tolist()]
    with torch.no_grad():
        want = ref.forward_batch(torch.tensor(x), torch.tensor(np.asarray(lengths))).numpy()
    ours = np.concatenate([np.asarray(codes[b, : int(n)]) for b, n in enumerate(lengths)])
    assert ours.shape == want.shape == (sum(lengths.tolist()), len(SIZES))
    assert np.array_equal(ours, want)  # exact code agreement, packed as the release returns them


def test_nearest_code_is_exact_in_fp32():
    r = np.random.RandomState(3)
    x, e = r.randn(500, 64).astype(np.float32), r.randn(128, 64).astype(np.float32)
    d64 = ((x[:, None].astype(np.float64) - e[None].astype(np.float64)) ** 2).sum(-1)
    srt = np.sort(d64, axis=1)
    clear = (srt[:, 1] - srt[:, 0]) > 1e-3 * srt[:, 0]  # rows without a near-tie
    got = np.asarray(nearest_codes(jnp.asarray(x), jnp.asarray(e)))
    assert clear.mean() > 0.9 and np.array_equal(got[clear], d64.argmin(1)[clear])
    # ties go to the first index, like the release's argmax of -distance
    assert int(nearest_codes(jnp.zeros((1, 4)), jnp.ones((3, 4)))[0]) == 0


_COMPILED = {}


def _train(model, variables, x, enc_len, rng, dropout=True):
    """features + quantize_train, jitted once per (config, dropout) (compiles dominate CPU time)."""
    key = (model.cfg, dropout)
    if key not in _COMPILED:
        def run(variables, x, enc_len, rng):
            z, lengths = model.apply(variables, x, enc_len, method=AudioBridge.features)
            out = model.apply(variables, z, lengths, rng, method=AudioBridge.quantize_train, dropout=dropout)
            return z, lengths, out
        _COMPILED[key] = jax.jit(run)
    return _COMPILED[key](variables, x, enc_len, rng)


def test_straight_through_estimator(ref_and_ours):
    _, cfg, model, variables = ref_and_ours
    x, enc_len = _enc(1)
    z, lengths, _ = _train(model, variables, x, enc_len, jax.random.PRNGKey(0))
    g = jnp.asarray(np.random.RandomState(5).randn(*z.shape).astype(np.float32))

    def f(z):
        out = model.apply(variables, z, lengths, jax.random.PRNGKey(0), method=AudioBridge.quantize_train)
        return jnp.sum(out["quantized"] * g), out

    grad, out = jax.jit(jax.grad(f, has_aux=True))(z)
    codes, q = jax.jit(lambda v, z, n: model.apply(v, z, n, method=AudioBridge.quantize))(variables, z, lengths)
    valid = np.arange(z.shape[1])[None, :] < np.asarray(lengths)[:, None]
    # forward: the codeword sum; backward: the identity (gradient reaches the continuous features)
    np.testing.assert_allclose(np.asarray(out["quantized"])[valid], np.asarray(q)[valid], atol=1e-5)
    np.testing.assert_allclose(np.asarray(grad), np.asarray(g), atol=0)
    assert np.array_equal(np.asarray(out["codes"]), np.asarray(codes))


def test_commitment_loss_value_and_gradient(ref_and_ours):
    _, cfg, model, variables = ref_and_ours
    x, enc_len = _enc(2)
    z, lengths, _ = _train(model, variables, x, enc_len, jax.random.PRNGKey(0))
    fn = jax.jit(lambda z: model.apply(variables, z, lengths, jax.random.PRNGKey(1),
                                       method=AudioBridge.quantize_train)["commit_sq_sum"])
    # value: sum over stages of ||r_i - e_i||^2, recomputed from the codes in numpy
    codes = np.asarray(_train(model, variables, x, enc_len, jax.random.PRNGKey(0))[2]["codes"])
    books = [np.asarray(variables["vq_stats"][f"vq_{i}"]["embed"]) for i in range(len(SIZES))]
    want = 0.0
    for b in range(z.shape[0]):
        for t in range(int(lengths[b])):
            r = np.asarray(z[b, t], np.float64)
            for i, e in enumerate(books):
                want += ((r - e[codes[b, t, i]]) ** 2).sum()
                r = r - e[codes[b, t, i]]
    np.testing.assert_allclose(float(fn(z)), want, rtol=1e-5)
    # a small step against its gradient lowers it: the encoder is pulled toward its codewords
    grad = jax.jit(jax.grad(fn))(z)
    assert float(fn(z - 1e-3 * grad)) < float(fn(z))


def test_ema_moves_codewords_toward_assigned_vectors():
    cfg = _cfg(ema_decay=0.9, dead_code_threshold=0.0)
    k, dim = 4, 3
    st = {"vq_0": dict(embed=np.eye(k, dim, dtype=np.float32), embed_avg=np.eye(k, dim, dtype=np.float32),
                       cluster_size=np.ones(k, np.float32))}
    target = np.array([5.0, 5.0, 5.0], np.float32)  # 10 vectors at `target`, all assigned to code 2
    counts = np.array([0, 0, 10, 0], np.float32)
    sums = np.zeros((k, dim), np.float32)
    sums[2] = 10 * target
    stats = {"vq_0": dict(counts=counts, sums=sums, candidates=np.zeros((2, dim), np.float32),
                          priority=np.zeros(2, np.float32))}
    before = np.linalg.norm(st["vq_0"]["embed"][2] - target)
    cur = st
    for _ in range(30):
        cur, m = ema_update(cur, stats, cfg)
    new = {k2: np.asarray(v) for k2, v in cur["vq_0"].items()}
    one, _ = ema_update(st, stats, cfg)
    np.testing.assert_allclose(one["vq_0"]["cluster_size"], 0.9 * 1 + 0.1 * counts, rtol=1e-6)
    np.testing.assert_allclose(one["vq_0"]["embed_avg"], 0.9 * st["vq_0"]["embed_avg"] + 0.1 * sums, rtol=1e-6)
    after = np.linalg.norm(new["embed"][2] - target)
    print(f"EMA: distance of the assigned codeword to its vectors {before:.3f} -> {after:.3f} (30 steps)")
    assert after < 0.1 * before
    # unassigned codewords keep their direction (embed_avg and cluster_size decay together)
    np.testing.assert_allclose(new["embed"][0] / np.linalg.norm(new["embed"][0]), [1, 0, 0], atol=1e-6)


def test_dead_code_is_restarted_from_batch_residuals(ref_and_ours):
    _, _, model, variables = ref_and_ours
    cfg = _cfg(dead_code_threshold=0.5)
    x, enc_len = _enc(4)
    _, _, out = _train(model, variables, x, enc_len, jax.random.PRNGKey(7))
    stats = out["stats"]
    vq = jax.tree.map(np.asarray, dict(variables["vq_stats"]))
    dead = 3
    vq["vq_0"]["cluster_size"][dead] = 0.0  # code 3 of stage 0 has not been used for a long time
    new, metrics = jax.jit(lambda v, s: ema_update(v, s, cfg))(vq, stats)
    cand = np.asarray(stats["vq_0"]["candidates"])
    revived = np.asarray(new["vq_0"]["embed"][dead])
    assert float(metrics["vq/0_restarted"]) >= 1
    assert np.min(np.abs(cand - revived).max(-1)) == 0.0  # it is now one of the batch's residuals
    assert float(new["vq_0"]["cluster_size"][dead]) == 1.0
    # live codes were not restarted
    live = np.asarray(vq["vq_0"]["cluster_size"]) * cfg.ema_decay + (1 - cfg.ema_decay) * np.asarray(stats["vq_0"]["counts"]) >= 0.5
    assert not np.any(np.all(np.asarray(new["vq_0"]["embed"])[live][:, None] == cand[None], -1))
    # and the revived code is now chosen for the residual it was restarted at
    assert int(nearest_codes(jnp.asarray(revived[None]), new["vq_0"]["embed"])[0]) == dead


def test_stage_dropout_keeps_a_prefix_of_stages(ref_and_ours):
    _, _, _, variables = ref_and_ours
    model = AudioBridge(_cfg(stage_dropout=1.0, min_stages=2))
    x, enc_len = _enc(5, lengths=(24,) * 4)
    S = len(SIZES)
    books = [np.asarray(variables["vq_stats"][f"vq_{i}"]["embed"]) for i in range(S)]
    seen = set()
    for seed in range(3):
        z, lengths, out = _train(model, variables, x, enc_len, jax.random.PRNGKey(seed))
        num = np.asarray(out["num_stages"])
        seen |= set(num.tolist())
        assert num.min() >= 2 and num.max() <= S
        codes = np.asarray(out["codes"])
        for b in range(len(num)):
            want = sum(books[i][codes[b, :, i]] for i in range(num[b]))
            np.testing.assert_allclose(np.asarray(out["quantized"][b]), want, atol=1e-5)
        # dropped stages contribute no EMA statistics
        kept_frames = [(num > i).sum() * 6 for i in range(S)]
        assert [float(out["stats"][f"vq_{i}"]["counts"].sum()) for i in range(S)] == kept_frames
    assert seen == {2, 3, 4}
    # without dropout (inference-like) all stages are kept
    _, _, out = _train(model, variables, x, enc_len, jax.random.PRNGKey(11), dropout=False)
    assert np.asarray(out["num_stages"]).tolist() == [S] * 4


def test_merged_microbatch_stats_equal_full_batch(ref_and_ours):
    _, _, model, variables = ref_and_ours
    x, enc_len = _enc(6)
    first, second = enc_len * [1, 1, 0, 0], enc_len * [0, 0, 1, 1]  # rows of length 0 add nothing
    _, _, a = _train(model, variables, x, first, jax.random.PRNGKey(1))
    _, _, b = _train(model, variables, x, second, jax.random.PRNGKey(2))
    _, _, full = _train(model, variables, x, enc_len, jax.random.PRNGKey(1))
    merged = merge_stats(a["stats"], b["stats"])
    for i in range(len(SIZES)):
        m, f = merged[f"vq_{i}"], full["stats"][f"vq_{i}"]
        np.testing.assert_allclose(m["counts"], f["counts"])
        np.testing.assert_allclose(m["sums"], f["sums"], atol=1e-4)
        both = np.concatenate([a["stats"][f"vq_{i}"]["priority"], b["stats"][f"vq_{i}"]["priority"]])
        np.testing.assert_allclose(m["priority"], np.sort(both)[::-1][: len(m["priority"])])


def test_missing_codebooks_error(ref_and_ours):
    _, _, model, variables = ref_and_ours
    x, enc_len = _enc()
    with pytest.raises(ValueError, match="'vq_stats' collection"):
        model.apply({"params": variables["params"]}, x, enc_len)
    with pytest.raises(ValueError, match=r"codes must be \(batch, frames, 4\)"):
        model.apply(variables, np.zeros((1, 3, 7), np.int32), np.ones(1, np.int32), method=AudioBridge.decode)
