"""Audio-boundary prediction for v1 streaming input: where the user's speech starts and ends in
a live audio stream (issue 15 item 1; ARCHITECTURE.md 2, "Streaming").

A small head, NOT the report's LLM special tokens: logistic regression on 100 ms chunks (1600
samples at 16 kHz), features = log energy of the chunk in 8 bands of its spectrum (0-8 kHz),
its total log energy and spectral flatness, for the chunk and the one before (20 numbers,
standardised with the training statistics). It is trained (optax Adam, full batch) on streams
built from the embedded dataset's speech (`omni_speech`, train split): a clip placed at a random
offset in 0.5-2 s of background noise at a random level (-70 to -35 dB re. full scale), followed
by 1-3 s of the same noise. Held-out streams are built the same way from the test split.

Boundary rule on the per-chunk probabilities p: the start is the first chunk with p > 0.5;
the end is the start of the first run of `hang` (5 = 0.5 s) chunks with p <= 0.5 after it.
`boundary_accuracy` counts a stream correct when both are within `tol` (0.2 s) of the truth.
"""

from __future__ import annotations

import dataclasses

import numpy as np

CHUNK = 1600  # samples at 16 kHz = 100 ms
RATE = 16_000
N_BANDS = 8


def chunk_features(x: np.ndarray) -> np.ndarray:
    """(n * CHUNK,) samples -> (n, 2 * (N_BANDS + 2)) features (chunk and its predecessor)."""
    n = len(x) // CHUNK
    c = np.asarray(x[: n * CHUNK], np.float64).reshape(n, CHUNK) * np.hanning(CHUNK)
    spec = np.abs(np.fft.rfft(c, axis=1)) ** 2 + 1e-12
    bands = np.array_split(spec, N_BANDS, axis=1)
    band_e = np.stack([np.log(b.sum(1)) for b in bands], 1)
    total = np.log(spec.sum(1))[:, None]
    flat = (np.mean(np.log(spec), 1) - np.log(np.mean(spec, 1)))[:, None]
    f = np.concatenate([band_e, total, flat], 1)
    prev = np.concatenate([f[:1], f[:-1]], 0)
    return np.concatenate([f, prev], 1).astype(np.float32)


@dataclasses.dataclass
class BoundaryHead:
    w: np.ndarray
    b: float
    mean: np.ndarray
    std: np.ndarray
    hang: int = 5

    def proba(self, feats: np.ndarray) -> np.ndarray:
        z = ((feats - self.mean) / self.std) @ self.w + self.b
        return 1.0 / (1.0 + np.exp(-z))

    def boundaries(self, x: np.ndarray) -> tuple[float | None, float | None]:
        """(start, end) seconds of the user's speech in `x` (None when not (yet) seen)."""
        speech = self.proba(chunk_features(x)) > 0.5
        if not speech.any():
            return None, None
        s = int(np.argmax(speech))
        run = 0
        for i in range(s + 1, len(speech)):
            run = run + 1 if not speech[i] else 0
            if run == self.hang:
                return s * CHUNK / RATE, (i - self.hang + 1) * CHUNK / RATE
        return s * CHUNK / RATE, None


def make_streams(split: str, per_clip: int = 4, seed: int = 0, size: str = "tiny"):
    """[(waveform, start_s, end_s)] streams around the embedded dataset's speech clips."""
    from omni_jax.data import default_dataset, media_io

    rng = np.random.default_rng(seed + (0 if split == "train" else 1000))
    out = []
    for _, ex in default_dataset.generate("speech", split, size):
        speech = media_io.decode_audio(ex["audio"])
        speech = speech[: len(speech) - len(speech) % CHUNK]
        for _ in range(per_clip):
            lead = int(rng.integers(5, 20)) * CHUNK
            trail = int(rng.integers(10, 30)) * CHUNK
            level = 10 ** (rng.uniform(-70, -35) / 20)
            noise = rng.standard_normal(lead + len(speech) + trail).astype(np.float32) * level
            x = noise.copy()
            x[lead: lead + len(speech)] += speech
            nz = np.flatnonzero(np.abs(speech) > 1e-3)  # the clip's own leading/trailing silence
            start = (lead + (nz[0] if len(nz) else 0)) / RATE
            end = (lead + (nz[-1] + 1 if len(nz) else len(speech))) / RATE
            out.append((x, start, end))
    return out


def _labels(x, start, end):
    n = len(x) // CHUNK
    t = (np.arange(n) + 0.5) * CHUNK / RATE
    return ((t >= start) & (t < end)).astype(np.float32)


def train(streams, steps: int = 400, lr: float = 0.05, seed: int = 0) -> BoundaryHead:
    import jax
    import jax.numpy as jnp
    import optax

    feats = np.concatenate([chunk_features(x) for x, _, _ in streams])
    labels = np.concatenate([_labels(x, s, e) for x, s, e in streams])
    mean, std = feats.mean(0), feats.std(0) + 1e-6
    f = jnp.asarray((feats - mean) / std)
    y = jnp.asarray(labels)
    params = {"w": jnp.zeros(f.shape[1]), "b": jnp.zeros(())}
    opt = optax.adam(lr)
    state = opt.init(params)

    @jax.jit
    def step(params, state):
        loss, g = jax.value_and_grad(lambda p: optax.sigmoid_binary_cross_entropy(f @ p["w"] + p["b"], y).mean())(params)
        upd, state = opt.update(g, state)
        return optax.apply_updates(params, upd), state, loss

    for _ in range(steps):
        params, state, _ = step(params, state)
    return BoundaryHead(np.asarray(params["w"]), float(params["b"]), mean, std)


def boundary_accuracy(head: BoundaryHead, streams, tol: float = 0.2) -> dict:
    ok_s = ok_e = ok = 0
    errs = []
    for x, s, e in streams:
        ps, pe = head.boundaries(x)
        gs = ps is not None and abs(ps - s) <= tol
        ge = pe is not None and abs(pe - e) <= tol
        ok_s, ok_e, ok = ok_s + gs, ok_e + ge, ok + (gs and ge)
        errs.append((None if ps is None else ps - s, None if pe is None else pe - e))
    n = len(streams)
    return {"streams": n, "start": ok_s / n, "end": ok_e / n, "both": ok / n, "errors": errs}
