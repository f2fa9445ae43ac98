"""WorkerPool: a process pool that owns its workers, one pipe and one shared-memory slot each.

The pool runs the user's handler on batches of records ("tasks") in worker
processes started with loky's process backend (fork+exec, safe in a process
that already runs librdkafka threads). It is not loky's executor: killing one
worker costs only the record that worker was running.

Data flow::

    caller thread (the consumer loop)                      worker process (one per seat)
    ---------------------------------                      ------------------------------
    submit(records) -> pending deque                        worker_main():
         |                                                   prctl(PDEATHSIG); SIGINT, SIGTERM:
         |                                                   no-op handlers (the parent stops)
         v                                                   cloudpickle.loads(handler) once
    _dispatch(): each READY worker holds <= 2 tasks         "ready" ------------------------+
    (1 running + 1 ahead), frames sent with                                                 |
    MSG_DONTWAIT; what does not fit waits in the            for each task from the inbox:   |
    worker's out-queue (EVENT_WRITE)                          for each record:              |
         |                                                      cancel mark? stop flag?     |
         |  socketpair: (task_id, [record tuples]) ------->     slot: task, start, RUNNING  |
         |                                                      handler(record) (awaited    |
         |                                                        if it returns awaitable)  |
         |  <---- progress: (task_id, first index,              slot: DONE                  |
         |        [ok durations], failure|None, done)           failure -> sent at once     |
         |        retiring: (reason,)                           ok -> buffered, sent at the |
         |                                                        end of the task or 20 ms  |
         |  give back N? (idle worker, nothing pending) -->   inbox thread: reads the pipe  |
         |  <---- given back N (unstarted, removed)           while a handler runs; answers |
         |        started N (already taken)                   give-back requests            |
         v                                                                                  |
    collect(timeout): epoll on sockets, process                                             |
    sentinels and a wake-up pipe:                           heartbeat thread ---------------+
      progress   -> RecordFinished events                    stamps slot[HEARTBEAT]         |
      given back -> front of pending, same task id                                          |
      sentinel  -> drain socket, read slot:                                                 |
                   done-but-unreported -> RecordFinished      shared memory (memfd of       |
                   running             -> RecordAborted       doubles, one 16-field slot    |
                   unstarted           -> front of pending    per seat, no lock) <----------+
      retire deadlines -> SIGKILL                            parent writes: cancel marks,
      replacements -> spawner thread                         stop flag; reads: running()

    spawner thread (ONE, long-lived): starts every worker process, so that
    PR_SET_PDEATHSIG (tied to the forking *thread*) only fires when the pool,
    or the whole consumer process, goes away. It wakes collect() through a pipe
    when a process has been started; the worker becomes usable on its "ready".

The slot's ``PROGRESS`` field encodes where the worker is in its current task
with a single store: ``0`` at the start of a task, ``2*i + 1`` while record
``i`` runs, ``2*i + 2`` once record ``i`` returned. A failed record is sent to
the parent *before* its DONE store; OK records are buffered. So when a worker
dies, the parent drains the socket and then knows exactly which records of the
running task finished (reported or not), which one was running (aborted) and
which never started (requeued at the front of ``pending``, keeping their task
id so events still match the caller's bookkeeping). Reads of the slot while
the worker is alive (``running()``) use a sequence counter (seqlock).

Work stealing: a worker whose handler is stuck (a sleep, a long computation)
would keep its prefetched task while other workers idle. So when a worker is
idle and nothing is pending, the pool asks a busy worker to give back a task
queued behind its running one (one request per task; see ``_ask_for_give_backs``). The
worker's inbox thread answers even while the main thread is inside the
handler: "given back N" (N was still queued; removed, it will not run there; the
parent puts it at the front of ``pending`` with the same id) or "started N"
(nothing changes). Both threads take tasks from the worker's queue under one
worker-local lock, so a task runs where it was sent or is given back, never
both. A worker wedged in C code holding the GIL cannot answer: nothing is
stolen from it; if it dies, a request still unanswered changes nothing, since
the death path reads the slot as usual (a task given back but not reported
never started, so it is requeued then).

Modules: ``_pool`` (WorkerPool, the parent side), ``_worker`` (the child side),
``_wire`` (the messages and their framing), ``_slots`` (the shared memory),
``_spawner`` (the spawner thread), ``_events`` (what collect() returns).

Workers recycle themselves (``max_tasks_per_worker``, ``max_worker_rss_mb``)
between tasks: they report, send "retiring" and exit; a replacement starts at
once. Seats are twice the worker count so that a replacement never waits for a
slow exit.
"""

from procpool_kafka.pool._events import PoolEvent, RecordAborted, RecordFinished
from procpool_kafka.pool._pool import PREFETCH_DEPTH, WorkerPool
from procpool_kafka.records import HandlerError, RunningRecord

__all__ = [
    "PREFETCH_DEPTH",
    "HandlerError",
    "PoolEvent",
    "RecordAborted",
    "RecordFinished",
    "RunningRecord",
    "WorkerPool",
]
