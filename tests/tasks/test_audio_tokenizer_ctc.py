"""omni_jax/tasks/audio_tokenizer.py: the optional CTC loss of the tokenizer stage (`loss.ctc`).

The loss equals PyTorch's torch.nn.functional.ctc_loss on the same logits (transcript without its
eos, blank = the vocabulary size, padded rows contribute nothing); the head exists only when the
loss is weighted; a few train steps lower it and train the head and the encoder under it."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import linen as nn

from configs import audio_tokenizer_tiny
from omni_jax.tasks import get_task
from tests.tasks.test_audio_tokenizer_task import train_on_one_batch


def _config(ctc: float = 1.0, per_frame: int = 2):
    c = audio_tokenizer_tiny.get_config("runlocal")
    c.unlock()
    c.loss.update(ctc=ctc, ctc_labels_per_frame=per_frame)
    return c


def test_head_only_when_weighted_and_errors():
    off = get_task(_config(ctc=0.0)).init(jax.random.PRNGKey(0))
    assert "audio_ctc_head" not in off
    task = get_task(_config(per_frame=3))
    on = nn.unbox(task.init(jax.random.PRNGKey(0)))
    vocab, code_dim = task.llm_cfg.vocab_size, task.cfg.bridge.code_dim
    assert on["audio_ctc_head"]["proj"]["kernel"].shape == (code_dim, 3 * (vocab + 1))
    with pytest.raises(ValueError, match=r"config.loss.ctc_labels_per_frame=0: must be >= 1"):
        get_task(_config(per_frame=0))


def test_ctc_equals_torch():
    torch = pytest.importorskip("torch")
    task = get_task(_config())
    params = task.init(jax.random.PRNGKey(0))
    batch = next(task.make_data(None, start_step=0, process_index=0, process_count=1))
    b, n = batch["text"].shape[0], task.frames
    batch["text_lengths"][-1], batch["text"][-1] = 0, 0  # a padding row: contributes nothing
    rng = np.random.default_rng(0)
    lengths = np.minimum(rng.integers(n // 2, n + 1, b), n).astype(np.int32)
    out = {"mixed": jnp.asarray(rng.standard_normal((b, n, task.cfg.bridge.code_dim)), jnp.float32),
           "lengths": jnp.asarray(lengths)}
    norms = {"text": jnp.float32(max(batch["text_lengths"].sum(), 1))}
    got = float(task._ctc(params, out, batch, norms))

    logits = np.asarray(task.ctc_head.apply({"params": params["audio_ctc_head"]}, out["mixed"]), np.float64)
    log_probs = torch.log_softmax(torch.from_numpy(logits), -1).transpose(0, 1)  # (T, B, C)
    n_text = np.maximum(batch["text_lengths"] - 1, 0)  # without eos
    rows = [j for j in range(b) if n_text[j] > 0]
    want = torch.nn.functional.ctc_loss(
        log_probs[:, rows], torch.from_numpy(batch["text"][rows].astype(np.int64)),
        torch.from_numpy(2 * lengths[rows].astype(np.int64)), torch.from_numpy(n_text[rows].astype(np.int64)),
        blank=task.llm_cfg.vocab_size, reduction="sum", zero_infinity=False).item() / float(norms["text"])
    print(f"ctc per text token: omni_jax {got:.6f}, torch {want:.6f}, abs diff {abs(got - want):.2e}")
    assert len(rows) == b - 1 and np.isfinite(want)
    np.testing.assert_allclose(got, want, rtol=1e-5)


def test_ctc_falls_and_trains_the_encoder():
    _, init, state, _, _, _, history = train_on_one_batch(_config(), 6)  # fully quantised: the head reads codes
    ctc = [float(m["ctc"]) for m in history]
    print("ctc over 6 steps on one batch: " + " ".join(f"{x:.2f}" for x in ctc))
    assert ctc[-1] < 0.7 * ctc[0]
    final = jax.device_get(state.params)
    for name in ("audio_ctc_head", "audio_encoder"):
        assert all(not np.array_equal(a, b) for a, b in zip(jax.tree.leaves(init.params[name]),
                                                           jax.tree.leaves(final[name])))
