"""WorkerPool: real worker processes, no Kafka.

Handlers live in tests/unit/pool_handlers.py (importable by the workers) or are
lambdas/closures (cloudpickled). Every wait polls a condition with a deadline
through ``collect_until``; no bare sleep is used as synchronisation.
"""

from __future__ import annotations

import functools
import json
import os
import random
import select
import signal
import subprocess
import sys
import textwrap
import threading
import time
import types
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest

from procpool_kafka.errors import ConfigError, HandlerLoadError
from procpool_kafka.pool import (
    PoolEvent,
    RecordAborted,
    RecordFinished,
    RunningRecord,
    WorkerPool,
)
from procpool_kafka.records import Record
from tests.unit.pool_handlers import (
    AsyncCallable,
    KilledAtLoad,
    command,
    returns_awaitable,
    returns_coroutine,
    touch_after_await,
)

REPO = Path(__file__).resolve().parents[2]
Events = list[PoolEvent]
PoolFactory = Callable[..., WorkerPool]


def rec(value: str, offset: int = 0, partition: int = 0) -> Record:
    return Record("t", partition, offset, None, value.encode())


def collect_until(
    pool: WorkerPool,
    predicate: Callable[[Events], bool],
    timeout: float = 20.0,
    events: Events | None = None,
) -> Events:
    """Collect events into ``events`` until ``predicate(events)``; fail at the deadline."""
    events = [] if events is None else events
    deadline = time.monotonic() + timeout
    while not predicate(events):
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout} s; events: {events}")
        events.extend(pool.collect(0.02))
    return events


def all_done(pool: WorkerPool) -> Callable[[Events], bool]:
    return lambda _events: pool.outstanding() == 0


def running_offsets(pool: WorkerPool) -> dict[int, RunningRecord]:
    return {entry.record.offset: entry for entry in pool.running()}


def by_offset(events: Events) -> dict[int, PoolEvent]:
    counts = Counter(event.record.offset for event in events)
    duplicated = [offset for offset, count in counts.items() if count > 1]
    assert not duplicated, f"records reported more than once: {duplicated}; {events}"
    return {event.record.offset: event for event in events}


def finished_ok(event: PoolEvent) -> bool:
    return isinstance(event, RecordFinished) and event.error is None


