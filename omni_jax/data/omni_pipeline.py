"""The omni data pipeline: mixture rows -> decoded, verified, packed omni batches.

    it = make_omni_iterator(config, stage="pretrain", start_step=0, process_index=0, process_count=1)
    batch = next(it)            # {field: (B_local, ...)} per omni_jax/data/omni_batch.py
    it.get_state()              # {"step", "fingerprint", "errors"}: JSON, saved by orbax

Row planning and mixing are in omni_jax/data/mixture.py (pure functions of the seed and
the row index); this module builds rows: it re-reads the planned records, formats them
(omni_jax/data/formats.py), decodes their media, verifies that every media item gives as
many tokens as its placeholders, and writes tokens, loss masks, segment ids, positions,
media buffers and gather indices into static row buffers. A record that fails is skipped
(its slot stays padding), counted and reported (omni_jax/data/errors.py); the run stops
with a clear message once the error budget is exceeded.

`config.data` keys used here (besides the mixture's): seq_len, seed, data_dir,
tokenizer {kind, path, vocab_size}, system, shapes {...}, media {...},
errors {max_fraction, max_count, min_samples, log_first}, packing {open_rows},
tts {kind: "builtin" | "espeak" | "python:module:factory", num_voices, seed, args}, validate
("header" | "full"), num_threads, prefetch, num_workers (grain worker processes that build
batches: 0 = threads of this process; worth it when decoding media dominates, see
benchmarks/data_planning.py), wait_timeout_s (how long a process waits for a file
another process writes: the shared length index, a dataset being prepared).

Per host: a process reads the records of its share of the length index (planning) and of
the rows it feeds (building), nothing else; which rows it feeds comes from the mesh
(`rows=`, omni_jax/data/host_rows.py) or is its contiguous share of the batch.
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib
import json
import logging
import os
from typing import Any, Mapping, Sequence

import numpy as np

from omni_jax.data import formats as formats_lib
from omni_jax.data import media
from omni_jax.data import omni_batch
from omni_jax.data.errors import DataError, ErrorBudget, report as errors_report
from omni_jax.data.iterator import StepIndexedIterator, local_rows
from omni_jax.data.layout import Sample, speech_targets
from omni_jax.data.media_io import MediaConfig, frames_to_tokens
from omni_jax.data.mixture import ComponentPlan, mixed_rows, parse_mixture, plan_cache_key, stage_data
from omni_jax.data.omni_batch import OmniShapes
from omni_jax.data.sources import open_source
from omni_jax.data.tokenizer import make_tokenizer
from omni_jax.models.navit import patch_positions

log = logging.getLogger("omni_jax.data")

DATA_KEYS = {"seq_len", "seed", "data_dir", "tokenizer", "system", "shapes", "media", "errors", "packing", "tts",
             "validate", "num_threads", "prefetch", "mixture", "num_documents", "corpus_seed", "num_workers",
             "wait_timeout_s"}


# ------------------------------------------------------------------ media loading
@dataclasses.dataclass
class Loaded:
    vision: list[tuple[np.ndarray, tuple[int, int, int]]]
    audio: list[list[np.ndarray]]
    speech: list[list[np.ndarray]]
    speech_waves: list[list[np.ndarray]]


def load_media(sample: Sample, ctx: formats_lib.FormatContext, wave_rate: int = 0) -> Loaded:
    """Decodes every media item of a sample and checks token counts against placeholders."""
    out = Loaded([], [], [], [])
    for k, v in enumerate(sample.vision):
        if ctx.media.vision_mode == "tiles":
            tiles, grid = v.item.load_tiles(ctx.media)
            got = len(tiles) * (ctx.media.video_tokens_per_frame if v.video else ctx.media.tokens_per_tile)
            if got != len(v.positions):
                raise DataError("count_mismatch", f"{'video frame' if v.video else 'image'} {k}: the decoded media "
                                f"gives {len(tiles)} tiles = {got} tokens but the sequence has {len(v.positions)} "
                                "placeholders")
            out.vision.append((tiles, grid))
            continue
        patches, grid = v.item.load(ctx.media)
        got = patches.shape[0] // 4
        if got != len(v.positions):
            raise DataError("count_mismatch", f"{'video frame' if v.video else 'image'} {k}: the decoded media gives "
                            f"{got} tokens (grid {grid}) but the sequence has {len(v.positions)} placeholders")
        out.vision.append((patches, grid))
    for name, spans, dest in (("audio", sample.audio, out.audio), ("speech", sample.speech, out.speech)):
        for k, s in enumerate(spans):
            mels = s.item.features(ctx.chunk_samples)
            got = sum(frames_to_tokens(m.shape[1], ctx.media.audio_pool) for m in mels)
            if got != len(s.positions) or len(mels) != len(s.item.chunks(ctx.chunk_samples)):
                raise DataError("count_mismatch", f"{name} clip {k}: the decoded audio gives {got} tokens in "
                                f"{len(mels)} chunk(s) but the sequence has {len(s.positions)} placeholders")
            dest.append(mels)
    if wave_rate:
        for s in sample.speech:
            x = s.item.waveform(wave_rate)
            step = int(round(ctx.chunk_samples * wave_rate / 16000))
            lens = s.item.chunks(ctx.chunk_samples)
            out.speech_waves.append([x[c * step:c * step + int(round(n * wave_rate / 16000))] for c, n in enumerate(lens)])
    return out


# ------------------------------------------------------------------ row writing
class RowCursor:
    def __init__(self):
        self.tok = self.patch = self.tile = self.item = self.audio = self.speech = self.seg = 0


def write_sample(out: dict[str, np.ndarray], i: int, cur: RowCursor, sample: Sample, loaded: Loaded | None,
                 shapes: OmniShapes, component: int, piece: int = -1) -> None:
    """Writes one sample (or piece `piece` of a split text sample) into row i at the cursor."""
    inp, tgt, msk = sample.example()
    if piece >= 0:
        T = shapes.seq_len
        inp, tgt, msk = inp[piece * T:(piece + 1) * T], tgt[piece * T:(piece + 1) * T], msk[piece * T:(piece + 1) * T]
    n = len(inp)
    if cur.tok + n > shapes.seq_len:
        raise AssertionError(f"planned row overflows: {cur.tok} + {n} > {shapes.seq_len}")
    base = cur.tok
    sl = slice(base, base + n)
    cur.seg += 1
    out["tokens"][i, sl], out["targets"][i, sl], out["loss_mask"][i, sl] = inp, tgt, msk
    out["segment_ids"][i, sl] = cur.seg
    out["positions"][i, sl] = np.arange(n)
    out["component"][i, sl] = component
    cur.tok += n
    if loaded is None:
        return
    if shapes.vision_mode == "tiles":
        for span, (tiles, grid) in zip(sample.vision, loaded.vision):
            k, t0 = len(tiles), cur.tile
            out["vision_tiles"][i, t0:t0 + k] = tiles
            out["vision_tile_items"][i, t0:t0 + k] = cur.item + 1
            out["vision_tile_video"][i, t0:t0 + k] = int(span.video)
            out["vision_grids"][i, cur.item] = grid
            per = len(span.positions) // k
            idx = (t0 + np.arange(k))[:, None] * shapes.tile_slot + np.arange(per)[None, :]
            out["vision_token_index"][i, base + span.positions] = idx.reshape(-1)
            cur.tile += k
            cur.item += 1
    for span, (patches, grid) in zip(sample.vision if shapes.vision_mode == "navit" else [], loaded.vision):
        k = patches.shape[0]
        p = cur.patch
        out["vision_patches"][i, p:p + k] = patches
        out["vision_positions"][i, p:p + k] = patch_positions(grid, media.MERGE)
        out["vision_segment_ids"][i, p:p + k] = cur.item + 1
        out["vision_grids"][i, cur.item] = grid
        out["vision_token_index"][i, base + span.positions] = p // 4 + np.arange(k // 4)
        cur.patch += k
        cur.item += 1
    tps = shapes.tokens_per_chunk
    for span, mels in zip(sample.audio, loaded.audio):
        idx = []
        for m in mels:
            a = cur.audio
            out["audio_mels"][i, a, :, :m.shape[1]] = m
            out["audio_mel_lengths"][i, a] = m.shape[1]
            idx.append(a * tps + np.arange(frames_to_tokens(m.shape[1], shapes.audio_pool)))
            cur.audio += 1
        out["audio_token_index"][i, base + span.positions] = np.concatenate(idx)
    for k, (span, mels) in enumerate(zip(sample.speech, loaded.speech)):
        idx = []
        for c, m in enumerate(mels):
            g = cur.speech
            out["speech_mels"][i, g, :, :m.shape[1]] = m
            out["speech_mel_lengths"][i, g] = m.shape[1]
            if loaded.speech_waves:
                w = loaded.speech_waves[k][c][:shapes.wave_samples]
                out["speech_waves"][i, g, :len(w)] = w
                out["speech_wave_lengths"][i, g] = len(w)
            idx.append(g * tps + np.arange(frames_to_tokens(m.shape[1], shapes.audio_pool)))
            cur.speech += 1
        frames = np.concatenate(idx)
        out["speech_token_index"][i, base + span.positions] = frames
        pos, target, end = speech_targets(span, frames)
        out["speech_target_index"][i, base + pos] = target
        out["speech_target_end"][i, base + pos] = end
        out["speech_loss_mask"][i, base + pos] = float(span.train_audio)


# ------------------------------------------------------------------ the pipeline
def make_tts(c: Mapping[str, Any] | None):
    c = dict(c or {})
    kind = c.get("kind", "builtin")
    if kind == "builtin":
        from omni_jax.data.speech_synth import BuiltinTTS

        return BuiltinTTS(num_voices=int(c.get("num_voices", 44)), seed=int(c.get("seed", 0)))
    if kind == "espeak":
        from omni_jax.data.espeak import EspeakTTS

        return EspeakTTS(**dict(c.get("args", {}) or {}))
    if isinstance(kind, str) and kind.startswith("python:"):
        module, _, attr = kind[len("python:"):].partition(":")
        return getattr(importlib.import_module(module), attr)(**dict(c.get("args", {}) or {}))
    raise ValueError(f"config.data.tts.kind={kind!r}; use 'builtin', 'espeak' or 'python:module:factory'")


def data_tokenizer(config: Any, d: Any):
    """The tokenizer `config.data.tokenizer` names (vocabulary from config.model.llm when not given)."""
    t = dict(d.get("tokenizer", {}) or {})
    vocab = t.get("vocab_size")
    if vocab is None:
        try:
            vocab = config.model.llm.vocab_size
        except (AttributeError, KeyError):
            vocab = 384
    return make_tokenizer(t.get("kind", "byte"), int(vocab), t.get("path") or None)


def sample_context(config: Any, tts: bool = True) -> tuple[OmniShapes, formats_lib.FormatContext]:
    """(row shapes, format context) of `config.data` for formatting records one at a time, outside a
    mixture (tests, benchmarks): no system prompt, the configured TTS only when `tts`."""
    d = config.data
    shapes = OmniShapes.from_config(d)
    return shapes, formats_lib.FormatContext(
        tokenizer=data_tokenizer(config, d), media=MediaConfig.from_dict(d.get("media")),
        chunk_samples=shapes.chunk_samples, tts=make_tts(d.get("tts")) if tts else None)


def single_sample_rows(samples: Sequence[Sample], ctx: formats_lib.FormatContext,
                       shapes: OmniShapes) -> dict[str, np.ndarray]:
    """Host rows holding one formatted sample each (decoded and verified by `load_media`), written by the
    trainer's own row code: what the model sees of a sample that is packed alone."""
    out = omni_batch.empty_rows(shapes, len(samples))
    for i, s in enumerate(samples):
        if len(s.ids) - 1 > shapes.seq_len:
            raise ValueError(f"sample {i} has {len(s.ids) - 1} tokens but a row holds config.data.seq_len="
                             f"{shapes.seq_len}: raise it")
        loaded = load_media(s, ctx, shapes.speech_wave_rate) if (s.vision or s.audio or s.speech) else None
        write_sample(out, i, RowCursor(), s, loaded, shapes, 0)
    return out


