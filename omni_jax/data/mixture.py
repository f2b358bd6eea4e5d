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
* the global batch at step s is rows [s*B, (s+1)*B) and a process builds only the rows its
  devices hold (omni_jax/data/host_rows.py); nothing depends on the process count or on
  earlier steps, so resuming or re-sharding reproduces the same global batches.

Planning needs one thing from the records: their footprints (the length index: tokens and
media budget use, header-only media sizes; `config.data.validate="full"` decodes
everything). It is measured once per dataset, split over the processes (each reads 1/N of
the records), merged by process 0 and cached under `<data_dir>/omni_jax_plans/` keyed by
everything it depends on, written atomically (temp + rename; no file locks, see
omni_jax/data/shared_files.py); later runs only read it. Records that can never fit a row
(`over_long`) or fail to parse are skipped and counted against the error budget. Epochs
are packed lazily from (seed, component, epoch) when their rows are first needed
(omni_jax/data/epoch_packing.py); a process then reads and decodes only the records of
its own rows.

Config (`config.data.mixture.<component>`; a stage may replace the whole mixture, or any
other `config.data` key, with `config.stages.<stage>.data`):

  dataset   source spec (omni_jax/data/sources.py), e.g. "omni_images/shapes"
  split     "train" (TFDS slicing like "train[:90%]" works)
  format    a task format (omni_jax/data/formats.py)
  weight    mixture weight (> 0; normalised over components)
  prompts, system, fields, split_long, num_documents, corpus_seed: format / source options
