"""procpool-kafka side by side with the tools users would pick instead, in one run.

    scripts/bench [--quick] [--contenders procpool,arroyo,plain,retriable]
                  [--scenarios throughput,retry,revoke,memory] [--bootstrap ADDR] ...

Contenders, each with the same worker count (``--workers``, default 2), the same broker, the
same topic contents and the same handler code (:mod:`benchmarks.peers.workload`):

* ``procpool``: procpool-kafka (this project's venv);
* ``arroyo``: sentry-arroyo, RunTaskWithMultiprocessing + CommitOffsets;
* ``plain``: a hand-written confluent-kafka loop with a ProcessPoolExecutor;
* ``retriable``: retriable-kafka-client 0.7.0 with a ProcessPoolExecutor (Python 3.13);
* the ideal: workers / per-message cost of the handler, measured in this process around
  every contender's run.

Each contender runs as a subprocess with its own venv's python (made by
:mod:`benchmarks.peer_venvs`), executing ``benchmarks.peers.run_<name>``, which prints JSON
(see :mod:`benchmarks.peers.common`). Scenarios:

* ``throughput``: handler costs ~5 ms, ~0.5 ms, ~50 us; first handled to last handled, first
  poll to everything committed, middle 80 %; ratios to the ideal, to bare processes running
  the handler at once, and to each peer; ``--rounds`` interleaved rounds (median reported);
* ``retry``: 10 % of the messages fail once, retry delay 1 s; time until all are handled and
  committed; every success is tracked per message id (lost, duplicates);
* ``revoke``: one message's handler sleeps forever on member 1; a second member joins; time
  until it is assigned, until it handled the stuck record (the handover), until every
  message of its partitions was handled, and committed (``--kafka group.protocol=consumer
  --contenders procpool --revoke-stuck 7:5``: the same under KIP-848's consumer group
  protocol, whose broker-side assignor moves the upper half of the partitions);
* ``memory``: RSS of the consumer process while draining a backlog of 1 KB messages with a
  light handler (sampled every 0.5 s).

Results: ``benchmarks/results/side-by-side-<date>[-quick].json``, a markdown table on stdout
(and in the JSON), and a PNG chart beside the JSON (matplotlib, in the ``chart`` venv).
The machine is shared: before each run the harness waits for it to be quiet, and repeats a
run during which other processes took more than 3 % of the CPU (``--retries``).
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import os
import platform
import queue
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from confluent_kafka import Consumer, KafkaException, Producer, TopicPartition
from confluent_kafka.admin import (  # type: ignore[attr-defined]  # re-exported, no __all__
    AdminClient,
    AlterConfigOpType,
    ConfigEntry,
    ConfigResource,
    ResourceType,
)

from benchmarks import peer_venvs
from benchmarks.handlers import calibrate
from benchmarks.peers.common import SAMPLE_INTERVAL_S, Spec
from benchmarks.peers.measure import per_call
from benchmarks.peers.workload import Job, first_handled, make_value, read_tracked
from benchmarks.side_by_side_report import CONTENDERS, LABELS, markdown, mb, num
from benchmarks.throughput import (
    OTHERS_LIMIT,
    environment,
    local_broker,
    resolve_bootstrap,
    wait_until_quiet,
)
from tests.kafka_helpers import KafkaTestEnv, unique_name

REPO = Path(__file__).resolve().parent.parent
RESULTS_DIR = Path(__file__).resolve().parent / "results"
PARTITIONS = 8

SHORT = {"procpool": "procpool", "arroyo": "arroyo", "plain": "by hand", "retriable": "retriable"}
SCENARIOS = ("throughput", "retry", "revoke", "memory")


@dataclass(frozen=True)
class Cost:
    """One handler cost of the throughput scenario."""

    name: str
    seconds: float
    messages: int
    quick_messages: int
    target_ratio: float
    #: arroyo's max_batch_size for this cost (about 50 ms of work per batch; 1000 at 50 us)
    arroyo_batch: int


COSTS = (
    Cost("5ms", 0.005, 4_000, 400, 0.97, 10),
    Cost("0.5ms", 0.0005, 20_000, 2_000, 0.90, 100),
    Cost("50us", 0.00005, 20_000, 2_000, 0.60, 1000),
)


@dataclass
class Options:
    """Everything a run needs; :func:`parse_args` makes one, the smoke test another."""

    bootstrap: str | None = None
    contenders: tuple[str, ...] = CONTENDERS
    scenarios: tuple[str, ...] = SCENARIOS
    costs: tuple[str, ...] = tuple(c.name for c in COSTS)
    quick: bool = False
    workers: int = 2
    #: per-cost message count override (throughput)
    messages: int | None = None
    retry_messages: int = 10_000
    revoke_per_partition: int = 1_000
    revoke_timeout_s: float = 5.0
    #: revoke runs per contender at most, until the stuck partition is one that moves
    revoke_attempts: int = 3
    #: the message whose handler sleeps forever on member 1 ("partition:index"); it must be
    #: on a partition the assignor moves to member 2: librdkafka's cooperative-sticky moved
    #: 0-3, the broker's uniform assignor (group.protocol=consumer) 4-7
    revoke_stuck_id: str = "0:5"
    #: revoke: broker-side settings of each contender's group, set before its members start
    #: (e.g. consumer.heartbeat.interval.ms=5000: the consumer protocol's timing is the broker's)
    group_config: dict[str, str] = field(default_factory=dict)
    memory_messages: int = 1_000_000
    memory_value_bytes: int = 1_000
    memory_deadline_s: float = 150.0
    #: librdkafka settings for every contender's consumer (e.g. heartbeat.interval.ms)
    kafka_config: dict[str, Any] = field(default_factory=dict)
    wait_quiet_s: float = 300.0
    quiet_seconds: int = 3
    retries: int = 2
    #: interleaved rounds of every contender per throughput cost (median reported)
    rounds: int = 3
    save: bool = True
    chart: bool = True
    #: contender -> python; contenders missing here get their venv made (procpool: this one)
    pythons: dict[str, str] = field(default_factory=dict)
    tag: str | None = None

    def quick_sizes(self) -> Options:
        return replace(
            self,
            retry_messages=2_000,
            revoke_per_partition=300,
            revoke_timeout_s=3.0,
            memory_messages=100_000,
            memory_deadline_s=25.0,
            wait_quiet_s=5.0,  # a quick run is a smoke check of the peers, not a measurement
            quiet_seconds=1,
            retries=0,
            rounds=1,
        )


# --------------------------------------------------------------------------- runners


class Runner:
    """One runner subprocess: spec on stdin, JSON events on stdout, its own process group."""

    def __init__(self, contender: str, python: str, spec: Spec, log_dir: Path) -> None:
        self.contender = contender
        self.events: list[dict[str, Any]] = []
        self._queue: queue.Queue[dict[str, Any] | None] = queue.Queue()
        env = {**os.environ, "PYTHONPATH": str(REPO), "PYTHONDONTWRITEBYTECODE": "1"}
        self.log_path = Path(
            tempfile.mkstemp(prefix=f"{contender}-{spec.group}-", suffix=".log", dir=log_dir)[1]
        )
        self._log = self.log_path.open("w")
        self.started = time.time()
        self.process = subprocess.Popen(
            [python, "-m", f"benchmarks.peers.run_{contender}"],
            cwd=REPO,
            env=env,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self._log,
            text=True,
            start_new_session=True,
        )
        assert self.process.stdin is not None
        self.process.stdin.write(spec.to_json() + "\n")
        self.process.stdin.flush()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            with contextlib.suppress(ValueError):
                self._queue.put(json.loads(line))
        self._queue.put(None)

    def wait_event(self, name: str, timeout: float) -> dict[str, Any] | None:
        """The first event called ``name`` (also one already received), or None."""
        for event in self.events:
            if event.get("event") == name:
                return event
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return None
            try:
                item = self._queue.get(timeout=remaining)
            except queue.Empty:
                return None
            if item is None:
                self._queue.put(None)  # keep the end visible to later waits
                return None
            self.events.append(item)
            if item.get("event") == name:
                return item

    def stop(self) -> None:
        with contextlib.suppress(OSError, ValueError):
            assert self.process.stdin is not None
            self.process.stdin.write("stop\n")
            self.process.stdin.flush()

    def finish(self, grace_s: float) -> bool:
        """Wait up to ``grace_s`` for the runner to exit, then kill its process group (the
        pool's workers too, stuck or not). True when it had exited by itself."""
        exited = True
        try:
            self.process.wait(grace_s)
        except subprocess.TimeoutExpired:
            exited = False
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.process.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.process.wait(10)
        self._log.close()
        return exited

    def log_tail(self, lines: int = 8) -> str:
        with contextlib.suppress(OSError):
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        return ""


# --------------------------------------------------------------------------- the run


@dataclass
class Context:
    options: Options
    bootstrap: str
    env: KafkaTestEnv
    pythons: dict[str, str]
    broker_pid: int | None
    work_dir: Path
    notes: list[str] = field(default_factory=list)

    def spec(self, contender: str, topic: str, job: Job, **fields: Any) -> Spec:
        return Spec(
            contender=contender,
            bootstrap=self.bootstrap,
            topic=topic,
            group=unique_name(f"bench-{contender}"),
            workers=self.options.workers,
            job=job,
            revoke_timeout_s=self.options.revoke_timeout_s,
            broker_pid=self.broker_pid,
            kafka_config=dict(self.options.kafka_config),
            **fields,
        )

    def launch(self, spec: Spec) -> Runner:
        return Runner(spec.contender, self.pythons[spec.contender], spec, self.work_dir)

    def quiet(self) -> None:
        if self.options.wait_quiet_s > 0:
            wait_until_quiet(self.options.wait_quiet_s, self.options.quiet_seconds)

    def run_once(self, spec: Spec, timeout_s: float) -> dict[str, Any]:
        """Launch, wait for the result, clean up; the result dict (with ``error`` on trouble)."""
        runner = self.launch(spec)
        event = runner.wait_event("result", timeout_s)
        if event is None:
            runner.stop()
            event = runner.wait_event("result", 30)
        exited = runner.finish(15)
        result: dict[str, Any] = dict(event) if event else {"error": "no result from the runner"}
        result["exited_by_itself"] = exited
        if result.get("error") or not exited:
            result["log_tail"] = runner.log_tail()
        return result


def fill(bootstrap: str, topic: str, per_partition: int, size: int) -> dict[int, int]:
    """Produce ``per_partition`` JSON values of about ``size`` bytes to every partition."""
    producer = Producer(
        {
            "bootstrap.servers": bootstrap,
            "linger.ms": 20,
            "batch.size": 1_000_000,
            "queue.buffering.max.kbytes": 262_144,
            "acks": "all",
        }
    )
    errors: list[str] = []

    def delivered(error: Any, _message: Any) -> None:
        if error is not None:
            errors.append(str(error))

    for index in range(per_partition):
        for partition in range(PARTITIONS):
            value = make_value(partition, index, size)
            while True:
                try:
                    producer.produce(topic, value=value, partition=partition, on_delivery=delivered)
                    break
                except BufferError:
                    producer.poll(0.05)
        if index % 1000 == 0:
            producer.poll(0)
    remaining = producer.flush(300)
    if remaining or errors:
        raise RuntimeError(f"producing to {topic}: {remaining} undelivered, errors {errors[:3]}")
    return {p: per_partition for p in range(PARTITIONS)}


def new_topic(
    ctx: Context, prefix: str, per_partition: int, size: int
) -> tuple[str, dict[int, int]]:
    topic = ctx.env.create_topic(prefix, partitions=PARTITIONS)
    if per_partition:
        fill(ctx.bootstrap, topic, per_partition, size)
    ends = ctx.env.end_offsets(topic)
    assert sum(ends.values()) == per_partition * PARTITIONS, ends
    return topic, ends


def others_share(result: dict[str, Any]) -> float:
    window = result.get("cpu_first_to_last") or {}
    capacity = window.get("capacity_s") or 0.0
    if not capacity:
        return 0.0
    return float(window.get("others_s") or 0.0) / capacity


def in_process_cost(iterations: int) -> float:
    return per_call(iterations)


def measure_in_processes(python: str, iterations: int, copies: int) -> list[float | None]:
    """Per-call seconds of the handler from ``copies`` ``benchmarks.peers.measure`` processes
    of ``python`` running at the same time (None for one whose output is not a cost)."""
    processes = [
        subprocess.Popen(
            [python, "-m", "benchmarks.peers.measure", str(iterations)],
            cwd=REPO,
            env={**os.environ, "PYTHONPATH": str(REPO)},
            stdout=subprocess.PIPE,
            text=True,
        )
        for _ in range(copies)
    ]
    costs: list[float | None] = []
    for process in processes:
        out, _ = process.communicate(timeout=120)
        try:
            costs.append(float(json.loads(out)[0]))
        except (ValueError, IndexError):
            costs.append(None)
    return costs


def parallel_ceiling(iterations: int, workers: int) -> float:
    """Calls per second of ``workers`` bare processes running the handler at once, no Kafka
    and no pool: what this machine gives a perfect pool, a diagnostic beside the ideal (which
    assumes each worker runs as fast as one process alone). Measured once per cost."""
    costs = measure_in_processes(sys.executable, iterations, workers)
    if any(cost is None for cost in costs):
        raise ValueError("a bare handler process did not report its per-call cost")
    return sum(1.0 / cost for cost in costs if cost is not None)


# --------------------------------------------------------------------------- throughput


def throughput(ctx: Context) -> list[dict[str, Any]]:
    """Every cost: ``rounds`` interleaved rounds of every contender (drift in the machine's
    speed hits everyone alike); each contender's run with the median rate is reported."""
    options = ctx.options
    out = []
    for cost in [c for c in COSTS if c.name in options.costs]:
        messages = options.messages or (cost.quick_messages if options.quick else cost.messages)
        per_partition = max(1, messages // PARTITIONS)
        messages = per_partition * PARTITIONS
        print(f"throughput {cost.name} x {messages:,}, {options.rounds} round(s) ...", flush=True)
        topic, ends = new_topic(ctx, f"bench-sbs-{cost.name.replace('.', '_')}", per_partition, 100)
        iterations = calibrate(cost.seconds)
        costs_measured = [in_process_cost(iterations)]
        ctx.quiet()
        ceiling = parallel_ceiling(iterations, options.workers)
        rounds: dict[str, list[dict[str, Any]]] = {c: [] for c in options.contenders}
        for _ in range(options.rounds):
            for contender in options.contenders:
                result = throughput_run(
                    ctx, contender, cost=cost, topic=topic, ends=ends, iterations=iterations
                )
                costs_measured.append(result["measured_cost_s"])
                ideal = options.workers / result["measured_cost_s"]
                rate = result.get("first_to_last_rps")
                result["ideal_rps"] = ideal
                result["ratio_to_ideal"] = rate / ideal if rate else None
                result["ratio_to_parallel_ceiling"] = rate / ceiling if rate else None
                handled = int(result.get("handled") or 0)
                result["lost"] = max(0, messages - handled) if result.get("committed_s") else None
                result["duplicates"] = max(0, handled - messages)
                rounds[contender].append(result)
                print(f"  {describe_throughput(contender, result)}", flush=True)
        runs = {contender: median_run(results) for contender, results in rounds.items()}
        entry: dict[str, Any] = {
            "cost": cost.name,
            "target_cost_s": cost.seconds,
            "target_ratio": cost.target_ratio,
            "messages": messages,
            "iterations": iterations,
            "rounds": options.rounds,
            "measured_cost_s": sum(costs_measured) / len(costs_measured),
            "ideal_rps": options.workers * len(costs_measured) / sum(costs_measured),
            "parallel_ceiling_rps": ceiling,
            "runs": runs,
        }
        if "retriable" in runs and "retriable" in ctx.pythons:
            entry["measured_cost_retriable_python_s"] = other_python_cost(
                ctx.pythons["retriable"], iterations
            )
        ours = runs.get("procpool", {}).get("first_to_last_rps")
        for run in runs.values():
            rate = run.get("first_to_last_rps")
            run["procpool_over_this"] = ours / rate if ours and rate else None
        out.append(entry)
        ctx.env.cleanup()
    return out


def median_run(results: list[dict[str, Any]]) -> dict[str, Any]:
    """The run with the median first-to-last rate (failed runs rank lowest); every round's
    rate and ratio stay in it as ``round_rps`` and ``round_ratios``."""
    ranked = sorted(results, key=lambda r: r.get("first_to_last_rps") or 0.0)
    chosen = dict(ranked[(len(ranked) - 1) // 2])
    chosen["round_rps"] = [r.get("first_to_last_rps") for r in results]
    chosen["round_ratios"] = [r.get("ratio_to_ideal") for r in results]
    return chosen


def throughput_run(
    ctx: Context,
    contender: str,
    *,
    cost: Cost,
    topic: str,
    ends: dict[int, int],
    iterations: int,
) -> dict[str, Any]:
    """One contender draining the topic once; repeated (``--retries``) while other processes
    took more than OTHERS_LIMIT of the CPU, keeping the least disturbed attempt."""
    options = ctx.options
    messages = sum(ends.values())
    settings = {"max_batch_size": cost.arroyo_batch} if contender == "arroyo" else {}
    ideal_time = messages * cost.seconds / options.workers
    best: dict[str, Any] | None = None
    attempts: list[str] = []
    for attempt in range(1 + options.retries):
        ctx.quiet()
        before = in_process_cost(iterations)
        spec = ctx.spec(
            contender,
            topic,
            Job(iterations=iterations),
            expected=messages,
            end_offsets=ends,
            deadline_s=60 + 20 * ideal_time,
            settings=settings,
            # at most one sample per handler call: +-1 sample is < 0.2 % of a run
            sample_interval_s=min(0.005, max(SAMPLE_INTERVAL_S, cost.seconds)),
        )
        result = ctx.run_once(spec, spec.deadline_s + 60)
        result["measured_cost_s"] = (before + in_process_cost(iterations)) / 2
        share = others_share(result)
        result["others_share"] = share
        if best is None or share < best["others_share"]:
            best = result
        if share <= OTHERS_LIMIT or result.get("error"):
            break
        attempts.append(f"attempt {attempt + 1}: others took {share:.1%} of the CPU")
        if attempt < options.retries:
            print(f"  {contender}: disturbed ({share:.1%}); again", flush=True)
    assert best is not None
    best["disturbed_attempts"] = attempts
    return best


def other_python_cost(python: str, iterations: int) -> float | None:
    """The handler's per-call cost in another interpreter (retriable's Python 3.13)."""
    return measure_in_processes(python, iterations, 1)[0]


def describe_throughput(contender: str, r: dict[str, Any]) -> str:
    if r.get("error") and not r.get("first_to_last_rps"):
        return f"{contender}: error {r['error']}"
    return (
        f"{contender}: first-to-last {num(r.get('first_to_last_rps'))}/s, "
        f"poll-to-committed {num(r.get('poll_to_committed_rps'))}/s, "
        f"ratio {num(r.get('ratio_to_ideal'), 3)} "
        f"(to bare processes {num(r.get('ratio_to_parallel_ceiling'), 3)}), "
        f"others {r.get('others_share', 0):.1%}"
        + (f", notes {r['notes']}" if r.get("notes") else "")
    )


# --------------------------------------------------------------------------- retry


def tracked_summary(
    track_dir: Path, per_partition: int, committed: dict[int, int]
) -> dict[str, Any]:
    """Per-id outcome of a tracked run. On a fresh topic offset == index, so an id is *lost*
    when the group committed past its offset although no worker ever handled it, and merely
    *unhandled* when it was neither handled nor committed (a consumer that stopped)."""
    counts = read_tracked(str(track_dir))
    lost: list[str] = []
    unhandled = 0
    for p in range(PARTITIONS):
        for i in range(per_partition):
            if f"{p}:{i}" in counts:
                continue
            if i < committed.get(p, -1):
                lost.append(f"{p}:{i}")
            else:
                unhandled += 1
    return {
        "lost_ids": lost[:20],
        "distinct_handled": len(counts),
        "handled_total": sum(counts.values()),
        "lost": len(lost),
        "unhandled": unhandled,
        "duplicates": sum(c - 1 for c in counts.values()),
    }


def _base_commits(result: dict[str, Any], topic: str) -> dict[int, int]:
    return {int(p): int(o) for p, o in (result.get("committed") or {}).get(topic, {}).items()}


def retry(ctx: Context) -> dict[str, Any]:
    options = ctx.options
    messages = options.retry_messages
    per_partition = messages // PARTITIONS
    messages = per_partition * PARTITIONS
    print(f"retry x {messages:,} (10% fail once, 1 s delay) ...", flush=True)
    topic, ends = new_topic(ctx, "bench-sbs-retry", per_partition, 100)
    iterations = calibrate(0.0005)
    runs: dict[str, dict[str, Any]] = {}
    for contender in options.contenders:
        ctx.quiet()
        track = Path(tempfile.mkdtemp(prefix=f"track-{contender}-", dir=ctx.work_dir))
        markers = Path(tempfile.mkdtemp(prefix=f"markers-{contender}-", dir=ctx.work_dir))
        retry_topic = None
        if contender in ("procpool", "retriable"):
            retry_topic = ctx.env.create_topic(f"bench-sbs-retry-{contender}", PARTITIONS)
        job = Job(
            iterations=iterations,
            track_dir=str(track),
            marker_dir=str(markers),
            fail_every=10,
        )
        spec = ctx.spec(
            contender,
            topic,
            job,
            expected=messages,
            end_offsets=ends,
            retry_topic=retry_topic,
            retry_delay_s=1.0,
            deadline_s=30.0 if options.quick else 60.0,
        )
        result = ctx.run_once(spec, spec.deadline_s + 60)
        result.update(tracked_summary(track, per_partition, _base_commits(result, topic)))
        result["failed_first_attempts"] = sum(
            1 for n in os.listdir(markers) if n.startswith("fail-")
        )
        result["supports_retries"] = contender != "arroyo"
        polling = result.get("polling_s")
        done = result.get("committed_s")
        result["all_done_s"] = done - polling if done is not None and polling is not None else None
        runs[contender] = result
        print(
            f"  {contender}: all done in {num(result['all_done_s'], 2)} s, "
            f"lost {result['lost']}, duplicates {result['duplicates']}, "
            f"failed once {result['failed_first_attempts']}"
            + (f", error {result['error']}" if result.get("error") else ""),
            flush=True,
        )
        shutil.rmtree(markers, ignore_errors=True)
        shutil.rmtree(track, ignore_errors=True)
    ctx.env.cleanup()
    return {"messages": messages, "fail_share": 0.1, "retry_delay_s": 1.0, "runs": runs}


# --------------------------------------------------------------------------- revoke


def set_group_config(admin: AdminClient, group: str, settings: dict[str, str]) -> None:
    """Broker-side settings of one group (KIP-848 groups: consumer.heartbeat.interval.ms,
    consumer.session.timeout.ms), before any member joins."""
    entries = [
        ConfigEntry(name, value, incremental_operation=AlterConfigOpType.SET)
        for name, value in settings.items()
    ]
    resource = ConfigResource(ResourceType.GROUP, group, incremental_configs=entries)
    for future in admin.incremental_alter_configs([resource]).values():
        future.result(timeout=30)


def group_members(admin: AdminClient, group: str) -> dict[str, list[int]]:
    """member id -> assigned partitions, from the group coordinator."""
    try:
        description = admin.describe_consumer_groups([group])[group].result(timeout=10)
    except KafkaException:
        return {}
    members: dict[str, list[int]] = {}
    for member in description.members:
        assignment = member.assignment.topic_partitions if member.assignment else []
        members[member.member_id] = sorted(tp.partition for tp in assignment)
    return members


def committed_offsets(bootstrap: str, group: str, topic: str) -> dict[int, int]:
    probe = Consumer({"bootstrap.servers": bootstrap, "group.id": group})
    try:
        wanted = [TopicPartition(topic, p) for p in range(PARTITIONS)]
        return {tp.partition: tp.offset for tp in probe.committed(wanted, timeout=10)}
    finally:
        probe.close()


def revoke(ctx: Context) -> dict[str, Any]:
    options = ctx.options
    per_partition = options.revoke_per_partition
    messages = per_partition * PARTITIONS
    stuck_id = options.revoke_stuck_id
    timeout = options.revoke_timeout_s
    print(f"revoke x {messages:,} (stuck handler on {stuck_id}, revoke timeout {timeout:g}s) ...")
    topic, ends = new_topic(ctx, "bench-sbs-revoke", per_partition, 100)
    iterations = calibrate(0.0005)
    admin = AdminClient({"bootstrap.servers": ctx.bootstrap})
    runs: dict[str, dict[str, Any]] = {}
    for contender in options.contenders:
        # the assignor picks what moves to member 2; only a moved stuck partition is the
        # scenario, so a run where it stayed with member 1 is repeated (a new group)
        for attempt in range(1, options.revoke_attempts + 1):
            ctx.quiet()
            result = revoke_attempt(
                ctx,
                admin,
                contender,
                topic=topic,
                ends=ends,
                iterations=iterations,
                stuck_id=stuck_id,
            )
            result["attempt"] = attempt
            if result.get("stuck_partition_moved") or attempt == options.revoke_attempts:
                break
            print(f"  {contender}: the stuck partition stayed with member 1; again", flush=True)
        runs[contender] = result
        print(
            f"  {contender}: member 2 assigned after {num(result.get('rebalance_s'), 2)} s "
            f"handled the stuck record after {num(result.get('stuck_handled_s'), 2)} s and "
            f"all of them after {num(result.get('member2_handled_s'), 2)} s "
            f"(target <= {timeout + 1:g}), "
            f"committed after {num(result.get('member2_done_s'), 2)} s, "
            f"lost {result['lost']}, duplicates {result['duplicates']}; "
            f"{'; '.join(result['notes'])}",
            flush=True,
        )
    ctx.env.cleanup()
    return {
        "messages": messages,
        "stuck_id": stuck_id,
        "revoke_timeout_s": timeout,
        "runs": runs,
    }


def revoke_attempt(
    ctx: Context,
    admin: AdminClient,
    contender: str,
    *,
    topic: str,
    ends: dict[int, int],
    iterations: int,
    stuck_id: str,
) -> dict[str, Any]:
    """One revoke run of ``contender`` (its own group), with the tracked outcome."""
    per_partition = ctx.options.revoke_per_partition
    track = Path(tempfile.mkdtemp(prefix=f"track-{contender}-", dir=ctx.work_dir))
    markers = Path(tempfile.mkdtemp(prefix=f"markers-{contender}-", dir=ctx.work_dir))
    try:
        job = Job(
            iterations=iterations,
            track_dir=str(track),
            marker_dir=str(markers),
            stuck_id=stuck_id,
        )
        spec = ctx.spec(contender, topic, job, end_offsets=ends, deadline_s=3600.0)
        if ctx.options.group_config:
            set_group_config(admin, spec.group, ctx.options.group_config)
        result = revoke_one(
            ctx,
            admin,
            spec=spec,
            topic=topic,
            ends=ends,
            stuck_marker=markers / f"stuck-{stuck_id}",
        )
        result.update(tracked_summary(track, per_partition, result.get("committed_at_end") or {}))
        result["member2_handled_s"] = moved_handled_after(track, result, per_partition)
        result["stuck_handled_s"] = stuck_handled_after(track, result, stuck_id)
        result["target_s"] = ctx.options.revoke_timeout_s + 1.0
        return result
    finally:
        shutil.rmtree(markers, ignore_errors=True)
        shutil.rmtree(track, ignore_errors=True)


def moved_handled_after(
    track_dir: Path, result: dict[str, Any], per_partition: int
) -> float | None:
    """Seconds from member 2's first poll until every message of the partitions it took over
    had been handled (by either member: member 1 handled most before the rebalance), or None
    when some never were."""
    joined = result.get("member2_first_poll_wall")
    partitions = result.get("member2_partitions") or []
    if joined is None or not partitions:
        return None
    first = first_handled(str(track_dir))
    times = [first.get(f"{p}:{i}") for p in partitions for i in range(per_partition)]
    if any(at is None for at in times):
        return None
    return max(0.0, max(at for at in times if at is not None) - float(joined))


def stuck_handled_after(track_dir: Path, result: dict[str, Any], stuck_id: str) -> float | None:
    """Seconds from member 2's first poll until the stuck record was handled: its first
    attempt never finishes, so this is the handover (member 1's revoke timeout, the kill and
    the group protocol's rounds until member 2 runs the partition's next record)."""
    joined = result.get("member2_first_poll_wall")
    at = first_handled(str(track_dir)).get(stuck_id)
    if joined is None or at is None:
        return None
    return max(0.0, at - float(joined))


def revoke_one(
    ctx: Context,
    admin: AdminClient,
    *,
    spec: Spec,
    topic: str,
    ends: dict[int, int],
    stuck_marker: Path,
) -> dict[str, Any]:
    timeout = ctx.options.revoke_timeout_s
    notes: list[str] = []
    result: dict[str, Any] = {"notes": notes}
    first = ctx.launch(spec)
    second: Runner | None = None
    try:
        deadline = time.monotonic() + 60
        while not stuck_marker.exists() and time.monotonic() < deadline:
            time.sleep(0.02)
        if not stuck_marker.exists():
            notes.append("the stuck message never ran on member 1")
            result["log_tail"] = first.log_tail()
            return result
        members_before = set(group_members(admin, spec.group))
        second = ctx.launch(spec)
        polling = second.wait_event("polling", 60)
        if polling is None:
            notes.append("member 2 never started polling")
            result["log_tail"] = second.log_tail()
            return result
        joined = float(polling["wall"])
        result["member2_first_poll_wall"] = joined
        assigned_at: float | None = None
        partitions: list[int] = []
        done_at: float | None = None
        limit = time.monotonic() + timeout + 90
        while time.monotonic() < limit:
            now = time.time()
            if assigned_at is None:
                members = group_members(admin, spec.group)
                new = {m: p for m, p in members.items() if m not in members_before and p}
                if new:
                    assigned_at = now
                    partitions = next(iter(new.values()))
            if assigned_at is not None:
                committed = committed_offsets(ctx.bootstrap, spec.group, topic)
                if all(committed.get(p, -1) >= ends[p] for p in partitions):
                    done_at = time.time()
                    break
            time.sleep(0.1)
        result["member2_partitions"] = partitions
        stuck_partition = int(stuck_marker.name.removeprefix("stuck-").split(":")[0])
        result["stuck_partition_moved"] = stuck_partition in partitions
        result["rebalance_s"] = assigned_at - joined if assigned_at else None
        result["member2_done_s"] = done_at - joined if done_at else None
        if assigned_at is None:
            notes.append(f"member 2 got no partitions within {timeout + 90:.0f}s")
        elif done_at is None:
            notes.append("member 2 did not commit its partitions to the end")
        # then everything, so that "lost" means lost (bounded)
        limit = time.monotonic() + 60
        while time.monotonic() < limit:
            committed = committed_offsets(ctx.bootstrap, spec.group, topic)
            if all(committed.get(p, -1) >= end for p, end in ends.items()):
                break
            time.sleep(0.2)
        result["committed_at_end"] = committed_offsets(ctx.bootstrap, spec.group, topic)
        result["all_committed"] = all(
            result["committed_at_end"].get(p, -1) >= end for p, end in ends.items()
        )
    finally:
        for member, name in ((first, "member 1"), (second, "member 2")):
            if member is None:
                continue
            member.stop()
            stopped = time.monotonic()
            event = member.wait_event("result", timeout + 15)
            exited = member.finish(5)
            took = time.monotonic() - stopped
            key = "member1" if member is first else "member2"
            result[f"{key}_stop_s"] = round(took, 2)
            result[f"{key}_exited"] = exited
            result[f"{key}_error"] = event.get("error") if event else None
            if not exited:
                notes.append(f"{name} did not exit within {took:.0f}s of stop; killed")
            if event and event.get("error"):
                notes.append(f"{name}: {event['error']}")
    return result


# --------------------------------------------------------------------------- memory


def memory(ctx: Context) -> dict[str, Any]:
    options = ctx.options
    per_partition = options.memory_messages // PARTITIONS
    messages = per_partition * PARTITIONS
    print(f"memory: producing {messages:,} x {options.memory_value_bytes} B ...", flush=True)
    topic, ends = new_topic(ctx, "bench-sbs-memory", per_partition, options.memory_value_bytes)
    iterations = calibrate(0.000005)
    runs: dict[str, dict[str, Any]] = {}
    for contender in options.contenders:
        ctx.quiet()
        spec = ctx.spec(
            contender,
            topic,
            Job(iterations=iterations),
            expected=messages,
            end_offsets=ends,
            deadline_s=options.memory_deadline_s,
            rss_interval_s=0.5,
        )
        result = ctx.run_once(spec, spec.deadline_s + 90)
        start, peak = result.get("rss_start_bytes"), result.get("rss_peak_bytes")
        result["rss_growth_bytes"] = (
            peak - start if start is not None and peak is not None else None
        )
        result["finished"] = result.get("last_handled_s") is not None
        polling, last = result.get("polling_s"), result.get("last_handled_s")
        handled = int(result.get("handled") or 0)
        if polling is not None:
            end = last if last is not None else polling + options.memory_deadline_s
            result["drain_rps"] = handled / (end - polling) if end > polling else None
        runs[contender] = result
        print(
            f"  {contender}: handled {handled:,}/{messages:,} "
            f"({num(result.get('drain_rps'))} rec/s), RSS start {mb(start)} MB, "
            f"peak {mb(peak)} MB, growth {mb(result['rss_growth_bytes'])} MB",
            flush=True,
        )
    ctx.env.cleanup()
    return {
        "messages": messages,
        "value_bytes": options.memory_value_bytes,
        "handler_iterations": iterations,
        "deadline_s": options.memory_deadline_s,
        "runs": runs,
    }


# --------------------------------------------------------------------------- reporting


def draw_chart(json_path: Path, png_path: Path, log: list[str]) -> bool:
    spec = peer_venvs.venv_specs()["chart"]
    python = peer_venvs.ensure(spec, log)
    if python is None:
        return False
    result = subprocess.run(
        [str(python), "-m", "benchmarks.side_by_side_chart", str(json_path), str(png_path)],
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        capture_output=True,
        text=True,
        check=False,
    )
    if result.returncode != 0:
        log.append(f"chart failed: {result.stderr.strip()[-500:]}")
        return False
    return True


# --------------------------------------------------------------------------- main


def resolve_pythons(options: Options, log: list[str]) -> dict[str, str]:
    pythons = dict(options.pythons)
    specs = peer_venvs.venv_specs()
    for contender in options.contenders:
        if contender in pythons:
            continue
        if contender == "procpool":
            pythons[contender] = sys.executable
            continue
        python = peer_venvs.ensure(specs[contender], log)
        if python is not None:
            pythons[contender] = str(python)
    return pythons


def run_all(options: Options) -> dict[str, Any]:
    """Every scenario for every contender; the results document (also saved, unless not)."""
    log: list[str] = []
    bootstrap = resolve_bootstrap(options.bootstrap)
    pythons = resolve_pythons(options, log)
    for line in log:
        print(f"  note: {line}", flush=True)
    options = replace(options, contenders=tuple(c for c in options.contenders if c in pythons))
    broker = local_broker(bootstrap)
    print(
        f"broker {bootstrap}; workers {options.workers}; "
        f"contenders {', '.join(options.contenders)}",
        flush=True,
    )
    work_dir = Path(tempfile.mkdtemp(prefix="procpool-bench-"))
    ctx = Context(
        options=options,
        bootstrap=bootstrap,
        env=KafkaTestEnv(bootstrap),
        pythons=pythons,
        broker_pid=broker.pid if broker else None,
        work_dir=work_dir,
        notes=log,
    )
    started = time.monotonic()
    document: dict[str, Any] = {
        "benchmark": "side-by-side",
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "quick": options.quick,
        "partitions": PARTITIONS,
        "workers": options.workers,
        "options": {k: v for k, v in asdict(options).items() if k != "pythons"},
        "environment": environment(bootstrap),
        "contenders": {
            c: {
                "label": LABELS[c],
                "python": pythons[c],
                "versions": {}
                if c == "procpool"
                else peer_venvs.installed_versions(
                    Path(pythons[c]),
                    ["sentry-arroyo", "retriable-kafka-client", "confluent-kafka", "psutil"],
                ),
            }
            for c in options.contenders
        },
        "notes": log,
    }
    try:
        if "throughput" in options.scenarios:
            document["throughput"] = throughput(ctx)
        if "retry" in options.scenarios:
            document["retry"] = retry(ctx)
        if "revoke" in options.scenarios:
            document["revoke"] = revoke(ctx)
        if "memory" in options.scenarios:
            document["memory"] = memory(ctx)
    finally:
        ctx.env.cleanup()
        if os.environ.get("PROCPOOL_BENCH_KEEP"):  # the runners' logs, for a post-mortem
            print(f"runner logs kept in {work_dir}")
        else:
            shutil.rmtree(work_dir, ignore_errors=True)
    document["duration_s"] = round(time.monotonic() - started, 1)
    document["python"] = platform.python_version()
    table = markdown(document)
    document["table_markdown"] = table
    print()
    print(table)
    if options.save:
        RESULTS_DIR.mkdir(parents=True, exist_ok=True)
        name = f"side-by-side-{dt.date.today().isoformat()}"
        name += ("-quick" if options.quick else "") + (f"-{options.tag}" if options.tag else "")
        json_path = RESULTS_DIR / f"{name}.json"
        json_path.write_text(json.dumps(document, indent=2) + "\n")
        print(f"written: {json_path.relative_to(REPO)}")
        if options.chart:
            png_path = json_path.with_suffix(".png")
            if draw_chart(json_path, png_path, log):
                print(f"written: {png_path.relative_to(REPO)}")
            else:
                print(f"no chart: {log[-1] if log else 'unknown'}")
    return document


def parse_args(argv: Sequence[str] | None) -> Options:
    parser = argparse.ArgumentParser(
        description=(__doc__ or "").split("\n\n", 1)[0],
        epilog="--render RESULTS.json alone rewrites that file's table and chart.",
    )
    parser.add_argument("--quick", action="store_true", help="small sizes: a few minutes")
    parser.add_argument("--bootstrap", help="Kafka bootstrap servers (default: kafka-local)")
    parser.add_argument("--contenders", default=",".join(CONTENDERS))
    parser.add_argument("--scenarios", default=",".join(SCENARIOS))
    parser.add_argument("--costs", default=",".join(c.name for c in COSTS))
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--messages", type=int, help="throughput messages per cost")
    parser.add_argument("--memory-messages", type=int)
    parser.add_argument("--memory-deadline", type=float, help="seconds per contender at most")
    parser.add_argument("--wait-quiet", type=float, help="seconds to wait for a quiet machine")
    parser.add_argument("--retries", type=int, help="repeats of a disturbed throughput run")
    parser.add_argument(
        "--rounds", type=int, help="interleaved throughput rounds per cost (median reported)"
    )
    parser.add_argument(
        "--revoke-stuck",
        default="0:5",
        metavar="PARTITION:INDEX",
        help="revoke: the message stuck on member 1 (on a partition that moves; default 0:5)",
    )
    parser.add_argument(
        "--group-config",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="revoke: a broker-side setting of each group (repeatable), e.g. "
        "consumer.heartbeat.interval.ms=5000",
    )
    parser.add_argument("--no-save", action="store_true")
    parser.add_argument("--no-chart", action="store_true")
    parser.add_argument("--tag", help="suffix of the results file names")
    parser.add_argument(
        "--kafka",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a librdkafka consumer setting for every contender (repeatable)",
    )
    args = parser.parse_args(argv)

    def names(text: str, allowed: Sequence[str]) -> tuple[str, ...]:
        chosen = tuple(n.strip() for n in text.split(",") if n.strip())
        unknown = [n for n in chosen if n not in allowed]
        if unknown:
            parser.error(f"unknown {unknown}; choose from {list(allowed)}")
        return chosen

    partition, _, index = args.revoke_stuck.partition(":")
    if not (partition.isdigit() and index.isdigit() and int(partition) < PARTITIONS):
        parser.error(f"--revoke-stuck: expected PARTITION:INDEX, partition < {PARTITIONS}")
    options = Options(
        bootstrap=args.bootstrap,
        contenders=names(args.contenders, CONTENDERS),
        scenarios=names(args.scenarios, SCENARIOS),
        costs=names(args.costs, [c.name for c in COSTS]),
        quick=args.quick,
        workers=args.workers,
        messages=args.messages,
        save=not args.no_save,
        chart=not args.no_chart,
        tag=args.tag,
        kafka_config=dict(item.split("=", 1) for item in args.kafka),
        revoke_stuck_id=args.revoke_stuck,
        group_config=dict(item.split("=", 1) for item in args.group_config),
    )
    if args.quick:
        options = options.quick_sizes()
    if args.memory_messages:
        options.memory_messages = args.memory_messages
    if args.memory_deadline:
        options.memory_deadline_s = args.memory_deadline
    if args.wait_quiet is not None:
        options.wait_quiet_s = args.wait_quiet
    if args.retries is not None:
        options.retries = args.retries
    if args.rounds is not None:
        options.rounds = max(1, args.rounds)
    return options


def render(json_path: Path) -> None:
    """Rewrite the table (and the chart) of an existing results file from its data."""
    document = json.loads(json_path.read_text())
    document["table_markdown"] = markdown(document)
    json_path.write_text(json.dumps(document, indent=2) + "\n")
    print(document["table_markdown"])
    log: list[str] = []
    if not draw_chart(json_path, json_path.with_suffix(".png"), log):
        print(f"no chart: {log}")


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if args[:1] == ["--render"] and len(args) == 2:
        render(Path(args[1]))
        return 0
    document = run_all(parse_args(args))
    lost = [
        run.get("lost")
        for entry in document.get("throughput", [])
        for name, run in entry["runs"].items()
        if name == "procpool"
    ]
    return 1 if any(lost) else 0


if __name__ == "__main__":
    sys.exit(main())
