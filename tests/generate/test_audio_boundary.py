"""Audio-boundary head (omni_jax/generate/audio_boundary.py): trained on streams around the
embedded train-split speech, accuracy on held-out (test-split) streams stated and asserted."""

import numpy as np

from omni_jax.generate import audio_boundary as ab


def test_boundary_accuracy_on_held_out_streams():
    head = ab.train(ab.make_streams("train", per_clip=4, seed=0))
    acc = ab.boundary_accuracy(head, ab.make_streams("test", per_clip=4, seed=0), tol=0.2)
    errs = np.array([e for e in acc["errors"] if None not in e])
    print(f"held-out streams {acc['streams']}: start within 0.2 s {acc['start']:.3f}, end {acc['end']:.3f}, "
          f"both {acc['both']:.3f}; mean |err| start {np.abs(errs[:, 0]).mean() * 1000:.1f} ms, "
          f"end {np.abs(errs[:, 1]).mean() * 1000:.1f} ms, max {np.abs(errs).max() * 1000:.1f} ms")
    assert acc["streams"] >= 30 and acc["both"] >= 0.9
    # pure noise: no speech is found
    noise = np.random.default_rng(0).standard_normal(16000 * 3).astype(np.float32) * 1e-3
    assert head.boundaries(noise) == (None, None)
