"""Counters of one consumer run, the snapshot the metrics endpoint reads, the run summary.

The consumer loop is the only writer of :class:`Counters`. About once a second it publishes
an immutable :class:`Snapshot`; the metrics and health endpoint (another thread) reads only
snapshots, so it never races the loop.
"""

from __future__ import annotations

import bisect
from collections import Counter
from dataclasses import dataclass, field

#: upper bounds (seconds) of the handler-duration histogram buckets
DURATION_BUCKETS: tuple[float, ...] = (
    0.0001,
    0.0005,
    0.001,
    0.005,
    0.01,
    0.05,
    0.1,
    0.5,
    1.0,
    5.0,
    10.0,
    60.0,
    300.0,
)


@dataclass
class DurationHistogram:
    """Handler durations in cumulative-free buckets (the last bucket is +Inf)."""

    counts: list[int] = field(default_factory=lambda: [0] * (len(DURATION_BUCKETS) + 1))
    total: float = 0.0

    def observe(self, seconds: float) -> None:
        self.counts[bisect.bisect_left(DURATION_BUCKETS, seconds)] += 1
        self.total += seconds

    def copy(self) -> DurationHistogram:
        return DurationHistogram(list(self.counts), self.total)


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
    durations: DurationHistogram = field(default_factory=DurationHistogram)

    def copy(self) -> Counters:
        """An independent copy (the totals at one moment, e.g. when a run starts)."""
        return Counters(
            consumed=Counter(self.consumed),
            succeeded=Counter(self.succeeded),
            failed=Counter(self.failed),
            retried=Counter(self.retried),
            dead_lettered=Counter(self.dead_lettered),
            produce_failures=Counter(self.produce_failures),
            unroutable=Counter(self.unroutable),
            worker_kills=Counter(self.worker_kills),
            worker_crashes=self.worker_crashes,
            rebalances=self.rebalances,
            durations=self.durations.copy(),
        )

    def summary(self, duration: float, since: Counters | None = None) -> RunSummary:
        """What happened since ``since`` (the counters at the start of a run), or in all."""
        base = since if since is not None else Counters()

        def total(now: Counter[str], then: Counter[str]) -> int:
            return sum(now.values()) - sum(then.values())

        ok = total(self.succeeded, base.succeeded)
        failed = total(self.failed, base.failed)
        return RunSummary(
            records_ok=ok,
            records_failed=failed,
            records_retried=total(self.retried, base.retried),
            records_dead_lettered=total(self.dead_lettered, base.dead_lettered),
            duration_s=duration,
            records_per_s=(ok + failed) / duration if duration > 0 else 0.0,
            worker_crashes=self.worker_crashes - base.worker_crashes,
        )


def format_rate(per_second: float) -> str:
    """A rate with the digits that matter: ``1234``, ``12.3``, ``0.22``, ``0.0031``."""
    if per_second >= 100 or per_second == 0:
        return f"{per_second:.0f}"
    return f"{per_second:.2g}" if per_second < 1 else f"{per_second:.3g}"


@dataclass(frozen=True)
class EndCommit:
    """What a batch run found committed at its end: ``short`` lists partitions below it."""

    partitions: int
    short: tuple[str, ...] = ()

    @property
    def complete(self) -> bool:
        return not self.short

    def describe(self) -> str:
        reached = self.partitions - len(self.short)
        text = f"{reached}/{self.partitions} partitions committed to the end"
        return text if self.complete else f"{text}; {'; '.join(self.short)}"


@dataclass(frozen=True)
class RunSummary:
    """The outcome of ``ProcPoolConsumer.run()``."""

    records_ok: int
    records_failed: int
    records_retried: int
    records_dead_lettered: int
    duration_s: float
    #: records handled (ok + failed attempts) per second of the run
    records_per_s: float
    #: worker processes that died while running a record (not counting kills we ordered)
    worker_crashes: int = 0
    #: batch runs that reached the end: what the group committed of it (else None)
    end_commit: EndCommit | None = None

    def describe(self) -> str:
        committed = "" if self.end_commit is None else f"; {self.end_commit.describe()}"
        return (
            f"records ok={self.records_ok} failed={self.records_failed} "
            f"retried={self.records_retried} dead-lettered={self.records_dead_lettered} "
            f"in {self.duration_s:.1f}s ({format_rate(self.records_per_s)} records/s){committed}"
        )


@dataclass(frozen=True)
class PartitionState:
    """One assigned partition as the metrics endpoint shows it."""

    topic: str
    partition: int
    committed: int | None  # last offset committed by this consumer (next to read), if any
    position: int | None  # commit position reached (last contiguous done + 1), if any
    high_watermark: int | None  # end offset as last seen from the broker, if known
    paused: bool

    @property
    def lag(self) -> int | None:
        """Records between what is done and the end of the partition."""
        if self.high_watermark is None:
            return None
        done_up_to = self.position if self.position is not None else self.committed
        if done_up_to is None:
            return None
        return max(0, self.high_watermark - done_up_to)


@dataclass(frozen=True)
class Snapshot:
    """The consumer's state at one moment; published by the loop, read by other threads."""

    taken_at: float  # time.time()
    consumed: dict[str, int]  # by topic
    succeeded: dict[str, int]
    failed: dict[str, int]
    retried: dict[str, int]
    dead_lettered: dict[str, int]
    in_flight: int
    partitions: tuple[PartitionState, ...]
    worker_restarts: dict[str, int]  # by reason
    worker_kills: dict[str, int]  # by reason
    rebalances: int
    durations: DurationHistogram
    workers_configured: int
    workers_alive: int
    subscribed: bool  # subscribed and polling (assigned or waiting for an assignment)
    broker_reachable: bool  # the cluster answered recently
    running: bool  # run() is in its loop
    producer_ok: bool = True  # the retry/dead-letter producer has no unrecovered fatal error
