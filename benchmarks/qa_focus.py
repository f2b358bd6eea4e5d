"""Can the run learn a QA skill when trained on it alone? Focused runs from a stage start (issue #14).

  python benchmarks/qa_focus.py --workdir=runs/omni15_tiny --out=/tmp/focus --skill=motion \
      [--stage=sft_1 --steps=600 --records=800 --kinds=motion,colour,shape --lr=2e-3]
  python benchmarks/qa_focus.py --workdir=runs/omni15_tiny --out=/tmp/focus --skill=spoken \
      [--records=120 --formats=audio_qa:1,asr:0.25,text:0.25 --steps=300]

The main job answers 'where does the C S move?' and the spoken questions (mostly) wrong
(README "What limits each skill"). This trains the run's own stage `--stage` (default sft_1: the
vision encoder, bridge, audio embedding and LLM; from the run's config.json, its rate replaced by
`--lr`) from the run's checkpoint where that stage starts, for `--steps` steps on in-memory rows
only, the stages after it skipped, into a new workdir `--out` (nothing is written to `--workdir`):

  --skill=motion  the first `--records` videos of the embedded train stream (the training split's
                  records first, then unseen ones), one record per video and question kind of
                  `--kinds` (motion = where does the C S move?, colour = what colour is the moving
                  shape?, shape = which shape moves to the M?); then benchmarks/image_qa_kinds.py
                  --subset=videos over the 30 test and 60 train videos
  --skill=spoken  the first `--records` spoken questions of the train stream in the formats of
                  `--formats` (audio_qa = the spoken question answered in text, the stages'
                  format; asr = the question transcribed; text = the question typed, then its
                  answer, as a text row); then benchmarks/spoken_qa_limits.py over the 30 test
                  and 30 train questions
"""

from __future__ import annotations

import argparse
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # image_qa_kinds, spoken_qa_limits, shape_qa_focus


def video_records(count: int, kinds) -> list[dict]:
    """The first `count` train-stream videos, one record per video and kind (question, answer replaced)."""
    from image_qa_kinds import the_moving_shape
    from omni_jax.data import default_dataset

    out = []
    for _, ex in default_dataset.videos("train", count):
        _, colour, shape, move = the_moving_shape(ex)
        qa = {"motion": (f"where does the {colour} {shape} move?", f"to the {move}."),
              "colour": ("what colour is the moving shape?", f"{colour}."),
              "shape": (f"which shape moves to the {move}?", f"a {shape}.")}
        out += [dict(ex, id=f"{ex['id']}-{k}", question=qa[k][0], answer=qa[k][1]) for k in kinds]
    return out


def spoken_mixture(count: int, formats: dict[str, float]) -> dict:
    """The first `count` train-stream spoken questions as in-memory sources, one mixture component per format."""
    from omni_jax.data import default_dataset
    from omni_jax.data.sources import register_memory_source

    recs = [ex for _, ex in default_dataset.spoken_qa("train", count)]
    register_memory_source("qa_focus_spoken", recs)
    register_memory_source("qa_focus_typed", [{"id": r["id"], "text": f"{r['transcript']} {r['answer']}"} for r in recs])
    mix = {}
    for fmt, w in formats.items():
        if fmt not in ("audio_qa", "asr", "text"):
            raise SystemExit(f"--formats: {fmt!r} is not one of audio_qa, asr, text")
        src = "qa_focus_typed" if fmt == "text" else "qa_focus_spoken"
        mix[fmt] = {"dataset": f"memory:{src}", "format": fmt, "split": "train", "weight": w}
    return mix


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--workdir", required=True, help="a trained omni_jax 1.5 run of configs/omni15/pipeline.py")
    p.add_argument("--out", required=True, help="a new workdir for the focused run")
    p.add_argument("--skill", required=True, choices=("motion", "spoken"))
    p.add_argument("--stage", default="sft_1", help="the run's stage whose parts train (from where it starts)")
    p.add_argument("--steps", type=int, default=600)
    p.add_argument("--records", type=int, default=None, help="videos (default 800) or spoken questions (120)")
    p.add_argument("--kinds", default="motion", help="--skill=motion: comma-separated motion, colour, shape")
    p.add_argument("--formats", default="audio_qa:1", help="--skill=spoken: comma-separated format:weight")
    p.add_argument("--lr", type=float, default=2e-3, help="every group of the stage at this rate")
    a = p.parse_args(argv)
    if os.path.exists(a.out):
        raise SystemExit(f"--out={a.out} exists; give a new directory")

    import ml_collections

    from shape_qa_focus import copy_checkpoint

    from omni_jax.data.sources import register_memory_source
    from omni_jax.train.trainer import train

    c = ml_collections.ConfigDict(json.load(open(os.path.join(a.workdir, "config.json"))))
    names = list(c.stage_order)
    if a.stage not in names:
        raise SystemExit(f"--stage={a.stage}: {a.workdir} has the stages {names}")
    start = sum(int(c.stages[s].steps) for s in names[:names.index(a.stage)])
    for s in names[names.index(a.stage):]:
        c.stages[s].steps = 0
    st = c.stages[a.stage]
    st.steps = a.steps
    if a.skill == "motion":
        kinds = a.kinds.split(",")
        if set(kinds) - {"motion", "colour", "shape"}:
            raise SystemExit(f"--kinds={a.kinds}: use motion, colour, shape")
        records = video_records(a.records or 800, kinds)
        register_memory_source("qa_focus_videos", records)
        st.data.mixture = {"video_qa": {"dataset": "memory:qa_focus_videos", "format": "video_qa", "split": "train",
                                        "weight": 1.0}}
        what = f"{len(records)} video records ({a.kinds})"
    else:
        formats = {f: float(w) for f, w in (x.split(":") for x in a.formats.split(","))}
        st.data.mixture = spoken_mixture(a.records or 120, formats)
        what = f"{a.records or 120} spoken questions ({a.formats})"
    for g in st.groups:
        st.groups[g].lr = a.lr
    c.train.steps = start + a.steps
    c.evaluate.at_end = False
    copy_checkpoint(a.workdir, start, a.out, None)
    print(f"{a.stage} for {a.steps} steps at {a.lr} from step {start} on {what}", flush=True)
    result = train(c, a.out)
    if result["status"] != "done":
        raise SystemExit(f"training stopped: {result}")
    if a.skill == "motion":
        import image_qa_kinds

        image_qa_kinds.main(["--workdir", a.out, "--subset=videos", "--splits=test,train", "--limit=60"])
    else:
        import spoken_qa_limits

        spoken_qa_limits.main(["--workdir", a.out, "--splits=test,train"])


if __name__ == "__main__":
    main()
