"""Runner for the hand-written loop: confluent-kafka plus concurrent.futures.ProcessPoolExecutor.

What a team writes when it needs a CPU-bound handler off the consumer thread, done correctly:

* the pool starts before the Consumer (``forkserver``: never fork a process that runs
  librdkafka threads), one ``executor.submit`` per message, at most ``MAX_IN_FLIGHT``
  submitted and not finished (the loop stops consuming at the limit);
* completions come back through ``add_done_callback`` into a queue (``wait()`` over
  thousands of futures costs O(n) per call);
* per partition the received offsets in order and the finished ones; the commit position is
  the first offset not finished; asynchronous commits every second, synchronous ones on
  revoke and at the end; outcomes of a revoked partition are fenced (its state object is gone);
* on revoke (cooperative-sticky, like the others): unstarted futures are cancelled, running
  ones get ``revoke_timeout``, then the contiguous prefix is committed and the partition is
  forgotten. A ProcessPoolExecutor cannot kill one worker: a stuck handler keeps its worker
  (the member runs on with one worker fewer and cannot shut its pool down);
* retries without a retry topic: a failed message is submitted again ``retry_delay`` later,
  its offset stays uncommitted meanwhile (at-least-once), at most 3 attempts.
"""

from __future__ import annotations

import contextlib
import heapq
import logging
import multiprocessing
import queue
import sys
import threading
import time
from collections import deque
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures import wait as wait_futures
from dataclasses import dataclass, field
from typing import Any

import confluent_kafka
from confluent_kafka import Consumer, KafkaException, Message, TopicPartition

from benchmarks.peers.common import Contender, Spec, run_runner
from benchmarks.peers.workload import Job, handle_value

log = logging.getLogger("plain")

MAX_IN_FLIGHT = 1000
MAX_CONSUME = 500
COMMIT_INTERVAL_S = 1.0
MAX_ATTEMPTS = 3


def _noop() -> None:
    return None


@dataclass
class _Partition:
    """What one assigned partition has received and finished (one object per assignment)."""

    received: deque[int] = field(default_factory=deque)
    finished: set[int] = field(default_factory=set)
    futures: dict[int, Future[None]] = field(default_factory=dict)
    committed: int | None = None

    def position(self) -> int | None:
        """The offset to commit: the first received offset that is not finished."""
        last = None
        while self.received and self.received[0] in self.finished:
            last = self.received.popleft()
            self.finished.discard(last)
        if self.received:
            return self.received[0]
        return None if last is None else last + 1


Key = tuple[str, int]


