"""The core engine against a real broker: commits, rebalances, kills, crashes, stop."""

from __future__ import annotations

import functools
import logging
import os
import signal
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from procpool_kafka import ConsumerConfig, ProcPoolConsumer
from tests.integration.handlers import async_plain, coordinates, plain, read_store, scripted
from tests.integration.runner import (
    ThreadedConsumer,
    consumer_config,
    group_settings,
    spawn_consumer_process,
)
from tests.kafka_helpers import KafkaTestEnv, unique_name, wait_for


def make_config(
    kafka: KafkaTestEnv, topics: list[str], group_protocol: str = "classic", **overrides: Any
) -> ConsumerConfig:
    return consumer_config(kafka.bootstrap, topics, group_protocol, **overrides)


def all_offsets(kafka: KafkaTestEnv, topic: str) -> set[tuple[str, int, int]]:
    return {(topic, p, o) for p, end in kafka.end_offsets(topic).items() for o in range(end)}


def test_multiple_topics_one_handler_all_handled_and_committed(
    kafka: KafkaTestEnv, tmp_path: Path
) -> None:
    first = kafka.create_topic("multi-a", partitions=2)
    second = kafka.create_topic("multi-b", partitions=3)
    kafka.produce_to_partitions(first, 2, per_partition=30)
    kafka.produce_to_partitions(second, 3, per_partition=20)
    store = str(tmp_path / "store.jsonl")
    config = make_config(kafka, [first, second])
    expected = all_offsets(kafka, first) | all_offsets(kafka, second)
    with ThreadedConsumer(config, functools.partial(scripted, store)) as running:
        wait_for(lambda: coordinates(store) >= expected, timeout=60, message="all handled")
        wait_for(
            lambda: (
                kafka.fully_committed(config.group_id, first)
                and kafka.fully_committed(config.group_id, second)
            ),
            timeout=30,
            message="commits reach the end offsets",
        )
        summary = running.stop()
    assert summary.records_ok == len(expected) == 120
    assert len(read_store(store)) == 120, "no duplicates in a clean run"


def test_async_handler_runs_in_the_workers_and_commits(kafka: KafkaTestEnv, tmp_path: Path) -> None:
    topic = kafka.create_topic("async", partitions=2)
    kafka.produce(topic, (b"ok:" for _ in range(10)))
    store = str(tmp_path / "store.jsonl")
    config = make_config(kafka, [topic])
    with ThreadedConsumer(config, functools.partial(async_plain, store)) as running:
        wait_for(lambda: len(read_store(store)) >= 10, timeout=60, message="all handled")
        wait_for(lambda: kafka.fully_committed(config.group_id, topic), timeout=30)
        summary = running.stop()
    done = read_store(store)
    assert coordinates(store) == all_offsets(kafka, topic)
    assert len(done) == 10, "each record once"
    assert summary.records_ok == 10 and summary.records_failed == 0
    loops_per_worker = {(e["pid"], e["loop"]) for e in done}
    assert len(loops_per_worker) == len({e["pid"] for e in done}), "one event loop per worker"


def test_out_of_order_completion_commits_contiguous_prefix_and_restart_resumes_there(
    kafka: KafkaTestEnv, tmp_path: Path
) -> None:
    topic = kafka.create_topic("prefix", partitions=1)
    values = [b"ok:"] * 5 + [b"hang:"] + [b"ok:"] * 4  # offset 5 never finishes
    kafka.produce(topic, values)
    store = str(tmp_path / "store.jsonl")
    config = make_config(kafka, [topic], revoke_timeout=1.0)
    with ThreadedConsumer(config, functools.partial(scripted, store)) as running:
        wait_for(
            lambda: coordinates(store) >= {(topic, 0, o) for o in (0, 1, 2, 3, 4, 6, 7, 8, 9)},
            timeout=60,
            message="everything but offset 5 handled",
        )
        wait_for(lambda: kafka.committed(config.group_id, topic) == {0: 5}, timeout=10)
        time.sleep(3 * config.commit_interval)  # several commit rounds: must stay at 5
        assert kafka.committed(config.group_id, topic) == {0: 5}
        running.stop()
    assert kafka.committed(config.group_id, topic) == {0: 5}

    restarted_store = str(tmp_path / "restarted.jsonl")
    with ThreadedConsumer(config, functools.partial(plain, restarted_store)):
        wait_for(lambda: len(read_store(restarted_store)) >= 5, timeout=60)
        wait_for(lambda: kafka.committed(config.group_id, topic) == {0: 10}, timeout=10)
    handled = sorted(e["offset"] for e in read_store(restarted_store))
    assert handled == [5, 6, 7, 8, 9], "the restart resumes exactly at the committed offset"


