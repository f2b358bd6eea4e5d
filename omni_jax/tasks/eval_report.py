"""The report of the end-of-run held-out evaluation (omni_jax/tasks/omni_eval.py): what a person
would rather look at and listen to than eval.json.

`write_report(task, workdir, results, step)` writes under `<workdir>/eval/`:

  report.md                 the held-out table (image QA, video QA, ASR exact match / CER / WER,
                            spoken QA text accuracy, spoken-reply intelligibility), example
                            prompts and replies, the plots below and where the files are
  loss_curves.png           per-stage training loss from metrics.jsonl (one panel per stage)
  accuracy_vs_step.png      every evaluation of the run (the periodic ones, `config.evaluate.
                            every_steps`, and this final one) against the global step, stage
                            boundaries marked
  speech_reply_<k>_mel.png  the log-mel (80 bins, the vocoder's 24 kHz mel) of spoken reply k next
                            to the built-in synthesiser's rendering of the same text
                            (omni_jax/data/speech_synth.py, default voice; the reference answer when
                            the reply text has no letter or digit to say), also written as
                            speech_reference_<k>.wav (16 kHz)

and the same to TensorBoard (`<workdir>/tensorboard`, its own event file): the PNGs as images
(`report/...`), the replies and their references as audio (`eval/speech_reply_<k>`,
`eval/speech_reference_<k>`, playable in TensorBoard's Audio tab) and report.md as text.
Plots use matplotlib's Agg canvas directly (no pyplot: the caller's backend is left alone).
"""

from __future__ import annotations

import importlib.util
import io
import logging
import os
from typing import Any

import numpy as np

log = logging.getLogger("omni_jax")

# (set, metric, label, higher is better)
TABLE = (
    ("image_qa", "accuracy", "image QA", "accuracy (exact match)"),
    ("video_qa", "accuracy", "video QA", "accuracy (exact match)"),
    ("asr", "exact_match", "ASR", "exact match"),
    ("asr", "char_error_rate", "ASR", "character error rate"),
    ("asr", "word_error_rate", "ASR", "word error rate"),
    ("speech_qa", "text_exact_match", "spoken QA", "reply text exact match"),
    ("speech_qa", "intelligibility_cer", "spoken replies",
     "intelligibility: CER of the model's own ASR of its spoken reply vs the reply text"),
    ("speech_qa", "heard_cer_vs_reference", "spoken replies", "CER of that transcript vs the reference answer"),
    ("speech_qa", "intelligibility_cer_shuffled", "spoken replies",
     "control: the same ASR of each reply's samples in random order vs the reply text (the ASR's prior)"),
    ("speech_qa", "intelligibility_cer_swapped", "spoken replies",
     "control: the same transcripts vs the other spoken replies' texts (where they differ)"),
)
ACCURACIES = ("eval/image_qa/accuracy", "eval/video_qa/accuracy", "eval/asr/exact_match",
              "eval/speech_qa/text_exact_match")
ERROR_RATES = ("eval/asr/char_error_rate", "eval/asr/word_error_rate", "eval/speech_qa/intelligibility_cer")
MAX_MEL_PLOTS = 2


def _cell(s: Any) -> str:
    """A markdown table cell: code span (prompts hold <special> tokens), pipes escaped, control characters
    (newlines too) written as escapes."""
    s = "".join(ch if ch.isprintable() else repr(ch)[1:-1] for ch in str(s))  # control bytes of an untrained model
    s = s.replace("|", "\\|").replace("`", "'")
    return f"`{s}`" if s else "(empty)"


def _short(text: str, n: int = 40) -> str:
    """A plot title's quote of `text`: printable, at most n characters."""
    r = repr(text)
    return r if len(r) <= n else r[:n - 3] + "..."


def _figure(*size):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=size, dpi=100)
    FigureCanvasAgg(fig)
    return fig


def _save(fig, path) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    data = buf.getvalue()
    path.write_bytes(data)
    return data


def _train_rows(rows: list[dict]) -> list[dict]:
    return [r for r in rows if r.get("kind") != "eval" and ("loss" in r or "objective" in r)]