class OmniPipeline:
    """Plans (once) and builds global rows of omni batches for one data config."""

    def __init__(self, config: Any, stage: str | None = None, *, data: Any = None, process_index: int = 0,
                 process_count: int = 1):
        d = data if data is not None else stage_data(config, stage)
        unknown = sorted(set(d.keys()) - DATA_KEYS)
        if unknown:
            raise ValueError(f"config.data: unknown key(s) {unknown}; allowed: {sorted(DATA_KEYS)}")
        self.data = d
        self.shapes = OmniShapes.from_config(d)
        self.media = MediaConfig.from_dict(d.get("media"))
        self.tokenizer = data_tokenizer(config, d)
        self.components = parse_mixture(d.get("mixture"))
        self.seed = int(d.get("seed", 0))
        errors_cfg = dict(d.get("errors", {}) or {})
        self.plan_errors = ErrorBudget.from_config(errors_cfg)
        self.build_errors = ErrorBudget.from_config(errors_cfg)
        validate = d.get("validate", "header")
        if validate not in ("header", "full"):
            raise ValueError(f"config.data.validate={validate!r}; use 'header' or 'full'")
        need_tts = any(c.format in ("crossmodal_image", "crossmodal_video") for c in self.components)
        self.tts = make_tts(d.get("tts")) if need_tts else None
        have = {"vision": self.shapes.vision, "audio": self.shapes.audio, "speech": self.shapes.speech}
        budget_key = {"vision": "max_tiles" if self.shapes.vision_mode == "tiles" else "max_patches",
                      "audio": "max_audio_chunks", "speech": "max_speech_chunks"}
        for c in self.components:
            missing = sorted(m for m in c.spec.needs if not have[m])
            if missing:
                raise ValueError(f"config.data.mixture.{c.name}: format {c.format!r} needs {missing} but "
                                 + ", ".join(f"config.data.shapes.{budget_key[m]} is 0" for m in missing))
        data_dir = d.get("data_dir") or None
        from omni_jax.data.builders import default_data_dir

        root = data_dir or default_data_dir()
        open_rows = int(dict(d.get("packing", {}) or {}).get("open_rows", 8))
        tok_desc = (type(self.tokenizer).__name__, self.tokenizer.vocab_size,
                    dict(d.get("tokenizer", {}) or {}).get("path"))
        wait_s = float(d.get("wait_timeout_s", 3600.0))
        self.plans: list[ComponentPlan] = []
        self.contexts = []
        for k, c in enumerate(self.components):
            src = open_source(c.dataset, c.split, data_dir, dict(c.source_options), prepare_here=process_index == 0,
                              wait_timeout_s=wait_s)
            ctx = formats_lib.FormatContext(
                tokenizer=self.tokenizer, media=self.media, chunk_samples=self.shapes.chunk_samples,
                system=c.system if c.system is not None else str(d.get("system", "") or ""),
                prompts=c.prompts, fields=dict(c.fields), tts=self.tts)
            cacheable = not c.dataset.startswith(("memory:", "probe:")) and c.dataset != "text_corpus"
            key = plan_cache_key("footprints-v4", c.dataset, c.split, len(src), _source_stamp(src),
                                 dataclasses.asdict(c), ctx.system, tok_desc, dataclasses.asdict(self.shapes),
                                 dataclasses.asdict(self.media), self.seed, _tts_desc(self.tts), validate)
            self.plans.append(ComponentPlan(
                k, c, src, ctx, self.shapes, self.seed, open_rows, self.plan_errors,
                cache_dir=os.path.join(root, "omni_jax_plans") if cacheable else None, cache_key=key,
                validate=validate, loader=lambda s, cx: load_media(s, cx, self.shapes.speech_wave_rate),
                process_index=process_index, process_count=process_count, wait_timeout_s=wait_s))
            self.contexts.append(ctx)
        self.rows = mixed_rows(self.plans)
        # what the batches depend on (not where the files are, threads or the error budget)
        plain = d.to_dict() if hasattr(d, "to_dict") else dict(d)
        ignore = ("data_dir", "num_threads", "prefetch", "errors", "validate", "num_workers", "wait_timeout_s")
        desc = {k: v for k, v in plain.items() if k not in ignore}
        self.fingerprint_base = json.dumps(desc, sort_keys=True, default=str)

    def __getstate__(self):  # pickled into grain worker processes, which only build rows
        state = dict(self.__dict__)
        state["plan_errors"] = state["build_errors"] = None
        return state

    # -- rows --
    def build_rows(self, row_indices: Sequence[int]) -> dict[str, Any]:
        """Builds the given global rows into one local batch (plus `_errors`, `_samples`).

        numpy's BLAS runs single-threaded meanwhile: the small matmuls of feature
        extraction get slower, not faster, from threads that compete with the train step."""
        with _blas_limit():
            return self._build_rows(row_indices)

    def _build_rows(self, row_indices: Sequence[int]) -> dict[str, Any]:
        out = omni_batch.empty_rows(self.shapes, len(row_indices))
        errors: list[tuple[str, DataError]] = []
        built = 0
        for i, r in enumerate(row_indices):
            comp, entries = self.rows[int(r)]
            plan, ctx = self.plans[comp], self.contexts[comp]
            cur = RowCursor()
            for record, piece in entries:
                rid = f"#{record}"
                try:
                    sample, rid = plan.format(int(record))
                    loaded = None
                    if sample.vision or sample.audio or sample.speech:
                        loaded = load_media(sample, ctx, self.shapes.speech_wave_rate)
                    write_sample(out, i, cur, sample, loaded, self.shapes, comp, int(piece))
                    built += 1
                except DataError as e:
                    errors.append((plan.comp.name, e.with_record(rid)))
                except AssertionError:
                    raise
                except Exception as e:  # a decoder failing in an unforeseen way: skip, count, report
                    errors.append((plan.comp.name, DataError("invalid", f"{type(e).__name__}: {e}", rid)))
        out["_errors"] = [(comp, e.kind, e.message, e.record_id) for comp, e in errors]
        out["_samples"] = built + len(errors)
        return out

    def describe(self) -> str:
        lines = []
        for p in self.plans:
            rows = p.rows_per_epoch()
            fill = float(p.fp[p.valid, 0].sum()) / max(rows * self.shapes.seq_len, 1)
            lines.append(f"{p.comp.name}: {p.comp.dataset} [{p.comp.split}] format={p.comp.format} "
                         f"weight={p.comp.weight:g}: {len(p.valid)}/{len(p.source)} usable records, "
                         f"{rows} rows/epoch, token fill {fill:.1%}")
        return "\n".join(lines)


