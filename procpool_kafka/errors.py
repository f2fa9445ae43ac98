"""Exceptions raised by procpool-kafka, and the failure types reported for records."""

from __future__ import annotations


class ProcPoolKafkaError(Exception):
    """Base class of every error procpool-kafka raises."""


class ConfigError(ProcPoolKafkaError, ValueError):
    """A configuration value is invalid; the message names the setting."""


class HandlerLoadError(ProcPoolKafkaError):
    """The handler cannot be imported, is not callable or cannot be pickled."""


class TopicNotFoundError(ProcPoolKafkaError):
    """One or more configured topics do not exist on the cluster."""


class BrokerUnavailableError(ProcPoolKafkaError):
    """The cluster did not answer within the configured timeout."""


class RecordFailure(Exception):
    """Base of the failures the pool reports in place of a handler exception."""


class TaskTimeout(RecordFailure):
    """The handler ran longer than ``task_timeout``; its worker was killed."""


class WorkerLost(RecordFailure):
    """The worker stopped heartbeating while running the handler; it was killed."""


class WorkerCrashed(RecordFailure):
    """The record's worker died ``crash_limit`` times while running it."""
