"""The chaos handler: behaves as each message says and records successes in SQLite.

A message value is JSON ``{"id": N, "kind": KIND}``. Kinds:

    ok          succeed
    transient   fail on attempt 1, succeed later
    poison      always fail (ends in the dead-letter topic)
    hang        sleep forever on attempt 1 (killed by task_timeout), succeed later
    crash       os._exit on attempt 1 (re-dispatched until WorkerCrashed), succeed later
    segfault    a real segfault on attempt 1, succeed later
    leak        keep 64 MiB allocated in the worker (recycled by max_worker_rss_mb), succeed

Every success inserts (id, attempt, pid, topic, partition, offset) into the ``done`` table of
the SQLite file named by $CHAOS_STORE (no unique constraint: duplicates are counted).
"""

from __future__ import annotations

import ctypes
import json
import os
import sqlite3
import time

from procpool_kafka import Record

_connections: dict[int, sqlite3.Connection] = {}  # by pid: a worker opens its own
_leaked: list[bytearray] = []


def connect(path: str) -> sqlite3.Connection:
    connection = sqlite3.connect(path, timeout=60, isolation_level=None)
    connection.execute("PRAGMA journal_mode=WAL")
    connection.execute(
        "CREATE TABLE IF NOT EXISTS done (id INTEGER, attempt INTEGER, pid INTEGER, "
        "topic TEXT, partition INTEGER, offset INTEGER)"
    )
    return connection


def _store() -> sqlite3.Connection:
    pid = os.getpid()
    if pid not in _connections:
        _connections[pid] = connect(os.environ["CHAOS_STORE"])
    return _connections[pid]


class TransientError(RuntimeError):
    """Goes away on a later attempt."""


class PoisonError(ValueError):
    """Never goes away."""


def handle(record: Record) -> None:
    job = json.loads(record.value or b"{}")
    kind = job["kind"]
    first = record.attempt == 1
    if kind == "poison":
        raise PoisonError(f"message {job['id']} is poison")
    if kind == "transient" and first:
        raise TransientError(f"message {job['id']} failed on its first attempt")
    if kind == "hang" and first:
        time.sleep(3600)
    if kind == "crash" and first:
        os._exit(7)
    if kind == "segfault" and first:
        ctypes.string_at(0)
    if kind == "leak":
        _leaked.append(bytearray(64 * 1024 * 1024))
    _store().execute(
        "INSERT INTO done VALUES (?, ?, ?, ?, ?, ?)",
        (job["id"], record.attempt, os.getpid(), record.topic, record.partition, record.offset),
    )
