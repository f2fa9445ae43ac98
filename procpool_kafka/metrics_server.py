"""The HTTP endpoint of a running consumer: Prometheus metrics, liveness and readiness.

:class:`MetricsServer` serves three paths from a daemon thread (stdlib
``http.server``); every other path answers 404:

``/metrics``
    Prometheus text exposition (``prometheus_client.CONTENT_TYPE_LATEST``), built at scrape
    time from the latest :class:`~procpool_kafka.metrics.Snapshot`. Before the first
    snapshot it still answers 200, with ``procpool_kafka_up 0`` only.
``/healthz``
    200 ``ok`` while a snapshot exists, is not older than ``stale_after`` seconds (the
    consumer loop is not wedged) and at least one worker is alive; otherwise 503 with a
    one-line reason (``starting`` before the first snapshot).
``/readyz``
    200 ``ready`` while the consumer is running, subscribed (assigned or waiting for an
    assignment), the broker answers and the snapshot is fresh; otherwise 503 with the reason.

Metrics (the names are a contract; the README lists them):

=================================================  =========  ======================
name                                               type       labels
=================================================  =========  ======================
``procpool_kafka_up``                              gauge      (1 once a snapshot exists)
``procpool_kafka_records_consumed_total``          counter    ``topic``
``procpool_kafka_records_succeeded_total``         counter    ``topic``
``procpool_kafka_records_failed_total``            counter    ``topic``
``procpool_kafka_records_retried_total``           counter    ``topic``
``procpool_kafka_records_dead_lettered_total``     counter    ``topic``
``procpool_kafka_in_flight``                       gauge
``procpool_kafka_paused_partitions``               gauge
``procpool_kafka_committed_offset``                gauge      ``topic``, ``partition``
``procpool_kafka_lag``                             gauge      ``topic``, ``partition``
``procpool_kafka_task_duration_seconds``           histogram  (buckets: DURATION_BUCKETS)
``procpool_kafka_worker_restarts_total``           counter    ``reason``
``procpool_kafka_worker_kills_total``              counter    ``reason``
``procpool_kafka_rebalances_total``                counter
``procpool_kafka_workers``                         gauge      ``state`` (configured, alive)
=================================================  =========  ======================

``committed_offset`` and ``lag`` omit a partition whose value is not known yet.

The server has its own :class:`prometheus_client.CollectorRegistry` (never the global default
one) and only reads snapshots, which the consumer loop publishes immutably, so it never races
the loop. Snapshots carry no configuration, hence no secrets reach a response.
"""

from __future__ import annotations

import logging
import socket
import socketserver
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import urlsplit

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.metrics_core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from .metrics import DURATION_BUCKETS, DurationHistogram, Snapshot

__all__ = ["MetricsServer"]

logger = logging.getLogger(__name__)

PREFIX = "procpool_kafka"
_TEXT = "text/plain; charset=utf-8"
_POLL_INTERVAL = 0.1  # how quickly stop() is noticed by serve_forever


class SnapshotCollector(Collector):
    """Turns the latest snapshot into metric families at scrape time."""

    def __init__(self, snapshot: Callable[[], Snapshot | None]) -> None:
        self._snapshot = snapshot

    def collect(self) -> Iterable[Metric]:
        snap = self._snapshot()
        up = GaugeMetricFamily(
            f"{PREFIX}_up", "1 once the consumer has published its state, else 0."
        )
        up.add_metric([], 0 if snap is None else 1)
        yield up
        if snap is None:
            return

        for what, values, doc in (
            ("consumed", snap.consumed, "Records received from Kafka"),
            ("succeeded", snap.succeeded, "Records whose handler returned"),
            ("failed", snap.failed, "Handler failures (raised, crashed or killed), any outcome"),
            ("retried", snap.retried, "Records sent to a retry topic"),
            ("dead_lettered", snap.dead_lettered, "Records sent to the dead-letter topic"),
        ):
            yield _counter_by(
                f"{PREFIX}_records_{what}", f"{doc}, by source topic.", "topic", values
            )

        yield GaugeMetricFamily(
            f"{PREFIX}_in_flight", "Records queued for or running in workers.", snap.in_flight
        )
        yield GaugeMetricFamily(
            f"{PREFIX}_paused_partitions",
            "Assigned partitions currently paused (backpressure or retry delay).",
            sum(1 for p in snap.partitions if p.paused),
        )

        committed = GaugeMetricFamily(
            f"{PREFIX}_committed_offset",
            "Last offset committed by this consumer (the next one to read).",
            labels=["topic", "partition"],
        )
        lag = GaugeMetricFamily(
            f"{PREFIX}_lag",
            "Records between the commit position and the partition's high watermark.",
            labels=["topic", "partition"],
        )
        for p in sorted(snap.partitions, key=lambda p: (p.topic, p.partition)):
            labels = [p.topic, str(p.partition)]
            if p.committed is not None:
                committed.add_metric(labels, p.committed)
            partition_lag = p.lag
            if partition_lag is not None:
                lag.add_metric(labels, partition_lag)
        yield committed
        yield lag

        yield _duration_histogram(snap.durations)

        yield _counter_by(
            f"{PREFIX}_worker_restarts",
            "Workers replaced, by reason.",
            "reason",
            snap.worker_restarts,
        )
        yield _counter_by(
            f"{PREFIX}_worker_kills",
            "Workers killed by the supervisor, by reason.",
            "reason",
            snap.worker_kills,
        )
        yield CounterMetricFamily(
            f"{PREFIX}_rebalances",
            "Partition assignments, revocations and losses.",
            snap.rebalances,
        )
        workers = GaugeMetricFamily(
            f"{PREFIX}_workers", "Worker processes, configured and alive.", labels=["state"]
        )
        workers.add_metric(["configured"], snap.workers_configured)
        workers.add_metric(["alive"], snap.workers_alive)
        yield workers


