"""The ``procpool-kafka`` command: ``procpool-kafka run package.module:function [options]``.

Exit codes: 0 done (stopped by a signal or, with --until-end, at the end); 1 runtime failure
(e.g. the cluster unreachable longer than --broker-timeout, wrong credentials); 2 usage or
configuration error; 3 with --until-end --fail-on-dlq when a record was dead-lettered;
130 when a second Ctrl-C forced the stop.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import signal
import socket
import sys
from collections.abc import Callable, Sequence
from types import FrameType
from typing import Any

from procpool_kafka._version import __version__
from procpool_kafka.cli.logging import configure_logging, redact_secrets
from procpool_kafka.cli.options import (
    add_arguments,
    config_path,
    describe_config_error,
    environment,
    load_file,
    parse_topic_map,
    resolve,
    sources,
    unknown_variables,
)
from procpool_kafka.cli.progress import ProgressReporter
from procpool_kafka.config import ConsumerConfig, is_secret_setting
from procpool_kafka.consumer import ProcPoolConsumer
from procpool_kafka.errors import (
    BrokerUnavailableError,
    ConfigError,
    EndNotCommittedError,
    HandlerLoadError,
    ProcPoolKafkaError,
    TopicNotFoundError,
)
from procpool_kafka.metrics import RunSummary, format_rate
from procpool_kafka.metrics_server import MetricsServer
from procpool_kafka.records import Record
from procpool_kafka.retry import Backoff, RetryPolicy

log = logging.getLogger("procpool_kafka.cli")

EXIT_OK = 0
EXIT_RUNTIME = 1
EXIT_USAGE = 2
EXIT_DEAD_LETTERED = 3
EXIT_FORCED = 130


class UsageError(Exception):
    """A usage error reported as one line with exit code 2."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="procpool-kafka",
        description=(
            "Consume Kafka topics and run a CPU-heavy handler per message in a process pool."
        ),
        epilog=__doc__.split("\n\n", 1)[1] if __doc__ else None,
    )
    parser.add_argument("--version", action="version", version=f"procpool-kafka {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    run = commands.add_parser(
        "run",
        help="consume and handle records",
        description=(
            "Run HANDLER (package.module:function, called with one Record) for every record "
            "of the topics. Every option can also come from PROCPOOL_KAFKA_<OPTION> "
            "environment variables and from a TOML file (--config); a flag beats the "
            "environment, which beats the file."
        ),
    )
    run.add_argument(
        "handler", nargs="?", help="package.module:function [env PROCPOOL_KAFKA_HANDLER]"
    )
    run.add_argument("--config", "-c", metavar="FILE.toml", help="read options from a TOML file")
    add_arguments(run)
    return parser


# ---------------------------------------------------------------------------- handler


def load_handler(spec: str, app_dir: str | None) -> Callable[[Record], object]:
    """Import ``package.module:function``; UsageError with one clear line when it cannot."""
    module_name, sep, attribute = spec.partition(":")
    if not sep or not module_name or not attribute:
        raise UsageError(f"handler {spec!r} must look like package.module:function")
    for path in (app_dir, os.getcwd()):
        if path and os.path.abspath(path) not in map(os.path.abspath, sys.path):
            sys.path.insert(0, os.path.abspath(path))
    if app_dir and not os.path.isdir(app_dir):
        raise UsageError(f"--app-dir {app_dir} is not a directory")
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as error:
        raise UsageError(f"cannot import handler module {module_name!r}: {error}") from None
    except Exception as error:
        raise UsageError(
            f"importing handler module {module_name!r} failed: {type(error).__name__}: {error}"
        ) from None
    target: Any = module
    for part in attribute.split("."):
        if not hasattr(target, part):
            raise UsageError(f"module {module_name!r} has no attribute {attribute!r}")
        target = getattr(target, part)
    if not callable(target):
        raise UsageError(f"handler {spec!r} is not callable")
    handler: Callable[[Record], object] = target
    return handler


# ---------------------------------------------------------------------------- configuration


