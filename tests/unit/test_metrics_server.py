"""MetricsServer: /metrics exposition from snapshots, /healthz, /readyz, lifecycle."""

from __future__ import annotations

import dataclasses
import logging
import math
import time
import urllib.error
import urllib.request
from collections.abc import Iterator

import pytest
from prometheus_client import CONTENT_TYPE_LATEST
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample

from procpool_kafka.metrics import DURATION_BUCKETS, DurationHistogram, PartitionState, Snapshot
from procpool_kafka.metrics_server import MetricsServer


def make_snapshot(**overrides: object) -> Snapshot:
    durations = DurationHistogram()
    for seconds in (0.00005, 0.0002, 0.0002, 0.003, 2.0, 1000.0):
        durations.observe(seconds)
    base = Snapshot(
        taken_at=time.time(),
        consumed={"orders": 10, "orders.retry": 3},
        succeeded={"orders": 7, "orders.retry": 1},
        failed={"orders": 3, "orders.retry": 2},
        retried={"orders": 2},
        dead_lettered={"orders.retry": 1},
        in_flight=4,
        partitions=(
            PartitionState("orders", 0, committed=5, position=7, high_watermark=12, paused=False),
            PartitionState(
                "orders", 1, committed=None, position=None, high_watermark=9, paused=True
            ),
            PartitionState(
                "orders.retry", 0, committed=2, position=None, high_watermark=None, paused=True
            ),
        ),
        worker_restarts={"crashed": 2, "task_timeout": 1},
        worker_kills={"task_timeout": 1, "heartbeat_lost": 4},
        rebalances=3,
        durations=durations,
        workers_configured=4,
        workers_alive=3,
        subscribed=True,
        broker_reachable=True,
        running=True,
    )
    return dataclasses.replace(base, **overrides)  # type: ignore[arg-type]


class Holder:
    """What the consumer loop would do: replace the published snapshot."""

    def __init__(self, snap: Snapshot | None = None) -> None:
        self.snap = snap

    def __call__(self) -> Snapshot | None:
        return self.snap


@pytest.fixture
def holder() -> Holder:
    return Holder()


@pytest.fixture
def server(holder: Holder) -> Iterator[MetricsServer]:
    srv = MetricsServer(holder, stale_after=30.0)
    srv.start()
    yield srv
    srv.stop()


def get(server: MetricsServer, path: str) -> tuple[int, str, str]:
    host, port = server.address
    url = f"http://{host}:{port}{path}"
    try:
        with urllib.request.urlopen(url, timeout=5) as resp:
            return resp.status, resp.headers["Content-Type"], resp.read().decode()
    except urllib.error.HTTPError as err:
        with err:
            return err.code, err.headers["Content-Type"], err.read().decode()


def scrape(server: MetricsServer) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    status, ctype, text = get(server, "/metrics")
    assert status == 200
    assert ctype == CONTENT_TYPE_LATEST
    out: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out[key(sample)] = sample.value
    return out


def key(sample: Sample) -> tuple[str, tuple[tuple[str, str], ...]]:
    return sample.name, tuple(sorted(sample.labels.items()))


def families(server: MetricsServer) -> dict[str, str]:
    """Family name -> type, from the exposition text."""
    _, _, text = get(server, "/metrics")
    return {f.name: f.type for f in text_string_to_metric_families(text)}


# --- /metrics ---------------------------------------------------------------------------


def test_metrics_before_first_snapshot_reports_down(server: MetricsServer) -> None:
    samples = scrape(server)
    assert samples == {("procpool_kafka_up", ()): 0.0}


def test_record_counters_by_topic(server: MetricsServer, holder: Holder) -> None:
    holder.snap = make_snapshot()
    s = scrape(server)
    assert s[("procpool_kafka_up", ())] == 1.0
    expected = {
        "consumed": {"orders": 10, "orders.retry": 3},
        "succeeded": {"orders": 7, "orders.retry": 1},
        "failed": {"orders": 3, "orders.retry": 2},
        "retried": {"orders": 2},
        "dead_lettered": {"orders.retry": 1},
    }
    for what, by_topic in expected.items():
        name = f"procpool_kafka_records_{what}_total"
        got = {dict(labels)["topic"]: value for (n, labels), value in s.items() if n == name}
        assert got == by_topic, name
    types = families(server)
    for what in expected:
        assert types[f"procpool_kafka_records_{what}"] == "counter"