def _source_stamp(src: Any) -> Any:
    """Identifies a prepared TFDS dataset's files (so regenerated data is re-planned)."""
    info = getattr(src, "dataset_info", None)
    d = getattr(info, "data_dir", None)
    if not d:
        return None
    f = os.path.join(d, "dataset_info.json")
    return [str(getattr(info, "version", "")), d, os.path.getmtime(f) if os.path.exists(f) else None]


_CONTROLLER = None


def _blas_limit():
    global _CONTROLLER
    try:
        from threadpoolctl import ThreadpoolController
    except ImportError:  # pragma: no cover - optional speed-up
        import contextlib
        return contextlib.nullcontext()
    if _CONTROLLER is None:
        _CONTROLLER = ThreadpoolController()
    return _CONTROLLER.limit(limits=1, user_api="blas")


def _tts_desc(tts) -> Any:
    if tts is None:
        return None
    return [type(tts).__module__, type(tts).__name__, len(getattr(tts, "voices", []) or []),
            getattr(tts, "sample_rate", None)]


class OmniIterator(StepIndexedIterator):
    """StepIndexedIterator whose state also carries the build-time error tally.

    With `defer_errors` (the trainer sets it) a batch's skipped records are not counted at once:
    `take_report()` hands them out and `apply_reports()` adds every process's reports, so the
    budget is global (omni_jax/train/host_sync.py)."""

    def __init__(self, pipeline: OmniPipeline, local_batch_at, **kwargs):
        self.pipeline = pipeline
        self.defer_errors = False
        self._report = None
        super().__init__(local_batch_at, **kwargs)

    def _consume(self, batch: dict[str, Any]) -> dict[str, np.ndarray]:
        batch = dict(batch)
        # errors travel as plain (component, kind, message, record id) tuples (picklable for grain workers)
        errors = [(comp, DataError(kind, message, rid)) for comp, kind, message, rid in batch.pop("_errors", [])]
        rep = errors_report(int(batch.pop("_samples", 0)), errors)
        if self.defer_errors:
            self._report = rep
        else:
            self.apply_reports([rep])
        return batch

    def take_report(self) -> dict[str, Any]:
        """This process's error report of the batch last returned (deferred mode)."""
        rep, self._report = self._report, None
        if rep is None:
            raise RuntimeError("take_report() without a batch fetched in defer_errors mode")
        return rep

    def apply_reports(self, reports) -> None:
        self.pipeline.build_errors.add_reports(reports)

    def __next__(self):
        return self._consume(super().__next__())

    def peek(self, step: int):
        batch = dict(super().peek(step))
        batch.pop("_errors", None)
        batch.pop("_samples", None)
        return batch

    def get_state(self) -> dict[str, Any]:
        state = super().get_state()
        state["errors"] = self.pipeline.build_errors.state()
        return state

    def set_state(self, state: Mapping[str, Any]) -> None:
        super().set_state(state)
        self.pipeline.build_errors.restore(state.get("errors"))


