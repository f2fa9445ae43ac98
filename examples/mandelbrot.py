"""A CPU-heavy example handler: render one tile of the Mandelbrot set in pure Python.

Each job is a JSON object::

    {"tile": [column, row], "tiles": 64, "size": 24, "max_iter": 120,
     "fail_until_attempt": 2,   # optional: fail transiently before this attempt
     "poison": true}            # optional: always fail

The handler computes the escape-time of every pixel of the tile (a few milliseconds of pure
Python) and writes the tile's mean escape time to ``$MANDELBROT_OUT`` when that is set.
"""

from __future__ import annotations

import json
import os

from procpool_kafka import Record


class TransientJobError(RuntimeError):
    """A failure that goes away on a later attempt (e.g. a flaky dependency)."""


class PoisonJobError(ValueError):
    """A job that can never succeed."""


def escape_times(column: int, row: int, tiles: int, size: int, max_iter: int) -> list[int]:
    """Escape times of the tile's pixels over the region [-2, 1] x [-1.5, 1.5]."""
    span = 3.0 / tiles
    step = span / size
    left, top = -2.0 + column * span, -1.5 + row * span
    counts = []
    for y in range(size):
        imag = top + y * step
        for x in range(size):
            real = left + x * step
            zr = zi = 0.0
            n = 0
            while n < max_iter and zr * zr + zi * zi <= 4.0:
                zr, zi = zr * zr - zi * zi + real, 2.0 * zr * zi + imag
                n += 1
            counts.append(n)
    return counts


def render_tile(record: Record) -> float:
    """Handle one job record; returns the tile's mean escape time."""
    job = json.loads(record.value or b"{}")
    if job.get("poison"):
        raise PoisonJobError(f"job {job.get('tile')} is malformed beyond repair")
    if record.attempt < int(job.get("fail_until_attempt", 0)):
        raise TransientJobError(f"job {job.get('tile')} failed on attempt {record.attempt}")
    column, row = job["tile"]
    counts = escape_times(
        column,
        row,
        int(job.get("tiles", 64)),
        int(job.get("size", 24)),
        int(job.get("max_iter", 120)),
    )
    mean = sum(counts) / len(counts)
    out = os.environ.get("MANDELBROT_OUT")
    if out:
        line = json.dumps(
            {"tile": [column, row], "mean": round(mean, 3), "attempt": record.attempt}
        )
        fd = os.open(out, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, (line + "\n").encode())
        finally:
            os.close(fd)
    return mean