def plot_losses(rows: list[dict], path) -> bytes | None:
    """One panel per stage: its logged loss (or objective) against the global step."""
    rows = _train_rows(rows)
    if not rows:
        return None
    stages: dict[str, list[tuple[int, float]]] = {}
    for r in rows:
        v = r.get("loss", r.get("objective"))
        if isinstance(v, (int, float)):
            stages.setdefault(r.get("stage", "?"), []).append((int(r["step"]), float(v)))
    cols = min(4, len(stages))
    nrows = -(-len(stages) // cols)
    fig = _figure(3.2 * cols, 2.4 * nrows)
    for i, (name, pts) in enumerate(stages.items()):
        ax = fig.add_subplot(nrows, cols, i + 1)
        x, y = zip(*pts)
        ax.plot(x, y, marker="." if len(pts) < 30 else None)
        ax.set_title(f"{name}: {y[0]:.3g} -> {y[-1]:.3g}", fontsize=9)
        ax.set_xlabel("step", fontsize=8)
        ax.tick_params(labelsize=7)
    fig.suptitle("training loss per stage (metrics.jsonl)", fontsize=10)
    fig.tight_layout()
    return _save(fig, path)


def _eval_points(rows: list[dict], final: dict[str, float], step: int | None) -> dict[str, list[tuple[int, float]]]:
    series: dict[str, list[tuple[int, float]]] = {}
    pts = [r for r in rows if r.get("kind") == "eval" and not r.get("final")]
    if step is not None:
        pts.append(dict(final, step=step))
    for r in pts:
        for k in ACCURACIES + ERROR_RATES:
            if isinstance(r.get(k), (int, float)):
                series.setdefault(k, []).append((int(r["step"]), float(r[k])))
    return series


def plot_eval(rows: list[dict], final: dict[str, float], step: int | None, path) -> bytes | None:
    """Accuracies (left) and error rates (right) of every evaluation against the global step."""
    series = _eval_points(rows, final, step)
    if not series:
        return None
    starts = {}
    for r in _train_rows(rows):
        starts.setdefault(r.get("stage", "?"), int(r["step"]))
    fig = _figure(11, 3.6)
    for j, (keys, title) in enumerate(((ACCURACIES, "accuracy / exact match (higher is better)"),
                                       (ERROR_RATES, "error rates (lower is better)"))):
        ax = fig.add_subplot(1, 2, j + 1)
        for k in keys:
            if k in series:
                x, y = zip(*sorted(series[k]))
                ax.plot(x, y, marker="o", label=k[len("eval/"):])
        for name, s in starts.items():
            ax.axvline(s, color="0.85", lw=0.8, zorder=0)
        ax.set_ylim(-0.02, 1.02) if j == 0 else ax.set_ylim(bottom=0.0)  # rates; error rates may exceed 1
        ax.set_title(title, fontsize=9)
        ax.set_xlabel("step (grey lines: stage starts)", fontsize=8)
        ax.tick_params(labelsize=7)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7)
    fig.suptitle("held-out evaluation during the run", fontsize=10)
    fig.tight_layout()
    return _save(fig, path)


def reference_speech(text: str) -> np.ndarray:
    """The built-in synthesiser's rendering of `text` (default voice, 16 kHz)."""
    from omni_jax.data.speech_synth import synthesize

    return synthesize(text)


def plot_mels(reply_24k: np.ndarray, reference_16k: np.ndarray, title_reply: str, title_ref: str, path) -> bytes:
    """The vocoder's log-mel (80 bins, 24 kHz) of the reply next to that of the reference."""
    from omni_jax.data import resampling
    from omni_jax.data.audio_features import log_mel_24k_np

    mels = [log_mel_24k_np(reply_24k), log_mel_24k_np(resampling.resample(reference_16k, 16000, 24000))]
    lo = min(float(m.min()) for m in mels if m.size)
    hi = max(float(m.max()) for m in mels if m.size)
    fig = _figure(11, 3.2)
    for j, (m, t) in enumerate(zip(mels, (title_reply, title_ref))):
        ax = fig.add_subplot(1, 2, j + 1)
        im = ax.imshow(m.T, origin="lower", aspect="auto", vmin=lo, vmax=hi, cmap="magma",
                       extent=(0, m.shape[0] * 0.02, 0, m.shape[1]))
        ax.set_title(t, fontsize=8)
        ax.set_xlabel("seconds", fontsize=8)
        ax.set_ylabel("mel bin", fontsize=8)
        ax.tick_params(labelsize=7)
    fig.colorbar(im, ax=fig.axes, fraction=0.02)
    return _save(fig, path)


