"""Bad input handling: skip, count, report; stop when the error budget is exceeded.

A record that cannot be used (corrupt media, an over-long sample, a missing or
wrong-typed field, a placeholder/media count mismatch) raises `DataError` inside the
pipeline. The pipeline catches it, skips the record, and reports it to an `ErrorBudget`,
which logs the first few records of every kind with their ids and keeps counts. When the
bad records exceed `config.data.errors.max_fraction` of the records seen (after
`min_samples` records) or `max_count` in total, the budget raises
`DataErrorBudgetExceeded`, whose message lists the counts, example record ids and the
config keys to change.

Error kinds (stable strings, used as metric names):
  corrupt_media   media bytes that do not decode (image, audio, video frame)
  over_long       a sample that can never fit a row (tokens or a media buffer budget)
  missing_field   a field the task format needs is absent or empty
  wrong_type      a field of the wrong type (e.g. a number where text is expected)
  count_mismatch  the decoded media gives a different token count than its placeholders
  invalid         anything else a format rejects (e.g. too little text to split)
"""

from __future__ import annotations

import logging
import threading
from typing import Any, Mapping, Sequence

log = logging.getLogger("omni_jax.data")

KINDS = ("corrupt_media", "over_long", "missing_field", "wrong_type", "count_mismatch", "invalid")


class DataError(ValueError):
    """A record the pipeline must skip. `kind` is one of KINDS."""

    def __init__(self, kind: str, message: str, record_id: str = ""):
        if kind not in KINDS:
            raise ValueError(f"unknown data error kind {kind!r}; use one of {KINDS}")
        self.kind, self.message, self.record_id = kind, message, record_id
        super().__init__(f"[{kind}] {record_id + ': ' if record_id else ''}{message}")

    def with_record(self, record_id: str) -> "DataError":
        return self if self.record_id else DataError(self.kind, self.message, record_id)


class DataErrorBudgetExceeded(RuntimeError):
    pass


def report(seen: int, errors: Sequence[tuple[str, DataError]]) -> dict[str, Any]:
    """One process's tally of one batch as JSON ({seen, events: [component, kind, id, message]}):
    what processes exchange so that the budget counts every process's records."""
    return {"seen": int(seen), "events": [[c, e.kind, e.record_id, e.message[:500]] for c, e in errors]}


class ErrorBudget:
    """Counts seen and bad records; raises when the configured budget is exceeded.

    `max_fraction` applies once `min_samples` records were seen (so one bad record among
    the first ten does not stop a run); `max_count` applies always (0 = unlimited)."""

    def __init__(self, max_fraction: float = 0.01, max_count: int = 0, min_samples: int = 100,
                 log_first: int = 5, where: str = "config.data.errors"):
        if not 0.0 <= max_fraction <= 1.0:
            raise ValueError(f"{where}.max_fraction must be in [0, 1], got {max_fraction}")
        self.max_fraction, self.max_count = float(max_fraction), int(max_count)
        self.min_samples, self.log_first, self.where = int(min_samples), int(log_first), where
        self.seen = 0
        self.bad: dict[str, int] = {}
        self.examples: dict[str, list[str]] = {}
        self._lock = threading.Lock()

    @classmethod
    def from_config(cls, c: Mapping[str, Any] | None, where: str = "config.data.errors") -> "ErrorBudget":
        c = dict(c or {})
        allowed = {"max_fraction", "max_count", "min_samples", "log_first"}
        unknown = sorted(set(c) - allowed)
        if unknown:
            raise ValueError(f"{where}: unknown key(s) {unknown}; allowed: {sorted(allowed)}")
        return cls(where=where, **c)

    @property
    def total_bad(self) -> int:
        return sum(self.bad.values())

    def add_seen(self, n: int = 1) -> None:
        with self._lock:
            self.seen += int(n)

    def record(self, err: DataError, *, component: str = "") -> None:
        """Counts one skipped record (and logs the first few of each kind)."""
        with self._lock:
            self.bad[err.kind] = self.bad.get(err.kind, 0) + 1
            ex = self.examples.setdefault(err.kind, [])
            where = f"{component}:{err.record_id}" if component else err.record_id
            if len(ex) < 5:
                ex.append(f"{where} ({err.message})")
            if self.bad[err.kind] <= self.log_first:
                log.warning("skipped record %s [%s]: %s", where, err.kind, err.message)

    def add_reports(self, reports: Sequence[Mapping[str, Any]]) -> None:
        """Adds the `report`s of one batch from every process (in process order, so every process
        ends with the same tally and examples), then checks the budget: with the same reports every
        process stops at the same step with the same message."""
        for r in reports:
            self.add_seen(int(r["seen"]))
            for comp, kind, rid, msg in r["events"]:
                self.record(DataError(kind, msg, rid), component=comp)
        self.check()

    def summary(self) -> dict[str, Any]:
        with self._lock:
            return {"seen": self.seen, "bad": dict(self.bad), "examples": {k: list(v) for k, v in self.examples.items()}}

    def state(self) -> dict[str, Any]:
        with self._lock:
            return {"seen": self.seen, "bad": dict(self.bad)}

    def restore(self, state: Mapping[str, Any] | None) -> None:
        with self._lock:
            state = dict(state or {})
            self.seen = int(state.get("seen", 0))
            self.bad = {str(k): int(v) for k, v in dict(state.get("bad", {})).items()}

    def exceeded(self) -> bool:
        bad = self.total_bad
        if self.max_count and bad > self.max_count:
            return True
        return self.seen >= self.min_samples and bad > self.max_fraction * self.seen

    def check(self) -> None:
        if not self.exceeded():
            return
        bad, seen = self.total_bad, max(self.seen, 1)
        lines = [f"data errors exceeded the budget: {bad} bad record(s) of {self.seen} seen "
                 f"({100.0 * bad / seen:.2f}%; {self.where}.max_fraction={self.max_fraction}, "
                 f"max_count={self.max_count or 'unlimited'})."]
        for kind in sorted(self.bad):
            lines.append(f"  {kind}: {self.bad[kind]}, e.g. " + "; ".join(self.examples.get(kind, [])[:3]))
        lines.append(f"Fix or remove those records, or raise {self.where}.max_fraction / {self.where}.max_count.")
        raise DataErrorBudgetExceeded("\n".join(lines))