def _counter_by(name: str, doc: str, label: str, values: Mapping[str, int]) -> CounterMetricFamily:
    family = CounterMetricFamily(name, doc, labels=[label])
    for key in sorted(values):
        family.add_metric([key], values[key])
    return family


def _duration_histogram(durations: DurationHistogram) -> HistogramMetricFamily:
    bounds = [*(repr(float(b)) for b in DURATION_BUCKETS), "+Inf"]
    if len(durations.counts) != len(bounds):
        raise ValueError(
            f"duration histogram has {len(durations.counts)} buckets, expected {len(bounds)}"
        )
    buckets: list[tuple[str, float]] = []
    cumulative = 0
    for bound, count in zip(bounds, durations.counts, strict=True):
        cumulative += count
        buckets.append((bound, cumulative))
    return HistogramMetricFamily(
        f"{PREFIX}_task_duration_seconds",
        "Handler run time per record, in seconds.",
        buckets=buckets,
        sum_value=durations.total,
    )


@dataclass(frozen=True)
class Verdict:
    """The answer of a health or readiness check."""

    ok: bool
    reason: str


def health(snap: Snapshot | None, stale_after: float, now: float) -> Verdict:
    """Liveness: a fresh snapshot exists and at least one worker is alive."""
    if snap is None:
        return Verdict(False, "starting")
    stale = _staleness(snap, stale_after, now)
    if stale is not None:
        return Verdict(False, stale)
    if snap.workers_alive < 1:
        return Verdict(False, f"no live workers (0 of {snap.workers_configured})")
    return Verdict(True, "ok")


def readiness(snap: Snapshot | None, stale_after: float, now: float) -> Verdict:
    """Readiness: running, subscribed, the broker answers, and the snapshot is fresh."""
    if snap is None:
        return Verdict(False, "starting")
    if not snap.running:
        return Verdict(False, "not running")
    if not snap.subscribed:
        return Verdict(False, "not subscribed")
    if not snap.broker_reachable:
        return Verdict(False, "broker unreachable")
    if not snap.producer_ok:
        return Verdict(False, "retry/dead-letter producer failed fatally (being replaced)")
    stale = _staleness(snap, stale_after, now)
    if stale is not None:
        return Verdict(False, stale)
    return Verdict(True, "ready")


def _staleness(snap: Snapshot, stale_after: float, now: float) -> str | None:
    age = now - snap.taken_at
    if age > stale_after:
        return f"stale: last state published {age:.1f}s ago (limit {stale_after:g}s)"
    return None


class _Server(ThreadingHTTPServer):
    """ThreadingHTTPServer with daemon request threads, no reverse DNS, errors to logging."""

    daemon_threads = True

    def __init__(self, address: tuple[str, int], family: socket.AddressFamily, app: _App) -> None:
        self.address_family = family
        self.app = app
        super().__init__(address, _Handler)

    def server_bind(self) -> None:
        # HTTPServer.server_bind calls socket.getfqdn(), a reverse DNS lookup that can hang.
        socketserver.TCPServer.server_bind(self)
        host, port = self.server_address[:2]
        self.server_name = str(host)
        self.server_port = int(port)

    def handle_error(self, request: Any, client_address: Any) -> None:
        logger.debug("metrics request from %s failed", client_address, exc_info=True)


