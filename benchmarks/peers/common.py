"""What every runner shares: the spec it gets, the monitor that times it, the JSON it prints.

A runner is ``python -m benchmarks.peers.<contender>`` started by the orchestrator
(:mod:`benchmarks.side_by_side`) with the contender's own interpreter and venv, the repository
root as working directory, and a JSON :class:`Spec` on stdin's first line. It builds the
contender's consumer and pool (``open``), runs the contender's loop in the main thread
(arroyo installs a SIGCHLD handler, which only the main thread may do) and, in a monitor
thread:

* samples the contender's own count of handled records about every 2 ms (the first and the
  last handled record, the middle 80 % of completions);
* when the count reaches ``expected``, polls the group's committed offsets (a probe consumer
  with the same group id that never subscribes) until they equal the end offsets;
* samples the RSS of this process (the consumer process) every ``rss_interval`` seconds;
* takes CPU snapshots (this process, its children = the pool, the broker, the machine) at the
  first and the last handled record;
* stops the contender when everything is committed, at ``deadline_s`` after the first poll,
  or when the orchestrator writes ``stop`` on stdin.

It prints JSON lines on stdout: events (``{"event": "polling", "wall": ...}``) as they
happen, and ``{"event": "result", ...}`` last. Standard library, psutil and confluent-kafka
only: this module runs in every contender's venv (Python 3.11 and 3.13).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import platform
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any, Protocol

import psutil
from confluent_kafka import Consumer, KafkaException, TopicPartition

from benchmarks.peers.workload import Job

#: seconds between samples of the handled count (Spec.sample_interval_s by default)
SAMPLE_INTERVAL_S = 0.002
#: seconds between look-ups of the committed offsets once every record was handled
COMMIT_CHECK_INTERVAL_S = 0.05
#: when the commits have not reached the end this long after the last handled record, stop
#: the contender (a graceful stop commits what is done) and look once more
COMMIT_GRACE_S = 5.0


@dataclass
class Spec:
    """What one runner is asked to do (sent as JSON by the orchestrator)."""

    contender: str
    bootstrap: str
    topic: str
    group: str
    workers: int
    job: Job
    #: successes to wait for before checking commits; 0: run until ``stop`` on stdin
    expected: int = 0
    #: end offsets of ``topic`` by partition (the commits to wait for)
    end_offsets: dict[int, int] = field(default_factory=dict)
    #: retry topic (created by the orchestrator), whose commits must reach its end too
    retry_topic: str | None = None
    retry_delay_s: float = 1.0
    #: deadline for running work of revoked partitions (each contender's equivalent setting)
    revoke_timeout_s: float = 5.0
    #: give up this long after the first poll
    deadline_s: float = 600.0
    rss_interval_s: float = 0.5
    #: seconds between samples of the handled count: the sampling thread shares the
    #: consumer process's CPU and GIL, so a slow handler is sampled less often
    sample_interval_s: float = SAMPLE_INTERVAL_S
    broker_pid: int | None = None
    #: contender-specific settings (arroyo's max_batch_size, ...)
    settings: dict[str, Any] = field(default_factory=dict)
    #: librdkafka consumer settings every contender passes through (e.g. heartbeat.interval.ms)
    kafka_config: dict[str, Any] = field(default_factory=dict)

    @staticmethod
    def from_json(text: str) -> Spec:
        raw = json.loads(text)
        raw["job"] = Job(**raw["job"])
        raw["end_offsets"] = {int(p): int(o) for p, o in raw.get("end_offsets", {}).items()}
        return Spec(**raw)

    def to_json(self) -> str:
        return json.dumps(asdict(self))


class Contender(Protocol):
    """One contender's consumer, as a runner drives it."""

    def open(self) -> None:
        """Build the consumer and the pool; subscribe if the library does it before polling."""

    def run(self) -> None:
        """The consumer loop, in the main thread, until :meth:`stop` (or an error)."""

    def stop(self) -> None:
        """Ask :meth:`run` to return; called from another thread."""

    def handled(self) -> int:
        """Records handled successfully so far, as the consumer process knows them."""

    def close(self) -> None:
        """Release what :meth:`run` left (pool, consumer); may be called after a failure."""


