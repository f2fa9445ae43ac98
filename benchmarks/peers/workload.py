"""The handler every contender runs, and the topic contents it reads (standard library only).

Imported by the orchestrator (project venv) and by every runner (the peers' venvs, Python
3.11 or 3.13), and by their worker processes, so it must stay importable without
procpool_kafka or any peer library.

Every message value is JSON: ``{"id": "<partition>:<index>", "pad": "xxx..."}``;
retriable-kafka-client hands its target the decoded object only, so the id travels in the
value. The work is :func:`benchmarks.handlers.spin`, the same calibrated busy loop the
throughput benchmark uses, with the same iteration count for everyone.

Optional behaviours, all decided by the message id and marker files in a shared directory so
that they hold across processes and members, whatever pool runs the handler:

* ``track_dir``: every successful call appends ``<id> <unix time>\\n`` to
  ``<track_dir>/<pid>.ids`` (flushed at once, so a killed worker loses nothing it reported);
* ``fail_every``: ids whose index is ``fail_offset`` modulo ``fail_every`` raise
  :class:`TransientError` on their first attempt (the first process to create the marker
  ``<marker_dir>/fail-<id>`` fails, later attempts succeed);
* ``stuck_id``: the first attempt at that id sleeps forever (marker ``stuck-<id>``).
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from benchmarks.handlers import spin

#: how long "forever" is for a stuck handler (it is killed long before)
STUCK_SECONDS = 24 * 3600.0


class TransientError(Exception):
    """What a handler raises on the first attempt at a message chosen to fail once."""


@dataclass(frozen=True)
class Job:
    """What the handler does, beside the busy loop; picklable, sent once per pool task."""

    iterations: int
    track_dir: str | None = None
    marker_dir: str | None = None
    fail_every: int = 0
    fail_offset: int = 7
    stuck_id: str | None = None

    @property
    def needs_id(self) -> bool:
        """True when the handler must decode the value to learn the message id."""
        return bool(self.track_dir or self.fail_every or self.stuck_id)


_track_file: Any = None


def _claim(marker_dir: str | None, name: str) -> bool:
    """True for the first process (of any member) that claims ``name``."""
    if marker_dir is None:
        return False
    try:
        fd = os.open(os.path.join(marker_dir, name), os.O_CREAT | os.O_EXCL | os.O_WRONLY)
    except FileExistsError:
        return False
    os.close(fd)
    return True


def handle_id(job: Job, message_id: str | None, seed: int) -> None:
    """The handler body: behaviours for ``message_id`` (when the job needs one), then the loop."""
    global _track_file  # noqa: PLW0603 (one append-mode file per worker process)
    if message_id is not None:
        if job.stuck_id == message_id and _claim(job.marker_dir, f"stuck-{message_id}"):
            while True:
                time.sleep(STUCK_SECONDS)
        if job.fail_every:
            index = int(message_id.rsplit(":", 1)[1])
            if index % job.fail_every == job.fail_offset and _claim(
                job.marker_dir, f"fail-{message_id}"
            ):
                raise TransientError(f"{message_id} fails once")
    spin(job.iterations, seed)
    if job.track_dir is not None and message_id is not None:
        if _track_file is None:
            path = os.path.join(job.track_dir, f"{os.getpid()}.ids")
            _track_file = open(path, "a", buffering=1)  # noqa: SIM115 (kept open: per worker)
        _track_file.write(f"{message_id} {time.time():.4f}\n")


def handle_value(job: Job, value: bytes | None, seed: int) -> None:
    """For contenders handing over raw bytes: decode the id only when the job needs it."""
    message_id = None
    if job.needs_id and value:
        message_id = str(json.loads(value)["id"])
    handle_id(job, message_id, seed)


def handle_decoded(job: Job, data: dict[str, Any]) -> None:
    """For contenders handing over the JSON-decoded value (retriable-kafka-client)."""
    message_id = str(data["id"])
    handle_id(job, message_id if job.needs_id else None, len(message_id))


def make_value(partition: int, index: int, size: int) -> bytes:
    """A JSON message value of about ``size`` bytes carrying its id."""
    head = f'{{"id": "{partition}:{index}", "pad": "'
    pad = max(0, size - len(head) - 2)
    return (head + "x" * pad + '"}').encode()


def _tracked_lines(track_dir: str) -> Iterator[tuple[str, float]]:
    """(id, wall time) of every successful handling, over every worker of every member."""
    for name in os.listdir(track_dir):
        if not name.endswith(".ids"):
            continue
        with open(os.path.join(track_dir, name)) as lines:
            for line in lines:
                fields = line.split()
                if len(fields) == 2:
                    yield fields[0], float(fields[1])


def read_tracked(track_dir: str) -> dict[str, int]:
    """How many times each id was handled successfully, over every worker of every member."""
    counts: dict[str, int] = {}
    for message_id, _ in _tracked_lines(track_dir):
        counts[message_id] = counts.get(message_id, 0) + 1
    return counts


def first_handled(track_dir: str) -> dict[str, float]:
    """When each id was first handled successfully (wall time), by anyone."""
    first: dict[str, float] = {}
    for message_id, at in _tracked_lines(track_dir):
        if at < first.get(message_id, float("inf")):
            first[message_id] = at
    return first


def handle_record(job: Job, record: Any) -> None:
    """procpool-kafka's handler: a ``Record`` (``value`` bytes, ``offset``)."""
    handle_value(job, record.value, record.offset)


def handle_arroyo(job: Job, message: Any) -> None:
    """sentry-arroyo's function: a ``Message[KafkaPayload]`` (``payload.value`` bytes)."""
    value = message.payload.value
    handle_value(job, value, len(value or b""))