def build_config(
    values: dict[str, Any], where_from: dict[str, str] | None = None
) -> ConsumerConfig:
    """A ConsumerConfig (with retry policies) from resolved option values.

    Every retry option is validated even when no topic has a retry or dead-letter topic.
    """
    where_from = where_from or {}
    missing = [
        f"--{name}"
        for name, key in (
            ("bootstrap-servers", "bootstrap_servers"),
            ("group-id", "group_id"),
            ("topic", "topic"),
        )
        if not values[key]
    ]
    if missing:
        raise UsageError(f"missing required option(s): {', '.join(missing)}")
    retry_topics = parse_topic_map(
        "retry-topic", values["retry_topic"], where_from.get("retry_topic", "flag")
    )
    dlq_source = where_from.get("dlq_topic", "flag")
    dlq_topics: dict[str, str] = {}
    for topic, names in parse_topic_map("dlq-topic", values["dlq_topic"], dlq_source).items():
        if len(names) > 1:
            raise UsageError(
                f"--dlq-topic (from {dlq_source}): one dead-letter topic per topic, "
                f"got {topic}={','.join(names)}"
            )
        dlq_topics[topic] = names[0]
    unknown = sorted((set(retry_topics) | set(dlq_topics)) - set(values["topic"]))
    if unknown:
        raise UsageError(
            f"--retry-topic/--dlq-topic name topics not consumed: {', '.join(unknown)}"
        )
    backoff = Backoff(
        initial_delay=values["initial_delay"],
        multiplier=values["backoff_multiplier"],
        max_delay=values["max_delay"],
        jitter=values["jitter"],
    )
    policies = [
        RetryPolicy(
            topic=topic,
            retry_topics=tuple(retry_topics.get(topic, ())),
            max_attempts=values["max_attempts"],
            backoff=backoff,
            dlq_topic=dlq_topics.get(topic),
            non_retryable=tuple(values["non_retryable"]),
        )
        for topic in values["topic"]
        if topic in retry_topics or topic in dlq_topics
    ]
    if not policies:  # validate --max-attempts and --non-retryable all the same
        RetryPolicy(
            topic="any-topic",
            max_attempts=values["max_attempts"],
            backoff=backoff,
            non_retryable=tuple(values["non_retryable"]),
        )
    optional = {key: values[key] for key in ("workers", "batch_size") if values[key] is not None}
    return ConsumerConfig(
        bootstrap_servers=values["bootstrap_servers"],
        group_id=values["group_id"],
        topics=values["topic"],
        max_in_flight=values["max_in_flight"],
        revoke_timeout=values["revoke_timeout"],
        task_timeout=values["task_timeout"],
        heartbeat_timeout=values["heartbeat_timeout"],
        crash_limit=values["crash_limit"],
        connect_timeout=values["connect_timeout"],
        broker_timeout=values["broker_timeout"],
        kafka_config=values["kafka_config"],
        group_protocol=values["group_protocol"],
        retry=policies,
        create_topics=values["create_topics"],
        **optional,
    )


# ---------------------------------------------------------------------------- running


class SignalStopper:
    """SIGTERM/SIGINT stop the consumer gracefully; a second SIGINT forces a fast stop."""

    def __init__(self, consumer: ProcPoolConsumer) -> None:
        self._consumer = consumer
        self.signals = 0
        self.forced = False

    def install(self) -> None:
        signal.signal(signal.SIGTERM, self._handle)
        signal.signal(signal.SIGINT, self._handle)

    def _handle(self, signum: int, _frame: FrameType | None) -> None:
        self.signals += 1
        if self.signals == 1:
            log.info("%s: stopping gracefully", signal.Signals(signum).name)
            self._consumer.stop()
        elif signum == signal.SIGINT:
            log.warning("second SIGINT: forcing the stop (running handlers are killed)")
            self.forced = True
            self._consumer.stop(force=True)


def health_stale_after(revoke_timeout: float) -> float:
    """How old the published state may get before /healthz fails: longer than a drain's
    worst case (revoke_timeout, the 5 s settle, a 10 s sync commit) with a margin."""
    return max(30.0, revoke_timeout + 30.0)


def print_summary(summary: RunSummary) -> None:
    end = summary.end_commit
    committed = (
        "" if end is None else f" committed={end.partitions - len(end.short)}/{end.partitions}"
    )
    print(
        f"summary: ok={summary.records_ok} retried={summary.records_retried} "
        f"dead-lettered={summary.records_dead_lettered} failed-attempts={summary.records_failed} "
        f"worker-crashes={summary.worker_crashes} duration={summary.duration_s:.1f}s "
        f"rate={format_rate(summary.records_per_s)} records/s"
        f"{committed}",
        flush=True,
    )