class Plain:
    def __init__(self, spec: Spec) -> None:
        self._spec = spec
        self._job: Job = spec.job
        self._executor = ProcessPoolExecutor(
            spec.workers, mp_context=multiprocessing.get_context("forkserver")
        )
        self._consumer: Consumer | None = None
        self._parts: dict[Key, _Partition] = {}
        self._done: queue.SimpleQueue[tuple[Key, _Partition, int, Message, Future[None]]] = (
            queue.SimpleQueue()
        )
        self._retries: list[tuple[float, int, Key, Message]] = []
        self._attempts: dict[tuple[str, int, int], int] = {}
        self._in_flight = 0
        self._handled = 0
        self._stopping = threading.Event()
        self._last_commit = time.monotonic()
        self._sequence = 0

    # ------------------------------------------------------------------ lifecycle

    def open(self) -> None:
        # start the workers now, before librdkafka's threads exist
        for future in [self._executor.submit(_noop) for _ in range(self._spec.workers)]:
            future.result()
        self._consumer = Consumer(
            {
                "bootstrap.servers": self._spec.bootstrap,
                "group.id": self._spec.group,
                "enable.auto.commit": False,
                "auto.offset.reset": "earliest",
                "partition.assignment.strategy": "cooperative-sticky",
                **self._spec.kafka_config,
            }
        )
        self._consumer.subscribe(
            [self._spec.topic],
            on_assign=self._on_assign,
            on_revoke=self._on_revoke,
            on_lost=self._on_lost,
        )

    def stop(self) -> None:
        self._stopping.set()

    def handled(self) -> int:
        return self._handled

    def close(self) -> None:
        if self._consumer is not None:
            with contextlib.suppress(KafkaException, RuntimeError):
                self._consumer.close()
            self._consumer = None
        # a stuck worker would make shutdown(wait=True) hang forever
        self._executor.shutdown(wait=False, cancel_futures=True)

    # ------------------------------------------------------------------ the loop

    def run(self) -> None:
        consumer = self._consumer
        assert consumer is not None
        while not self._stopping.is_set():
            self._collect(0.0)
            self._resubmit_due()
            self._commit_if_due()
            capacity = MAX_IN_FLIGHT - self._in_flight
            if capacity <= 0:
                self._collect(0.05)
                continue
            timeout = 0.01 if self._in_flight else 0.1
            for message in consumer.consume(min(capacity, MAX_CONSUME), timeout=timeout):
                if message.error() is not None:
                    error = message.error()
                    if error is not None and error.fatal():
                        raise KafkaException(error)
                    continue
                self._receive(message)
        self._shutdown()

    def _receive(self, message: Message) -> None:
        topic, partition, offset = message.topic(), message.partition(), message.offset()
        if topic is None or partition is None or offset is None:
            return
        key = (topic, partition)
        part = self._parts.get(key)
        if part is None:  # not (or no longer) ours
            return
        part.received.append(offset)
        self._submit(key, part, message)

    def _submit(self, key: Key, part: _Partition, message: Message) -> None:
        offset = message.offset()
        assert offset is not None
        future = self._executor.submit(handle_value, self._job, message.value(), offset)
        part.futures[offset] = future
        self._in_flight += 1
        done = self._done
        future.add_done_callback(lambda f: done.put((key, part, offset, message, f)))

    def _collect(self, timeout: float) -> None:
        """Process finished futures; wait up to ``timeout`` for the first one."""
        try:
            item = self._done.get(timeout=timeout) if timeout > 0 else self._done.get_nowait()
        except queue.Empty:
            return
        while True:
            self._finished(*item)
            try:
                item = self._done.get_nowait()
            except queue.Empty:
                return

    def _finished(
        self, key: Key, part: _Partition, offset: int, message: Message, future: Future[None]
    ) -> None:
        self._in_flight -= 1
        if self._parts.get(key) is not part or part.futures.get(offset) is not future:
            return  # revoked meanwhile: fenced
        del part.futures[offset]
        if future.cancelled():
            return
        if future.exception() is None:
            self._handled += 1
            part.finished.add(offset)
            return
        attempt = self._attempts.get((*key, offset), 1)
        if attempt >= MAX_ATTEMPTS:
            log.error("%s[%d]@%d failed %d times; giving up", *key, offset, attempt)
            part.finished.add(offset)
            return
        self._attempts[(*key, offset)] = attempt + 1
        self._sequence += 1
        due = time.monotonic() + self._spec.retry_delay_s
        heapq.heappush(self._retries, (due, self._sequence, key, message))

    def _resubmit_due(self) -> None:
        now = time.monotonic()
        while self._retries and self._retries[0][0] <= now:
            _due, _seq, key, message = heapq.heappop(self._retries)
            part = self._parts.get(key)
            if part is not None:
                self._submit(key, part, message)

    # ------------------------------------------------------------------ commits

    def _positions(self, keys: Any) -> list[TopicPartition]:
        offsets = []
        for key in keys:
            part = self._parts.get(key)
            if part is None:
                continue
            position = part.position()
            if position is not None and position != part.committed:
                offsets.append(TopicPartition(key[0], key[1], position))
        return offsets

    def _commit_if_due(self) -> None:
        now = time.monotonic()
        if now - self._last_commit < COMMIT_INTERVAL_S:
            return
        self._last_commit = now
        self._commit(list(self._parts), asynchronous=True)

    def _commit(self, keys: list[Key], asynchronous: bool) -> None:
        consumer = self._consumer
        offsets = self._positions(keys)
        if consumer is None or not offsets:
            return
        try:
            if asynchronous:
                consumer.commit(offsets=offsets, asynchronous=True)
            else:
                consumer.commit(offsets=offsets, asynchronous=False)
        except KafkaException as error:
            log.warning("commit failed: %s", error)
            return
        for tp in offsets:
            part = self._parts.get((tp.topic, tp.partition))
            if part is not None:
                part.committed = tp.offset

    # ------------------------------------------------------------------ rebalancing

    def _on_assign(self, _consumer: Consumer, partitions: list[TopicPartition]) -> None:
        for tp in partitions:
            self._parts[(tp.topic, tp.partition)] = _Partition()

    def _drain(self, keys: list[Key], timeout: float) -> None:
        """Cancel unstarted work of ``keys``, wait for running work up to ``timeout``."""
        running: list[Future[None]] = []
        for key in keys:
            part = self._parts.get(key)
            if part is None:
                continue
            self._retries = [r for r in self._retries if r[2] != key]
            heapq.heapify(self._retries)
            running.extend(f for f in part.futures.values() if not f.cancel())
        if running:
            wait_futures(running, timeout=timeout)
        for key in keys:  # outcomes may finish before their callbacks ran: read the futures
            part = self._parts.get(key)
            if part is None:
                continue
            for offset, future in list(part.futures.items()):
                if future.done() and not future.cancelled() and future.exception() is None:
                    part.finished.add(offset)

    def _on_revoke(self, _consumer: Consumer, partitions: list[TopicPartition]) -> None:
        keys = [(tp.topic, tp.partition) for tp in partitions]
        self._drain(keys, self._spec.revoke_timeout_s)
        self._commit(keys, asynchronous=False)
        for key in keys:
            self._parts.pop(key, None)

    def _on_lost(self, _consumer: Consumer, partitions: list[TopicPartition]) -> None:
        for tp in partitions:
            self._parts.pop((tp.topic, tp.partition), None)

    def _shutdown(self) -> None:
        keys = list(self._parts)
        self._drain(keys, self._spec.revoke_timeout_s)
        self._collect(0.0)
        self._commit(keys, asynchronous=False)


def build(spec: Spec) -> Contender:
    return Plain(spec)


def versions() -> dict[str, str]:
    return {
        "confluent_kafka": str(getattr(confluent_kafka, "__version__", "")),
        "librdkafka": str(confluent_kafka.libversion()[0]),
    }


if __name__ == "__main__":
    run_runner(build, versions)
    sys.exit(1)
