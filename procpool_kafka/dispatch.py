"""Dispatcher: holds records ready to run and hands them to the pool in right-sized batches.

Records wait here, per partition, until the pool has room. Each pool task carries records of
one partition only (so revoking a partition can cancel whole tasks). The batch size adapts to
the handler's measured cost so that a task holds about ``TARGET_TASK_SECONDS`` of work: light
handlers get large batches (per-task IPC is amortised), heavy ones get one record per task
(no record waits behind a slow neighbour, and a revoke never waits for unstarted work).
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Callable, Iterable

from procpool_kafka.pool import WorkerPool
from procpool_kafka.records import Record, TopicPartition

TARGET_TASK_SECONDS = 0.02
#: tasks the pool may hold per worker before the dispatcher stops submitting (running + queued)
TASKS_AHEAD_PER_WORKER = 3


class BatchSizer:
    """Records per task: fixed, or adapted to an exponential average of handler durations."""

    def __init__(self, fixed: int | None, max_size: int, smoothing: float = 0.05) -> None:
        self._fixed = fixed
        self._max_size = max_size
        self._smoothing = smoothing
        self._average: float | None = None

    def observe(self, duration: float) -> None:
        if self._average is None:
            self._average = duration
        else:
            self._average += self._smoothing * (duration - self._average)

    def size(self) -> int:
        if self._fixed is not None:
            return self._fixed
        if self._average is None:
            return 1
        wanted = TARGET_TASK_SECONDS / max(self._average, 1e-6)
        return max(1, min(self._max_size, int(wanted)))


class Dispatcher:
    """Per-partition queues of records not yet submitted to the pool."""

    def __init__(self, pool: WorkerPool, sizer: BatchSizer, max_in_flight: int) -> None:
        self._pool = pool
        self._sizer = sizer
        # a full batch must be able to form for every task the pool may hold ahead
        self._largest_batch = max(1, max_in_flight // (pool.size * TASKS_AHEAD_PER_WORKER))
        self._ready: dict[TopicPartition, deque[Record]] = {}
        self._count = 0

    def enqueue(self, record: Record) -> None:
        self._ready.setdefault(record.topic_partition, deque()).append(record)
        self._count += 1

    def requeue_front(self, record: Record) -> None:
        """Put a record back to run next (a worker died while running it)."""
        self._ready.setdefault(record.topic_partition, deque()).appendleft(record)
        self._count += 1

    def drop(self, partitions: Iterable[TopicPartition]) -> list[Record]:
        """Remove and return the waiting records of ``partitions``."""
        dropped: list[Record] = []
        for tp in partitions:
            queue = self._ready.pop(tp, None)
            if queue:
                dropped.extend(queue)
        self._count -= len(dropped)
        return dropped

    def __len__(self) -> int:
        return self._count

    def fill(self, submitted: Callable[[int, list[Record]], None]) -> None:
        """Submit batches while the pool has room; ``submitted(task_id, records)`` for each.

        Full batches go out while the pool holds less than TASKS_AHEAD_PER_WORKER batches per
        worker. A partial batch goes out only when the pool is about to run dry (less than
        one batch per worker): otherwise records trickling in would become many tiny tasks,
        each paying the per-task cost.
        """
        batch_size = min(self._sizer.size(), self._largest_batch)
        workers = self._pool.size
        room = workers * TASKS_AHEAD_PER_WORKER * batch_size
        while self._count:
            outstanding = self._pool.outstanding()
            if outstanding >= room:
                return
            hungry = outstanding < workers * batch_size
            # share what is ready across the workers rather than one big batch for one worker
            size = min(batch_size, max(1, math.ceil(self._count / workers)))
            tp = self._next_partition(size, hungry)
            if tp is None:
                return
            queue = self._ready.pop(tp)
            take = min(size, len(queue))
            records = [queue.popleft() for _ in range(take)]
            self._count -= take
            if queue:
                self._ready[tp] = queue  # round-robin: this partition goes to the back
            submitted(self._pool.submit(records), records)

    def _next_partition(self, size: int, hungry: bool) -> TopicPartition | None:
        """The first partition (round-robin order) with a full batch, or any when hungry."""
        for tp, queue in self._ready.items():
            if hungry or len(queue) >= size:
                return tp
        return None
