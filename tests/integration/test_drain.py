"""Revoke and stop drains on a real broker: what runs meanwhile, what is collected, and when.

A drain (the running work of partitions being revoked, or of all at a stop) shares the loop's
service step: kept partitions stay supervised, snapshots stay fresh, results already produced
count before the commit, and a record whose worker dies mid-drain goes to the next owner.
"""

from __future__ import annotations

import collections
import functools
import time
from pathlib import Path
from typing import Any

from procpool_kafka import ConsumerConfig
from tests.integration.handlers import plain, read_store, scripted
from tests.integration.runner import ThreadedConsumer, consumer_config
from tests.kafka_helpers import KafkaTestEnv, wait_for


def make_config(
    kafka: KafkaTestEnv, topics: list[str], group_protocol: str = "classic", **overrides: Any
) -> ConsumerConfig:
    return consumer_config(kafka.bootstrap, topics, group_protocol, **overrides)


def test_revoke_drain_keeps_supervising_the_kept_partitions(
    kafka: KafkaTestEnv, tmp_path: Path, group_protocol: str
) -> None:
    topic = kafka.create_topic("drain-supervise", partitions=2)
    for partition in (0, 1):
        kafka.produce(topic, [b"hang:"], partition=partition)
    store, other = str(tmp_path / "a.jsonl"), str(tmp_path / "b.jsonl")
    config = make_config(kafka, [topic], group_protocol, task_timeout=8.0, revoke_timeout=60.0)
    with ThreadedConsumer(config, functools.partial(scripted, store)) as first:
        wait_for(lambda: len(read_store(store, "start")) == 2, timeout=60)
        rebalances = first.consumer.counters.rebalances
        with ThreadedConsumer(config, functools.partial(plain, other)):
            # the join revokes one partition: its hang keeps the drain going (up to 60 s)
            wait_for(lambda: first.consumer.counters.rebalances > rebalances, timeout=60)
            # both hangs outlive task_timeout during that drain: both are killed for it,
            # the kept one too, long before the drain's own deadline
            wait_for(
                lambda: first.consumer.counters.worker_kills["task-timeout"] == 2,
                timeout=30,
                message="task-timeout kills during the drain",
            )
            assert first.consumer.counters.worker_kills["revoke-timeout"] == 0


def test_snapshots_stay_fresh_during_a_long_stop_drain(kafka: KafkaTestEnv, tmp_path: Path) -> None:
    topic = kafka.create_topic("drain-fresh", partitions=1)
    kafka.produce(topic, [b"hang:"])
    store = str(tmp_path / "store.jsonl")
    config = make_config(kafka, [topic], revoke_timeout=20.0)
    running = ThreadedConsumer(config, functools.partial(scripted, store)).start()
    try:
        wait_for(lambda: read_store(store, "start"), timeout=60)
        stopping = time.time()
        running.consumer.stop()

        def fresh_late_snapshot() -> bool:
            snap = running.consumer.snapshot()
            return snap is not None and snap.running and snap.taken_at > stopping + 5

        # five seconds into the drain, run() is still draining and the state still published
        wait_for(fresh_late_snapshot, timeout=15, message="a snapshot published mid-drain")
    finally:
        running.stop()
    assert running.consumer.counters.worker_kills == {"stop-timeout": 1}


def test_records_finished_before_a_revoke_are_not_handled_again(
    kafka: KafkaTestEnv, tmp_path: Path, group_protocol: str
) -> None:
    """20 rebalances while 10 ms handlers run in batches (tasks of several records, some
    cancelled half-way); every handler finishes well within revoke_timeout."""
    topic = kafka.create_topic("drain-dup", partitions=4)
    stores = [tmp_path / f"member-{i}.jsonl" for i in range(11)]
    config = make_config(kafka, [topic], group_protocol, revoke_timeout=30.0)
    produced = 0
    with ThreadedConsumer(config, functools.partial(scripted, str(stores[0]))):
        for round_ in range(1, 11):
            for partition in range(4):
                produced += kafka.produce(topic, [b"slow:0.01:"] * 100, partition=partition)
            joiner = ThreadedConsumer(config, functools.partial(scripted, str(stores[round_])))
            with joiner:  # joins (a rebalance while handlers run), then leaves (another)
                wait_for(joiner.consumer.assignment, timeout=60, message=f"round {round_}")
        wait_for(lambda: kafka.fully_committed(config.group_id, topic), timeout=120)
    handled = collections.Counter(
        (entry["partition"], entry["offset"]) for store in stores for entry in read_store(store)
    )
    assert len(handled) == produced, "every record handled"
    twice = {coordinates: n for coordinates, n in handled.items() if n > 1}
    assert twice == {}, "a record finished before a revoke was handled again"


def test_a_worker_dying_mid_drain_hands_its_record_to_the_next_owner(
    kafka: KafkaTestEnv, tmp_path: Path, group_protocol: str
) -> None:
    topic = kafka.create_topic("drain-crash", partitions=2)
    for partition in (0, 1):
        kafka.produce(topic, [b"crashafter:4:"], partition=partition)
    store, other = str(tmp_path / "a.jsonl"), str(tmp_path / "b.jsonl")
    config = make_config(kafka, [topic], group_protocol, revoke_timeout=30.0, crash_limit=2)
    with ThreadedConsumer(config, functools.partial(scripted, store)):
        wait_for(lambda: len(read_store(store, "start")) == 2, timeout=60)
        with ThreadedConsumer(config, functools.partial(plain, other)) as second:
            handled = wait_for(lambda: read_store(other), timeout=60, message="moved record")
            moved = handled[0]["partition"]
            assert second.consumer.assignment() == [(topic, moved)]
            starts = [e for e in read_store(store, "start") if e["partition"] == moved]
            assert len(starts) == 1, "the revoked record was not dispatched again here"
            wait_for(lambda: kafka.fully_committed(config.group_id, topic), timeout=60)
