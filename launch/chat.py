r"""A spoken conversation with an omni model: one turn per line, text or an audio file in; text
and a 24 kHz WAV out per turn; the history kept in the KV cache (omni_jax/generate/dialogue.py).

  python -m launch.chat --src=runs/omni15_tiny                 # type turns; a line naming an
                                                               # audio file (.wav, .mp3, ...) is spoken
  printf 'hello\nquestion.wav\nthanks\n' | python -m launch.chat --src=runs/omni15_tiny --out_dir=replies/

--src: an omni_jax workdir or a release-format directory (as launch/infer.py). Each reply's text
is printed as `[turn N] text`, its speech written to --out_dir/turn_N.wav (1.5 only; --nospeech
for text replies, e.g. v1). An empty line or /quit ends the conversation; the history is
kept until --max_context cache positions are used, then the chat says so and stops.
"""

from __future__ import annotations

import json
import os
import sys
from typing import Iterable

from absl import app, flags

FLAGS = flags.FLAGS
AUDIO_SUFFIXES = (".wav", ".flac", ".mp3", ".m4a", ".aac", ".ogg", ".opus")


def chat(src: str, lines: Iterable[str], *, out_dir: str = "chat", speech: bool = True, max_new_tokens: int = 256,
         max_context: int = 4096, greedy: bool = True, seed: int = 0, tokenizer: str = "", vocoder_src: str = "",
         out=print) -> list[dict]:
    """Runs the conversation over `lines`; returns one summary per turn."""
    from launch.infer import audio_bytes
    from omni_jax.generate.dialogue import Dialogue
    from omni_jax.generate.omni_infer import OmniRunner, Prompt
    from omni_jax.generate.sampling import TEXT_RELEASE, SamplingParams

    runner = OmniRunner.load(src, tokenizer=tokenizer or None, vocoder_src=vocoder_src or None, speech=speech)
    dialogue = Dialogue(runner, speech=speech, max_new_tokens=max_new_tokens, max_context=max_context,
                        text=SamplingParams(do_sample=False) if greedy else TEXT_RELEASE, seed=seed)
    os.makedirs(out_dir, exist_ok=True)
    results = []
    for line in lines:
        line = line.strip()
        if not line or line == "/quit":
            break
        is_audio = line.lower().endswith(AUDIO_SUFFIXES)
        prompt = Prompt(audio=[audio_bytes(line)]) if is_audio else Prompt(text=line)
        try:
            reply = dialogue.turn(prompt)
        except ValueError as e:
            if "max_context" not in str(e):
                raise
            out(f"[the conversation is full: {e}]")
            break
        n = dialogue.turns
        r = {"turn": n, "input": "audio" if is_audio else "text", "text": reply.text,
             "audio_frames": reply.audio_frames, "cache_positions": dialogue.index}
        if speech and reply.audio_frames:
            r["wav"] = os.path.join(out_dir, f"turn_{n}.wav")
            r["seconds"] = runner.write_wav(r["wav"], reply, seed)
        out(f"[turn {n}] {reply.text}" + (f"  [speech {r['seconds']:.2f} s -> {r['wav']}]" if "wav" in r else ""))
        results.append(r)
    return results


def _main(argv):
    del argv
    from absl import logging as absl_logging

    absl_logging.set_verbosity(absl_logging.WARNING)
    try:
        res = chat(FLAGS.src, sys.stdin, out_dir=FLAGS.out_dir, speech=FLAGS.speech,
                   max_new_tokens=FLAGS.max_new_tokens, max_context=FLAGS.max_context, greedy=FLAGS.greedy,
                   seed=FLAGS.seed, tokenizer=FLAGS.tokenizer, vocoder_src=FLAGS.vocoder_src,
                   out=lambda s: print(s, flush=True))
    except (FileNotFoundError, ValueError) as e:
        raise SystemExit(f"launch.chat: {type(e).__name__}: {e}") from None
    print(json.dumps(res))
    return 0


def main():
    flags.DEFINE_string("src", None, "An omni_jax workdir or a release-format directory.")
    flags.DEFINE_string("out_dir", "chat", "Where the spoken replies go (turn_N.wav).")
    flags.DEFINE_bool("speech", True, "Answer in speech too (Baichuan-Omni-1.5).")
    flags.DEFINE_integer("max_new_tokens", 256, "LLM positions per reply at most (text tokens + audio frames).")
    flags.DEFINE_integer("max_context", 4096, "KV-cache positions for the whole conversation.")
    flags.DEFINE_bool("greedy", True, "Greedy text (else the released sampling settings).")
    flags.DEFINE_integer("seed", 0, "Sampling seed.")
    flags.DEFINE_string("tokenizer", "", "The released tokenizer's directory (release checkpoints without one).")
    flags.DEFINE_string("vocoder_src", "", "The HiFT vocoder as safetensors (release checkpoints without vocoder/).")
    flags.mark_flag_as_required("src")
    app.run(_main)


if __name__ == "__main__":
    sys.exit(main())