@dataclass(frozen=True)
class _App:
    snapshot: Callable[[], Snapshot | None]
    registry: CollectorRegistry
    stale_after: float


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    timeout = 10  # seconds a client may take to send its request

    def do_GET(self) -> None:
        self._respond(include_body=True)

    def do_HEAD(self) -> None:
        self._respond(include_body=False)

    def _respond(self, include_body: bool) -> None:
        app = self.server.app
        path = urlsplit(self.path).path
        try:
            if path == "/metrics":
                status, ctype, body = (
                    HTTPStatus.OK,
                    CONTENT_TYPE_LATEST,
                    generate_latest(app.registry),
                )
            elif path in ("/healthz", "/readyz"):
                check = health if path == "/healthz" else readiness
                verdict = check(app.snapshot(), app.stale_after, time.time())
                status = HTTPStatus.OK if verdict.ok else HTTPStatus.SERVICE_UNAVAILABLE
                ctype, body = _TEXT, f"{verdict.reason}\n".encode()
            else:
                status, ctype, body = HTTPStatus.NOT_FOUND, _TEXT, b"not found\n"
        except Exception:
            logger.exception("metrics endpoint failed to answer %s", path)
            status, ctype, body = HTTPStatus.INTERNAL_SERVER_ERROR, _TEXT, b"internal error\n"
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.end_headers()
        if include_body:
            self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        logger.debug("%s - " + format, self.address_string(), *args)


class MetricsServer:
    """Serves /metrics (Prometheus text), /healthz and /readyz over HTTP from a daemon thread.

    Nothing is served until it is started: ``with MetricsServer(...) as server:`` starts it
    on entry and stops it on exit (or call :meth:`start` and :meth:`stop`).

    ``snapshot`` returns the consumer's latest published state, or None before the first one;
    it is called on every request, from the server's threads, and must be cheap and
    thread-safe (reading an attribute that the loop replaces is). ``stale_after`` is how old
    (seconds) a snapshot may be before the loop counts as wedged.
    """

    def __init__(
        self,
        snapshot: Callable[[], Snapshot | None],
        host: str = "127.0.0.1",
        port: int = 0,
        stale_after: float = 30.0,
    ) -> None:
        if not 0 <= port <= 65535:
            raise ValueError(f"metrics port must be within 0..65535, got {port}")
        if stale_after <= 0:
            raise ValueError(f"stale_after must be positive, got {stale_after}")
        self._snapshot = snapshot
        self._host = host
        self._port = port
        self._stale_after = stale_after
        self._registry = CollectorRegistry(auto_describe=False)
        self._registry.register(SnapshotCollector(snapshot))
        self._lock = threading.Lock()
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        """Bind (port 0 picks a free port) and serve from a daemon thread.

        Raises OSError naming host:port when the address cannot be bound.
        """
        with self._lock:
            if self._server is not None:
                raise RuntimeError("metrics server already started")
            where = _format_address(self._host, self._port)
            try:
                family = _address_family(self._host, self._port)
                server = _Server(
                    (self._host, self._port),
                    family,
                    _App(self._snapshot, self._registry, self._stale_after),
                )
            except OSError as exc:
                reason = exc.strerror or str(exc)
                raise OSError(exc.errno, f"cannot serve metrics on {where}: {reason}") from exc
            thread = threading.Thread(
                target=server.serve_forever,
                kwargs={"poll_interval": _POLL_INTERVAL},
                name=f"procpool-kafka-metrics-{server.server_port}",
                daemon=True,
            )
            thread.start()
            self._server, self._thread = server, thread
            logger.info(
                "serving /metrics, /healthz, /readyz on http://%s",
                _format_address(*self.address),
            )

    @property
    def address(self) -> tuple[str, int]:
        """The bound host and port (the real port when 0 was asked for)."""
        server = self._server
        if server is None:
            raise RuntimeError(
                "metrics server is not started: call start() or use it in a with statement"
            )
        host, port = server.server_address[:2]
        return str(host), int(port)

    def stop(self) -> None:
        """Shut the server down and join its thread; safe to call more than once."""
        with self._lock:
            server, thread = self._server, self._thread
            self._server = self._thread = None
        if server is None:
            return
        server.shutdown()
        server.server_close()
        if thread is not None:
            thread.join()

    def __enter__(self) -> MetricsServer:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


def _address_family(host: str, port: int) -> socket.AddressFamily:
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    families = [info[0] for info in infos]
    return socket.AF_INET if socket.AF_INET in families or not families else families[0]


def _format_address(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
