"""EndTargets: what "until the end" means for a batch run. Pure; no Kafka import.

At the start of ``run(until_end=True)`` the consumer records, for every partition of every
subscribed topic (retry topics included), the end offset at that moment and where the group
starts from. The run is complete when every such partition has its commit position at (or
beyond) its end offset. Retry copies produced during the run extend the targets only when
the caller asks to wait for them.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from procpool_kafka.records import TopicPartition


@dataclass
class EndTargets:
    """End offsets to reach per partition, and which are reached."""

    _targets: dict[TopicPartition, int] = field(default_factory=dict)
    _reached: set[TopicPartition] = field(default_factory=set)
    total: int = 0  # records between the start positions and the targets

    def add(self, tp: TopicPartition, start: int, end: int) -> None:
        """Partition ``tp`` must be done from ``start`` up to ``end`` (exclusive)."""
        if end <= start:
            return
        previous = self._targets.get(tp)
        if previous is not None and previous >= end:
            return
        self.total += end - max(start, previous if previous is not None else start)
        self._targets[tp] = end
        self._reached.discard(tp)

    def reach(self, tp: TopicPartition, position: int | None) -> None:
        """The commit position of ``tp`` is now ``position``."""
        target = self._targets.get(tp)
        if target is not None and position is not None and position >= target:
            self._reached.add(tp)

    def update(self, position_of: Callable[[TopicPartition], int | None]) -> None:
        for tp in self.remaining():
            self.reach(tp, position_of(tp))

    def remaining(self) -> list[TopicPartition]:
        return [tp for tp in self._targets if tp not in self._reached]

    def items(self) -> Iterable[tuple[TopicPartition, int]]:
        """(partition, end offset) of every target."""
        return self._targets.items()

    @property
    def complete(self) -> bool:
        return len(self._reached) == len(self._targets)

    def partitions(self) -> Iterable[TopicPartition]:
        return self._targets.keys()
