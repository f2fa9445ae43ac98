"""The ``procpool-kafka`` command: ``procpool-kafka run package.module:function [options]``.
The parser, the run (options resolved, handler loaded, consumer run, summary printed), the
SIGTERM/SIGINT handling and the exit codes.

Exit codes: 0 done (stopped by a signal or, with --until-end, at the end); 1 runtime failure
(e.g. the cluster unreachable longer than --broker-timeout, wrong credentials); 2 usage or
configuration error; 3 with --until-end --fail-on-dlq when a record was dead-lettered;
130 when a second Ctrl-C forced the stop.
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
from collections.abc import Sequence
from types import FrameType

from procpool_kafka._version import __version__
from procpool_kafka.cli.config import build_config
from procpool_kafka.cli.errors import UsageError
from procpool_kafka.cli.handler import load_handler
from procpool_kafka.cli.logging import configure_logging, redact_secrets
from procpool_kafka.cli.metrics import start_metrics_server
from procpool_kafka.cli.options import (
    add_arguments,
    config_path,
    describe_config_error,
    environment,
    load_file,
    resolve,
    sources,
    unknown_variables,
)
from procpool_kafka.cli.progress import ProgressReporter, print_summary
from procpool_kafka.config import is_secret_setting
from procpool_kafka.consumer import ProcPoolConsumer
from procpool_kafka.errors import (
    BrokerUnavailableError,
    ConfigError,
    EndNotCommittedError,
    HandlerLoadError,
    ProcPoolKafkaError,
    TopicNotFoundError,
)
from procpool_kafka.metrics import RunSummary
from procpool_kafka.metrics_server import MetricsServer

log = logging.getLogger("procpool_kafka.cli")

EXIT_OK = 0
EXIT_RUNTIME = 1
EXIT_USAGE = 2
EXIT_DEAD_LETTERED = 3
EXIT_FORCED = 130


def build_parser() -> argparse.ArgumentParser:
    """``procpool-kafka [--version] run [HANDLER] [--config FILE.toml] [options]``."""
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


def run_command(args: argparse.Namespace) -> int:
    """``run``: resolve the options, load the handler, run the consumer; the exit code."""
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
    """The command's entry point: the exit code, every failure one ``error:`` line."""
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