"""

from __future__ import annotations

import collections
import dataclasses
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
from omni_jax.data import shared_files
from omni_jax.data.epoch_packing import pack_epoch
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
    """The length index (footprints) of one component's records and its packed row stream.

    The length index is computed once per dataset and shared through the plan cache:
    with N processes, process p measures records [p*n/N, (p+1)*n/N) and writes them as a
    part file; process 0 merges the parts into `<key>.npz` (temp + rename) and the others
    wait for it (`wait_timeout_s`, then an error naming the path). Epoch plans are derived
    from (seed, component, epoch) when a row of that epoch is asked for; only the row
    count of every planned epoch and the last `KEEP_EPOCHS` plans stay in memory. The row
    counts are cached next to the index by process 0 (`<key>.rows-<packing>.json`), so a
    run resuming in a late epoch finds where its rows are without packing every earlier
    epoch again."""

    KEEP_EPOCHS = 2

    def __init__(self, index: int, comp: Component, source: Any, ctx: formats_lib.FormatContext,
                 shapes: OmniShapes, seed: int, open_rows: int, budget: ErrorBudget,
                 cache_dir: str | None = None, cache_key: str = "", validate: str = "header",
                 loader: Any = None, process_index: int = 0, process_count: int = 1,
                 wait_timeout_s: float = 3600.0):
        self.index, self.comp, self.source, self.ctx, self.shapes = index, comp, source, ctx, shapes
        self.seed, self.open_rows, self.budget = seed, int(open_rows), budget
        self.capacity = shapes.capacity()
        self._lock = threading.Lock()
        self._plans: collections.OrderedDict[int, tuple[np.ndarray, np.ndarray]] = collections.OrderedDict()
        self._starts = [0]
        self.reads = 0  # records this process read (planning and building)
        self.tag = int.from_bytes(hashlib.sha1(comp.name.encode()).digest()[:4], "little")
        if not 0 <= process_index < process_count:
            raise ValueError(f"process_index {process_index} is not in [0, process_count={process_count})")
        self.process_index, self.process_count = int(process_index), int(process_count)
        self._footprints(cache_dir, cache_key, validate, loader, float(wait_timeout_s))
        self._counts_path, self._known_counts = None, []
        if cache_dir and cache_key:
            packing = plan_cache_key(self.seed, comp.name, self.open_rows, self.capacity.tolist(), shapes.seq_len)
            self._counts_path = os.path.join(cache_dir, f"{cache_key}.rows-{packing}.json")
            if os.path.exists(self._counts_path):
                with open(self._counts_path) as f:
                    self._known_counts = [int(x) for x in json.load(f)]

    def __getstate__(self):  # pickled into grain worker processes: no lock, no error budget
        state = dict(self.__dict__)
        state.pop("_lock")
        state["budget"] = None
        return state

    def __setstate__(self, state):
        self.__dict__.update(state)
        self._lock = threading.Lock()

    # -- records --
    def rng(self, record: int) -> np.random.Generator:
        return np.random.default_rng([self.seed, self.tag, record])

    def format(self, record: int) -> tuple[Any, str]:
        """(Sample, record id) of record `record`; raises DataError with the id attached."""
        rid = f"#{record}"
        try:
            self.reads += 1
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

    def _measure(self, lo: int, hi: int, validate: str, loader: Any) -> tuple[np.ndarray, list]:
        """Footprints of records [lo, hi) (-1 rows for skipped records) and their errors."""
        fp = np.zeros((hi - lo, len(FOOTPRINT_NAMES)), np.int32)
        errors = []
        for i in range(lo, hi):
            try:
                sample, rid = self.format(i)
                f = self.footprint(sample)
                self._check_fits(f, rid)
                if validate == "full":
                    loader(sample, self.ctx)
                fp[i - lo] = f
            except DataError as e:
                fp[i - lo] = -1
                errors.append([e.kind, e.message, e.record_id])
        return fp, errors

    def _footprints(self, cache_dir, cache_key, validate, loader, timeout) -> None:
        n = len(self.source)
        path = os.path.join(cache_dir, f"{cache_key}.npz") if cache_dir and cache_key else None
        if path is None:  # in-memory sources: every process measures them (nothing is read from storage)
            self.fp, errors = self._measure(0, n, validate, loader)
        elif os.path.exists(path):
            self.fp, errors = _load_index(path)
        elif self.process_count == 1:
            self.fp, errors = self._measure(0, n, validate, loader)
            _save_index(path, self.fp, errors)
        else:
            p, N = self.process_index, self.process_count
            part = lambda q: f"{path[:-4]}.part{q}of{N}.npz"  # noqa: E731
            lo, hi = n * p // N, n * (p + 1) // N
            if not os.path.exists(part(p)):
                _save_index(part(p), *self._measure(lo, hi, validate, loader))
            if p == 0:
                fps, errors = [], []
                for q in range(N):
                    shared_files.wait_for(part(q), timeout, f"process {q} of {N} (its share of the length index)")
                    f, e = _load_index(part(q))
                    fps.append(f)
                    errors += e
                self.fp = np.concatenate(fps)
                _save_index(path, self.fp, errors)
                for q in range(N):
                    _remove(part(q))
            else:
                shared_files.wait_for(path, timeout, "process 0 (it merges the length index)")
                self.fp, errors = _load_index(path)
                _remove(part(p))
        self.budget.add_seen(n)
        for kind, msg, rid in errors:
            self.budget.record(DataError(kind, msg, rid), component=self.comp.name)
        self.valid = np.flatnonzero(self.fp[:, 0] >= 0)
        if not len(self.valid):
            raise ValueError(f"mixture component {self.comp.name!r} ({self.comp.dataset} {self.comp.split}, format "
                             f"{self.comp.format!r}) has no usable records: all {n} were skipped "
                             f"({self.budget.summary()['examples']})")
        used = self.fp[self.valid].any(axis=0)
        self._dims = [0] + [i for i in range(1, self.fp.shape[1]) if used[i]]
        self.budget.check()

    # -- packing --
    def _plan_epoch(self, e: int) -> tuple[np.ndarray, np.ndarray]:
        order = self.valid[np.random.default_rng([self.seed, self.tag, 1 << 20, e]).permutation(len(self.valid))]
        return pack_epoch(order, self.fp, self.capacity, self.open_rows, self.shapes.seq_len, self._dims)

    def _epoch(self, e: int) -> tuple[np.ndarray, np.ndarray]:
        plan = self._plans.get(e)
        if plan is None:
            plan = self._plans[e] = self._plan_epoch(e)
            while len(self._plans) > self.KEEP_EPOCHS:
                self._plans.popitem(last=False)
        else:
            self._plans.move_to_end(e)
        return plan

    def row(self, j: int) -> np.ndarray:
        """Entries (record, piece; piece -1 = whole sample) of row j of the endless stream."""
        with self._lock:
            while self._starts[-1] <= j:
                e = len(self._starts) - 1
                if e < len(self._known_counts):
                    count = self._known_counts[e]
                else:
                    count = len(self._epoch(e)[1]) - 1
                    self._known_counts.append(count)
                    if self._counts_path and self.process_index == 0:
                        counts = list(self._known_counts)
                        shared_files.write_atomic(self._counts_path, lambda tmp: _write_json(tmp, counts))
                self._starts.append(self._starts[-1] + count)
            e = int(np.searchsorted(self._starts, j, side="right")) - 1
            entries, offsets = self._epoch(e)
            k = j - self._starts[e]
            return entries[offsets[k]:offsets[k + 1]]

    def rows_per_epoch(self) -> int:
        self.row(0)
        return self._starts[1]


def _write_json(path: str, obj: Any) -> None:
    with open(path, "w") as f:
        json.dump(obj, f)


def _save_index(path: str, fp: np.ndarray, errors: list) -> None:
    shared_files.write_atomic(path, lambda tmp: np.savez(tmp, fp=fp, errors=np.array(json.dumps(errors))))


def _load_index(path: str) -> tuple[np.ndarray, list]:
    with np.load(path) as z:
        return z["fp"], json.loads(str(z["errors"]))


def _remove(path: str) -> None:
    try:
        os.remove(path)
    except FileNotFoundError:
        pass


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
