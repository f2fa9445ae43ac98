"""DelaySchedule: retry copies read before their not-before time, held until they are due.

Pure (no Kafka import, no clock): the consumer passes the time, pauses the partition of a
held record and resumes it when :meth:`DelaySchedule.pop_due` hands the record back.
"""

from __future__ import annotations

import heapq
from collections.abc import Iterable

from procpool_kafka.records import Record, TopicPartition

__all__ = ["DelaySchedule"]


class DelaySchedule:
    """Records from retry topics that are not yet due, at most one held per partition.

    The consumer holds the head record of a retry-topic partition that is not
    due yet and pauses that partition (later records of it that were already
    fetched are discarded and fetched again after a seek on resume). When
    :meth:`pop_due` hands the record back, the consumer dispatches it and
    resumes the partition. On revoke or loss, :meth:`drop` forgets the
    partitions' records (the new owner reads them again from the committed
    offset).
    """

    def __init__(self) -> None:
        # heap of (due_ms, seq, tp); an entry is live while _held[tp] has the same seq
        self._heap: list[tuple[int, int, TopicPartition]] = []
        self._held: dict[TopicPartition, tuple[int, int, Record]] = {}
        self._seq = 0

    def hold(self, tp: TopicPartition, record: Record, due_ms: int) -> None:
        """Hold ``record`` of partition ``tp`` until ``due_ms`` (epoch ms)."""
        if tp in self._held:
            raise ValueError(f"{tp.topic}[{tp.partition}] already holds a record")
        if record.topic_partition != tp:
            raise ValueError(f"{record!r} is not a record of {tp.topic}[{tp.partition}]")
        self._seq += 1
        self._held[tp] = (due_ms, self._seq, record)
        heapq.heappush(self._heap, (due_ms, self._seq, tp))

    def holding(self, tp: TopicPartition) -> bool:
        """Whether partition ``tp`` has a record held (and so should stay paused)."""
        return tp in self._held

    def partitions(self) -> set[TopicPartition]:
        """The partitions holding a record."""
        return set(self._held)

    def _prune(self) -> None:
        """Pop stale heap entries (of dropped records) off the top."""
        while self._heap:
            _, seq, tp = self._heap[0]
            held = self._held.get(tp)
            if held is not None and held[1] == seq:
                return
            heapq.heappop(self._heap)

    def pop_due(self, now_ms: int) -> list[Record]:
        """Remove and return the records due at ``now_ms`` (due time <= now), earliest first."""
        due: list[Record] = []
        self._prune()
        while self._heap and self._heap[0][0] <= now_ms:
            _, _, tp = heapq.heappop(self._heap)
            due.append(self._held.pop(tp)[2])
            self._prune()
        return due

    def next_due_ms(self) -> int | None:
        """The earliest due time held, or None when nothing is held."""
        self._prune()
        return self._heap[0][0] if self._heap else None

    def drop(self, partitions: Iterable[TopicPartition]) -> list[Record]:
        """Forget the records held for ``partitions``; return them, earliest due first."""
        dropped = [self._held.pop(tp) for tp in set(partitions) if tp in self._held]
        dropped.sort(key=lambda entry: (entry[0], entry[1]))
        if len(self._heap) > 4 * len(self._held) + 16:  # keep stale entries bounded
            self._heap = [(d, s, tp) for tp, (d, s, _) in self._held.items()]
            heapq.heapify(self._heap)
        return [record for _, _, record in dropped]

    def __len__(self) -> int:
        return len(self._held)

    def __repr__(self) -> str:
        return f"DelaySchedule(held={len(self._held)}, next_due_ms={self.next_due_ms()})"
