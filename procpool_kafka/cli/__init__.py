"""The ``procpool-kafka`` command line.

This package is the only part of procpool_kafka that installs signal handlers or sets up
logging: the library never changes process-global state.

- ``main``: the entry point (``procpool-kafka``, ``python -m procpool_kafka.cli``), the run,
  SIGTERM/SIGINT handling and the exit codes
- ``options``: the option table; flags, ``PROCPOOL_KAFKA_*`` variables and the TOML file
  merged (flag > environment > file > default); library errors put in flag words
- ``config``: resolved option values into ConsumerConfig and its RetryPolicy objects
- ``handler``: importing the handler named ``package.module:function``
- ``metrics``: starting the metrics server, a bad address named by its flag
- ``logging``: root logging on stderr (text or JSON), secret values redacted from every
  log record and error line
- ``progress``: progress of a batch run on stderr and the summary line on stdout
- ``errors``: UsageError, a command-line mistake (exit code 2)
"""

from procpool_kafka.cli.main import main

__all__ = ["main"]