def test_two_consumer_processes_rebalance_with_work_in_flight_lose_nothing(
    kafka: KafkaTestEnv, tmp_path: Path, group_protocol: str
) -> None:
    topic = kafka.create_topic("rebalance", partitions=4)
    for partition in range(4):  # whichever partitions move, the second member gets work
        kafka.produce(topic, (b"slow:0.02:" for _ in range(100)), partition=partition)
    expected = all_offsets(kafka, topic)
    store = tmp_path / "store.jsonl"
    group = unique_name("g")
    config = {
        "bootstrap_servers": kafka.bootstrap,
        "group_id": group,
        "topics": [topic],
        "workers": 1,
        "commit_interval": 0.2,
        **group_settings(group_protocol),
    }
    first = spawn_consumer_process(config, store, tmp_path / "first.log")
    second = None
    try:
        wait_for(lambda: len(coordinates(store)) >= 40, timeout=60, message="first member works")
        second = spawn_consumer_process(config, store, tmp_path / "second.log")
        wait_for(lambda: coordinates(store) >= expected, timeout=120, message="all handled")
        pids = {e["pid"] for e in read_store(store)}
        wait_for(
            lambda: kafka.fully_committed(group, topic),
            timeout=30,
            message="commits reach the end",
        )
    finally:
        for process in (first, second):
            if process is not None:
                process.send_signal(signal.SIGTERM)
        for process in (first, second):
            if process is not None:
                assert process.wait(timeout=60) == 0
    assert len(pids) >= 2, "both members' workers handled records"
    assert kafka.group_protocol(group) == group_protocol
    assert "revoked" in (tmp_path / "first.log").read_text()


def test_repeated_rebalances_with_zero_revoke_timeout_lose_nothing(
    kafka: KafkaTestEnv, tmp_path: Path
) -> None:
    # revoke_timeout=0: every revoke and every stop kills the workers running records of the
    # partitions that go; with 1 ms records the worker may have moved on to a record of a kept
    # partition when the kill lands: that one is re-queued (kill by target), not dropped. (The
    # pool's unit tests make that case deterministic; here it happens now and then.)
    topic = kafka.create_topic("rekill", partitions=4)
    store = str(tmp_path / "store.jsonl")
    config = make_config(kafka, [topic], revoke_timeout=0.0)
    kills = 0
    with ThreadedConsumer(config, functools.partial(scripted, store)) as first:
        wait_for(lambda: len(first.consumer.assignment()) == 4, timeout=60)
        for _ in range(3):
            kafka.produce(topic, (b"slow:0.001:" for _ in range(4000)))  # work in flight
            with ThreadedConsumer(config, functools.partial(scripted, store)) as second:
                wait_for(second.consumer.assignment, timeout=60, message="joined")
                wait_for(lambda: len(first.consumer.assignment()) < 4, timeout=60)
                second_summary = second.stop()
            kills += sum(second.consumer.counters.worker_kills.values())
            assert second_summary.worker_crashes == 0
            wait_for(lambda: len(first.consumer.assignment()) == 4, timeout=60, message="left")
        wait_for(
            lambda: kafka.fully_committed(config.group_id, topic),
            timeout=120,
            message="commits reach the end offsets",
        )
        kills += sum(first.consumer.counters.worker_kills.values())
        summary = first.stop()
    assert coordinates(store) >= all_offsets(kafka, topic), "every record handled"
    assert summary.worker_crashes == 0
    assert kills >= 1, "no revoke or stop found a record running: the test proved nothing"
    rerun = consumer_config(kafka.bootstrap, [topic], group_id=config.group_id)
    with ProcPoolConsumer(rerun, functools.partial(plain, str(tmp_path / "rerun.jsonl"))) as last:
        assert last.run(until_end=True).records_ok == 0, "nothing was left uncommitted"
    print(f"rekill: records={len(all_offsets(kafka, topic))} kills={kills}")


