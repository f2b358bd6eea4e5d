"""omni_jax/generate/sampling.py: equal to transformers' logits processors (repetition penalty,
temperature, top-k, top-p) and a sane sampler."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from transformers.generation.logits_process import (LogitsProcessorList, RepetitionPenaltyLogitsProcessor,
                                                    TemperatureLogitsWarper, TopKLogitsWarper, TopPLogitsWarper)

from omni_jax.generate.sampling import AUDIO_RELEASE, TEXT_RELEASE, SamplingParams, mark_seen, process_logits, sample


@pytest.mark.parametrize("p", [TEXT_RELEASE, AUDIO_RELEASE, SamplingParams(1.3, 0, 0.5, 0.9), SamplingParams(0.7, 3, 1.0, 1.0)])
def test_processed_scores_equal_transformers(p):
    rs = np.random.RandomState(0)
    logits = (rs.randn(3, 50) * 3).astype(np.float32)
    history = rs.randint(0, 50, (3, 12))
    seen = np.zeros((3, 50), bool)
    for r in range(3):
        seen[r, history[r]] = True
    procs = LogitsProcessorList()
    if p.repetition_penalty != 1.0:
        procs.append(RepetitionPenaltyLogitsProcessor(p.repetition_penalty))
    if p.temperature != 1.0:
        procs.append(TemperatureLogitsWarper(p.temperature))
    if p.top_k:
        procs.append(TopKLogitsWarper(p.top_k))
    if p.top_p < 1.0:
        procs.append(TopPLogitsWarper(p.top_p))
    ref = procs(torch.tensor(history), torch.tensor(logits)).numpy()
    ours = np.asarray(jax.jit(process_logits, static_argnums=2)(jnp.asarray(logits), jnp.asarray(seen), p))
    assert np.array_equal(np.isinf(ours), np.isinf(ref))
    np.testing.assert_allclose(ours[~np.isinf(ours)], ref[~np.isinf(ref)], rtol=1e-6, atol=1e-6)


def test_sampling_respects_the_filters_and_greedy_is_argmax():
    logits = jnp.asarray(np.random.RandomState(1).randn(4, 30).astype(np.float32))
    p = SamplingParams(temperature=0.8, top_k=3)
    draws = jax.jit(jax.vmap(lambda k: sample(k, logits, None, p)))(jax.random.split(jax.random.PRNGKey(0), 200))
    top3 = np.argsort(-np.asarray(logits), axis=-1)[:, :3]
    assert all(set(np.asarray(draws)[:, r]) <= set(top3[r]) for r in range(4))
    greedy = sample(jax.random.PRNGKey(0), logits, None, SamplingParams(do_sample=False))
    assert np.array_equal(np.asarray(greedy), np.argmax(np.asarray(logits), -1))
    seen = mark_seen(jnp.zeros((4, 30), bool), jnp.array([1, 2, 3, 4]), jnp.array([True, False, True, True]))
    assert np.asarray(seen).sum() == 3 and bool(seen[0, 1]) and not bool(seen[1, 2])


def test_bad_settings_are_named():
    with pytest.raises(ValueError, match="temperature must be > 0"):
        SamplingParams.from_dict({"temperature": 0.0})
    with pytest.raises(ValueError, match=r"unknown key\(s\) \['topk'\]"):
        SamplingParams.from_dict({"topk": 5})
