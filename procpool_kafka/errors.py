"""Exceptions raised by procpool-kafka, and the failure types reported for records."""

from __future__ import annotations


class ProcPoolKafkaError(Exception):
    """Base class of every error procpool-kafka raises."""


class ConfigError(ProcPoolKafkaError, ValueError):
    """A configuration value is invalid; the message names the setting.

    ``setting`` (e.g. ``"workers"``, ``"backoff.jitter"``) and ``problem`` (the message
    without the setting's name, the bad value included) let the command line name its flag
    instead of the setting; both are None when the error is about no single setting.
    """

    def __init__(
        self, message: str, *, setting: str | None = None, problem: str | None = None
    ) -> None:
        super().__init__(message)
        self.setting = setting
        self.problem = problem


class HandlerLoadError(ProcPoolKafkaError):
    """The handler cannot be imported, is not callable or cannot be pickled."""


class TopicNotFoundError(ProcPoolKafkaError):
    """One or more configured topics do not exist on the cluster."""


class BrokerUnavailableError(ProcPoolKafkaError):
    """The cluster did not answer within the configured timeout."""


class KafkaCallError(ProcPoolKafkaError):
    """A call to Kafka failed with an error that waiting does not cure (e.g. authorization)."""


class ProducerFailedError(ProcPoolKafkaError):
    """The retry/dead-letter producer failed fatally and could not be replaced."""


class EndNotCommittedError(ProcPoolKafkaError):
    """A batch run reached the end, but the committed offsets fall short of it.

    ``summary`` is the run's RunSummary (what was handled and what was committed).
    """

    def __init__(self, message: str, summary: object) -> None:
        super().__init__(message)
        self.summary = summary


class RecordFailure(Exception):
    """Base of the failures the pool reports in place of a handler exception."""


class TaskTimeout(RecordFailure):
    """The handler ran longer than ``task_timeout``; its worker was killed."""


class WorkerLost(RecordFailure):
    """The worker stopped heartbeating while running the handler; it was killed."""


class WorkerCrashed(RecordFailure):
    """The record's worker died ``crash_limit`` times while running it."""
