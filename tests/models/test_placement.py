"""omni_jax/models/omni.py `place` / `gather`: the one placement of modality embeddings
(placeholders filled in order from their own row, text dropped there, gradients only to placed
rows, clear shape errors). Expectations are written out by hand."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from omni_jax.models.omni import gather, place


def _case():
    # row 0: positions 1, 2 take buffer rows 2, 0; row 1: position 3 takes buffer row 1
    index = np.array([[-1, 2, 0, -1], [-1, -1, -1, 1]], np.int32)
    x = np.arange(2 * 4 * 2, dtype=np.float32).reshape(2, 4, 2)
    buf = 100 + np.arange(2 * 3 * 2, dtype=np.float32).reshape(2, 3, 2)
    return x, buf, index


def test_placeholders_take_their_rows_buffer_entries():
    x, buf, index = _case()
    out = np.asarray(jax.jit(place)(x, buf, index))
    want = x.copy()
    want[0, 1], want[0, 2], want[1, 3] = buf[0, 2], buf[0, 0], buf[1, 1]
    np.testing.assert_array_equal(out, want)
    np.testing.assert_array_equal(np.asarray(gather(buf, index))[1, 3], [108.0, 109.0])


def test_gradients_reach_only_placed_entries():
    x, buf, index = _case()
    gx, gb = jax.grad(lambda a, b: place(a, b, jnp.asarray(index)).sum(), (0, 1))(jnp.asarray(x), jnp.asarray(buf))
    np.testing.assert_array_equal(np.asarray(gx[..., 0]), (index < 0).astype(np.float32))
    want_b = np.zeros((2, 3), np.float32)
    want_b[0, 2] = want_b[0, 0] = want_b[1, 1] = 1.0
    np.testing.assert_array_equal(np.asarray(gb[..., 0]), want_b)


def test_shape_errors_name_both_shapes():
    x, buf, index = _case()
    with pytest.raises(ValueError, match=r"embeddings of shape \(2, 3, 3\) .* expected \(2, tokens, 2\)"):
        place(x, np.zeros((2, 3, 3), np.float32), index)
    with pytest.raises(ValueError, match=r"expected \(2, tokens, 2\) with an index \(2, 4\)"):
        place(x, buf, index[:, :3])
