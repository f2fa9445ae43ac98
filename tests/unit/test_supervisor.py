"""Supervisor: which running records are overdue, and for which reason."""

from __future__ import annotations

from collections.abc import Callable

from procpool_kafka.errors import TaskTimeout, WorkerLost
from procpool_kafka.records import Record, RunningRecord, TopicPartition
from procpool_kafka.supervisor import KILL_SETTLE_SECONDS, KillReason, Supervisor

TP = TopicPartition("t", 0)
OTHER = TopicPartition("t", 1)


def running(tp: TopicPartition = TP, started: float = 0.0, heartbeat: float = 0.0) -> RunningRecord:
    record = Record(tp.topic, tp.partition, 7, None, b"v")
    return RunningRecord(
        pid=100 + tp.partition,
        task_id=1,
        record=record,
        started_at=started,
        last_heartbeat=heartbeat,
    )


def always_owned(_tp: TopicPartition) -> bool:
    return True


def never_owned(_tp: TopicPartition) -> bool:
    return False


def reasons(
    supervisor: Supervisor,
    items: list[RunningRecord],
    now: float,
    owned: Callable[[TopicPartition], bool] = always_owned,
) -> list[KillReason]:
    return [order.reason for order in supervisor.overdue(items, now, owned)]


def test_nothing_is_overdue_without_deadlines() -> None:
    assert reasons(Supervisor(None, None), [running()], now=1e9) == []


def test_task_timeout_and_heartbeat_loss() -> None:
    supervisor = Supervisor(task_timeout=10.0, heartbeat_timeout=3.0)
    assert reasons(supervisor, [running(heartbeat=5.0)], now=7.0) == []
    assert reasons(supervisor, [running(heartbeat=5.0)], now=8.5) == [KillReason.HEARTBEAT_LOST]
    assert reasons(supervisor, [running(heartbeat=10.0)], now=10.5) == [KillReason.TASK_TIMEOUT]


def test_a_heartbeat_from_before_the_start_does_not_count_against_the_record() -> None:
    supervisor = Supervisor(task_timeout=None, heartbeat_timeout=3.0)
    # the slot's last stamp is from the previous record: the clock starts at this start
    assert reasons(supervisor, [running(started=100.0, heartbeat=1.0)], now=102.0) == []


def test_a_drain_deadline_kills_the_partitions_running_work_with_its_reason() -> None:
    supervisor = Supervisor(None, None)
    supervisor.start_drain({TP}, deadline=30.0, reason=KillReason.REVOKE_TIMEOUT)
    items = [running(TP), running(OTHER)]
    assert reasons(supervisor, items, now=29.9) == []
    orders = supervisor.overdue(items, 30.0, always_owned)
    assert [(o.pid, o.reason, o.running) for o in orders] == [
        (items[0].pid, KillReason.REVOKE_TIMEOUT, items[0])
    ]
    supervisor.end_drain({TP})
    assert reasons(supervisor, items, now=100.0) == []


def test_task_timeout_comes_before_the_drain_deadline() -> None:
    supervisor = Supervisor(task_timeout=5.0, heartbeat_timeout=None)
    supervisor.start_drain({TP}, deadline=30.0, reason=KillReason.STOP_TIMEOUT)
    assert reasons(supervisor, [running()], now=6.0) == [KillReason.TASK_TIMEOUT]
    assert reasons(supervisor, [running()], now=31.0) == [KillReason.TASK_TIMEOUT]


def test_a_forced_stop_moves_the_drain_deadline_to_now_never_later() -> None:
    supervisor = Supervisor(None, None)
    supervisor.start_drain({TP}, deadline=30.0, reason=KillReason.STOP_TIMEOUT)
    supervisor.hurry_drain({TP}, now=2.0)
    assert reasons(supervisor, [running()], now=2.0) == [KillReason.STOP_TIMEOUT]
    supervisor.hurry_drain({TP}, now=50.0)
    assert supervisor.drain_given_up({TP}, 2.0 + KILL_SETTLE_SECONDS)


def test_a_drain_gives_up_kill_settle_seconds_after_its_deadline() -> None:
    supervisor = Supervisor(None, None)
    assert not supervisor.drain_given_up({TP}, 1e9)  # no drain: never
    supervisor.start_drain({TP}, deadline=10.0, reason=KillReason.REVOKE_TIMEOUT)
    assert not supervisor.drain_given_up({TP}, 10.0 + KILL_SETTLE_SECONDS - 0.1)
    assert supervisor.drain_given_up({TP}, 10.0 + KILL_SETTLE_SECONDS)
    assert not supervisor.drain_given_up({OTHER}, 1e9)


def test_work_of_a_lost_partition_is_killed_after_its_grace_only() -> None:
    supervisor = Supervisor(task_timeout=1.0, heartbeat_timeout=1.0)
    supervisor.orphan({TP}, deadline=20.0)
    # not owned: task timeout and heartbeats no longer apply, only the grace
    assert reasons(supervisor, [running()], now=19.0, owned=never_owned) == []
    assert reasons(supervisor, [running()], now=20.0, owned=never_owned) == [
        KillReason.PARTITION_LOST
    ]


def test_an_adopted_partition_has_no_orphan_deadline() -> None:
    supervisor = Supervisor(None, None)
    supervisor.orphan({TP}, deadline=20.0)
    supervisor.adopt({TP})
    assert reasons(supervisor, [running()], now=50.0, owned=never_owned) == []


def test_orphan_deadlines_are_pruned_once_nothing_runs_but_drains_are_not() -> None:
    supervisor = Supervisor(None, None)
    supervisor.orphan({TP}, deadline=20.0)
    supervisor.start_drain({OTHER}, deadline=20.0, reason=KillReason.REVOKE_TIMEOUT)
    supervisor.prune_orphans([])
    assert reasons(supervisor, [running(TP)], now=50.0, owned=never_owned) == []
    assert reasons(supervisor, [running(OTHER)], now=50.0) == [KillReason.REVOKE_TIMEOUT]


def test_kill_reasons_map_to_failures_only_for_the_records_own_fault() -> None:
    assert KillReason.TASK_TIMEOUT.failure is TaskTimeout
    assert KillReason.HEARTBEAT_LOST.failure is WorkerLost
    for reason in (KillReason.REVOKE_TIMEOUT, KillReason.STOP_TIMEOUT, KillReason.PARTITION_LOST):
        assert reason.failure is None