def test_stuck_handler_on_revoked_partition_is_killed_and_other_member_processes_it(
    kafka: KafkaTestEnv, tmp_path: Path, group_protocol: str
) -> None:
    topic = kafka.create_topic("stuck", partitions=2)
    for partition in (0, 1):
        kafka.produce(topic, [b"hang:"], partition=partition)
    first_store, second_store = str(tmp_path / "a.jsonl"), str(tmp_path / "b.jsonl")
    config = make_config(kafka, [topic], group_protocol, revoke_timeout=2.0)
    with ThreadedConsumer(config, functools.partial(scripted, first_store)) as first:
        wait_for(lambda: len(read_store(first_store, "start")) == 2, timeout=60)
        pids_before = set(first.consumer.worker_pids())
        joined = time.monotonic()
        with ThreadedConsumer(config, functools.partial(plain, second_store)) as second:
            handled = wait_for(lambda: read_store(second_store), timeout=60)
            elapsed = time.monotonic() - joined
            moved = handled[0]["partition"]
            assert second.consumer.assignment() == [(topic, moved)]
            # the revoked partition's worker was killed and replaced; the kept one is untouched
            wait_for(lambda: len(first.consumer.worker_pids()) == 2, timeout=30)
            pids_after = set(first.consumer.worker_pids())
            assert len(pids_before & pids_after) == 1, "only the stuck revoked worker was killed"
            kept = [e for e in read_store(first_store, "start") if e["partition"] != moved]
            assert kept[0]["pid"] in pids_after, "the kept partition's task keeps running"
            assert first.consumer.counters.worker_kills["revoke-timeout"] == 1
            assert kafka.group_protocol(config.group_id) == group_protocol
    assert elapsed < config.revoke_timeout + 15


