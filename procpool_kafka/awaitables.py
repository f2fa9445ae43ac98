"""AwaitableRunner: a worker's event loop for handlers that return awaitables.

An ``async def`` handler (or a partial of one, an object with an ``async def __call__``, a
plain function returning an awaitable) returns a coroutine when called; the worker runs it to
completion before it takes the next record. Each worker process has one loop, made when the
first awaitable shows up, reused for every later record (so clients a handler keeps in
module state stay bound to one loop) and closed when the worker exits. Records still run one
at a time per worker: the loop runs only while a record is being handled.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Coroutine
from typing import Any

__all__ = ["AwaitableRunner"]


class AwaitableRunner:
    """Runs awaitables to completion on one lazily created ``asyncio.Runner``."""

    def __init__(self) -> None:
        self._runner: asyncio.Runner | None = None

    def run(self, awaitable: Awaitable[object]) -> object:
        """Await ``awaitable`` on this worker's loop; its exception propagates."""
        if self._runner is None:
            self._runner = asyncio.Runner()
        coroutine = awaitable if asyncio.iscoroutine(awaitable) else _await(awaitable)
        return self._runner.run(coroutine)

    def close(self) -> None:
        """Cancel what the handler left running, close the loop (idempotent)."""
        if self._runner is not None:
            runner, self._runner = self._runner, None
            runner.close()


def _await(awaitable: Awaitable[object]) -> Coroutine[Any, Any, object]:
    """A coroutine awaiting ``awaitable`` (asyncio.Runner.run() takes coroutines only)."""

    async def wait() -> object:
        return await awaitable

    return wait()