def make_omni_iterator(config: Any, *, stage: str | None = None, start_step: int = 0, process_index: int = 0,
                       process_count: int = 1, fields: Sequence[str] | None = None,
                       pipeline: OmniPipeline | None = None, rows: Sequence[int] | None = None) -> OmniIterator:
    """Step-indexed iterator over this process's rows of the global omni batches: `rows`
    (global batch rows, omni_jax/data/host_rows.py) or its contiguous share."""
    pipe = pipeline or OmniPipeline(config, stage, process_index=process_index, process_count=process_count)
    B = int(config.train.batch_size)
    mine = local_rows(B, process_index, process_count, rows)
    keep = None if fields is None else set(fields) | {"_errors", "_samples"}

    def local_batch(step: int):
        batch = pipe.build_rows(step * B + mine)
        return batch if keep is None else {k: v for k, v in batch.items() if k in keep}

    fp = hashlib.sha1(f"{pipe.fingerprint_base}|B={B}|stage={stage}".encode()).hexdigest()[:12]
    d = pipe.data
    log.info("omni data (stage %s):\n%s", stage, pipe.describe())
    return OmniIterator(pipe, local_batch, start_step=start_step, fingerprint=fp,
                        num_threads=int(d.get("num_threads", 1)), prefetch=int(d.get("prefetch", 2)),
                        num_workers=int(d.get("num_workers", 0)))
