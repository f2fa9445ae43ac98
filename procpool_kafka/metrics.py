"""Counters of one consumer run, and the summary a run returns."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field


@dataclass
class Counters:
    """What happened so far; updated by the consumer loop only (one thread)."""

    consumed: Counter[str] = field(default_factory=Counter)  # by topic
    succeeded: Counter[str] = field(default_factory=Counter)
    failed: Counter[str] = field(default_factory=Counter)  # handler failures, any outcome
    retried: Counter[str] = field(default_factory=Counter)
    dead_lettered: Counter[str] = field(default_factory=Counter)
    produce_failures: Counter[str] = field(default_factory=Counter)  # by destination topic
    unroutable: Counter[str] = field(default_factory=Counter)  # copies too large to produce
    worker_kills: Counter[str] = field(default_factory=Counter)  # by reason
    worker_crashes: int = 0
    rebalances: int = 0

    def summary(self, duration: float) -> RunSummary:
        ok = sum(self.succeeded.values())
        failed = sum(self.failed.values())
        return RunSummary(
            records_ok=ok,
            records_failed=failed,
            records_retried=sum(self.retried.values()),
            records_dead_lettered=sum(self.dead_lettered.values()),
            duration_s=duration,
            records_per_s=(ok + failed) / duration if duration > 0 else 0.0,
        )


@dataclass(frozen=True)
class RunSummary:
    """The outcome of ``ProcPoolConsumer.run()``."""

    records_ok: int
    records_failed: int
    records_retried: int
    records_dead_lettered: int
    duration_s: float
    records_per_s: float

    def describe(self) -> str:
        return (
            f"records ok={self.records_ok} failed={self.records_failed} "
            f"retried={self.records_retried} dead-lettered={self.records_dead_lettered} "
            f"in {self.duration_s:.1f}s ({self.records_per_s:.0f} records/s)"
        )