def gone(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


@pytest.fixture
def make_pool() -> Iterator[PoolFactory]:
    pools: list[WorkerPool] = []

    def factory(
        handler: Callable[[Record], object] = command, workers: int = 2, **options: Any
    ) -> WorkerPool:
        pool = WorkerPool(handler, workers, **options)
        pools.append(pool)
        pool.start(timeout=30.0)
        return pool

    yield factory
    for pool in pools:
        pool.terminate()


@pytest.fixture
def release(tmp_path: Path) -> Path:
    """A file a ``waitfile:`` record waits for; create it to let the record finish."""
    return tmp_path / "release"


# --------------------------------------------------------------------------- outcomes


def test_ok_and_failing_records_of_one_batch_report_separately(make_pool: PoolFactory) -> None:
    pool = make_pool()
    task_id = pool.submit([rec("ok", 0), rec("fail:boom", 1), rec("ok", 2)])
    assert pool.outstanding() == 3
    events = by_offset(collect_until(pool, all_done(pool)))

    assert sorted(events) == [0, 1, 2]
    assert all(isinstance(event, RecordFinished) for event in events.values())
    assert finished_ok(events[0])
    assert finished_ok(events[2])
    failed = events[1]
    assert isinstance(failed, RecordFinished)
    assert failed.error is not None
    assert failed.error.type_name == "builtins.ValueError"
    assert failed.error.type_names == (
        "builtins.ValueError",
        "builtins.Exception",
        "builtins.BaseException",
    ), "the class and its bases, for retry policies that name a base class"
    assert failed.error.message == "boom"
    assert "ValueError: boom" in failed.error.traceback
    assert "pool_handlers.py" in failed.error.traceback
    assert "_run_task" not in failed.error.traceback, "the worker's own frame is left out"
    assert {event.task_id for event in events.values()} == {task_id}
    assert len({event.pid for event in events.values()}) == 1
    assert all(isinstance(e, RecordFinished) and e.duration >= 0 for e in events.values())
    assert pool.outstanding() == 0


def test_lambda_closure_handler_is_cloudpickled(make_pool: PoolFactory) -> None:
    marker = "closure-marker"
    pool = make_pool(lambda record: int(marker) if record.value == b"int" else None)
    pool.submit([rec("ok", 0), rec("int", 1)])
    events = by_offset(collect_until(pool, all_done(pool)))
    assert finished_ok(events[0])
    failed = events[1]
    assert isinstance(failed, RecordFinished) and failed.error is not None
    assert "closure-marker" in failed.error.message, "the captured variable reached the worker"


def test_unpicklable_exception_is_reported_as_strings(make_pool: PoolFactory) -> None:
    pool = make_pool(workers=1)
    pool.submit([rec("unpicklable", 0)])
    pool.submit([rec("ok", 1)])
    events = by_offset(collect_until(pool, all_done(pool)))
    failed = events[0]
    assert isinstance(failed, RecordFinished) and failed.error is not None
    assert failed.error.type_name == "tests.unit.pool_handlers.UnpicklableError"
    assert failed.error.message == "holds a lock"
    assert finished_ok(events[1])
    assert events[1].pid == failed.pid, "the worker survived"
    assert pool.restarts() == {"crashed": 0, "killed": 0, "recycled": 0}


def test_sys_exit_in_handler_is_a_failure_and_the_worker_survives(
    make_pool: PoolFactory,
) -> None:
    pool = make_pool()
    pool.submit([rec("sysexit", 0), rec("ok", 1)])
    events = by_offset(collect_until(pool, all_done(pool)))
    failed = events[0]
    assert isinstance(failed, RecordFinished) and failed.error is not None
    assert failed.error.type_name == "builtins.SystemExit"
    assert failed.error.message == "3"
    assert finished_ok(events[1])
    assert events[1].pid == failed.pid
    assert failed.pid in pool.pids()
    assert pool.restarts()["crashed"] == 0


def test_handler_may_start_processes_of_its_own(make_pool: PoolFactory) -> None:
    pool = make_pool(workers=1)
    pool.submit([rec("mpchild", 0)])
    (event,) = collect_until(pool, all_done(pool))
    assert finished_ok(event), event


def test_long_messages_and_tracebacks_are_truncated(make_pool: PoolFactory) -> None:
    pool = make_pool(workers=1)
    pool.submit([rec("fail:" + "x" * 10_000, 0)])
    (event,) = collect_until(pool, all_done(pool))
    assert isinstance(event, RecordFinished) and event.error is not None
    assert len(event.error.message) <= 4096
    assert event.error.message.startswith("xxxx")
    assert len(event.error.traceback) <= 64 * 1024


# --------------------------------------------------------------------------- async handlers

ASYNC_SHAPES = {
    "async-def": touch_after_await,
    "partial-of-async-def": functools.partial(touch_after_await, suffix=".partial"),
    "async-call-method": AsyncCallable(),
    "sync-returning-coroutine": returns_coroutine,
    "sync-returning-awaitable": returns_awaitable,
}


@pytest.mark.parametrize("shape", list(ASYNC_SHAPES))
def test_async_handlers_run_to_completion(
    make_pool: PoolFactory, tmp_path: Path, shape: str
) -> None:
    handler = ASYNC_SHAPES[shape]
    suffix = ".partial" if shape == "partial-of-async-def" else ""
    pool = make_pool(handler, workers=1)
    paths = [tmp_path / f"record-{offset}" for offset in range(3)]
    pool.submit([rec(str(path), offset) for offset, path in enumerate(paths)])
    pool.submit([rec("fail:after an await", 3)])
    events = by_offset(collect_until(pool, all_done(pool)))

    for offset, path in enumerate(paths):
        assert finished_ok(events[offset]), events[offset]
        marker = Path(str(path) + suffix)
        assert marker.exists(), "the coroutine's body ran"
    loops = {Path(str(path) + suffix).read_text() for path in paths}
    assert len(loops) == 1, "one event loop per worker, reused across records"
    failed = events[3]
    assert isinstance(failed, RecordFinished) and failed.error is not None
    assert failed.error.type_name == "builtins.ValueError"
    assert failed.error.message == "after an await"
    assert "touch_after_await" in failed.error.traceback
    assert "asyncio" not in failed.error.traceback, "the traceback starts in the handler"
    assert "awaitables.py" not in failed.error.traceback
    assert pool.restarts() == {"crashed": 0, "killed": 0, "recycled": 0}


def test_the_event_loop_is_closed_when_the_worker_exits(
    make_pool: PoolFactory, tmp_path: Path
) -> None:
    cancelled = tmp_path / "cancelled"
    pool = make_pool(touch_after_await, workers=1)
    pool.submit([rec(f"background:{cancelled}", 0)])
    (event,) = collect_until(pool, all_done(pool))
    assert finished_ok(event)
    assert not cancelled.exists(), "the task the handler left runs on while the worker lives"
    pool.close(timeout=10.0)
    assert cancelled.exists(), "closing the loop at exit cancelled the task"


def test_async_handler_is_supervised_like_a_sync_one(make_pool: PoolFactory) -> None:
    pool = make_pool(touch_after_await, workers=1, heartbeat_interval=0.05)
    task_id = pool.submit([rec("sleep:1000", 0)])
    collect_until(pool, lambda _: 0 in running_offsets(pool))
    first = running_offsets(pool)[0]
    assert first.task_id == task_id
    collect_until(
        pool, lambda _: running_offsets(pool)[0].last_heartbeat >= first.last_heartbeat + 0.3
    )
    assert pool.kill(first.pid, "task timeout")
    (aborted,) = collect_until(pool, all_done(pool))
    assert isinstance(aborted, RecordAborted)
    assert (aborted.killed, aborted.reason, aborted.pid) == (True, "task timeout", first.pid)


# --------------------------------------------------------------------------- crashes


@pytest.mark.parametrize(
    ("value", "reason"),
    [("_exit:3", "exit code 3"), ("segv", "signal SIGSEGV")],
    ids=["os._exit", "segfault"],
)
def test_worker_death_aborts_its_record_and_a_replacement_starts(
    make_pool: PoolFactory, value: str, reason: str
) -> None:
    pool = make_pool()
    first_pids = set(pool.pids())
    pool.submit([rec(value, 0)])
    for offset in range(1, 9):
        pool.submit([rec("ok", offset)])
    events = by_offset(collect_until(pool, all_done(pool)))

    assert sorted(events) == list(range(9)), "every record ends in exactly one event"
    aborted = events[0]
    assert isinstance(aborted, RecordAborted)
    assert aborted.killed is False
    assert aborted.reason == reason
    assert aborted.pid in first_pids
    assert all(finished_ok(events[offset]) for offset in range(1, 9))
    assert pool.restarts() == {"crashed": 1, "killed": 0, "recycled": 0}
    collect_until(pool, lambda _: len(pool.pids()) == 2)
    assert aborted.pid not in pool.pids()
    assert len(set(pool.pids()) - first_pids) == 1, "one replacement, the other worker kept"


def test_sigkill_from_outside_is_a_crash(make_pool: PoolFactory, release: Path) -> None:
    pool = make_pool()
    pool.submit([rec(f"waitfile:{release}", 0)])
    collect_until(pool, lambda _: 0 in running_offsets(pool))
    pid = running_offsets(pool)[0].pid
    os.kill(pid, signal.SIGKILL)
    events = by_offset(collect_until(pool, all_done(pool)))
    aborted = events[0]
    assert isinstance(aborted, RecordAborted)
    assert (aborted.killed, aborted.reason, aborted.pid) == (False, "signal SIGKILL", pid)
    assert pool.restarts()["crashed"] == 1


# --------------------------------------------------------------------------- kill


def test_kill_aborts_only_the_stuck_worker(make_pool: PoolFactory, release: Path) -> None:
    pool = make_pool()
    stuck_task = pool.submit([rec("sleep:1000", 0)])
    pool.submit([rec(f"waitfile:{release}", 1)])
    collect_until(pool, lambda _: set(running_offsets(pool)) == {0, 1})
    stuck_pid = running_offsets(pool)[0].pid
    other_pid = running_offsets(pool)[1].pid
    assert stuck_pid != other_pid

    pool.kill(stuck_pid, "task timeout after 30 s")
    events = collect_until(pool, lambda events: len(events) == 1)
    (aborted,) = events
    assert isinstance(aborted, RecordAborted)
    assert aborted.task_id == stuck_task
    assert aborted.killed
    assert aborted.reason == "task timeout after 30 s"
    assert aborted.pid == stuck_pid
    assert other_pid in pool.pids(), "the healthy worker was not touched"
    assert 1 in running_offsets(pool), "its record is still running"

    release.touch()
    finished = by_offset(collect_until(pool, all_done(pool), events=events))
    assert finished_ok(finished[1])
    assert finished[1].pid == other_pid
    assert pool.restarts() == {"crashed": 0, "killed": 1, "recycled": 0}
    collect_until(pool, lambda _: len(pool.pids()) == 2)
    assert stuck_pid not in pool.pids()


def test_kill_sends_sigkill_at_once_never_sigterm(make_pool: PoolFactory, tmp_path: Path) -> None:
    marker = tmp_path / "sigterm-seen"

    def note_sigterm_and_sleep(record: Record) -> None:
        signal.signal(signal.SIGTERM, lambda *_: marker.touch())
        time.sleep(1000)

    pool = make_pool(note_sigterm_and_sleep, workers=1)
    pool.submit([rec("x", 0)])
    collect_until(pool, lambda _: 0 in running_offsets(pool))
    pid = pool.running()[0].pid
    assert pool.kill(pid, "stuck")
    assert not pool.kill(pid, "second reason is ignored")
    (aborted,) = collect_until(pool, all_done(pool))
    assert isinstance(aborted, RecordAborted)
    assert (aborted.killed, aborted.reason) == (True, "stuck")
    assert gone(pid)
    assert not marker.exists(), "the worker got SIGTERM (which workers ignore) before SIGKILL"


@pytest.mark.parametrize("next_in", ["same task", "next task"])
def test_kill_for_a_record_that_just_finished_requeues_the_next_one(
    make_pool: PoolFactory, tmp_path: Path, next_in: str
) -> None:
    # The supervisor saw record 0 overdue, but the worker finished it and started record 1
    # before the kill landed: record 1 is collateral, queued again, not aborted.
    first, second = tmp_path / "first", tmp_path / "second"
    pool = make_pool(workers=1)
    records = [rec(f"waitfile:{first}", 0), rec(f"waitfile:{second}", 1)]
    if next_in == "same task":
        task_ids = [pool.submit(records)] * 2
    else:
        task_ids = [pool.submit(records[:1]), pool.submit(records[1:])]
    collect_until(pool, lambda _: 0 in running_offsets(pool))
    target = running_offsets(pool)[0]
    first.touch()
    events = collect_until(pool, lambda _: 1 in running_offsets(pool))
    assert running_offsets(pool)[1].pid == target.pid

    assert pool.kill(target.pid, "task timeout", target)
    second.touch()  # the re-run of record 1 finishes at once
    finished = by_offset(collect_until(pool, all_done(pool), events=events))

    assert sorted(finished) == [0, 1]
    assert finished_ok(finished[0]), "the target had finished: not aborted either"
    assert finished_ok(finished[1]), "the collateral record ran again and finished"
    assert finished[1].pid != target.pid
    assert [finished[0].task_id, finished[1].task_id] == task_ids, "events match the tasks"
    assert not any(isinstance(event, RecordAborted) for event in events)
    assert pool.restarts() == {"crashed": 0, "killed": 1, "recycled": 0}


def test_kill_with_its_target_still_running_aborts_it(
    make_pool: PoolFactory, release: Path
) -> None:
    pool = make_pool(workers=1)
    pool.submit([rec(f"waitfile:{release}", 0), rec("ok", 1)])
    collect_until(pool, lambda _: 0 in running_offsets(pool))
    target = running_offsets(pool)[0]
    assert pool.kill(target.pid, "task timeout", target)
    finished = by_offset(collect_until(pool, all_done(pool)))
    aborted = finished[0]
    assert isinstance(aborted, RecordAborted)
    assert (aborted.killed, aborted.reason) == (True, "task timeout")
    assert finished_ok(finished[1]), "never started: run by the replacement"


def test_kill_unknown_pid_is_a_noop(make_pool: PoolFactory) -> None:
    pool = make_pool()
    pids = pool.pids()
    pool.kill(os.getpid(), "not a worker")
    pool.kill(2**22 + 12345, "no such process")
    assert pool.collect(0.05) == []
    assert pool.pids() == pids


def test_records_queued_behind_a_killed_task_move_to_other_workers(
    make_pool: PoolFactory, release: Path
) -> None:
    pool = make_pool()
    pool.submit([rec("sleep:1000", 0)])  # worker A runs it
    pool.submit([rec(f"waitfile:{release}", 1)])  # worker B runs it
    for offset in range(2, 10):  # 2 and 3 prefetched by A and B, the rest pending
        pool.submit([rec("ok", offset)])
    collect_until(pool, lambda _: set(running_offsets(pool)) == {0, 1})
    stuck_pid = running_offsets(pool)[0].pid

    pool.kill(stuck_pid, "timeout")
    release.touch()
    events = by_offset(collect_until(pool, all_done(pool)))

    assert sorted(events) == list(range(10)), "no record lost, none twice"
    assert isinstance(events[0], RecordAborted)
    assert all(finished_ok(events[offset]) for offset in range(1, 10))
    assert all(events[offset].pid != stuck_pid for offset in range(1, 10))


def test_kill_mid_batch_costs_only_the_running_record(make_pool: PoolFactory) -> None:
    pool = make_pool()
    values = ["ok", "ok", "ok", "sleep:1000", "ok", "ok"]
    task_id = pool.submit([rec(value, offset) for offset, value in enumerate(values)])
    collect_until(pool, lambda _: 3 in running_offsets(pool))
    stuck_pid = running_offsets(pool)[3].pid

    pool.kill(stuck_pid, "timeout")
    events = by_offset(collect_until(pool, all_done(pool)))

    assert sorted(events) == list(range(6))
    for offset in (0, 1, 2):
        assert finished_ok(events[offset]), "finished before the kill: reported OK"
        assert events[offset].pid == stuck_pid
    aborted = events[3]
    assert isinstance(aborted, RecordAborted) and aborted.killed
    for offset in (4, 5):
        assert finished_ok(events[offset]), "never started: re-run elsewhere"
        assert events[offset].pid != stuck_pid
    assert {event.task_id for event in events.values()} == {task_id}


def signals_pending(pid: int) -> bool:
    """Whether signals sent to process ``pid`` wait for delivery (False once it is dead)."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except FileNotFoundError:
        return False
    if gone(pid):
        return False
    shared = next(line for line in status.splitlines() if line.startswith("ShdPnd:"))
    return int(shared.split()[1], 16) != 0


def test_sigterm_and_sigint_leave_a_running_handler_alone(
    make_pool: PoolFactory, release: Path
) -> None:
    # What a stop of the whole process group sends (systemd, `timeout`, `kill -TERM -PGID`,
    # Ctrl-C): the parent decides how to stop; the worker finishes its record.
    pool = make_pool(workers=1)
    pool.submit([rec(f"waitfile:{release}", 0)])
    collect_until(pool, lambda _: 0 in running_offsets(pool))
    pid = pool.pids()[0]
    os.kill(pid, signal.SIGTERM)
    os.kill(pid, signal.SIGINT)
    deadline = time.monotonic() + 10.0
    while signals_pending(pid):
        assert time.monotonic() < deadline, "the signals were never delivered"
        time.sleep(0.01)  # polling the condition, not synchronising on time
    assert not gone(pid), "the worker died of the signals"
    release.touch()
    (event,) = collect_until(pool, all_done(pool))
    assert finished_ok(event)
    assert event.pid == pid
    assert pool.pids() == [pid]
    assert pool.restarts() == {"crashed": 0, "killed": 0, "recycled": 0}


def test_subprocesses_of_a_handler_get_default_sigint_and_sigterm(
    make_pool: PoolFactory, tmp_path: Path
) -> None:
    # Workers must not SIG_IGN the stop signals: a handler's own subprocesses would inherit it.
    out = tmp_path / "sigign"

    def report_child_sigign(record: Record) -> None:
        status = subprocess.run(
            ["grep", "SigIgn", "/proc/self/status"], capture_output=True, text=True, check=True
        )
        out.write_text(status.stdout)

    pool = make_pool(report_child_sigign, workers=1)
    pool.submit([rec("x", 0)])
    (event,) = collect_until(pool, all_done(pool))
    assert finished_ok(event), event
    ignored = int(out.read_text().split()[1], 16)
    for signum in (signal.SIGINT, signal.SIGTERM):
        assert not ignored & (1 << (signum - 1)), f"{signum.name} is ignored in the subprocess"


def test_submit_never_blocks_on_large_tasks(make_pool: PoolFactory, release: Path) -> None:
    pool = make_pool(workers=1)
    pool.submit([rec(f"waitfile:{release}", 0)])
    collect_until(pool, lambda _: 0 in running_offsets(pool))
    key = b"k" * (1024 * 1024)  # 1 MiB per record: far beyond a socket buffer
    started = time.monotonic()
    for task in range(1, 5):
        pool.submit([Record("t", 0, task * 10 + index, key, b"ok") for index in range(4)])
    assert time.monotonic() - started < 2.0, "submit() waited for the busy worker"
    release.touch()
    events = by_offset(collect_until(pool, all_done(pool), timeout=30.0))
    assert len(events) == 17
    assert all(finished_ok(event) for event in events.values())


def test_workers_outlive_the_thread_that_started_the_pool() -> None:
    # PR_SET_PDEATHSIG fires when the forking *thread* exits: the pool's own spawner
    # thread forks, so a short-lived caller thread must not take the workers with it.
    pools: list[WorkerPool] = []

    def start_pool() -> None:
        pool = WorkerPool(command, 2)
        pools.append(pool)
        pool.start(timeout=30.0)

    thread = threading.Thread(target=start_pool)
    thread.start()
    thread.join()
    (pool,) = pools
    try:
        pids = pool.pids()
        for offset in range(4):
            pool.submit([rec("ok", offset)])
        events = collect_until(pool, all_done(pool))
        assert all(finished_ok(event) for event in events)
        assert pool.pids() == pids
        assert pool.restarts()["crashed"] == 0
    finally:
        pool.terminate()


# --------------------------------------------------------------------------- work stealing


@pytest.mark.parametrize("hang", ["sleep:3600", "spin:3600"], ids=["sleeping", "pure-python"])
def test_tasks_queued_behind_a_hanging_handler_go_to_the_idle_worker(
    make_pool: PoolFactory, hang: str
) -> None:
    pool = make_pool()
    pids = set(pool.pids())
    hanging = pool.submit([rec(hang, 0)])  # worker A
    others = {offset: pool.submit([rec("ok", offset)]) for offset in (1, 2, 3)}
    # 1 -> worker B; 2 -> prefetched by A (behind the hang); 3 -> prefetched by B
    started = time.monotonic()
    events = by_offset(collect_until(pool, lambda events: len(events) == 3, timeout=10.0))
    assert time.monotonic() - started < 5.0

    assert sorted(events) == [1, 2, 3]
    assert all(finished_ok(event) for event in events.values())
    assert {offset: event.task_id for offset, event in events.items()} == others
    (entry,) = pool.running()
    assert (entry.task_id, entry.record.offset) == (hanging, 0), "the hang goes on"
    assert {event.pid for event in events.values()} == pids - {entry.pid}
    assert set(pool.pids()) == pids, "nobody was killed"
    assert pool.restarts() == {"crashed": 0, "killed": 0, "recycled": 0}
    assert pool.outstanding() == 1
    assert pool.busy_task_ids() == {hanging}
    assert pool._give_backs["returned"] == 1


def test_a_handler_that_finishes_keeps_its_prefetched_task_when_nobody_idles(
    make_pool: PoolFactory, release: Path
) -> None:
    pool = make_pool()
    pool.submit([rec("sleep:0.3", 0)])  # worker A
    pool.submit([rec(f"waitfile:{release}", 1)])  # worker B: busy, never idle
    pool.submit([rec("ok", 2)])  # prefetched by A
    events = by_offset(collect_until(pool, lambda events: 2 in by_offset(events)))
    assert events[2].pid == events[0].pid, "no idle worker: nothing is taken back"
    assert pool._give_backs["requested"] == 0
    release.touch()
    collect_until(pool, all_done(pool))


def test_give_back_is_exactly_once_under_stress(make_pool: PoolFactory) -> None:
    rng = random.Random(20240611)
    pool = make_pool()
    tasks: list[list[Record]] = []
    offset = 0
    for _ in range(150):
        batch = []
        for _ in range(rng.choice((1, 1, 2, 3))):
            if rng.random() < 0.05:
                value = "sleep:0.15"  # the slow record a worker occasionally runs
            else:
                value = rng.choice(("ok", "sleep:0.001", "sleep:0.002", "sleep:0.004"))
            batch.append(rec(value, offset))
            offset += 1
        tasks.append(batch)
    task_of: dict[int, int] = {}
    events: Events = []
    deadline = time.monotonic() + 30.0
    # Like the consumer: a few tasks in flight, topped up after each collect(), so
    # that nothing is pending and workers keep going idle.
    while tasks or pool.outstanding():
        assert time.monotonic() < deadline, "stuck"
        while tasks and len(pool.busy_task_ids()) < 4:
            batch = tasks.pop()
            task_id = pool.submit(batch)
            task_of.update((record.offset, task_id) for record in batch)
        events.extend(pool.collect(0.05))

    finished = by_offset(events)  # fails on a record reported twice
    assert sorted(finished) == list(range(offset)), "every record exactly once"
    assert all(finished_ok(event) for event in finished.values())
    assert all(event.task_id == task_of[event.record.offset] for event in finished.values())
    assert pool.restarts() == {"crashed": 0, "killed": 0, "recycled": 0}
    give_backs = pool._give_backs
    assert give_backs["returned"] >= 1, give_backs
    assert give_backs["requested"] >= give_backs["returned"] + give_backs["started"]


def test_worker_killed_with_an_unanswered_give_back_request(make_pool: PoolFactory) -> None:
    # A worker wedged in C code holding the GIL cannot answer: its prefetched task
    # stays with it until it is killed, then runs elsewhere, once.
    pool = make_pool(heartbeat_interval=0.05)
    wedged = pool.submit([rec("gilsleep:3600", 0)])  # worker A
    collect_until(pool, lambda _: 0 in running_offsets(pool))
    collect_until(  # the heartbeat stops: the GIL is held
        pool, lambda _: time.monotonic() - running_offsets(pool)[0].last_heartbeat > 0.5
    )
    stuck_pid = running_offsets(pool)[0].pid
    pool.submit([rec("ok", 1)])  # worker B
    behind = pool.submit([rec("ok", 2)])  # prefetched by A
    events = collect_until(pool, lambda _: pool._give_backs["requested"] == 1)
    collect_until(pool, lambda events: 1 in by_offset(events), events=events)
    assert pool._give_backs == {"requested": 1, "returned": 0, "started": 0}
    assert 2 not in by_offset(events)

    pool.kill(stuck_pid, "heartbeat lost")
    finished = by_offset(collect_until(pool, all_done(pool), events=events))
    assert sorted(finished) == [0, 1, 2]
    aborted = finished[0]
    assert isinstance(aborted, RecordAborted)
    assert (aborted.task_id, aborted.killed, aborted.pid) == (wedged, True, stuck_pid)
    assert finished_ok(finished[2])
    assert (finished[2].task_id, finished[2].pid) == (behind, finished[1].pid)
    assert pool.restarts() == {"crashed": 0, "killed": 1, "recycled": 0}


def test_give_back_answer_read_only_after_the_worker_died(make_pool: PoolFactory) -> None:
    pool = make_pool()
    pool.submit([rec("sleep:3600", 0)])  # worker A
    collect_until(pool, lambda _: 0 in running_offsets(pool))
    stuck_pid = running_offsets(pool)[0].pid
    pool.submit([rec("ok", 1)])  # worker B
    behind = pool.submit([rec("ok", 2)])  # prefetched by A
    # Stop collecting as soon as the request is sent; then wait (without reading)
    # until A's answer is in the socket, and kill A before the pool reads it.
    events = collect_until(pool, lambda _: pool._give_backs["requested"] == 1)
    sock = pool._by_pid[stuck_pid].sock
    readable, _, _ = select.select([sock], [], [], 10.0)
    assert readable, "worker A did not answer"
    os.kill(stuck_pid, signal.SIGKILL)
    deadline = time.monotonic() + 10.0
    while not gone(stuck_pid):
        assert time.monotonic() < deadline
        time.sleep(0.01)  # polling the condition, not synchronising on time

    finished = by_offset(collect_until(pool, all_done(pool), events=events))
    assert sorted(finished) == [0, 1, 2], "no record lost, none twice"
    assert isinstance(finished[0], RecordAborted)
    assert finished_ok(finished[2])
    assert finished[2].task_id == behind
    assert finished[2].pid != stuck_pid
    assert pool._give_backs["returned"] == 1
    assert pool.restarts() == {"crashed": 1, "killed": 0, "recycled": 0}


# --------------------------------------------------------------------------- cancel


def test_cancel_drops_pending_and_prefetched_records_not_the_running_one(
    make_pool: PoolFactory, release: Path
) -> None:
    pool = make_pool(workers=1)
    pool.submit([rec(f"waitfile:{release}", 0), rec("ok", 1), rec("ok", 2)])  # running
    pool.submit([rec("ok", 3), rec("ok", 4)])  # prefetched by the worker
    pool.submit([rec("ok", 5)])  # pending
    pool.submit([rec("ok", 6, partition=1)])  # pending, other partition
    collect_until(pool, lambda _: 0 in running_offsets(pool))

    dropped = pool.cancel(lambda record: record.partition == 0)
    assert dropped == 5
    release.touch()
    events = by_offset(collect_until(pool, all_done(pool)))

    assert sorted(events) == [0, 6], "only the running record and the other partition"
    assert finished_ok(events[0])
    assert finished_ok(events[6])
    assert pool.outstanding() == 0


@pytest.mark.parametrize("death", ["crash", "kill"])
def test_worker_dying_while_its_task_is_cancelled_requeues_nothing(
    make_pool: PoolFactory, release: Path, death: str
) -> None:
    # A revoke drain: pool.cancel() for the partition, then the worker running its record dies.
    pool = make_pool(workers=1)
    running_task = pool.submit([rec(f"waitfile:{release}", 0), rec("ok", 1), rec("ok", 2)])
    pool.submit([rec("ok", 3)])  # prefetched by the worker
    pool.submit([rec("ok", 4, partition=1)])  # pending, another partition
    collect_until(pool, lambda _: 0 in running_offsets(pool))
    pid = running_offsets(pool)[0].pid
    assert pool.cancel(lambda record: record.partition == 0) == 3
    if death == "crash":
        os.kill(pid, signal.SIGKILL)  # like an OOM kill
    else:
        pool.kill(pid, "revoke-timeout", running_offsets(pool)[0])
    release.touch()  # a re-run of offset 0 would finish
    events = by_offset(collect_until(pool, all_done(pool)))

    assert sorted(events) == [0, 4], "the cancelled records 1-3 are not run again"
    aborted = events[0]
    assert isinstance(aborted, RecordAborted)
    assert (aborted.task_id, aborted.pid, aborted.killed) == (running_task, pid, death == "kill")
    assert aborted.cancelled, "tells the caller that it dropped this work: do not run it again"
    assert finished_ok(events[4])
    assert pool.outstanding() == 0
    assert pool.collect(0.3) == [], "nothing left to run"


def test_a_record_aborted_outside_a_cancel_is_not_marked_cancelled(
    make_pool: PoolFactory, release: Path
) -> None:
    pool = make_pool(workers=1)
    pool.submit([rec(f"waitfile:{release}", 0)])
    pool.submit([rec("ok", 1, partition=1)])
    collect_until(pool, lambda _: 0 in running_offsets(pool))
    pool.cancel(lambda record: record.partition == 1)
    os.kill(running_offsets(pool)[0].pid, signal.SIGKILL)
    (aborted,) = collect_until(pool, all_done(pool))
    assert isinstance(aborted, RecordAborted)
    assert not aborted.cancelled


def test_cancel_with_nothing_matching_drops_nothing(make_pool: PoolFactory) -> None:
    pool = make_pool()
    for offset in range(6):
        pool.submit([rec("ok", offset)])
    assert pool.cancel(lambda record: record.partition == 7) == 0
    events = by_offset(collect_until(pool, all_done(pool)))
    assert sorted(events) == list(range(6))


# --------------------------------------------------------------------------- observation


def test_running_shows_record_pid_and_start_time(make_pool: PoolFactory, release: Path) -> None:
    pool = make_pool()
    assert pool.running() == []
    before = time.monotonic()
    records = [rec("ok", 0), rec(f"waitfile:{release}", 1)]
    task_id = pool.submit(records)
    collect_until(pool, lambda _: 1 in running_offsets(pool))
    (entry,) = pool.running()
    assert entry.record == records[1]
    assert entry.task_id == task_id
    assert entry.pid in pool.pids()
    assert before <= entry.started_at <= time.monotonic()
    assert pool.outstanding() == 2 or pool.outstanding() == 1

    release.touch()
    collect_until(pool, all_done(pool))
    assert pool.running() == []


def test_heartbeats_advance_while_a_handler_sleeps_in_c(make_pool: PoolFactory) -> None:
    pool = make_pool(workers=1, heartbeat_interval=0.05)
    pool.submit([rec("sleep:30", 0)])
    collect_until(pool, lambda _: 0 in running_offsets(pool))
    first = pool.running()[0].last_heartbeat
    collect_until(pool, lambda _: running_offsets(pool)[0].last_heartbeat >= first + 0.3)
    entry = pool.running()[0]
    assert time.monotonic() - entry.last_heartbeat < 1.0
    assert entry.started_at <= entry.last_heartbeat


# --------------------------------------------------------------------------- recycling


def test_max_tasks_per_worker_recycles_without_losing_records(make_pool: PoolFactory) -> None:
    pool = make_pool(max_tasks_per_worker=2)
    first_pids = set(pool.pids())
    for offset in range(12):
        pool.submit([rec("ok", offset)])
    events = by_offset(collect_until(pool, all_done(pool)))

    assert sorted(events) == list(range(12))
    assert all(finished_ok(event) for event in events.values())
    assert len({event.pid for event in events.values()}) >= 4
    assert pool.restarts()["recycled"] >= 4
    assert pool.restarts()["crashed"] == 0
    collect_until(pool, lambda _: len(pool.pids()) == 2 and not set(pool.pids()) & first_pids)


def test_max_worker_rss_recycles_a_growing_worker(make_pool: PoolFactory) -> None:
    pool = make_pool(workers=1, max_worker_rss_mb=100)
    pool.submit([rec("grow:150", 0)])
    pool.submit([rec("ok", 1)])
    events = by_offset(collect_until(pool, all_done(pool)))
    assert finished_ok(events[0]) and finished_ok(events[1])
    assert events[1].pid != events[0].pid, "the prefetched task went to the replacement"
    assert pool.restarts() == {"crashed": 0, "killed": 0, "recycled": 1}
    collect_until(pool, lambda _: gone(events[0].pid) and len(pool.pids()) == 1)


# --------------------------------------------------------------------------- handler loading


def test_handler_that_cannot_be_loaded_in_the_worker_fails_start() -> None:
    name = "procpool_ghost_module_for_test"
    module = types.ModuleType(name)
    exec("def handle(record):\n    return None\n", module.__dict__)
    sys.modules[name] = module
    try:
        pool = WorkerPool(module.handle, 2)  # pickled by reference to a module workers lack
    finally:
        del sys.modules[name]
    before = {child.pid for child in psutil.Process().children(recursive=True)}
    with pytest.raises(HandlerLoadError) as error:
        pool.start(timeout=30.0)
    message = str(error.value)
    assert "No module named 'procpool_ghost_module_for_test'" in message
    assert "\n" not in message
    leftovers = [
        child
        for child in psutil.Process().children(recursive=True)
        if child.pid not in before and "popen_loky_posix" in " ".join(child.cmdline())
    ]
    assert leftovers == []


def test_handler_that_cannot_be_pickled_fails_at_construction() -> None:
    lock = threading.Lock()
    with pytest.raises(HandlerLoadError, match="cannot be pickled"):
        WorkerPool(lambda record: lock.locked(), 2)
    with pytest.raises(HandlerLoadError, match="not callable"):
        WorkerPool(42, 2)  # type: ignore[arg-type]


def test_invalid_settings_are_config_errors() -> None:
    with pytest.raises(ConfigError, match="workers"):
        WorkerPool(command, 0)
    with pytest.raises(ConfigError, match="heartbeat_interval"):
        WorkerPool(command, 1, heartbeat_interval=0)


# --------------------------------------------------------------------------- lifecycle


PARENT_SCRIPT = textwrap.dedent(
    """
    import json, sys, time
    from procpool_kafka.pool import WorkerPool
    from tests.unit.pool_handlers import command
    pool = WorkerPool(command, 2)
    pool.start()
    print(json.dumps(pool.pids()), flush=True)
    time.sleep(120)
    """
)


def test_workers_die_when_the_parent_dies() -> None:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    parent = subprocess.Popen(
        [sys.executable, "-c", PARENT_SCRIPT], cwd=REPO, env=env, stdout=subprocess.PIPE, text=True
    )
    try:
        assert parent.stdout is not None
        worker_pids: list[int] = json.loads(parent.stdout.readline())
        assert len(worker_pids) == 2
        assert not any(gone(pid) for pid in worker_pids)
    finally:
        parent.kill()
        parent.wait()
    deadline = time.monotonic() + 10.0
    while not all(gone(pid) for pid in worker_pids):
        assert time.monotonic() < deadline, "workers outlived their parent"
        time.sleep(0.02)  # polling the condition, not synchronising on time


def test_close_leaves_no_process_behind(make_pool: PoolFactory) -> None:
    pool = make_pool()
    seen = set(pool.pids())
    pool.submit([rec("_exit:1", 0)])  # one replacement
    pool.submit([rec("ok", 1)])
    collect_until(pool, all_done(pool))
    collect_until(pool, lambda _: len(pool.pids()) == 2)
    seen |= set(pool.pids())
    pool.submit([rec("sleep:1000", 2)])  # stuck: close() must SIGKILL it
    collect_until(pool, lambda _: 2 in running_offsets(pool))

    started = time.monotonic()
    pool.close(timeout=0.5)
    assert time.monotonic() - started < 5.0
    assert len(seen) == 3
    assert all(gone(pid) for pid in seen)
    loky_children = [
        child
        for child in psutil.Process().children(recursive=True)
        if child.pid in seen or "procpool-worker" in " ".join(child.cmdline())
    ]
    assert loky_children == []
    assert pool.pids() == []
    pool.close()  # idempotent
    pool.terminate()
    assert pool.collect(0) == []
    with pytest.raises(RuntimeError):
        pool.submit([rec("ok", 3)])


def test_graceful_close_lets_the_running_record_finish_first(make_pool: PoolFactory) -> None:
    pool = make_pool(workers=1)
    pool.submit([rec("sleep:0.3", 0), rec("ok", 1)])
    collect_until(pool, lambda _: 0 in running_offsets(pool))
    pid = pool.pids()[0]
    started = time.monotonic()
    pool.close(timeout=10.0)
    assert time.monotonic() - started < 5.0, "the worker exited after its record, no timeout"
    assert gone(pid)


def test_terminate_kills_everything_now(make_pool: PoolFactory) -> None:
    pool = make_pool()
    pids = pool.pids()
    pool.submit([rec("sleep:1000", 0)])
    pool.terminate()
    assert all(gone(pid) for pid in pids)
    pool.terminate()  # idempotent
    pool.close()


def test_context_manager_and_submit_validation() -> None:
    with WorkerPool(command, 1) as pool:
        assert pool.size == 1
        assert len(pool.pids()) == 1
        with pytest.raises(ValueError, match="at least one record"):
            pool.submit([])
        first = pool.submit([rec("ok", 0)])
        second = pool.submit([rec("ok", 1)])
        assert second > first
        collect_until(pool, all_done(pool))
        pids = pool.pids()
    assert all(gone(pid) for pid in pids)


def test_a_worker_killed_during_start_is_replaced(make_pool: PoolFactory, tmp_path: Path) -> None:
    pool = make_pool(KilledAtLoad(str(tmp_path / "marker"), always=False))
    assert len(pool.pids()) == 2
    assert pool.restarts()["crashed"] == 1


def test_workers_that_always_die_at_start_fail_start(tmp_path: Path) -> None:
    pool = WorkerPool(KilledAtLoad(str(tmp_path / "marker"), always=True), 2)
    with pytest.raises(HandlerLoadError, match=r"died 3 times during start-up"):
        pool.start(timeout=60.0)