def _table(results: dict[str, Any]) -> list[str]:
    out = ["| skill | metric | value | samples |", "|---|---|---|---|"]
    for name, key, skill, label in TABLE:
        res = results.get(name)
        if isinstance(res, dict) and isinstance(res.get(key), (int, float)):
            n = res.get("swapped_replies" if key == "intelligibility_cer_swapped" else
                        "spoken_replies" if key.startswith(("intelligibility_cer", "heard_cer")) else "samples", "")
            out.append(f"| {skill} | {label} | {res[key]:.2f} | {n} |")
    return out


def _examples(results: dict[str, Any]) -> list[str]:
    from omni_jax.tasks.omni_eval import SPOKEN_REPLIES

    out = []
    for name, title in (("image_qa", "image QA"), ("video_qa", "video QA"), ("asr", "ASR")):
        ex = (results.get(name) or {}).get("examples") or []
        if ex:
            out += [f"### {title}", "", "| prompt | reply | reference |", "|---|---|---|"]
            out += [f"| {_cell(e.get('prompt', ''))} | {_cell(e['hypothesis'])} | {_cell(e['reference'])} |"
                    for e in ex[:3]]
            out.append("")
    replies = (results.get("speech_qa") or {}).get("replies") or []
    if replies:
        out += ["### spoken QA (text + speech replies)", "",
                "| prompt | reply text | speech | heard back by the model's ASR | reference |", "|---|---|---|---|---|"]
        for x in replies[:SPOKEN_REPLIES]:  # the ones synthesised to speech
            wav = f"[{os.path.basename(x['wav'])}]({os.path.basename(x['wav'])}) ({x['seconds']:.2f} s)" \
                if x.get("wav") else "no speech generated"
            heard = _cell(x["heard"]) + f" (CER {x['intelligibility_cer']:.2f}; shuffled: " \
                + _cell(x.get("heard_shuffled", "")) + ")" if "heard" in x else "-"
            out.append(f"| {_cell(x.get('prompt', ''))} | {_cell(x['text'])} | {wav} | {heard} | {_cell(x['reference'])} |")
        out.append("")
    return out