def test_worker_crash_during_a_revoke_drain_leaves_the_revoked_record_to_the_new_owner(
    kafka: KafkaTestEnv, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    topic = kafka.create_topic("drain-crash", partitions=2)
    release = tmp_path / "release"
    for partition in (0, 1):  # each waits for the release, then kills its worker (once)
        kafka.produce(topic, [f"holdcrash:{release}".encode()], partition=partition)
    first_store, second_store = str(tmp_path / "a.jsonl"), str(tmp_path / "b.jsonl")
    config = make_config(kafka, [topic], revoke_timeout=30.0)
    caplog.set_level(logging.INFO, logger="procpool_kafka.rebalance")
    with ThreadedConsumer(config, functools.partial(scripted, first_store)) as first:
        wait_for(lambda: len(read_store(first_store, "start")) == 2, timeout=60)
        with ThreadedConsumer(config, functools.partial(plain, second_store)) as second:
            wait_for(lambda: "revoked:" in caplog.text, timeout=60, message="a revoke drain")
            release.touch()  # both workers die; one was running the revoked partition's record
            wait_for(lambda: kafka.committed(config.group_id, topic) == {0: 1, 1: 1}, timeout=60)
            ((_, moved),) = second.consumer.assignment()
        crashes = first.consumer.counters.worker_crashes
    kept = 1 - moved
    first_starts = Counter(e["partition"] for e in read_store(first_store, "start"))
    assert first_starts[moved] == 1, "the revoked partition's record did not run here again"
    assert {(e["partition"], e["offset"]) for e in read_store(second_store)} == {(moved, 0)}
    assert first_starts[kept] == 2, "the kept partition's record ran again after the crash"
    assert {(e["partition"], e["offset"]) for e in read_store(first_store)} == {(kept, 0)}
    assert crashes == 2


def test_sigkill_of_a_worker_mid_task_loses_nothing(kafka: KafkaTestEnv, tmp_path: Path) -> None:
    topic = kafka.create_topic("sigkill", partitions=2)
    kafka.produce(topic, (b"slow:0.3:" for _ in range(12)))
    store = str(tmp_path / "store.jsonl")
    config = make_config(kafka, [topic])
    with ThreadedConsumer(config, functools.partial(scripted, store)) as running:
        started = wait_for(lambda: read_store(store, "start"), timeout=60)
        os.kill(started[0]["pid"], signal.SIGKILL)
        wait_for(
            lambda: coordinates(store) >= all_offsets(kafka, topic), timeout=60, message="all done"
        )
        wait_for(lambda: kafka.fully_committed(config.group_id, topic), 30)
        assert running.consumer.counters.worker_crashes >= 1
        summary = running.stop()
    assert summary.records_failed == 0


def test_record_that_always_kills_its_worker_fails_with_worker_crashed(
    kafka: KafkaTestEnv, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    topic = kafka.create_topic("poison", partitions=1)
    kafka.produce(topic, [b"ok:", b"crash:", b"ok:"])
    store = str(tmp_path / "store.jsonl")
    config = make_config(kafka, [topic], crash_limit=2)
    caplog.set_level(logging.ERROR, logger="procpool_kafka")
    with ThreadedConsumer(config, functools.partial(scripted, store)) as running:
        wait_for(lambda: kafka.committed(config.group_id, topic) == {0: 3}, timeout=90)
        summary = running.stop()
    assert summary.records_failed == 1
    assert summary.records_ok == 2
    assert len(read_store(store, "start")) == 4, "the poison record ran crash_limit times"
    assert "procpool_kafka.errors.WorkerCrashed" in caplog.text


def test_stop_drains_running_work_and_commits(kafka: KafkaTestEnv, tmp_path: Path) -> None:
    topic = kafka.create_topic("drain", partitions=2)
    for partition in (0, 1):
        kafka.produce(topic, [b"slow:1.5:"], partition=partition)
    store = str(tmp_path / "store.jsonl")
    config = make_config(kafka, [topic], revoke_timeout=20.0)
    with ThreadedConsumer(config, functools.partial(scripted, store)) as running:
        wait_for(lambda: len(read_store(store, "start")) == 2, timeout=60)
        summary = running.stop()
    assert summary.records_ok == 2, "running work finished before run() returned"
    assert kafka.committed(config.group_id, topic) == {0: 1, 1: 1}


def test_backpressure_keeps_a_slow_member_in_the_group(
    kafka: KafkaTestEnv, tmp_path: Path, group_protocol: str
) -> None:
    topic = kafka.create_topic("backpressure", partitions=2)
    kafka.produce(topic, (b"slow:0.4:" for _ in range(30)))
    store = str(tmp_path / "store.jsonl")
    kafka_config = {**group_settings(group_protocol)["kafka_config"], "max.poll.interval.ms": 6000}
    config = make_config(kafka, [topic], group_protocol, max_in_flight=4, kafka_config=kafka_config)
    # 30 records x 0.4 s / 2 workers = 6 s of work > max.poll.interval.ms would be fatal if
    # the loop stopped polling while the pool is full.
    with ThreadedConsumer(config, functools.partial(scripted, store)) as running:
        wait_for(lambda: len(read_store(store)) == 30, timeout=90, message="all handled")
        assert running.consumer.counters.rebalances == 1, "assigned once, never revoked or lost"
        wait_for(lambda: kafka.fully_committed(config.group_id, topic), 30)
        wait_for(lambda: not running.consumer.paused(), timeout=10)
        running.stop()
    assert len(read_store(store)) == 30


def test_workers_keep_their_pids_across_a_clean_rebalance(
    kafka: KafkaTestEnv, tmp_path: Path, group_protocol: str
) -> None:
    topic = kafka.create_topic("pids", partitions=2)
    store = str(tmp_path / "store.jsonl")
    config = make_config(kafka, [topic], group_protocol)
    with ThreadedConsumer(config, functools.partial(scripted, store)) as first:
        wait_for(lambda: len(first.consumer.assignment()) == 2, timeout=60)
        pids = first.consumer.worker_pids()
        with ThreadedConsumer(config, functools.partial(scripted, store)) as second:
            wait_for(lambda: len(second.consumer.assignment()) == 1, timeout=60)
            wait_for(lambda: len(first.consumer.assignment()) == 1, timeout=60)
        wait_for(lambda: len(first.consumer.assignment()) == 2, timeout=60)
        kafka.produce(topic, (b"ok:" for _ in range(10)))
        wait_for(lambda: len(read_store(store)) == 10, timeout=60)
        assert first.consumer.worker_pids() == pids
        assert first.consumer.counters.worker_crashes == 0


def test_task_timeout_kills_only_the_stuck_worker(kafka: KafkaTestEnv, tmp_path: Path) -> None:
    topic = kafka.create_topic("timeout", partitions=2)
    store = str(tmp_path / "store.jsonl")
    config = make_config(kafka, [topic], task_timeout=3.0)
    with ThreadedConsumer(config, functools.partial(scripted, store)) as running:
        kafka.produce(topic, [b"hang:"], partition=0)
        hang = wait_for(lambda: read_store(store, "start"), timeout=60)[0]
        # start a 2 s record on the other worker so that it is running when the hang is killed
        wait_for(lambda: time.time() - hang["time"] >= 1.2, timeout=5)
        kafka.produce(topic, [b"slow:2:"], partition=1)
        wait_for(lambda: len(read_store(store, "start")) == 2, timeout=30)
        slow_pid = read_store(store, "start")[1]["pid"]
        wait_for(lambda: kafka.committed(config.group_id, topic) == {0: 1, 1: 1}, timeout=30)
        assert running.consumer.counters.worker_kills == {"task-timeout": 1}
        assert slow_pid in running.consumer.worker_pids(), "the other worker was not touched"
        summary = running.stop()
    done = read_store(store)
    assert [(e["partition"], e["pid"]) for e in done] == [(1, slow_pid)]
    assert summary.records_failed == 1 and summary.records_ok == 1


def test_lost_heartbeat_kills_a_wedged_worker_and_fails_the_record(
    kafka: KafkaTestEnv, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    topic = kafka.create_topic("wedged", partitions=1)
    kafka.produce(topic, [b"gilhang:", b"ok:"])
    store = str(tmp_path / "store.jsonl")
    config = make_config(kafka, [topic], heartbeat_timeout=2.0)
    caplog.set_level(logging.ERROR, logger="procpool_kafka")
    with ThreadedConsumer(config, functools.partial(scripted, store)) as running:
        wait_for(lambda: kafka.committed(config.group_id, topic) == {0: 2}, timeout=60)
        assert running.consumer.counters.worker_kills == {"heartbeat-lost": 1}
        summary = running.stop()
    assert summary.records_failed == 1 and summary.records_ok == 1
    assert "procpool_kafka.errors.WorkerLost" in caplog.text


# ---------------------------------------------------------------------- clear errors


def test_missing_topic_is_a_clear_error(kafka: KafkaTestEnv, tmp_path: Path) -> None:
    from procpool_kafka import TopicNotFoundError

    existing = kafka.create_topic("exists")
    missing = unique_name("missing")
    config = make_config(kafka, [existing, missing])
    consumer = ProcPoolConsumer(config, functools.partial(plain, str(tmp_path / "s")))
    with pytest.raises(TopicNotFoundError, match=missing) as raised:
        consumer.open()
    assert existing not in str(raised.value)
    consumer.close()


def test_unreachable_broker_is_named_within_the_timeout(tmp_path: Path) -> None:
    from procpool_kafka import BrokerUnavailableError

    config = ConsumerConfig(
        bootstrap_servers="127.0.0.1:9", group_id="g", topics=["t"], connect_timeout=2
    )
    consumer = ProcPoolConsumer(config, functools.partial(plain, str(tmp_path / "s")))
    started = time.monotonic()
    with pytest.raises(BrokerUnavailableError, match=r"127\.0\.0\.1:9"):
        consumer.open()
    assert time.monotonic() - started < 15
    consumer.close()


def test_invalid_librdkafka_setting_is_a_config_error(kafka: KafkaTestEnv, tmp_path: Path) -> None:
    from procpool_kafka import ConfigError

    topic = kafka.create_topic("badcfg")
    config = make_config(kafka, [topic], kafka_config={"no.such.setting": "1"})
    consumer = ProcPoolConsumer(config, functools.partial(plain, str(tmp_path / "s")))
    with pytest.raises(ConfigError, match=r"no\.such\.setting"):
        consumer.open()
    consumer.close()


def test_password_never_logged(
    kafka: KafkaTestEnv, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    from procpool_kafka import BrokerUnavailableError

    secret = "s3cr3t-" + unique_name("pw")
    config = ConsumerConfig(
        bootstrap_servers="127.0.0.1:9",
        group_id="g",
        topics=["t"],
        connect_timeout=2,
        kafka_config={
            "security.protocol": "SASL_PLAINTEXT",
            "sasl.mechanism": "SCRAM-SHA-512",
            "sasl.username": "u",
            "sasl.password": secret,
        },
    )
    caplog.set_level(logging.DEBUG)
    consumer = ProcPoolConsumer(config, functools.partial(plain, str(tmp_path / "s")))
    with pytest.raises(BrokerUnavailableError) as raised:
        consumer.open()
    consumer.close()
    assert secret not in caplog.text
    assert secret not in str(raised.value)
    assert secret not in repr(config) and secret not in repr(consumer)
