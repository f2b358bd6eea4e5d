"""Mixtures: per-stage datasets + weights + task formats, packed per component, mixed by rows.

Levanter's recipe (data/packing.py GreedyPrepackedDataset, data/mixture.py): every
mixture component is packed on its own, from token counts known before any media is
decoded; the mixture then interleaves whole packed rows. So

* a component's row stream is a pure function of (seed, component): epoch e packs the
  component's usable records in the order of a permutation seeded by
  (seed, component name, e), greedy first-fit into `packing.open_rows` open rows that
  respect every row budget (tokens, patches, vision items, audio and speech chunks);
* the global row stream is `grain.MapDataset.mix` of the component streams with the
  configured weights: a fixed, exactly proportional interleaving (weights are fractions
  of rows, i.e. of the token budget), random-access;
* the global batch at step s is rows [s*B, (s+1)*B) and process p builds only its
  contiguous share; nothing depends on the process count or on earlier steps, so resuming
  or re-sharding reproduces the same global batches.

Planning reads each record once (header-only media sizes; `config.data.validate="full"`
decodes everything) to learn its footprint; records that can never fit a row
(`over_long`) or fail to parse are skipped and counted against the error budget. Footprints
are cached under `<data_dir>/omni_jax_plans/` keyed by everything they depend on.

Config (`config.data.mixture.<component>`; a stage may replace the whole mixture, or any
other `config.data` key, with `config.stages.<stage>.data`):

  dataset   source spec (omni_jax/data/sources.py), e.g. "omni_images/shapes"
  split     "train" (TFDS slicing like "train[:90%]" works)
  format    a task format (omni_jax/data/formats.py)
  weight    mixture weight (> 0; normalised over components)
  prompts, system, fields, split_long, num_documents, corpus_seed: format / source options
"""

from __future__ import annotations

import dataclasses
import fcntl
import hashlib
import json
import logging
import os
import sys
import threading
from typing import Any, Mapping, Sequence

import grain
import numpy as np

from omni_jax.data import formats as formats_lib
from omni_jax.data.errors import DataError, ErrorBudget
from omni_jax.data.omni_batch import CAPACITY_KEYS, FOOTPRINT_NAMES, OmniShapes

log = logging.getLogger("omni_jax.data")

COMPONENT_KEYS = {"dataset", "split", "format", "weight", "prompts", "system", "fields", "split_long",
                  "num_documents", "corpus_seed"}


@dataclasses.dataclass(frozen=True)
class Component:
    name: str
    dataset: str
    format: str
    weight: float
    split: str = "train"
    prompts: tuple[str, ...] | None = None
    system: str | None = None
    fields: tuple[tuple[str, str], ...] = ()
    split_long: bool = False
    source_options: tuple[tuple[str, Any], ...] = ()

    @property
    def spec(self) -> formats_lib.Format:
        return formats_lib.FORMATS[self.format]


def _to_dict(x: Any) -> dict:
    if x is None:
        return {}
    return dict(x.to_dict()) if hasattr(x, "to_dict") else dict(x)


def parse_mixture(mixture: Any, where: str = "config.data.mixture") -> list[Component]:
    """Components sorted by name (their index is the batch's `component` id)."""
    m = _to_dict(mixture)
    if not m:
        raise ValueError(f"{where} is empty: name at least one component (dataset, format, weight)")
    out = []
    for name in sorted(m):
        c = _to_dict(m[name])
        w = f"{where}.{name}"
        unknown = sorted(set(c) - COMPONENT_KEYS)
        if unknown:
            raise ValueError(f"{w}: unknown key(s) {unknown}; allowed: {sorted(COMPONENT_KEYS)}")
        for k in ("dataset", "format", "weight"):
            if k not in c:
                raise ValueError(f"{w}: missing required key {k!r}")
        fmt = formats_lib.get_format(str(c["format"]), w)
        weight = float(c["weight"])
        if not weight > 0:
            raise ValueError(f"{w}.weight must be > 0, got {weight} (drop the component to disable it)")
        if c.get("split_long") and not fmt.splittable:
            raise ValueError(f"{w}.split_long is only allowed for format 'text', not {c['format']!r}")
        prompts = c.get("prompts")
        out.append(Component(
            name=name, dataset=str(c["dataset"]), format=str(c["format"]), weight=weight,
            split=str(c.get("split", "train")), prompts=None if prompts is None else tuple(str(p) for p in prompts),
            system=None if c.get("system") is None else str(c["system"]),
            fields=tuple(sorted(_to_dict(c.get("fields")).items())), split_long=bool(c.get("split_long", False)),
            source_options=tuple(sorted((k, c[k]) for k in ("num_documents", "corpus_seed") if k in c)),
        ))
    return out


