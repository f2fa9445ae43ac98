"""The fault-injection run: the evidence that procpool-kafka loses nothing.

Against a private real broker, a topic of N messages (CI: 2000, full: --chaos-messages 20000)
over 8 partitions: 10 % transient failures, 1 % poison, a few hanging, crashing, segfaulting
and memory-leaking handlers. While members of one group (separate processes) work through
it, the run SIGKILLs random pool workers, SIGKILLs a whole consumer process three times
(restarting it), lets a second and a third member join and leave (rebalance storm), and
restarts the broker once. At the end: every message succeeded or is in the dead-letter
topic, exactly the poison messages are dead-lettered, none is lost, duplicates are counted,
no partition is left paused and the committed offsets equal the end offsets.
"""

from __future__ import annotations

import json
import os
import random
import signal
import sqlite3
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil
import pytest

from tests.chaos.handler import connect
from tests.conftest import PrivateBroker
from tests.kafka_helpers import KafkaTestEnv, unique_name, wait_for

pytestmark = pytest.mark.chaos

REPO = Path(__file__).resolve().parents[2]
PARTITIONS = 8


def kinds_for(count: int, rng: random.Random) -> list[str]:
    """The behaviour of each message: 10 % transient, 1 % poison, a few of each fault."""
    kinds = ["ok"] * count
    special = rng.sample(range(count), count // 10 + count // 100 + 5 + 5 + 2 + 3)
    plan = (
        ["transient"] * (count // 10)
        + ["poison"] * (count // 100)
        + ["hang"] * 5
        + ["crash"] * 5
        + ["segfault"] * 2
        + ["leak"] * 3
    )
    for index, kind in zip(special, plan, strict=True):
        kinds[index] = kind
    return kinds


@dataclass
class Member:
    """One group member process."""

    name: str
    settings: dict[str, Any]
    workdir: Path
    process: subprocess.Popen[bytes] | None = None
    starts: int = 0

    @property
    def status_file(self) -> Path:
        return self.workdir / f"{self.name}.status.json"

    def start(self) -> None:
        self.starts += 1
        log = (self.workdir / f"{self.name}.log").open("ab")
        self.process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "tests.chaos.member",
                json.dumps(self.settings),
                str(self.status_file),
            ],
            cwd=REPO,
            stdout=log,
            stderr=subprocess.STDOUT,
            env={**self.settings["env"]},
        )

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def status(self) -> dict[str, Any]:
        try:
            status: dict[str, Any] = json.loads(self.status_file.read_text())
        except (FileNotFoundError, json.JSONDecodeError):
            return {}
        return status

    def worker_pids(self) -> list[int]:
        if self.process is None:
            return []
        try:
            children = psutil.Process(self.process.pid).children()
        except psutil.NoSuchProcess:
            return []
        return [child.pid for child in children]

    def sigkill(self) -> None:
        assert self.process is not None
        self.process.kill()
        self.process.wait(timeout=30)

    def stop(self) -> int:
        if self.process is None or self.process.poll() is not None:
            return 0 if self.process is None else self.process.returncode
        self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(timeout=120)
        except subprocess.TimeoutExpired:
            self.process.kill()  # leave no orphan behind (its workers die with it)
            self.process.wait(timeout=30)
            raise


@dataclass
class Faults:
    worker_kills: int = 0
    consumer_kills: int = 0
    joins: int = 0
    leaves: int = 0
    broker_restarts: int = 0
    log: list[str] = field(default_factory=list)

    def note(self, what: str) -> None:
        self.log.append(f"{time.strftime('%H:%M:%S')} {what}")


def successes(store: Path) -> Counter[int]:
    with sqlite3.connect(store, timeout=60) as connection:
        rows = connection.execute("SELECT id FROM done").fetchall()
    return Counter(row[0] for row in rows)


def probe_every_partition(kafka: KafkaTestEnv, topics: list[str], first_id: int) -> set[int]:
    """Produce one "ok" message to each partition of ``topics``; return their ids. (On the
    retry topic it carries no retry headers: handled at once, as a last attempt.)"""
    ids: set[int] = set()
    for topic in topics:
        for partition in kafka.partitions(topic):
            message_id = first_id + len(ids)
            value = json.dumps({"id": message_id, "kind": "ok"}).encode()
            kafka.produce(topic, [value], partition=partition)
            ids.add(message_id)
    return ids


def dead_lettered(kafka: KafkaTestEnv, dlq: str) -> Counter[int]:
    total = sum(kafka.end_offsets(dlq).values())
    messages = kafka.consume_all(dlq, expected=total, timeout=60)
    return Counter(json.loads(m.value() or b"{}")["id"] for m in messages)


def test_chaos_run_loses_nothing(
    private_broker: PrivateBroker, tmp_path: Path, pytestconfig: pytest.Config, group_protocol: str
) -> None:
    count: int = pytestconfig.getoption("--chaos-messages")
    rng = random.Random(20261128)
    kafka = KafkaTestEnv(private_broker.bootstrap)
    topic = unique_name("chaos")
    kafka.create_named_topic(topic, PARTITIONS)
    kafka.create_named_topic(f"{topic}-retry", PARTITIONS)
    kafka.create_named_topic(f"{topic}-dlq", PARTITIONS)
    kinds = kinds_for(count, rng)
    producer = kafka.producer()
    for message_id, kind in enumerate(kinds):
        value = json.dumps({"id": message_id, "kind": kind}).encode()
        producer.produce(topic, value=value, key=str(message_id).encode())
        if message_id % 1000 == 0:
            producer.poll(0)
    assert producer.flush(60) == 0
    del producer  # it would only complain about the broker restart
    store = tmp_path / "store.sqlite"
    connect(str(store)).close()
    settings: dict[str, Any] = {
        "bootstrap": private_broker.bootstrap,
        "group": unique_name("chaos-group"),
        "topic": topic,
        "group_protocol": group_protocol,
        "env": {**os.environ, "CHAOS_STORE": str(store)},
    }
    poison = {i for i, kind in enumerate(kinds) if kind == "poison"}
    expected_ok = set(range(count)) - poison
    members = {name: Member(name, settings, tmp_path) for name in ("a", "b", "c")}
    faults = Faults()
    members["a"].start()

    def progress() -> float:
        return len(set(successes(store)) & expected_ok) / len(expected_ok)

    def at_least(fraction: float) -> Callable[[], bool]:
        return lambda: progress() >= fraction

    # (fraction of successes reached, action) — the storm, in order
    def kill_worker() -> None:
        alive = [m for m in members.values() if m.alive() and m.worker_pids()]
        if alive:
            victim = rng.choice(rng.choice(alive).worker_pids())
            try:
                psutil.Process(victim).kill()
                faults.worker_kills += 1
                faults.note(f"SIGKILL worker {victim}")
            except psutil.NoSuchProcess:
                pass

    def kill_consumer() -> None:
        members["a"].sigkill()
        faults.consumer_kills += 1
        faults.note("SIGKILL consumer a; restarting it")
        members["a"].start()

    def join(name: str) -> None:
        members[name].start()
        faults.joins += 1
        faults.note(f"member {name} joins")

    def leave(name: str) -> None:
        assert members[name].stop() == 0
        faults.leaves += 1
        faults.note(f"member {name} leaves")

    def restart_broker() -> None:
        private_broker.restart()
        faults.broker_restarts += 1
        faults.note("broker restarted")

    plan: list[tuple[float, Any]] = [
        (0.05, kill_worker),
        (0.10, lambda: join("b")),
        (0.15, kill_worker),
        (0.20, kill_consumer),
        (0.25, lambda: join("c")),
        (0.30, kill_worker),
        (0.35, lambda: leave("b")),
        (0.40, kill_consumer),
        (0.45, restart_broker),
        (0.50, kill_worker),
        (0.55, lambda: leave("c")),
        (0.60, kill_worker),
        (0.65, kill_consumer),
        (0.75, kill_worker),
    ]
    deadline = time.monotonic() + 60 + count * 0.02
    try:
        for threshold, action in plan:
            wait_for(at_least(threshold), timeout=deadline - time.monotonic())
            action()
        wait_for(
            lambda: set(successes(store)) >= expected_ok,
            timeout=max(10.0, deadline - time.monotonic()),
            message="every non-poison message succeeded",
        )
        dlq = f"{topic}-dlq"
        wait_for(
            lambda: set(dead_lettered(kafka, dlq)) >= poison,
            timeout=60,
            message="every poison message dead-lettered",
        )
        # the survivor finishes its commits; nothing of it stays paused
        wait_for(
            lambda: (
                kafka.fully_committed(settings["group"], topic)
                and kafka.fully_committed(settings["group"], f"{topic}-retry")
            ),
            timeout=60,
            message="committed offsets reach the end offsets",
        )
        wait_for(
            lambda: (
                members["a"].status().get("paused") == []
                and len(members["a"].status().get("assignment", [])) == 2 * PARTITIONS
            ),
            timeout=30,
            message="no partition left paused (our bookkeeping)",
        )
        # and librdkafka's own state: one probe record per partition of the base and the
        # retry topic must be fetched and handled, so no partition is left paused there
        probes = probe_every_partition(kafka, [topic, f"{topic}-retry"], first_id=count)
        wait_for(
            lambda: set(successes(store)) >= probes,
            timeout=60,
            message="a probe record handled on every partition (fetching everywhere)",
        )
    finally:
        for member in members.values():
            if member.alive():
                member.stop()
        (tmp_path / "faults.log").write_text("\n".join(faults.log))

    done = successes(store)
    dead = dead_lettered(kafka, f"{topic}-dlq")
    lost = set(range(count)) - set(done) - set(dead)
    duplicates = sum(n - 1 for n in done.values() if n > 1)
    print(
        f"\nchaos: messages={count} lost={len(lost)} duplicates={duplicates} "
        f"dead-lettered={len(set(dead))} faults: worker-kills={faults.worker_kills} "
        f"consumer-kills={faults.consumer_kills} joins={faults.joins} leaves={faults.leaves} "
        f"broker-restarts={faults.broker_restarts} "
        + " ".join(f"{k}={kinds.count(k)}" for k in ("transient", "poison", "hang", "crash"))
        + f" segfault={kinds.count('segfault')} leak={kinds.count('leak')}"
    )
    assert not lost, f"lost messages: {sorted(lost)[:20]}"
    assert set(dead) == poison, "exactly the poison messages are dead-lettered"
    assert set(done).isdisjoint(poison)
    assert faults.consumer_kills == 3 and faults.broker_restarts == 1
    assert kafka.fully_committed(settings["group"], topic)
    assert kafka.fully_committed(settings["group"], f"{topic}-retry")
    assert kafka.group_protocol(settings["group"]) == group_protocol
