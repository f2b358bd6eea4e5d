"""Audio input path speed: Whisper log-mel front end and Whisper encoder, ours (JAX, jit) vs PyTorch.

  python benchmarks/audio_encoder.py [--layers 4 --d-model 384 --batch 2 --reps 3]

Same weights (converted with omni_jax/convert/audio.py), same inputs (30 s buffers, 3000 mel
frames), fp32, CPU, one process. Prints a table: median wall time per call and the ratio
PyTorch / ours (> 1: ours is faster). Reference: transformers' WhisperFeatureExtractor (its torch
STFT path) and WhisperEncoder (eager attention, torch.no_grad).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _time(fn, reps: int) -> float:
    fn()  # warm-up / compile
    out = []
    for _ in range(reps):
        t = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t)
    return statistics.median(out)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--d-model", type=int, default=384)
    ap.add_argument("--heads", type=int, default=6)
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--reps", type=int, default=3)
    args = ap.parse_args()

    import jax
    import jax.numpy as jnp
    import torch
    from transformers import WhisperConfig, WhisperFeatureExtractor
    from transformers.models.whisper.modeling_whisper import WhisperEncoder as HFEncoder

    from omni_jax import sharding as shd
    from omni_jax.convert import audio as conv
    from omni_jax.data.speech_synth import BuiltinTTS
    from omni_jax.models.whisper import WhisperEncoder, WhisperEncoderConfig
    from omni_jax.ops import mel_jax

    jax.config.update("jax_default_matmul_precision", "highest")
    torch.set_num_threads(os.cpu_count() or 1)
    b, samples = args.batch, 480000
    tts = BuiltinTTS()
    speech = np.concatenate([tts("the red circle is above the blue star. two plus two is four.", v) for v in range(6)])
    wav = np.zeros((b, samples), np.float32)
    n = np.array([min(len(speech), samples - 16000 * i) for i in range(b)], np.int32)
    for i in range(b):
        wav[i, : n[i]] = speech[: n[i]]

    rows = []
    fe = WhisperFeatureExtractor(feature_size=128)
    t_ref = _time(lambda: fe([wav[i, : n[i]] for i in range(b)], sampling_rate=16000, return_tensors="np"), args.reps)
    for impl in ("matmul", "fft"):
        f = jax.jit(lambda w, k, impl=impl: mel_jax.whisper_log_mel(w, k, impl=impl))
        t = _time(lambda: jax.block_until_ready(f(wav, n)), args.reps)
        rows.append((f"log-mel front end ({impl}), {b} x 30 s", t_ref, t))

    hf_cfg = WhisperConfig(d_model=args.d_model, encoder_layers=args.layers, encoder_attention_heads=args.heads,
                           encoder_ffn_dim=4 * args.d_model, num_mel_bins=128, max_source_positions=1500,
                           attn_implementation="eager")
    torch.manual_seed(0)
    ref = HFEncoder(hf_cfg).eval()
    cfg = WhisperEncoderConfig(d_model=args.d_model, num_layers=args.layers, num_heads=args.heads,
                               ffn_dim=4 * args.d_model, max_source_positions=1500)
    model = WhisperEncoder(cfg)
    abstract = shd.unbox(jax.eval_shape(model.init, jax.random.PRNGKey(0), jnp.zeros((1, 128, 3000)),
                                        jnp.ones((1,), jnp.int32))["params"])
    params = conv.import_encoder({k: v.numpy() for k, v in ref.state_dict().items()}, cfg, abstract, flavour="hf")
    mel = np.asarray(mel_jax.whisper_log_mel(wav, n)[0])
    full = np.full((b,), 3000, np.int32)
    with torch.no_grad():
        t_ref = _time(lambda: ref(torch.tensor(mel)), args.reps)
        want = ref(torch.tensor(mel)).last_hidden_state.numpy()
    f = jax.jit(model.apply)
    t = _time(lambda: jax.block_until_ready(f({"params": params}, mel, full)), args.reps)
    diff = float(np.abs(np.asarray(f({"params": params}, mel, full)[0]) - want).max())
    rows.append((f"Whisper encoder d{args.d_model} x{args.layers}, {b} x 1500 frames", t_ref, t))

    print(f"\n{'workload':<48} {'PyTorch ms':>11} {'ours ms':>9} {'PyTorch/ours':>13}")
    for name, a, o in rows:
        print(f"{name:<48} {1e3 * a:>11.1f} {1e3 * o:>9.1f} {a / o:>13.2f}")
    print(f"(encoder outputs agree to {diff:.2e}; jax {jax.__version__}, torch {torch.__version__}, "
          f"{os.cpu_count()} CPU threads)")


if __name__ == "__main__":
    main()