def test_gauges(server: MetricsServer, holder: Holder) -> None:
    holder.snap = make_snapshot()
    s = scrape(server)
    assert s[("procpool_kafka_in_flight", ())] == 4
    assert s[("procpool_kafka_paused_partitions", ())] == 2
    assert s[("procpool_kafka_workers", (("state", "configured"),))] == 4
    assert s[("procpool_kafka_workers", (("state", "alive"),))] == 3
    types = families(server)
    for name in ("in_flight", "paused_partitions", "workers", "up", "committed_offset", "lag"):
        assert types[f"procpool_kafka_{name}"] == "gauge", name


def test_committed_and_lag_series_omit_unknown_values(
    server: MetricsServer, holder: Holder
) -> None:
    holder.snap = make_snapshot()
    s = scrape(server)
    committed = {
        (dict(labels)["topic"], dict(labels)["partition"]): value
        for (name, labels), value in s.items()
        if name == "procpool_kafka_committed_offset"
    }
    lag = {
        (dict(labels)["topic"], dict(labels)["partition"]): value
        for (name, labels), value in s.items()
        if name == "procpool_kafka_lag"
    }
    # orders/1 has never committed; orders.retry/0 has no known high watermark
    assert committed == {("orders", "0"): 5, ("orders.retry", "0"): 2}
    # orders/0: 12 - position 7; orders/1: no position or commit -> unknown
    assert lag == {("orders", "0"): 5}


def test_duration_histogram_is_cumulative(server: MetricsServer, holder: Holder) -> None:
    holder.snap = make_snapshot()
    _, _, text = get(server, "/metrics")
    (family,) = [
        f
        for f in text_string_to_metric_families(text)
        if f.name == "procpool_kafka_task_duration_seconds"
    ]
    assert family.type == "histogram"
    buckets = {float(s.labels["le"]): s.value for s in family.samples if s.name.endswith("_bucket")}
    assert sorted(buckets) == [*DURATION_BUCKETS, math.inf]
    # observations: 0.00005, 0.0002 x2, 0.003, 2.0, 1000.0
    assert buckets[0.0001] == 1
    assert buckets[0.0005] == 3
    assert buckets[0.001] == 3
    assert buckets[0.005] == 4
    assert buckets[1.0] == 4
    assert buckets[5.0] == 5
    assert buckets[300.0] == 5
    assert buckets[math.inf] == 6
    values = [buckets[b] for b in sorted(buckets)]
    assert values == sorted(values)
    by_name = {s.name: s.value for s in family.samples if not s.name.endswith("_bucket")}
    assert by_name["procpool_kafka_task_duration_seconds_count"] == 6
    assert by_name["procpool_kafka_task_duration_seconds_sum"] == pytest.approx(
        0.00005 + 0.0002 * 2 + 0.003 + 2.0 + 1000.0
    )


def test_bucket_boundary_is_inclusive(server: MetricsServer, holder: Holder) -> None:
    durations = DurationHistogram()
    durations.observe(0.5)  # le="0.5" must count it
    holder.snap = make_snapshot(durations=durations)
    s = scrape(server)
    assert s[("procpool_kafka_task_duration_seconds_bucket", (("le", "0.1"),))] == 0
    assert s[("procpool_kafka_task_duration_seconds_bucket", (("le", "0.5"),))] == 1


def test_worker_restarts_kills_and_rebalances(server: MetricsServer, holder: Holder) -> None:
    holder.snap = make_snapshot()
    s = scrape(server)
    assert s[("procpool_kafka_worker_restarts_total", (("reason", "crashed"),))] == 2
    assert s[("procpool_kafka_worker_restarts_total", (("reason", "task_timeout"),))] == 1
    assert s[("procpool_kafka_worker_kills_total", (("reason", "task_timeout"),))] == 1
    assert s[("procpool_kafka_worker_kills_total", (("reason", "heartbeat_lost"),))] == 4
    assert s[("procpool_kafka_rebalances_total", ())] == 3
    types = families(server)
    assert types["procpool_kafka_worker_restarts"] == "counter"
    assert types["procpool_kafka_worker_kills"] == "counter"
    assert types["procpool_kafka_rebalances"] == "counter"


