"""The shared-memory slots: one row of float64 fields per seat, written without a lock.

An unlinked memfd, mapped by the parent and by each worker. A worker stamps HEARTBEAT
from its heartbeat thread and, for each record it starts, TASK, STARTED and PROGRESS
inside a seqlock (SEQ is odd while it rewrites them); the parent writes STOP and the
cancel marks. ``PROGRESS`` says with a single store where the worker is in its task:
``0`` at the start of a task, ``2*i + 1`` while record ``i`` runs, ``2*i + 2`` once
record ``i`` returned. Task ids are exact as doubles below 2**53.
"""

from __future__ import annotations

import mmap
import os
import tempfile
import weakref
from collections.abc import Callable, Iterable
from multiprocessing.context import get_spawning_popen
from typing import NamedTuple

# The fields of a slot.
HEARTBEAT = 0
SEQ = 1  # odd while the worker rewrites TASK/STARTED/PROGRESS for a new record
TASK = 2
PROGRESS = 3  # 0: task started; 2*i+1: record i running; 2*i+2: record i done
STARTED = 4
STOP = 5  # parent -> worker: exit before the next record
CANCEL = 6  # parent -> worker: CANCEL..CANCEL+CANCEL_MARKS-1 hold cancelled task ids
CANCEL_MARKS = 4
FIELDS = 16  # padded to 128 bytes

_SEQLOCK_TRIES = 100


class SlotReading(NamedTuple):
    """One consistent read of a slot's record fields (see SharedSlots.read_record)."""

    task_id: float
    progress: int
    started: float
    heartbeat: float


class SharedSlots:
    """Shared memory of float64 fields: an unlinked memfd, mapped by the parent and each worker.

    It pickles only while loky starts a worker process (the fd is passed to the
    child), like multiprocessing's RawArray, whose reducer loky's pickler lacks.
    """

    def __init__(self, fd: int, count: int) -> None:
        self.fd = fd
        self.count = count
        self.map = mmap.mmap(fd, count * 8)
        self.view: memoryview[float] = memoryview(self.map).cast("d")
        self._close_fd = weakref.finalize(self, os.close, fd)

    @classmethod
    def create(cls, seats: int) -> SharedSlots:
        count = seats * FIELDS
        if hasattr(os, "memfd_create"):
            fd = os.memfd_create("procpool-kafka-slots", os.MFD_CLOEXEC)
        else:  # pragma: no cover - non-Linux POSIX
            with tempfile.TemporaryFile() as handle:
                fd = os.dup(handle.fileno())
        os.ftruncate(fd, count * 8)
        return cls(fd, count)

    def __reduce__(self) -> tuple[Callable[[int, int], SharedSlots], tuple[int, int]]:
        popen = get_spawning_popen()
        if popen is None:
            raise TypeError("SharedSlots pickles only to start a worker process")
        return (SharedSlots._attach, (popen.duplicate_for_child(self.fd), self.count))

    @staticmethod
    def _attach(fd: int, count: int) -> SharedSlots:
        return SharedSlots(fd, count)

    def close(self) -> None:
        self.view.release()
        self.map.close()
        self._close_fd()

    # ------------------------------------------------------------------ one seat

    def slot(self, seat: int) -> memoryview[float]:
        """The fields of ``seat`` (a worker's own view: index it with the field constants)."""
        base = seat * FIELDS
        return self.view[base : base + FIELDS]

    def get(self, seat: int, field: int) -> float:
        return self.view[seat * FIELDS + field]

    def reset(self, seat: int) -> None:
        """Prepare the slot of ``seat`` for a new worker: no task, no cancel mark, no stop."""
        view = self.view
        base = seat * FIELDS
        for index in range(FIELDS):
            view[base + index] = 0.0
        for index in range(CANCEL_MARKS):
            view[base + CANCEL + index] = -1.0
        view[base + TASK] = -1.0

    def ask_to_stop(self, seat: int) -> None:
        """The worker of ``seat`` exits before its next record."""
        self.view[seat * FIELDS + STOP] = 1.0

    def mark_cancelled(self, seat: int, task_id: int, held: Iterable[int]) -> bool:
        """Write ``task_id`` into a cancel mark of ``seat`` that holds none of the ``held``
        tasks; False when every mark is in use."""
        view = self.view
        base = seat * FIELDS + CANCEL
        in_use = {float(held_id) for held_id in held}
        for index in range(CANCEL_MARKS):
            value = view[base + index]
            if value == task_id:
                return True
            if value not in in_use:
                view[base + index] = float(task_id)
                return True
        return False

    def read_record(self, seat: int) -> SlotReading | None:
        """The record fields of ``seat``, read under the seqlock; None when the worker kept
        rewriting them (it moves from record to record very fast)."""
        view = self.view
        base = seat * FIELDS
        for _ in range(_SEQLOCK_TRIES):
            seq = view[base + SEQ]
            task_id = view[base + TASK]
            progress = int(view[base + PROGRESS])
            started = view[base + STARTED]
            heartbeat = view[base + HEARTBEAT]
            if seq == view[base + SEQ] and int(seq) % 2 == 0:
                return SlotReading(task_id, progress, started, heartbeat)
        return None