def emit(event: str, **fields: Any) -> None:
    """One JSON line on stdout for the orchestrator."""
    sys.stdout.write(json.dumps({"event": event, "wall": time.time(), **fields}) + "\n")
    sys.stdout.flush()


def _tree_cpu(process: psutil.Process) -> tuple[float, float]:
    """(this process, its live descendants) user+system CPU seconds."""
    own = process.cpu_times()
    children = 0.0
    for child in process.children(recursive=True):
        with contextlib.suppress(psutil.Error):
            times = child.cpu_times()
            children += times.user + times.system
    return own.user + own.system, children


def _machine_busy() -> tuple[float, float]:
    t = psutil.cpu_times()
    busy = t.user + t.nice + t.system + getattr(t, "irq", 0.0) + getattr(t, "softirq", 0.0)
    return busy, getattr(t, "steal", 0.0)


@dataclass
class CpuSnapshot:
    at: float
    consumer: float
    monitor: float
    children: float
    broker: float | None
    machine: float
    steal: float


@dataclass
class Monitor:
    """Times a contender from a thread beside its loop (see the module docstring)."""

    spec: Spec
    contender: Contender
    launched: float = field(default_factory=time.perf_counter)
    polling: float | None = None
    first: float | None = None
    last: float | None = None
    committed_at: float | None = None
    samples: list[tuple[float, int]] = field(default_factory=list)
    rss: list[tuple[float, int]] = field(default_factory=list)
    cpu_first: CpuSnapshot | None = None
    cpu_last: CpuSnapshot | None = None
    committed: dict[str, dict[int, int]] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    stop_reason: str | None = None
    _finished: threading.Event = field(default_factory=threading.Event)
    _process: psutil.Process = field(default_factory=psutil.Process)

    def __post_init__(self) -> None:
        self._broker = None
        if self.spec.broker_pid:
            with contextlib.suppress(psutil.Error):
                self._broker = psutil.Process(self.spec.broker_pid)
        self._probe: Consumer | None = None
        self._watcher: threading.Thread | None = None

    # ------------------------------------------------------------------ clocks

    def now(self) -> float:
        """Seconds since launch."""
        return time.perf_counter() - self.launched

    def _cpu(self, at: float) -> CpuSnapshot:
        consumer, children = _tree_cpu(self._process)
        broker = None
        if self._broker is not None:
            with contextlib.suppress(psutil.Error):
                times = self._broker.cpu_times()
                broker = times.user + times.system
        machine, steal = _machine_busy()
        return CpuSnapshot(
            at=at,
            consumer=consumer,
            monitor=time.thread_time(),
            children=children,
            broker=broker,
            machine=machine,
            steal=steal,
        )

    def _rss(self) -> int:
        return int(self._process.memory_info().rss)

    # ------------------------------------------------------------------ the thread

    def start(self) -> None:
        self.rss.append((self.now(), self._rss()))
        threading.Thread(target=self._stdin, name="stdin", daemon=True).start()
        self._watcher = threading.Thread(target=self._watch, name="monitor", daemon=True)
        self._watcher.start()

    def mark_polling(self) -> None:
        """Call just before the contender's loop starts (its first poll)."""
        self.polling = self.now()
        self.rss.append((self.polling, self._rss()))
        emit("polling")

    def finish(self) -> None:
        """The contender's loop returned: stop sampling; one last look at the commits."""
        self._finished.set()
        if self._watcher is not None:
            self._watcher.join(15)
        if self.last is not None and self.committed_at is None and self.all_committed():
            self.committed_at = self.now()
            self.notes.append("everything committed only when it stopped")

    def _stdin(self) -> None:
        # os.read, not sys.stdin: a pool that forks (ProcessPoolExecutor's default) closes
        # sys.stdin in the child, which deadlocks on the buffer lock a reading thread holds
        while True:
            chunk = os.read(0, 4096)
            if not chunk or b"stop" in chunk:
                self._stop("asked to stop" if chunk else "stdin closed")
                return

    def _stop(self, reason: str) -> None:
        if self.stop_reason is None:
            self.stop_reason = reason
        with contextlib.suppress(Exception):
            self.contender.stop()

    def _watch(self) -> None:
        spec = self.spec
        next_rss = 0.0
        next_commit_check = 0.0
        previous = 0
        while not self._finished.is_set():
            now = self.now()
            count = self.contender.handled()
            if count != previous:
                previous = count
                self.samples.append((now, count))
                if self.first is None:
                    self.first = now
                    self.cpu_first = self._cpu(now)
                    emit("first_handled")
                if spec.expected and count >= spec.expected and self.last is None:
                    self.last = now
                    self.cpu_last = self._cpu(now)
                    emit("all_handled")
            if now >= next_rss:
                next_rss = now + spec.rss_interval_s
                with contextlib.suppress(psutil.Error):
                    self.rss.append((now, self._rss()))
            if self.last is not None and self.committed_at is None and now >= next_commit_check:
                next_commit_check = now + COMMIT_CHECK_INTERVAL_S
                if self.all_committed():
                    self.committed_at = self.now()
                    emit("all_committed")
                    self._stop("all committed")
                elif now - self.last > COMMIT_GRACE_S and self.stop_reason is None:
                    self.notes.append(
                        f"commits not at the end {COMMIT_GRACE_S:.0f}s after the last handled "
                        "record; stopped it to make it commit"
                    )
                    self._stop("commits stalled")
            if (
                self.polling is not None
                and now - self.polling > spec.deadline_s
                and self.stop_reason is None
            ):
                self.notes.append(
                    f"deadline: {count}/{spec.expected} handled after {spec.deadline_s:.0f}s"
                )
                self._stop("deadline")
            time.sleep(spec.sample_interval_s)

    # ------------------------------------------------------------------ commits

    def probe(self) -> Consumer:
        if self._probe is None:
            self._probe = Consumer(
                {"bootstrap.servers": self.spec.bootstrap, "group.id": self.spec.group}
            )
        return self._probe

    def read_committed(self) -> dict[str, dict[int, int]]:
        """The group's committed offsets of the topic (and retry topic) by partition."""
        probe = self.probe()
        topics = [self.spec.topic] + ([self.spec.retry_topic] if self.spec.retry_topic else [])
        result: dict[str, dict[int, int]] = {}
        for topic in topics:
            meta = probe.list_topics(topic, timeout=10).topics[topic]
            wanted = [TopicPartition(topic, p) for p in sorted(meta.partitions)]
            result[topic] = {tp.partition: tp.offset for tp in probe.committed(wanted, timeout=10)}
        return result

    def retry_end_offsets(self) -> dict[int, int]:
        topic = self.spec.retry_topic
        if topic is None:
            return {}
        probe = self.probe()
        meta = probe.list_topics(topic, timeout=10).topics[topic]
        ends = {}
        for p in sorted(meta.partitions):
            _low, high = probe.get_watermark_offsets(
                TopicPartition(topic, p), timeout=10, cached=False
            )
            ends[p] = high
        return ends

    def all_committed(self) -> bool:
        try:
            committed = self.read_committed()
        except KafkaException:
            return False
        self.committed = committed
        base = committed.get(self.spec.topic, {})
        if any(base.get(p, -1) < end for p, end in self.spec.end_offsets.items() if end > 0):
            return False
        if self.spec.retry_topic:
            retry = committed.get(self.spec.retry_topic, {})
            try:
                ends = self.retry_end_offsets()
            except KafkaException:
                return False
            return all(retry.get(p, -1) >= end for p, end in ends.items() if end > 0)
        return True

    # ------------------------------------------------------------------ result

    def middle_rate(self, low: float = 0.1, high: float = 0.9) -> float | None:
        total = self.spec.expected
        if not total:
            return None

        def reaching(count: float) -> float | None:
            for at, seen in self.samples:
                if seen >= count:
                    return at
            return None

        start, end = reaching(total * low), reaching(total * high)
        if start is None or end is None or end <= start:
            return None
        return total * (high - low) / (end - start)

    def cpu_window(self) -> dict[str, Any] | None:
        a, b = self.cpu_first, self.cpu_last
        if a is None or b is None:
            return None
        wall = b.at - a.at
        consumer = b.consumer - a.consumer
        children = b.children - a.children
        broker = b.broker - a.broker if a.broker is not None and b.broker is not None else None
        machine = b.machine - a.machine
        return {
            "wall_s": wall,
            "capacity_s": (os.cpu_count() or 1) * wall,
            "consumer_s": consumer,
            "monitor_s": b.monitor - a.monitor,
            "workers_s": children,
            "broker_s": broker,
            "others_s": max(0.0, machine - consumer - children - (broker or 0.0)),
            "steal_s": b.steal - a.steal,
        }

    def result(self, error: str | None, versions: dict[str, str]) -> dict[str, Any]:
        with contextlib.suppress(psutil.Error):
            self.rss.append((self.now(), self._rss()))
        if not self.committed:
            with contextlib.suppress(KafkaException):
                self.committed = self.read_committed()
        expected = self.spec.expected
        handled = self.contender.handled()
        start_rss = self.rss[1][1] if len(self.rss) > 1 else self.rss[0][1]
        return {
            "contender": self.spec.contender,
            "handled": handled,
            "expected": expected,
            "polling_s": self.polling,
            "first_handled_s": self.first,
            "last_handled_s": self.last,
            "committed_s": self.committed_at,
            "first_to_last_rps": expected / (self.last - self.first)
            if expected
            and self.first is not None
            and self.last is not None
            and self.last > self.first
            else None,
            "poll_to_committed_rps": expected / (self.committed_at - self.polling)
            if expected and self.committed_at is not None and self.polling is not None
            else None,
            "middle80_rps": self.middle_rate(),
            "rss_start_bytes": start_rss,
            "rss_peak_bytes": max(r for _t, r in self.rss),
            "rss_end_bytes": self.rss[-1][1],
            "rss_samples": [(round(t, 3), r) for t, r in self.rss],
            "cpu_first_to_last": self.cpu_window(),
            "committed": {t: {str(p): o for p, o in c.items()} for t, c in self.committed.items()},
            "stop_reason": self.stop_reason,
            "error": error,
            "notes": self.notes,
            "versions": versions,
        }