def test_exposition_text_has_every_contract_name(server: MetricsServer, holder: Holder) -> None:
    holder.snap = make_snapshot()
    _, _, text = get(server, "/metrics")
    names = {s.name for f in text_string_to_metric_families(text) for s in f.samples}
    assert names >= {
        "procpool_kafka_up",
        "procpool_kafka_records_consumed_total",
        "procpool_kafka_records_succeeded_total",
        "procpool_kafka_records_failed_total",
        "procpool_kafka_records_retried_total",
        "procpool_kafka_records_dead_lettered_total",
        "procpool_kafka_in_flight",
        "procpool_kafka_paused_partitions",
        "procpool_kafka_committed_offset",
        "procpool_kafka_lag",
        "procpool_kafka_task_duration_seconds_bucket",
        "procpool_kafka_task_duration_seconds_count",
        "procpool_kafka_task_duration_seconds_sum",
        "procpool_kafka_worker_restarts_total",
        "procpool_kafka_worker_kills_total",
        "procpool_kafka_rebalances_total",
        "procpool_kafka_workers",
    }
    assert "# TYPE procpool_kafka_records_consumed_total counter" in text
    assert "# TYPE procpool_kafka_task_duration_seconds histogram" in text


def test_values_follow_the_latest_snapshot(server: MetricsServer, holder: Holder) -> None:
    holder.snap = make_snapshot()
    before = scrape(server)
    assert before[("procpool_kafka_records_consumed_total", (("topic", "orders"),))] == 10
    holder.snap = make_snapshot(
        consumed={"orders": 25, "payments": 1},
        in_flight=0,
        workers_alive=4,
        rebalances=4,
        partitions=(
            PartitionState("orders", 0, committed=20, position=20, high_watermark=20, paused=False),
        ),
    )
    after = scrape(server)
    assert after[("procpool_kafka_records_consumed_total", (("topic", "orders"),))] == 25
    assert after[("procpool_kafka_records_consumed_total", (("topic", "payments"),))] == 1
    assert after[("procpool_kafka_in_flight", ())] == 0
    assert after[("procpool_kafka_paused_partitions", ())] == 0
    assert after[("procpool_kafka_workers", (("state", "alive"),))] == 4
    assert after[("procpool_kafka_rebalances_total", ())] == 4
    assert (
        after[("procpool_kafka_committed_offset", (("partition", "0"), ("topic", "orders")))] == 20
    )
    assert after[("procpool_kafka_lag", (("partition", "0"), ("topic", "orders")))] == 0
    # a partition no longer assigned disappears
    assert (
        "procpool_kafka_committed_offset",
        (("partition", "0"), ("topic", "orders.retry")),
    ) not in after


def test_uses_its_own_registry() -> None:
    from prometheus_client import REGISTRY, generate_latest

    MetricsServer(Holder(make_snapshot()))
    assert b"procpool_kafka" not in generate_latest(REGISTRY)


# --- /healthz and /readyz ---------------------------------------------------------------


def test_healthz_starting(server: MetricsServer) -> None:
    status, ctype, body = get(server, "/healthz")
    assert (status, body) == (503, "starting\n")
    assert ctype.startswith("text/plain")


def test_healthz_ok(server: MetricsServer, holder: Holder) -> None:
    holder.snap = make_snapshot()
    assert get(server, "/healthz")[::2] == (200, "ok\n")


def test_healthz_stale(server: MetricsServer, holder: Holder) -> None:
    holder.snap = make_snapshot(taken_at=time.time() - 100)
    status, _, body = get(server, "/healthz")
    assert status == 503
    assert body.startswith("stale")
    assert body.count("\n") == 1


def test_healthz_no_workers(server: MetricsServer, holder: Holder) -> None:
    holder.snap = make_snapshot(workers_alive=0)
    status, _, body = get(server, "/healthz")
    assert status == 503
    assert "no live workers" in body


def test_healthz_does_not_require_readiness(server: MetricsServer, holder: Holder) -> None:
    holder.snap = make_snapshot(broker_reachable=False, subscribed=False)
    assert get(server, "/healthz")[0] == 200


def test_readyz_ready(server: MetricsServer, holder: Holder) -> None:
    holder.snap = make_snapshot()
    assert get(server, "/readyz")[::2] == (200, "ready\n")


@pytest.mark.parametrize(
    ("overrides", "reason"),
    [
        ({"subscribed": False}, "not subscribed"),
        ({"broker_reachable": False}, "broker unreachable"),
        ({"running": False}, "not running"),
        ({"taken_at": 0.0}, "stale"),
    ],
)
def test_readyz_not_ready(
    server: MetricsServer, holder: Holder, overrides: dict[str, object], reason: str
) -> None:
    holder.snap = make_snapshot(**overrides)
    status, _, body = get(server, "/readyz")
    assert status == 503
    assert body.startswith(reason)


def test_readyz_starting(server: MetricsServer) -> None:
    assert get(server, "/readyz")[::2] == (503, "starting\n")


