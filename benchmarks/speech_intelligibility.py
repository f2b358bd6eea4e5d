"""Where does a 1.5 run's speech output lose its words? An intelligibility ladder (issue #14).

  python benchmarks/speech_intelligibility.py --workdir=RUN [--step=S] [--clips=30] [--replies=16]

The main job scores its spoken replies by its own ASR (`intelligibility_cer`), which heard even
the synthesiser's clean speech at CER ~0.6 until the 6 Dec default (0.08 since; the first rung
below measures it): that number alone cannot say whether the speech is bad. Here
an independent judge does the hearing: `speech_ctc_baseline.py`'s CTC recogniser, trained for
`--judge_steps` on the first 240 training clips of the embedded speech subset (the whole split
before the dataset's version 1.1.0; the built-in synthesiser; held-out CER ~0.01). Each rung adds
one part of the run's speech path, on the first `--clips` clips
of the test split (judge CER against the transcript, and the run's own ASR for comparison):

  synthesiser      the clip as the dataset has it (16 kHz): the judge's own floor;
  vocoder          the clip's 24 kHz log-mel (the vocoder stage's target) -> the run's HiFT;
  codes            the clip -> the run's tokenizer codes -> decoder -> flow matching -> HiFT:
                   the reply path given the right codes;
  TTS              the transcript as a `tts` sample's prompt -> the LLM + audio head generate the
                   speech (greedy text, the release's audio sampling) -> the same synthesis;
  spoken QA        held-out spoken questions -> the reply's text and speech, as the evaluation
                   does (judged against the reply's own text, over `--replies` questions).

Seconds are the mean length of the speech against the synthesiser's; `ended` is the share of
generated replies whose audio ended by the end code (not the frame limit).
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))


def mels_16k(waves: list[np.ndarray], rate: int) -> list[np.ndarray]:
    """(frames, 128) log-mels of waveforms at `rate`, resampled to 16 kHz (the judge's input)."""
    from omni_jax.data import media, resampling
    from omni_jax.data.audio_features import encode_wav
    from omni_jax.data.media_io import AudioItem

    out = []
    for w in waves:
        w16 = resampling.resample(np.asarray(w, np.float32), rate, media.SAMPLE_RATE) if rate != media.SAMPLE_RATE else w
        (feats,) = AudioItem(encode_wav(w16, media.SAMPLE_RATE)).features(media.CHUNK_SECONDS * media.SAMPLE_RATE)
        out.append(feats.T.astype(np.float32))
    return out


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--workdir", required=True)
    p.add_argument("--step", type=int, default=None, help="checkpoint step (default: the latest)")
    p.add_argument("--clips", type=int, default=30)
    p.add_argument("--replies", type=int, default=16)
    p.add_argument("--judge_steps", type=int, default=400)
    p.add_argument("--judge_cache", default=None, help="file of the judge's parameters: read if it exists, "
                   "else written after training (the judge is the same for every run)")
    p.add_argument("--max_frames", type=int, default=128, help="generation steps per TTS / reply")
    p.add_argument("--decoders_from", default=None, metavar="WORKDIR[:STEP]",
                   help="take flow_matching and vocoder from this run (same tokenizer): the audio head of "
                        "--workdir with another run's decoders")
    p.add_argument("--rungs", default="synthesiser,vocoder,codes,tts,spoken_qa",
                   help="which rungs to run (the last two need a run past its audio stages)")
    a = p.parse_args(argv)
    want = set(a.rungs.split(","))
    unknown = want - {"synthesiser", "vocoder", "codes", "tts", "spoken_qa"}
    if unknown:
        p.error(f"unknown rung(s) {sorted(unknown)}")

    import jax
    import jiwer

    import speech_ctc_baseline as scb
    from omni_jax.data import default_dataset
    from omni_jax.data.audio_features import decode_wav, log_mel_24k_np
    from omni_jax.data.stage_mixtures import evaluation_sets
    from omni_jax.generate.interleaved import text_of
    from omni_jax.generate.omni_infer import OmniRunner
    from omni_jax.tasks import omni_eval

    t0 = time.time()
    tr_texts, tr_mels = scb.load("train", 240)
    if not 0 < a.clips <= 40:
        p.error("--clips: 1 to 40 (the embedded speech test split)")
    test_all = [ex for _, ex in default_dataset.speech("test", 40)]
    te = test_all[:a.clips]
    texts = [ex["transcript"] for ex in te]
    chars = "".join(sorted(set("".join(tr_texts + [ex["transcript"] for ex in test_all]))))  # fixed: the cache fits
    judge, info = scb.train_recogniser(tr_texts, tr_mels, chars, 4, a.judge_steps, 16, 1e-3, cache=a.judge_cache)
    print(f"judge: {a.judge_steps} steps on 240 clips in {info['train_s']:.0f} s "
          f"(loss {' '.join(f'{x:.2f}' for x in info['loss_curve']) or 'read from ' + a.judge_cache})", flush=True)

    runner = OmniRunner.load(a.workdir, step=a.step)
    if a.decoders_from:
        where, _, at = a.decoders_from.partition(":")
        other = OmniRunner.load(where, step=int(at) if at else None)
        runner.params = dict(runner.params, flow_matching=other.params["flow_matching"], vocoder=other.params["vocoder"])
    task, params, state, tok = runner.task, runner.params, runner.state, runner.tokenizer
    synth = runner.speech_synthesizer()
    max_new = int(task.config.evaluate.max_new_tokens)
    rows = []

    def rung(name, waves, rate, refs, ref_seconds, extra=""):
        heard = judge(mels_16k(waves, rate))
        own = omni_eval.transcribe(task, params, state, list(waves), rate, tok, max_new=max_new)
        secs = np.mean([len(w) / rate for w in waves]) if waves else 0.0
        cer = lambda h: float(np.mean([omni_eval.char_error_rate(x, r) for x, r in zip(h, refs)]))  # noqa: E731
        rows.append((name, len(waves), cer(heard), jiwer.wer(refs, heard), cer(own), secs, ref_seconds, extra,
                     (refs[0], heard[0])))
        print(f"  {name}: judge CER {rows[-1][2]:.3f}, own ASR CER {rows[-1][4]:.3f} ({time.time() - t0:.0f} s)",
              flush=True)

    ref16 = [decode_wav(ex["audio"], 16000) for ex in te]
    ref_s = float(np.mean([len(w) / 16000 for w in ref16]))
    key = jax.random.PRNGKey(0)
    if "synthesiser" in want:
        rung("synthesiser", ref16, 16000, texts, ref_s)
    if "vocoder" in want:
        ref24 = [decode_wav(ex["audio"], synth.sample_rate) for ex in te]
        rung("vocoder", [synth.waveform_of_mel(log_mel_24k_np(w), jax.random.fold_in(key, i))
                         for i, w in enumerate(ref24)], synth.sample_rate, texts, ref_s)

    from audio_code_probe import encode
    from omni_jax.data import media
    from omni_jax.data.media_io import AudioItem

    if "codes" in want:
        clip_mels = [AudioItem(ex["audio"]).features(media.CHUNK_SECONDS * media.SAMPLE_RATE)[0] for ex in te]
        _, codes, _ = encode(runner, clip_mels)
        rung("codes", [synth.waveform([c], jax.random.fold_in(key, i)) for i, c in enumerate(codes)],
             synth.sample_rate, texts, ref_s)

    def spoken(samples, refs_of):
        out, ids = omni_eval.generate(task, params, samples, tok, max_new=a.max_frames, speech=True)
        waves, frames = [], []
        for i, r in enumerate(out):
            n = int(sum(len(c) for c in r.audio_chunks))
            frames.append(n)
            # no speech at all: 0.1 s of silence, so both recognisers still answer (with nothing)
            waves.append(synth.waveform(r.audio_chunks, jax.random.fold_in(key, i)) if n else
                         np.zeros(synth.sample_rate // 10, np.float32))
        texts_out = [text_of(r.tokens, tok, ids).strip() for r in out]
        extra = (f"{np.mean(frames):.1f} frames, {sum(f == 0 for f in frames)} without speech, "
                 f"{np.mean([r.finished for r in out]):.2f} finished")
        return waves, refs_of(texts_out), extra, texts_out

    if "tts" in want:
        tts = {"dataset": "omni_speech/shapes", "split": "test", "format": "tts", "weight": 1.0}
        prompts = omni_eval.collect(task, params, state, tts, a.clips, tok, stop_at="audiogen_start")
        waves, refs, extra, _ = spoken(prompts, lambda _: [q["reference"] for q in prompts])
        rung("TTS", waves, synth.sample_rate, refs, ref_s, extra)
    if "spoken_qa" in want:
        qa = omni_eval.collect(task, params, state, evaluation_sets()["speech_qa"], a.replies, tok)
        waves, refs, extra, said = spoken(qa, lambda t: t)
        right = np.mean([omni_eval._normalise(x) == omni_eval._normalise(q["reference"]) for x, q in zip(said, qa)])
        rung("spoken QA (vs the reply's text)", waves, synth.sample_rate, [r or "-" for r in refs], float("nan"),
             f"{extra}; reply text right {right:.2f}")

    print(f"\n{a.workdir} step {a.step or 'latest'}{'; decoders of ' + a.decoders_from if a.decoders_from else ''}; judge = CTC recogniser, {a.judge_steps} steps "
          f"({time.time() - t0:.0f} s in all)")
    print("| rung | clips | judge CER / WER | own ASR CER | seconds (synthesiser) | generation | example: reference -> judge |")
    print("|---|---|---|---|---|---|---|")
    for name, n, c, w, own, secs, ref_secs, extra, (r0, h0) in rows:
        ref_txt = f" ({ref_secs:.2f})" if ref_secs == ref_secs else ""
        print(f"| {name} | {n} | {c:.3f} / {w:.2f} | {own:.3f} | {secs:.2f}{ref_txt} | {extra or '-'} | "
              f"{r0!r} -> {h0!r} |")


if __name__ == "__main__":
    main()
