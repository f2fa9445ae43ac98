"""PauseBook: why each partition is paused, and where to resume it.

A partition may be paused for several reasons at once (backpressure, a retry record that is
not yet due); it is paused in librdkafka while any reason holds and resumed when the last one
is released. pause() does not un-deliver what librdkafka already fetched, so records of a
paused partition that still arrive are discarded here and the partition is sought back to
the first discarded offset when it resumes: nothing is skipped.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from enum import StrEnum

from procpool_kafka.records import TopicPartition

log = logging.getLogger(__name__)


class PauseReason(StrEnum):
    BACKPRESSURE = "backpressure"
    NOT_DUE = "not-due"
    STOPPING = "stopping"  # a run is stopping: fetch nothing more


PartitionsAction = Callable[[list[TopicPartition]], None]
SeekAction = Callable[[TopicPartition, int], None]


class PauseBook:
    """Paused partitions, their reasons, and their resume offsets."""

    def __init__(self, pause: PartitionsAction, resume: PartitionsAction, seek: SeekAction):
        self._pause = pause
        self._resume = resume
        self._seek = seek
        self._reasons: dict[TopicPartition, set[PauseReason]] = {}
        self._resume_at: dict[TopicPartition, int] = {}

    def pause(self, partitions: Iterable[TopicPartition], reason: PauseReason) -> None:
        newly = []
        for tp in partitions:
            reasons = self._reasons.setdefault(tp, set())
            if not reasons:
                newly.append(tp)
            reasons.add(reason)
        if newly:
            log.debug("pausing %s (%s)", newly, reason.value)
            self._pause(newly)

    def release(self, partitions: Iterable[TopicPartition], reason: PauseReason) -> None:
        freed = []
        for tp in partitions:
            reasons = self._reasons.get(tp)
            if not reasons or reason not in reasons:
                continue
            reasons.discard(reason)
            if not reasons:
                del self._reasons[tp]
                freed.append(tp)
        for tp in freed:
            offset = self._resume_at.pop(tp, None)
            if offset is not None:
                log.debug("seeking %s back to %d before resuming it", tp, offset)
                self._seek(tp, offset)
        if freed:
            log.debug("resuming %s (%s released)", freed, reason.value)
            self._resume(freed)

    def is_paused(self, tp: TopicPartition) -> bool:
        return tp in self._reasons

    def paused_by(self, reason: PauseReason) -> list[TopicPartition]:
        return [tp for tp, reasons in self._reasons.items() if reason in reasons]

    def paused(self) -> list[TopicPartition]:
        return list(self._reasons)

    def discarded(self, tp: TopicPartition, offset: int) -> None:
        """A record of paused ``tp`` arrived and was dropped: fetch it again on resume."""
        current = self._resume_at.get(tp)
        if current is None or offset < current:
            self._resume_at[tp] = offset

    def forget(self, partitions: Iterable[TopicPartition]) -> None:
        """The partitions left this consumer (the consumer resumes them when they come back:
        librdkafka keeps the pause flag of a partition revoked while paused)."""
        for tp in partitions:
            self._reasons.pop(tp, None)
            self._resume_at.pop(tp, None)