def test_stale_after_is_configurable(holder: Holder) -> None:
    holder.snap = make_snapshot(taken_at=time.time() - 5)
    srv = MetricsServer(holder, stale_after=1.0)
    srv.start()
    try:
        assert get(srv, "/healthz")[0] == 503
    finally:
        srv.stop()


# --- other paths, errors, lifecycle ------------------------------------------------------


@pytest.mark.parametrize("path", ["/", "/metricsx", "/healthz/extra", "/favicon.ico"])
def test_unknown_path_is_404(server: MetricsServer, path: str) -> None:
    assert get(server, path)[0] == 404


def test_query_string_is_ignored(server: MetricsServer, holder: Holder) -> None:
    holder.snap = make_snapshot()
    assert get(server, "/healthz?verbose=1")[0] == 200


def test_failing_snapshot_source_answers_500(caplog: pytest.LogCaptureFixture) -> None:
    def broken() -> Snapshot | None:
        raise RuntimeError("boom")

    srv = MetricsServer(broken)
    srv.start()
    try:
        with caplog.at_level(logging.ERROR, logger="procpool_kafka.metrics_server"):
            assert get(srv, "/metrics")[0] == 500
            assert get(srv, "/healthz")[0] == 500
        # the server survives
        assert get(srv, "/nope")[0] == 404
    finally:
        srv.stop()


def test_request_logging_goes_to_module_logger(
    server: MetricsServer, caplog: pytest.LogCaptureFixture, capsys: pytest.CaptureFixture[str]
) -> None:
    with caplog.at_level(logging.DEBUG, logger="procpool_kafka.metrics_server"):
        get(server, "/healthz")
        deadline = time.monotonic() + 5
        while not any("GET /healthz" in r.getMessage() for r in caplog.records):
            assert time.monotonic() < deadline, "request was not logged"
            time.sleep(0.01)
    assert all(r.levelno == logging.DEBUG for r in caplog.records if "GET" in r.getMessage())
    assert "GET /healthz" not in capsys.readouterr().err


def test_binds_loopback_by_default(server: MetricsServer) -> None:
    host, port = server.address
    assert host == "127.0.0.1"
    assert port > 0


def test_stop_is_idempotent_and_frees_the_port(holder: Holder) -> None:
    srv = MetricsServer(holder)
    srv.start()
    port = srv.address[1]
    assert get(srv, "/metrics")[0] == 200
    srv.stop()
    srv.stop()
    with pytest.raises(RuntimeError):
        _ = srv.address
    again = MetricsServer(holder, port=port)
    again.start()
    try:
        assert again.address[1] == port
        assert get(again, "/metrics")[0] == 200
    finally:
        again.stop()


def test_stop_before_start_is_a_no_op() -> None:
    MetricsServer(Holder()).stop()


def test_start_twice_is_an_error(server: MetricsServer) -> None:
    with pytest.raises(RuntimeError, match="already started"):
        server.start()


def test_bind_failure_names_the_address(server: MetricsServer, holder: Holder) -> None:
    port = server.address[1]
    other = MetricsServer(holder, port=port)
    with pytest.raises(OSError, match=rf"127\.0\.0\.1:{port}"):
        other.start()
    other.stop()


def test_serving_thread_is_a_daemon(server: MetricsServer) -> None:
    import threading

    names = [t for t in threading.enumerate() if t.name.startswith("procpool-kafka-metrics")]
    assert names
    assert all(t.daemon for t in names)


def test_context_manager(holder: Holder) -> None:
    with MetricsServer(holder) as srv:
        assert get(srv, "/metrics")[0] == 200
    with pytest.raises(RuntimeError):
        _ = srv.address


def test_nothing_is_served_until_started_and_the_with_block_frees_the_port(
    holder: Holder,
) -> None:
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    idle = MetricsServer(holder, port=port)
    with pytest.raises(RuntimeError, match="not started: call start"):
        _ = idle.address
    with pytest.raises(urllib.error.URLError):
        urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2)
    with idle as srv:
        assert srv.address == ("127.0.0.1", port)
        assert get(srv, "/metrics")[0] == 200
    with pytest.raises(urllib.error.URLError):  # stopped on exit
        urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2)
    with MetricsServer(holder, port=port) as again:  # and the port is free again
        assert get(again, "/metrics")[0] == 200


@pytest.mark.parametrize("kwargs", [{"port": -1}, {"port": 70000}, {"stale_after": 0.0}])
def test_rejects_bad_arguments(kwargs: dict[str, float]) -> None:
    with pytest.raises(ValueError):
        MetricsServer(Holder(), **kwargs)  # type: ignore[arg-type]