def _read_line(fd: int) -> str:
    """One line from a raw file descriptor (see Monitor._stdin for why not sys.stdin)."""
    data = b""
    while not data.endswith(b"\n"):
        chunk = os.read(fd, 1)
        if not chunk:
            break
        data += chunk
    return data.decode()


def run_runner(build: Callable[[Spec], Contender], versions: Callable[[], dict[str, str]]) -> None:
    """Main of a runner: read the spec, build, run, print the result line, close, exit.

    The result is printed before ``close()``: a pool with a stuck worker may never close (the
    orchestrator kills the runner's process group after a bounded wait). The process ends
    with ``os._exit`` so that no interpreter-exit hook (a pool's join) can hang it.
    """
    spec = Spec.from_json(_read_line(0))
    level = os.environ.get("PROCPOOL_BENCH_LOG")  # e.g. INFO: the libraries' logs, to stderr
    if level:
        logging.basicConfig(level=level.upper(), format="%(asctime)s %(name)s %(message)s")
    contender: Contender | None = None
    monitor: Monitor | None = None
    error: str | None = None
    try:
        contender = build(spec)
        monitor = Monitor(spec, contender)
        monitor.start()
        contender.open()
        emit("opened")
        monitor.mark_polling()
        contender.run()
    except BaseException as exc:
        error = f"{type(exc).__name__}: {exc}"
        emit("error", error=error)
    if monitor is not None:
        monitor.finish()
    info = {"python": platform.python_version(), **versions()}
    if monitor is None:
        emit("result", contender=spec.contender, error=error, versions=info)
    else:
        emit("result", **monitor.result(error, info))
    if contender is not None:
        try:
            contender.close()
            emit("closed")
        except BaseException as exc:
            emit("close_error", error=f"{type(exc).__name__}: {exc}")
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(1 if error else 0)