def start_metrics_server(
    consumer: ProcPoolConsumer,
    values: dict[str, Any],
    where_from: dict[str, str],
    revoke_timeout: float,
) -> MetricsServer:
    """Serve metrics as --metrics-host/--metrics-port say; UsageError naming them if not."""
    server = MetricsServer(
        consumer.snapshot,
        values["metrics_host"],
        values["metrics_port"],
        stale_after=health_stale_after(revoke_timeout),
    )
    try:
        server.start()
    except OSError as error:
        if isinstance(error.__cause__, socket.gaierror):
            raise UsageError(
                f"--metrics-host (from {where_from['metrics_host']}): cannot resolve "
                f"{values['metrics_host']!r}: {error.__cause__.strerror}"
            ) from None
        raise UsageError(
            f"--metrics-port (from {where_from['metrics_port']}): {error.strerror or error}"
        ) from None
    host, port = server.address
    log.info("metrics on http://%s:%d/metrics (health: /healthz, /readyz)", host, port)
    return server


def run_command(args: argparse.Namespace) -> int:
    flags = {k: v for k, v in vars(args).items() if k not in ("command", "config")}
    environ = environment()
    for warning in unknown_variables(environ):
        print(f"procpool-kafka: warning: {warning}", file=sys.stderr)
    file_values = load_file(config_path(vars(args), environ))
    values = resolve(flags, environ, file_values)
    where_from = sources(flags, environ, file_values)
    secrets = [v for k, v in values["kafka_config"].items() if is_secret_setting(k) and v]
    configure_logging(values["log_level"], values["log_format"], secrets)
    handler_spec = flags.get("handler") or environ.get("PROCPOOL_KAFKA_HANDLER")
    handler_spec = handler_spec or file_values.get("handler")
    if not handler_spec:
        raise UsageError("missing HANDLER (package.module:function)")
    try:
        config = build_config(values, where_from)
    except ConfigError as error:
        raise UsageError(describe_config_error(error, where_from)) from None
    handler = load_handler(str(handler_spec), values["app_dir"])
    consumer = ProcPoolConsumer(config, handler)
    stopper = SignalStopper(consumer)
    stopper.install()
    server: MetricsServer | None = None
    reporter: ProgressReporter | None = None
    try:
        if values["metrics_port"] is not None:  # a bad address fails before any broker call
            server = start_metrics_server(consumer, values, where_from, config.revoke_timeout)
        try:
            consumer.open()
        except ConfigError as error:  # a librdkafka setting refused: name -X when it is one
            raise UsageError(describe_config_error(error, where_from)) from None
        if values["until_end"]:
            reporter = ProgressReporter(consumer.progress, values["progress_interval"])
            reporter.start()
        summary = consumer.run(until_end=values["until_end"], wait_retries=values["wait_retries"])
    except EndNotCommittedError as error:
        if isinstance(error.summary, RunSummary):
            print_summary(error.summary)
        raise
    finally:
        if reporter is not None:
            reporter.stop()
        consumer.close()
        if server is not None:
            server.stop()
    print_summary(summary)
    if stopper.forced:
        return EXIT_FORCED
    if values["until_end"] and values["fail_on_dlq"] and summary.records_dead_lettered:
        return EXIT_DEAD_LETTERED
    return EXIT_OK


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command != "run":
        parser.print_help(sys.stderr)
        return EXIT_USAGE
    try:
        return run_command(args)
    except (UsageError, ConfigError, HandlerLoadError, TopicNotFoundError) as error:
        print(f"procpool-kafka: error: {redact_secrets(str(error))}", file=sys.stderr)
        return EXIT_USAGE
    except (BrokerUnavailableError, ProcPoolKafkaError) as error:
        print(f"procpool-kafka: error: {redact_secrets(str(error))}", file=sys.stderr)
        return EXIT_RUNTIME
    except Exception as error:
        log.exception("unexpected failure")
        print(
            f"procpool-kafka: error: {type(error).__name__}: {redact_secrets(str(error))}",
            file=sys.stderr,
        )
        return EXIT_RUNTIME
