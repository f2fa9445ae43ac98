"""OffsetTracker: which offsets may be committed, per partition. Pure; no Kafka import.

Per partition it keeps the offsets this consumer received, in ascending order, and which of
them are done (handled, or their retry/dead-letter copy acknowledged, or skipped by policy).
The commit position is the last contiguous done offset + 1, where "contiguous" runs over the
*received* offsets: Kafka offsets may have gaps (compaction, transaction markers), and an
offset this consumer never received can never hold back a commit.

    received: 10 11 12 14 15        done: 10 11 14
    position: 12  (12 is the first received offset not done)

Invariant 1 of docs/architecture.md: the position never passes an offset that is received and
not done.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field

from procpool_kafka.records import TopicPartition


@dataclass
class _PartitionOffsets:
    """Received-but-not-yet-contiguous offsets of one partition."""

    pending: deque[int] = field(default_factory=deque)  # received, ascending, head not done
    pending_set: set[int] = field(default_factory=set)  # the same offsets, for membership
    done: set[int] = field(default_factory=set)  # done offsets still in `pending`
    position: int | None = None  # last contiguous done + 1; None until something is done
    committed: int | None = None  # last position handed out by commits_due()/mark_committed
    last_received: int = -1

    def advance(self) -> None:
        while self.pending and self.pending[0] in self.done:
            offset = self.pending.popleft()
            self.pending_set.discard(offset)
            self.done.discard(offset)
            self.position = offset + 1


class OffsetTracker:
    """Tracks received and done offsets per partition and yields commit positions."""

    def __init__(self) -> None:
        self._partitions: dict[TopicPartition, _PartitionOffsets] = {}

    def received(self, tp: TopicPartition, offset: int) -> None:
        """Record that ``offset`` of ``tp`` was received and will be worked on.

        Offsets arrive in ascending order per partition; an offset at or below the last one
        received (a re-fetch after a seek back) is already tracked and is ignored.
        """
        state = self._partitions.get(tp)
        if state is None:
            state = self._partitions[tp] = _PartitionOffsets()
        if offset <= state.last_received:
            return
        state.last_received = offset
        state.pending.append(offset)
        state.pending_set.add(offset)

    def done(self, tp: TopicPartition, offset: int) -> None:
        """Mark a received offset done; unknown partitions or offsets are ignored (fenced)."""
        state = self._partitions.get(tp)
        if state is None or offset not in state.pending_set:
            return
        state.done.add(offset)
        state.advance()

    def position(self, tp: TopicPartition) -> int | None:
        """The offset to commit for ``tp`` (last contiguous done + 1), or None if none is done."""
        state = self._partitions.get(tp)
        return None if state is None else state.position

    def committed(self, tp: TopicPartition) -> int | None:
        """The last position handed to Kafka for ``tp`` (see mark_committed), or None."""
        state = self._partitions.get(tp)
        return None if state is None else state.committed

    def pending_count(self, tp: TopicPartition) -> int:
        """Received offsets of ``tp`` not yet covered by the commit position."""
        state = self._partitions.get(tp)
        return 0 if state is None else len(state.pending)

    def first_pending(self, tp: TopicPartition) -> int | None:
        """The lowest received offset of ``tp`` that is not done, or None."""
        state = self._partitions.get(tp)
        return state.pending[0] if state is not None and state.pending else None

    def advance_idle(self, tp: TopicPartition, position: int) -> None:
        """Nothing received of ``tp`` is pending and the client's fetch position is
        ``position``: offsets below it that were never received (transaction markers,
        aborted records) cannot hold the commit back, so the position may move there."""
        state = self._partitions.get(tp)
        if state is None:
            state = self._partitions[tp] = _PartitionOffsets()
        if state.pending or position <= state.last_received:
            return
        if state.position is None or position > state.position:
            state.position = position

    def commits_due(
        self, partitions: Iterable[TopicPartition] | None = None
    ) -> dict[TopicPartition, int]:
        """Positions that moved since they were last marked committed."""
        wanted = self._partitions.keys() if partitions is None else partitions
        due = {}
        for tp in wanted:
            state = self._partitions.get(tp)
            if state is not None and state.position not in (None, state.committed):
                due[tp] = state.position
        return due

    def mark_committed(self, tp: TopicPartition, position: int) -> None:
        """Remember that ``position`` was handed to Kafka for ``tp``."""
        state = self._partitions.get(tp)
        if state is not None:
            state.committed = position

    def commit_failed(self, tp: TopicPartition) -> None:
        """A commit of ``tp`` did not land: report its position as due again."""
        state = self._partitions.get(tp)
        if state is not None:
            state.committed = None

    def forget(self, tp: TopicPartition) -> None:
        """Drop all state of ``tp`` (revoked or lost); later calls for it are ignored."""
        self._partitions.pop(tp, None)
