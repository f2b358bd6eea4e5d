"""Does a v1 audio encoder that already hears the words help the v1 main job's ASR? (issue #14)

  python benchmarks/v1_encoder_ctc.py --src=runs/omni_v1_tiny --step=790 --workdir=runs/v1_encoder_ctc \
      [--ctc_steps=400 --ctc_lr=1e-3 --ctc_clips=240 --config=configs/omni_v1/pipeline.py]

Since 6 Dec 2026 (late) the tiny v1 pipeline trains its encoder this way in a stage of its own
(`audio_encoder_pretrain`, task omni_v1_audio_ctc, configs/omni_v1/stages.py); this script is how
that was measured (benchmarks/main_job_history.md, "v1: an encoder that hears, kept"). With
today's pipeline give `--config` a config without that stage, or the encoder is trained twice.

The 7B v1 starts its Whisper encoder from Whisper-large-v3; the tiny pipeline's starts random and
learns only through the LLM's loss. This script gives a run the encoder a pretrained Whisper would
bring: it copies the checkpoint `--step` of the v1 run `--src` (a stage end before audio_language:
790 is the end of video_language in the default tiny pipeline, 610 when image_language_3 had 270
steps, the runs of the table in benchmarks/README.md; the audio encoder is untouched
until then) into `--workdir`, and runs the rest of the pipeline from there with `launch.train`,
with one addition: on entering audio_language, the encoder is first trained alone with a CTC loss
of the transcript's characters (a scratch linear head on its 20 ms frames; the embedded speech
train split's first `--ctc_clips` clips (240 = the whole split before the dataset's 1.1.0, 2400
now), 16 per step; benchmarks/speech_ctc_baseline.py's features, labels, training loop `fit` (AdamW, warm-up +
cosine) and decoding), and that CTC head's held-out CER is printed. The pipeline's own
evaluation at the end (eval.json, report) then says what reached the LLM. The hook is a warm start
registered by this script only (omni_jax/train/warm_start.py); nothing is written back to the
package. Everything after the hook is the config's pipeline unchanged (overrides as for
launch.train: `--config.stages.omni_alignment.steps=300`).
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

HOOK = "audio_encoder_ctc_pretrain"


def ctc_pretrain(encoder_cfg, encoder_params, steps: int, lr: float, seed: int = 0, clips: int = 240):
    """encoder_params trained with CTC on the train clips; prints the CTC head's CER per split."""
    import flax.linen as nn
    import jax
    import jax.numpy as jnp
    import jiwer
    import optax

    import speech_ctc_baseline as scb
    from omni_jax.models.whisper import WhisperEncoder

    enc = WhisperEncoder(encoder_cfg)
    tr_texts, tr_mels = scb.load("train", clips)
    te_texts, te_mels = scb.load("test", 40)
    chars = "".join(sorted(set("".join(tr_texts + te_texts))))

    def arrays(texts, mels):  # (N, n_mels, T) mels, their valid frames, CTC labels and padding
        mel, mel_pad, lab, lab_pad = scb.batchify(texts, mels, chars, encoder_cfg.stride)
        return np.swapaxes(mel, 1, 2), (mel_pad == 0).sum(1).astype(np.int32), lab, lab_pad

    tr, te = arrays(tr_texts, tr_mels), arrays(te_texts, te_mels)
    head = nn.Dense(len(chars) + 1)
    p = {"enc": jax.tree.map(lambda x: jnp.asarray(x, jnp.float32), encoder_params),
         "head": head.init(jax.random.PRNGKey(seed + 1), jnp.zeros((1, encoder_cfg.d_model)))["params"]}

    def forward(p, mel, n):
        h, lengths = enc.apply({"params": p["enc"]}, mel, n)
        pad = (jnp.arange(h.shape[1])[None] >= lengths[:, None]).astype(jnp.float32)
        return head.apply({"params": p["head"]}, h.astype(jnp.float32)), pad

    def loss_fn(p, mel, n, lab, lab_pad):
        logits, pad = forward(p, mel, n)
        return jnp.sum(optax.ctc_loss(logits, pad, lab, lab_pad)) / jnp.sum(1 - lab_pad)  # nats per character

    p, _, _ = scb.fit(loss_fn, p, tr, steps, lr, 16, seed, log=lambda i, loss, secs: print(
        f"{HOOK}: step {i}, CTC loss {loss:.3f} nats/char ({secs:.0f} s)", flush=True))
    fwd = jax.jit(forward)
    for name, a, texts in (("test", te, te_texts), ("train", tuple(x[:40] for x in tr), tr_texts[:40])):
        logits, pad = fwd(p, jnp.asarray(a[0]), jnp.asarray(a[1]))
        hyps = scb.greedy(np.asarray(logits), np.asarray(pad), chars)
        words = scb.content_accuracy(texts, hyps)
        print(f"{HOOK}: CTC head, {name} (first {len(texts)} clips): CER {jiwer.cer(texts, hyps):.3f}, "
              f"WER {jiwer.wer(texts, hyps):.3f}, colour / shape / number words "
              + " / ".join(f"{words[k]:.2f}" for k in ("colour", "shape", "number"))
              + f"; e.g. {texts[0]!r} -> {hyps[0]!r}", flush=True)
    return jax.tree.map(lambda new, old: new.astype(old.dtype), p["enc"], encoder_params)


def install_hook(steps: int, lr: float, clips: int = 240) -> None:
    """Register HOOK as a warm start that runs ctc_pretrain on the run's audio_encoder (eagerly:
    warm_start.apply jits the registered ones, and this one is a training loop)."""
    from omni_jax.models.omni_v1 import OmniV1Config
    from omni_jax.train import warm_start

    def hook(params, model_state):
        del model_state
        from launch.train import FLAGS

        cfg = OmniV1Config.from_config(FLAGS.config.model).audio_encoder
        return {"audio_encoder": ctc_pretrain(cfg, params["audio_encoder"], steps, lr, clips=clips)}

    plain = warm_start.apply

    def apply(names, params, model_state):
        names = list(names)
        if HOOK in names:
            names.remove(HOOK)
            params = dict(params, **hook(params, model_state))
        return plain(names, params, model_state)

    warm_start.WARM_STARTS[HOOK] = hook
    warm_start.apply = apply


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--src", required=True, help="a v1 run's workdir")
    p.add_argument("--step", type=int, required=True, help="its checkpoint to start from (a stage end before audio_language)")
    p.add_argument("--workdir", required=True, help="new workdir (must not exist)")
    p.add_argument("--config", default="configs/omni_v1/pipeline.py")
    p.add_argument("--ctc_steps", type=int, default=400)
    p.add_argument("--ctc_lr", type=float, default=1e-3)
    p.add_argument("--ctc_clips", type=int, default=240, help="train clips the CTC pre-training reads (the split has 2400)")
    a, overrides = p.parse_known_args(argv)
    src = os.path.join(a.src, "checkpoints", str(a.step))
    if not os.path.isdir(src):
        raise SystemExit(f"--src/--step: no checkpoint {src}")
    if os.path.exists(a.workdir):
        raise SystemExit(f"--workdir={a.workdir} exists: give a new directory")
    shutil.copytree(src, os.path.join(a.workdir, "checkpoints", str(a.step)))
    install_hook(a.ctc_steps, a.ctc_lr, a.ctc_clips)
    from launch import train

    sys.argv = [sys.argv[0], f"--config={a.config}", f"--workdir={a.workdir}",
                f"--config.stages.audio_language.warm_start={HOOK}", *overrides]
    return train.main()


if __name__ == "__main__":
    sys.exit(main())