def _plain(x: Any) -> Any:
    return x.to_dict() if hasattr(x, "to_dict") else x


def stage_data(config: Any, stage_name: str | None) -> Any:
    """config.data with config.stages.<stage>.data merged over it (mixture replaced whole)."""
    import ml_collections

    data = ml_collections.ConfigDict(config.data.to_dict())
    if stage_name is None or stage_name not in config.get("stages", {}):
        return data
    override = config.stages[stage_name].get("data")
    if not override:
        return data
    override = _to_dict(override)
    fixed = sorted(k for k in ("seq_len", "shapes", "tokenizer") if k in override and override[k] != _plain(data.get(k)))
    if fixed:
        raise ValueError(f"config.stages.{stage_name}.data changes {fixed}: the batch layout and tokenizer are fixed "
                         "for a whole run (the train step is compiled once); set them in config.data")
    for k, v in override.items():
        if k == "mixture" or not isinstance(v, Mapping) or k not in data:
            data[k] = ml_collections.ConfigDict(v) if isinstance(v, Mapping) else v
        else:
            merged = _to_dict(data[k])
            merged.update(dict(v))
            data[k] = ml_collections.ConfigDict(merged)
    return data


# ------------------------------------------------------------------ planning
class ComponentPlan:
    """Footprints of one component's records and its packed row stream."""

    def __init__(self, index: int, comp: Component, source: Any, ctx: formats_lib.FormatContext,
                 shapes: OmniShapes, seed: int, open_rows: int, budget: ErrorBudget,
                 cache_dir: str | None = None, cache_key: str = "", validate: str = "header",
                 loader: Any = None):
        self.index, self.comp, self.source, self.ctx, self.shapes = index, comp, source, ctx, shapes
        self.seed, self.open_rows, self.budget = seed, int(open_rows), budget
        self.capacity = shapes.capacity()
        self._lock = threading.Lock()
        self._epochs: list[list[np.ndarray]] = []
        self._starts = [0]
        self.tag = int.from_bytes(hashlib.sha1(comp.name.encode()).digest()[:4], "little")
        self._footprints(cache_dir, cache_key, validate, loader)

    # -- records --
    def rng(self, record: int) -> np.random.Generator:
        return np.random.default_rng([self.seed, self.tag, record])

    def format(self, record: int) -> tuple[Any, str]:
        """(Sample, record id) of record `record`; raises DataError with the id attached."""
        rid = f"#{record}"
        try:
            rec = self.source[record]
            rid = formats_lib.record_id(rec, record)
            if not isinstance(rec, Mapping):
                raise DataError("wrong_type", f"record must be a mapping of fields, got {type(rec).__name__}")
            return self.comp.spec.fn(rec, self.ctx, self.rng(record), rid), rid
        except DataError as e:
            raise e.with_record(rid) from None
        except Exception as e:  # anything else a strange record triggers is skipped too, never fatal
            raise DataError("invalid", f"{type(e).__name__}: {e}", rid) from e

    def footprint(self, sample) -> np.ndarray:
        fp = np.zeros(len(FOOTPRINT_NAMES), np.int64)
        fp[0] = sample.num_inputs
        for v in sample.vision:
            patches, tiles = v.item.footprint(self.ctx.media)
            fp[1] += patches
            fp[5] += tiles
        fp[2] = len(sample.vision)
        fp[3] = sum(len(a.item.chunks(self.ctx.chunk_samples)) for a in sample.audio)
        fp[4] = sum(len(s.item.chunks(self.ctx.chunk_samples)) for s in sample.speech)
        fp[6] = sum(len(s.positions) + 1 for s in sample.speech if s.train_audio)  # audio-head positions
        return fp

    def _check_fits(self, fp: np.ndarray, rid: str) -> None:
        over = [i for i in range(len(fp)) if fp[i] > self.capacity[i] and not (i == 0 and self.comp.split_long)]
        if over:
            what = ", ".join(f"{FOOTPRINT_NAMES[i]} {fp[i]} > {CAPACITY_KEYS[i]}={self.capacity[i]}" for i in over)
            raise DataError("over_long", f"sample can never fit a row: {what}", rid)

    def _footprints(self, cache_dir, cache_key, validate, loader) -> None:
        path = os.path.join(cache_dir, f"{cache_key}.npz") if cache_dir and cache_key else None
        if path is None:
            return self._measure(None, validate, loader)
        os.makedirs(cache_dir, exist_ok=True)
        with open(path[:-4] + ".lock", "w") as lock:  # one process measures, the others read its result
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                self._measure(path, validate, loader)
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)

    def _measure(self, path, validate, loader) -> None:
        n = len(self.source)
        if path and os.path.exists(path):
            with np.load(path) as z:
                self.fp = z["fp"]
            errors = json.loads(open(path[:-4] + ".errors.json").read())
        else:
            self.fp = np.zeros((n, len(FOOTPRINT_NAMES)), np.int64)
            errors = []
            for i in range(n):
                try:
                    sample, rid = self.format(i)
                    fp = self.footprint(sample)
                    self._check_fits(fp, rid)
                    if validate == "full":
                        loader(sample, self.ctx)
                    self.fp[i] = fp
                except DataError as e:
                    self.fp[i] = -1
                    errors.append([e.kind, e.message, e.record_id])
            if path:
                tmp = f"{path}.{os.getpid()}.tmp.npz"
                np.savez(tmp, fp=self.fp)
                with open(path[:-4] + ".errors.json", "w") as f:
                    json.dump(errors, f)
                os.replace(tmp, path)
        self.budget.add_seen(n)
        for kind, msg, rid in errors:
            self.budget.record(DataError(kind, msg, rid), component=self.comp.name)
        self.valid = np.flatnonzero(self.fp[:, 0] >= 0)
        if not len(self.valid):
            raise ValueError(f"mixture component {self.comp.name!r} ({self.comp.dataset} {self.comp.split}, format "
                             f"{self.comp.format!r}) has no usable records: all {n} were skipped "
                             f"({self.budget.summary()['examples']})")
        self.budget.check()

    # -- packing --
    def _pieces(self, record: int) -> list[tuple[int, int, np.ndarray]]:
        fp = self.fp[record]
        T = self.shapes.seq_len
        if fp[0] <= T:
            return [(record, -1, fp)]
        out = []
        for p, s in enumerate(range(0, int(fp[0]), T)):
            piece = fp.copy()
            piece[0] = min(T, fp[0] - s)
            out.append((record, p, piece))
        return out

    def _plan_epoch(self, e: int) -> list[np.ndarray]:
        order = self.valid[np.random.default_rng([self.seed, self.tag, 1 << 20, e]).permutation(len(self.valid))]
        cap = self.capacity
        closed: list[list] = []
        open_: list[tuple[np.ndarray, list]] = []
        for r in order:
            for rec, piece, fp in self._pieces(int(r)):
                for used, entries in open_:
                    if np.all(used + fp <= cap):
                        used += fp
                        entries.append((rec, piece))
                        break
                else:
                    if len(open_) >= self.open_rows:
                        closed.append(open_.pop(0)[1])
                    open_.append((fp.copy(), [(rec, piece)]))
                full = [k for k, (used, _) in enumerate(open_) if used[0] >= cap[0]]
                for k in reversed(full):
                    closed.append(open_.pop(k)[1])
        closed.extend(entries for _, entries in open_)
        return [np.asarray(rows, np.int64).reshape(-1, 2) for rows in closed]

    def row(self, j: int) -> np.ndarray:
        """Entries (record, piece; piece -1 = whole sample) of row j of the endless stream."""
        with self._lock:
            while self._starts[-1] <= j:
                rows = self._plan_epoch(len(self._epochs))
                self._epochs.append(rows)
                self._starts.append(self._starts[-1] + len(rows))
            e = int(np.searchsorted(self._starts, j, side="right")) - 1
            return self._epochs[e][j - self._starts[e]]

    def rows_per_epoch(self) -> int:
        self.row(0)
        return self._starts[1]


class ComponentRows(grain.MapDataset):
    """A component's endless packed-row stream as a random-access grain dataset."""

    def __init__(self, plan: ComponentPlan):
        super().__init__([])
        self.plan = plan

    def __len__(self) -> int:
        return sys.maxsize

    def __getitem__(self, j):
        if isinstance(j, slice):
            return self.slice(j)
        return self.plan.index, self.plan.row(int(j))

    def __str__(self) -> str:
        return f"ComponentRows({self.plan.comp.name})"


def mixed_rows(plans: Sequence[ComponentPlan]) -> grain.MapDataset:
    """The global row stream: (component index, entries) at every row index."""
    streams = [ComponentRows(p) for p in plans]
    if len(streams) == 1:
        return streams[0]
    return grain.MapDataset.mix(streams, [p.comp.weight for p in plans])


def plan_cache_key(*parts: Any) -> str:
    return hashlib.sha1(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:20]
