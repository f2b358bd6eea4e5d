"""Does an alignment loss on the LLM's audio positions teach it to hear the words? (issue #14)

  python benchmarks/llm_audio_ctc.py --workdir=RUN --step=1730 [--ctc=0,1] [--steps=400] [--input_codebooks=1]
      [--train_clips=2400]

The 1.5 main job's ASR stays near chance on the colour / shape / number words even where the
frozen tokenizer's codes hold them (a linear CTC read-out of the codes transcribes held-out clips
at CER 0.03 when the tokenizer trained with `loss.ctc`): the decoder-only LLM has to learn the
audio-to-text alignment from 240 clips and memorises them instead (benchmarks/README.md). This
trains the run's LLM and audio embedding on ASR alone, as the ASR-only stage does (the release's
ASR sample layout, `formats.fmt_asr`, one clip per row, every training clip with each ASR
prompt; LLM and audio embedding trainable, everything else frozen; AdamW, warm-up + cosine,
`--lr`), with an optional auxiliary CTC loss (weight `--ctc`) of the transcript's characters
through a linear head on the LLM's hidden states at the clip's audio positions after decoder
layer `--layer` (default the last; two labels per 80 ms position, as the tokenizer's CTC head
emits), then transcribes the first `--eval` clips of each split with the evaluation's prompt
(OmniRunner, greedy) and prints CER and the content words heard (benchmarks/asr_errors.py's
scoring), plus the CTC head's own greedy transcript of the test clips. `--input_codebooks=K` makes
the audio input embedding sum only the first K codebooks' lookups (in training and transcription).
`--train_clips=N` trains on the first N clips of the speech train split's stream: the default 240
was the embedded dataset's split before its version 1.1.0 (2400 since; default_dataset.speech draws
them one after another, so a longer stream starts with the same 240).
The CTC head is scratch: the omni model has no such parameter and nothing here is written back to
the run.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

LABELS_PER_POSITION = 2


def asr_rows(runner, split: str, count: int, seq_len: int, prompts: tuple[str, ...]):
    """The first `count` clips of the speech split as one-sample training rows, every clip once
    with each ASR prompt, prompt-major (the training layout: formats.fmt_asr, load_media,
    write_sample; each clip's audio is decoded once). Returns each row's transcript and the rows."""
    from omni_jax.data import default_dataset
    from omni_jax.data import formats as formats_lib
    from omni_jax.data.omni_batch import OmniShapes, empty_rows
    from omni_jax.data.omni_pipeline import RowCursor, load_media, write_sample

    data = runner.config.data
    shapes0 = OmniShapes.from_config(data)
    ctxs = [formats_lib.FormatContext(tokenizer=runner.tokenizer, media=runner.media,
                                      chunk_samples=shapes0.chunk_samples, system=str(data.get("system", "") or ""),
                                      prompts=(prompt,)) for prompt in prompts]
    shapes = dataclasses.replace(shapes0, seq_len=seq_len, max_patches=0, max_tiles=0, max_vision_items=0,
                                 max_audio_chunks=1, max_speech_chunks=0, speech_wave_rate=0)
    rng = np.random.default_rng(0)
    texts, recs = [], []
    # the speech subset's own stream: its first SIZES["default"]["speech"] clips are the dataset's split,
    # more continue it (the same sentence grammar, voices and synthesiser)
    for _, ex in default_dataset.speech(split, count):
        texts.append(ex["transcript"])
        recs.append(ex)
    rows = empty_rows(shapes, len(recs) * len(prompts))
    for i, ex in enumerate(recs):
        loaded = None
        for k, ctx in enumerate(ctxs):
            sample = formats_lib.fmt_asr(ex, ctx, rng, f"{split}-{i}")
            if len(sample.ids) - 1 > seq_len:
                raise ValueError(f"clip {i} of {split} needs {len(sample.ids) - 1} tokens: raise --seq_len")
            if loaded is None:  # the same audio whatever the prompt
                loaded = load_media(sample, ctx)
            write_sample(rows, k * len(recs) + i, RowCursor(), sample, loaded, shapes, component=0)
    return texts * len(prompts), rows


def audio_positions(rows) -> tuple[np.ndarray, np.ndarray]:
    """(N, A) positions of each row's audio tokens in order and their CTC padding (1 = pad)."""
    idx = rows["audio_token_index"]
    a = int((idx >= 0).sum(1).max())
    pos = np.zeros((len(idx), a), np.int32)
    pad = np.ones((len(idx), a), np.float32)
    for i, r in enumerate(idx):
        p = np.nonzero(r >= 0)[0]
        p = p[np.argsort(r[p])]
        pos[i, :len(p)], pad[i, :len(p)] = p, 0.0
    return pos, pad


def audio_states(task, params, state, b, layer: int):
    """The LLM's normed hidden states after decoder layer `layer` (0 = every layer, the final ones),
    and the final ones (what `Omni15.hidden` gives)."""
    import dataclasses as dc

    import jax

    from omni_jax.models.qwen2 import Qwen2LM

    x, _ = task.model.input_embeddings(params, state, b)  # the frozen tokenizer's codes, embedded: once
    h, _ = task.model.llm.apply({"params": params["llm"]}, x, b["positions"], b["segment_ids"],
                                method=Qwen2LM.hidden)
    if not layer or layer == task.model_cfg.llm.num_layers:
        return h, h
    lp = dict(params["llm"], layers=jax.tree.map(lambda a: a[:layer], params["llm"]["layers"]))
    low = Qwen2LM(dc.replace(task.model_cfg.llm, num_layers=layer))
    hk, _ = low.apply({"params": lp}, x, b["positions"], b["segment_ids"], method=Qwen2LM.hidden)
    return hk, h


def keep_codebooks(runner, k: int) -> None:
    """The model's audio input embedding sums only the first `k` codebooks' lookups (0 = all of them,
    the model's own rule). Patches this runner's model object only."""
    from omni_jax.models.audio_head import AudioEmbed

    if not k:
        return
    model = runner.task.model

    def first_k(params, codes):
        e = model.audio_embed.apply({"params": params["audio_embed"]}, codes, method=AudioEmbed.per_codebook)
        return e[..., :k, :].sum(axis=-2)

    model.code_embeddings = first_k


def train(runner, rows, pos, pos_pad, lab, lab_pad, chars: str, *, steps: int, batch: int, lr: float, ctc: float,
          seed: int, layer: int = 0, report_every: int = 50):
    """ASR-only training of params['llm'] and params['audio_embed'] (+ the scratch CTC head)."""
    import flax.linen as nn
    import jax
    import jax.numpy as jnp
    import optax

    task, state = runner.task, runner.state
    trained = ("llm", "audio_embed")
    frozen = {k: v for k, v in runner.params.items() if k not in trained}
    head = nn.Dense(LABELS_PER_POSITION * (len(chars) + 1))
    width = task.model_cfg.llm.hidden_size
    p = {k: runner.params[k] for k in trained}
    p["ctc_head"] = head.init(jax.random.PRNGKey(seed), jnp.zeros((1, width)))["params"]
    sched = optax.warmup_cosine_decay_schedule(0.0, lr, max(steps // 20, 1), steps, lr / 20)
    opt = optax.chain(optax.clip_by_global_norm(1.0), optax.adamw(sched, weight_decay=0.0))
    opt_state = opt.init(p)
    fields = [k for k in task.fields if k in rows]

    def loss_fn(p, b, pos, pos_pad, lab, lab_pad):
        params = {**frozen, **{k: p[k] for k in trained}}
        hk, h = audio_states(task, params, state, b, layer)
        text, _ = task.text_loss(params, h, b, task.norms(b))
        ha = jnp.take_along_axis(hk, pos[..., None], axis=1)  # (B, A, D)
        logits = head.apply({"params": p["ctc_head"]}, ha.astype(jnp.float32))
        logits = logits.reshape(ha.shape[0], -1, len(chars) + 1)  # (B, A * 2, C + 1)
        lpad = jnp.repeat(pos_pad, LABELS_PER_POSITION, axis=1)
        per = optax.ctc_loss(logits, lpad, lab, lab_pad, blank_id=0)
        ctc_loss = jnp.mean(per / jnp.maximum((1 - lab_pad).sum(1), 1))
        return text + ctc * ctc_loss, (text, ctc_loss)

    @jax.jit
    def step(p, opt_state, b, pos, pos_pad, lab, lab_pad):
        (loss, aux), g = jax.value_and_grad(loss_fn, has_aux=True)(p, b, pos, pos_pad, lab, lab_pad)
        upd, opt_state = opt.update(g, opt_state, p)
        return optax.apply_updates(p, upd), opt_state, aux

    rng = np.random.default_rng(seed)
    order, at = rng.permutation(len(lab)), 0
    t0 = time.time()
    for s in range(1, steps + 1):
        if at + batch > len(order):
            order, at = rng.permutation(len(lab)), 0
        sel = order[at:at + batch]
        at += batch
        b = {k: jnp.asarray(rows[k][sel]) for k in fields}
        p, opt_state, (text, ctc_loss) = step(p, opt_state, b, pos[sel], pos_pad[sel], lab[sel], lab_pad[sel])
        if s % report_every == 0 or s == steps:
            print(f"  step {s}: text loss {float(text):.4f}, ctc loss {float(ctc_loss):.4f} "
                  f"({time.time() - t0:.0f} s)", flush=True)
    params = {**frozen, **{k: p[k] for k in trained}}
    return params, p["ctc_head"], head


def ctc_read(runner, params, head, head_params, rows, pos, pos_pad, chars: str, layer: int = 0) -> list[str]:
    """Greedy transcripts of the CTC head on the LLM's audio positions."""
    import jax
    import jax.numpy as jnp

    from speech_ctc_baseline import greedy

    task = runner.task
    fields = [k for k in task.fields if k in rows]

    @jax.jit
    def logits(b, pos):
        hk, _ = audio_states(task, params, runner.state, b, layer)
        ha = jnp.take_along_axis(hk, pos[..., None], axis=1)
        out = head.apply({"params": head_params}, ha.astype(jnp.float32))
        return out.reshape(ha.shape[0], -1, len(chars) + 1)

    out = []
    for s in range(0, len(pos), 16):
        b = {k: jnp.asarray(rows[k][s:s + 16]) for k in fields}
        lg = np.asarray(logits(b, jnp.asarray(pos[s:s + 16])))
        out += greedy(lg, np.repeat(pos_pad[s:s + 16], LABELS_PER_POSITION, axis=1), chars)
    return out


def transcribe(runner, params, split: str, limit: int) -> tuple[list[str], list[str]]:
    """References and greedy transcripts of the first `limit` clips (asr_errors.transcripts) with `params`."""
    from asr_errors import transcripts

    saved, runner.params = runner.params, params
    try:
        pairs = transcripts(runner, split, limit)
    finally:
        runner.params = saved
    return [r for r, _ in pairs], [h for _, h in pairs]


def score(refs: list[str], hyps: list[str]) -> str:
    """Table cells: CER | sentence template right | colour | shape | number words heard."""
    import jiwer
    from asr_errors import template
    from speech_ctc_baseline import content_accuracy

    tmpl = np.mean([template(h) == template(r) for r, h in zip(refs, hyps)])
    words = " | ".join(f"{v:.2f}" for v in content_accuracy(refs, hyps).values())
    return f"{jiwer.cer(refs, hyps):.2f} | {tmpl:.2f} | {words}"


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--workdir", required=True, help="a 1.5 omni_jax workdir (task omni)")
    p.add_argument("--step", type=int, default=None, help="checkpoint to start from (default: the latest)")
    p.add_argument("--ctc", default="0,1", help="comma-separated CTC loss weights, one run each")
    p.add_argument("--layer", type=int, default=0,
                   help="the CTC head reads the hidden states after this decoder layer (0 = the final ones)")
    p.add_argument("--steps", type=int, default=400)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--seq_len", type=int, default=192)
    p.add_argument("--eval", type=int, default=40, help="clips per split transcribed at the end")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--train_clips", type=int, default=240,
                   help="the first N clips of the speech train stream (240: the split before 1.1.0)")
    p.add_argument("--input_codebooks", type=int, default=0,
                   help="the audio input embedding sums only the first K codebooks' lookups (0 = all), in "
                        "training and transcription alike (one K per process: the runner keeps its compiled "
                        "functions)")
    a = p.parse_args(argv)

    import jiwer

    from speech_ctc_baseline import char_labels

    from omni_jax.data.formats import DEFAULT_PROMPTS
    from omni_jax.generate.omni_infer import OmniRunner

    runner = OmniRunner.load(a.workdir, step=a.step)

    # every training clip once with each prompt (the pipeline gives a record the same prompt in every
    # epoch, formats.py); the test clips with the evaluation's prompt
    prompts = tuple(DEFAULT_PROMPTS["asr"])
    tr_texts, tr_rows = asr_rows(runner, "train", a.train_clips, a.seq_len, prompts)
    te_texts, te_rows = asr_rows(runner, "test", 40, a.seq_len, prompts[:1])
    chars = "".join(sorted(set("".join(tr_texts + te_texts))))  # the CTC head's alphabet (+ blank)
    tr_pos, tr_pad = audio_positions(tr_rows)
    te_pos, te_pad = audio_positions(te_rows)
    lab, lab_pad = char_labels(tr_texts, chars)
    feasible = np.mean(LABELS_PER_POSITION * (tr_pad == 0).sum(1) >= (lab_pad == 0).sum(1))
    print(f"{len(tr_texts) // len(prompts)} train clips x {len(prompts)} prompts / {len(te_texts)} test clips; "
          f"CTC-feasible at {LABELS_PER_POSITION} labels per audio position: {feasible:.2f}")
    table = []
    k = a.input_codebooks
    keep_codebooks(runner, k)
    for w in [float(x) for x in a.ctc.split(",")]:
        print(f"CTC weight {w}, input codebooks {k or 'all'}:", flush=True)
        params, head_params, head = train(runner, tr_rows, tr_pos, tr_pad, lab, lab_pad, chars, steps=a.steps,
                                          batch=a.batch, lr=a.lr, ctc=w, seed=a.seed, layer=a.layer)
        cells = []
        for split in ("test", "train"):
            refs, hyps = transcribe(runner, params, split, a.eval)
            print(f"  {split}: {refs[0]!r} -> {hyps[0]!r}", flush=True)
            cells.append(score(refs, hyps))
        read = ctc_read(runner, params, head, head_params, te_rows, te_pos, te_pad, chars, a.layer) if w else None
        ctc_cell = f"{jiwer.cer(te_texts, read):.3f}" if read else "-"
        table.append(f"| {w} | {k or 'all'} | " + " | ".join(cells) + f" | {ctc_cell} |")
    print(f"\n{a.steps} ASR-only steps of {a.batch} clips (of {a.train_clips}) from step {a.step} of {a.workdir}, "
          f"lr {a.lr}, CTC head after layer {a.layer or 'last'}; "
          f"first {a.eval} clips per split, greedy, the evaluation's prompt:")
    print("| CTC weight | input codebooks | test CER | template | colour | shape | number "
          "| train CER | template | colour | shape | number | CTC head test CER |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    print("\n".join(table))


if __name__ == "__main__":
    main()
