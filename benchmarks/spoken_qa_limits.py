"""Spoken QA, taken apart: does a trained omni run fail to hear the question, or to answer it? (issue #14)

  python benchmarks/spoken_qa_limits.py --workdir=runs/omni15_tiny [--splits=test,train --limit=30 --step=N]

The embedded spoken-QA set asks one of three kinds of question (omni_jax/data/default_dataset.py
`_question`): a sum of two digits ('what is 3 plus 4?' -> 'it is 7.'), the number after one
('what comes after 5?' -> '6 comes next.') and a colour to repeat ('say the colour red.' ->
'red.'). The main job's evaluation answers 4 of them in text + speech. This asks the run
(OmniRunner, greedy) every question of the first `limit` records of each split three ways and
prints the accuracy per kind, so each step of the answer is measured on its own:

  text       the question typed (a user turn of text alone): can the LLM answer it at all?
  heard      the question's audio with the evaluation's ASR prompt: CER of the transcript
             against the question, and how often the question's digits / colour are heard
  spoken     the question's audio and no text (the `audio_qa` format the stages train), the
             reply's text; `--speech` also the `speech_qa` prompt (text + speech, the main job's
             evaluation; slower), its reply text
  in codes   the key words in the transcript that the tokenizer stage's CTC head (a linear layer,
             no LLM; runs whose tokenizer trained `loss.ctc` > 0, the default) reads off the
             question's quantised codes (audio_code_probe.py): what the LLM's input holds

Text arithmetic in the embedded corpus is 'a plus b is c.' with a, b < 50 (text_corpus.py); the
question form 'what is a plus b?' appears only in the spoken set (120 train questions).
"""

from __future__ import annotations

import argparse
import collections
import os
import re
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # audio_code_probe


def question_kind(question: str) -> str:
    if " plus " in question:
        return "sum"
    if question.startswith("what comes after"):
        return "next"
    return "colour"


def key_words(question: str) -> list[str]:
    """What must be heard to answer: the digits of a sum / successor question, the colour word."""
    from omni_jax.data.text_corpus import COLOURS

    return re.findall(r"\d+", question) or [w for w in re.findall(r"[a-z]+", question) if w in COLOURS]


def normalise(s: str) -> str:
    return " ".join(s.lower().replace(".", " ").replace(",", " ").replace("?", " ").split())


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--workdir", required=True, help="a trained omni_jax 1.5 workdir")
    p.add_argument("--splits", default="test,train")
    p.add_argument("--limit", type=int, default=30, help="questions per split (the test split has 30)")
    p.add_argument("--step", type=int, default=None, help="checkpoint step (default: the latest)")
    p.add_argument("--speech", action="store_true", help="also the speech_qa prompt (text + speech reply)")
    a = p.parse_args(argv)

    import numpy as np

    from omni_jax.data import default_dataset
    from omni_jax.data.formats import DEFAULT_PROMPTS
    from omni_jax.generate.omni_infer import OmniRunner, Prompt
    from omni_jax.generate.sampling import SamplingParams
    from omni_jax.tasks.omni_eval import char_error_rate

    from audio_code_probe import ctc_transcripts, encode
    from omni_jax.convert.omni import restore_workdir
    from omni_jax.data import media
    from omni_jax.data.media_io import AudioItem

    runner = OmniRunner.load(a.workdir, step=a.step)
    ctc_head = restore_workdir(a.workdir, a.step, items=("params",))[0]["params"].get("audio_ctc_head")
    in_codes = collections.defaultdict(lambda: [0, 0])  # (split, kind) -> key words [read off the codes, total]
    greedy = SamplingParams(do_sample=False)
    ways = ["text", "spoken"] + (["speech"] if a.speech else [])
    acc = collections.defaultdict(lambda: [0, 0])  # (split, way, kind) -> [right, asked]
    heard = collections.defaultdict(lambda: [0, 0])  # (split, kind) -> key words [heard, total]
    cer = collections.defaultdict(list)
    examples = {}
    for split in a.splits.split(","):
        records = [ex for n, (_, ex) in zip(range(a.limit), default_dataset.generate("spoken_qa", split))]
        code_hyps = None
        if ctc_head is not None:
            mels = [AudioItem(ex["audio"]).features(media.CHUNK_SECONDS * media.SAMPLE_RATE)[0] for ex in records]
            code_hyps = ctc_transcripts(runner, ctc_head, encode(runner, mels)[2])
        for n, ex in enumerate(records):
            q, ans, k = ex["transcript"], ex["answer"], question_kind(ex["transcript"])
            replies = {
                "text": runner.respond(Prompt(text=q), max_new_tokens=24, text=greedy).text.strip(),
                "spoken": runner.respond(Prompt(text=DEFAULT_PROMPTS["audio_qa"][0], audio=[ex["audio"]]),
                                         max_new_tokens=24, text=greedy).text.strip()}
            if a.speech:
                replies["speech"] = runner.respond(Prompt(audio=[ex["audio"]]), speech=True, max_new_tokens=96,
                                                   text=greedy).text.strip()
            for way in ways:
                acc[(split, way, k)][0] += normalise(replies[way]) == normalise(ans)
                acc[(split, way, k)][1] += 1
            hyp = runner.respond(Prompt(text=DEFAULT_PROMPTS["asr"][0], audio=[ex["audio"]]), max_new_tokens=48,
                                 text=greedy).text.strip()
            cer[(split, k)].append(char_error_rate(hyp, q))
            words = normalise(hyp).split()
            for w in key_words(q):
                heard[(split, k)][0] += w in words
                heard[(split, k)][1] += 1
                if code_hyps is not None:
                    in_codes[(split, k)][0] += w in normalise(code_hyps[n]).split()
                    in_codes[(split, k)][1] += 1
            examples.setdefault((split, k), (q, ans, hyp, replies))
    print("| split | kind | questions | " + " | ".join(f"{w} reply right" for w in ways)
          + " | transcript CER | key words heard | key words in the codes |")
    print("|---|---|---|" + "---|" * (len(ways) + 3))
    for split in a.splits.split(","):
        for k in ("sum", "next", "colour"):
            if (split, "text", k) not in acc:
                continue
            cells = [f"{acc[(split, w, k)][0]}/{acc[(split, w, k)][1]}" for w in ways]
            h, c = heard[(split, k)], in_codes[(split, k)]
            codes = f"{c[0]}/{c[1]}" if ctc_head is not None else "- (no CTC head)"
            print(f"| {split} | {k} | {acc[(split, 'text', k)][1]} | " + " | ".join(cells)
                  + f" | {np.mean(cer[(split, k)]):.2f} | {h[0]}/{h[1]} | {codes} |")
    print()
    for (split, k), (q, ans, hyp, replies) in examples.items():
        print(f"{split} {k}: {q!r} -> heard {hyp!r}; " + ", ".join(f"{w} {r!r}" for w, r in replies.items())
              + f" (answer {ans!r})")


if __name__ == "__main__":
    main()