def write_report(task, workdir, results: dict[str, Any], step: int | None = None):
    """report.md, the PNGs and the TensorBoard summaries (module docstring); returns report.md's path."""
    from omni_jax.data.audio_features import decode_wav
    from omni_jax.tasks.omni_eval import SPOKEN_REPLIES, scalars
    from omni_jax.workdir import workdir_path

    wd = workdir_path(workdir)
    out = wd / "eval"
    out.mkdir(parents=True, exist_ok=True)
    rows: list[dict] = []
    if (wd / "metrics.jsonl").exists():
        from omni_jax.train.metrics import read_metrics

        rows = read_metrics(wd)
    ev = task.config.get("evaluate", {}) or {}
    dataset = ev.get("dataset", "shapes")
    md = [f"# Held-out evaluation of `{os.path.basename(os.fspath(wd).rstrip('/'))}`", "",
          (f"At step {step}, the end of the run. " if step is not None else "")
          + f"Test splits of the embedded dataset (`omni_*/{dataset}`, `split=test`); up to "
          f"{int(ev.get('num_samples', 0))} samples per set; the spoken questions' replies are scored for their "
          f"text, and the first {SPOKEN_REPLIES} are synthesised to speech. "
          "Exact match ignores case, '.' and ','. Intelligibility: each spoken reply (24 kHz) is resampled to "
          "16 kHz and transcribed by the model itself (its ASR prompt, greedy); the CER is against the reply's own "
          "text. Its control transcribes each reply's samples shuffled in time (no voice left): a score near the "
          "control means the ASR answered from its prior, not from the voice. The second control scores the same "
          "transcripts against the other spoken replies' texts (where they differ): a transcript of the voice is "
          "closer to its own reply than to the others.", ""]
    md += _table(results) + [""]
    images: dict[str, bytes] = {}
    audio: dict[str, tuple[np.ndarray, int]] = {}
    plots, notes = [], []
    have_plots = importlib.util.find_spec("matplotlib") is not None
    if not have_plots:
        notes.append("Plots skipped: matplotlib is not installed (`pip install matplotlib`).")
        log.warning("eval report: matplotlib is not installed, no plots (pip install matplotlib)")
    if have_plots:
        png = plot_losses(rows, out / "loss_curves.png")
        if png:
            images["report/loss_curves"] = png
            plots.append(("training loss per stage", "loss_curves.png"))
        else:
            notes.append("No loss curves: no metrics.jsonl with training losses in this workdir.")
        png = plot_eval(rows, scalars(results), step, out / "accuracy_vs_step.png")
        if png:
            images["report/accuracy_vs_step"] = png
            plots.append(("held-out accuracy and error rates against the step (periodic evaluations: "
                          "`config.evaluate.every_steps`)", "accuracy_vs_step.png"))
    from omni_jax.data.audio_features import encode_wav

    replies = (results.get("speech_qa") or {}).get("replies") or []
    shown = 0
    for k, x in enumerate(replies):
        if not x.get("wav"):
            continue
        wav = decode_wav(workdir_path(x["wav"]).read_bytes(), 24000)
        speakable = any(ch.isascii() and ch.isalnum() for ch in x["text"])  # the synthesiser says letters and digits
        text = x["text"] if speakable else x["reference"]
        ref = reference_speech(text)
        (out / f"speech_reference_{k}.wav").write_bytes(encode_wav(ref, 16000))
        audio[f"eval/speech_reply_{k}"] = (wav, 24000)
        audio[f"eval/speech_reference_{k}"] = (ref, 16000)
        if have_plots and shown < MAX_MEL_PLOTS:
            name = f"speech_reply_{k}_mel.png"
            which = "the reply text" if speakable else "the reference answer (no speakable reply text)"
            images[f"report/speech_reply_{k}_mel"] = plot_mels(
                wav, ref, f"spoken reply {k}: {_short(x['text'])}", f"synthesiser, {which}: {_short(text)}", out / name)
            name_of = "its reply text" if speakable else "the reference answer (the reply text has nothing to say)"
            plots.append((f"spoken reply {k} next to the synthesiser saying {name_of}", name))
            shown += 1
    if replies and not audio:
        notes.append("No spoken reply had speech frames: no WAVs, no spectrograms, no intelligibility.")
    sqa = results.get("speech_qa") or {}
    if sqa.get("spoken_replies") and "intelligibility_cer_swapped" not in sqa:
        notes.append("Every spoken reply has the same text: the swapped control cannot tell a heard voice "
                     "from an ASR that writes that text whatever it hears.")
    md += ["## Examples", ""] + _examples(results)
    if plots:
        md += ["## Plots", ""]
        for title, name in plots:
            md += [f"{title}:", "", f"![{name}]({name})", ""]
    md += ["## Files", "",
           "`results.json` (every number and example), `speech_reply_<k>.wav` (24 kHz replies), "
           "`speech_reference_<k>.wav` (the synthesiser's reference, 16 kHz), the PNGs above; "
           f"`../eval.json`, `../metrics.jsonl` (`\"kind\": \"eval\"` lines). TensorBoard "
           f"(`tensorboard --logdir {os.fspath(wd / 'tensorboard')}`): the numbers as scalars (`eval/...`), "
           "the plots under Images (`report/...`), the replies and references under Audio, this report under Text.", ""]
    md += notes
    text = "\n".join(md).rstrip() + "\n"
    path = out / "report.md"
    path.write_text(text)
    _tensorboard(wd, step or 0, images, audio, text)
    return path


def _tensorboard(wd, step: int, images: dict[str, bytes], audio: dict[str, tuple[np.ndarray, int]], text: str) -> None:
    from PIL import Image

    from omni_jax.train.metrics import _tensorboard_writer

    try:
        tb = _tensorboard_writer(wd / "tensorboard", filename_suffix=".report")
    except ImportError:  # pragma: no cover - tensorboardX is a dependency
        log.warning("eval report: tensorboardX is not installed, no TensorBoard summaries")
        return
    try:
        for tag, png in images.items():
            img = np.asarray(Image.open(io.BytesIO(png)).convert("RGB"))
            tb.add_image(tag, img, step, dataformats="HWC")
        for tag, (wav, rate) in audio.items():
            tb.add_audio(tag, np.clip(np.asarray(wav, np.float32).reshape(-1), -1, 1), step, sample_rate=rate)
        tb.add_text("eval/report", text, step)
    finally:
        tb.close()
