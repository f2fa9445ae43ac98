"""OffsetTracker: unit and property-based tests (invariant 1 of docs/architecture.md)."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from procpool_kafka.offsets import OffsetTracker
from procpool_kafka.records import TopicPartition

TP = TopicPartition("t", 0)
OTHER = TopicPartition("t", 1)


def test_position_is_last_contiguous_done_plus_one() -> None:
    tracker = OffsetTracker()
    for offset in (10, 11, 12, 14, 15):
        tracker.received(TP, offset)
    assert tracker.position(TP) is None
    tracker.done(TP, 11)
    assert tracker.position(TP) is None, "10 is not done: nothing may be committed"
    tracker.done(TP, 10)
    assert tracker.position(TP) == 12
    tracker.done(TP, 14)
    assert tracker.position(TP) == 12
    tracker.done(TP, 12)
    assert tracker.position(TP) == 15, "13 was never received (a gap), so it cannot hold back"
    tracker.done(TP, 15)
    assert tracker.position(TP) == 16
    assert tracker.pending_count(TP) == 0


def test_commits_due_reports_moved_positions_once() -> None:
    tracker = OffsetTracker()
    tracker.received(TP, 0)
    tracker.received(OTHER, 5)
    tracker.done(TP, 0)
    assert tracker.commits_due() == {TP: 1}
    tracker.mark_committed(TP, 1)
    assert tracker.commits_due() == {}
    tracker.done(OTHER, 5)
    assert tracker.commits_due([TP, OTHER]) == {OTHER: 6}


def test_unknown_and_forgotten_partitions_are_fenced() -> None:
    tracker = OffsetTracker()
    tracker.done(TP, 3)  # never received
    assert tracker.position(TP) is None
    tracker.received(TP, 3)
    tracker.forget(TP)
    tracker.done(TP, 3)  # a late outcome after revoke
    assert tracker.position(TP) is None
    assert tracker.commits_due() == {}


def test_refetched_offsets_and_unreceived_done_are_ignored() -> None:
    tracker = OffsetTracker()
    tracker.received(TP, 0)
    tracker.received(TP, 1)
    tracker.received(TP, 1)  # re-fetched after a seek back
    tracker.done(TP, 7)  # not received
    tracker.done(TP, 0)
    tracker.done(TP, 1)
    assert tracker.position(TP) == 2
    tracker.done(TP, 1)  # duplicate outcome
    assert tracker.position(TP) == 2


@settings(max_examples=300, deadline=None)
@given(
    offsets=st.lists(st.integers(0, 200), min_size=1, max_size=60, unique=True).map(sorted),
    data=st.data(),
)
def test_position_never_passes_an_undone_received_offset(
    offsets: list[int], data: st.DataObject
) -> None:
    tracker = OffsetTracker()
    for offset in offsets:
        tracker.received(TP, offset)
    order = data.draw(st.permutations(offsets))
    finished = data.draw(st.integers(0, len(order)))
    done: set[int] = set()
    for offset in order[:finished]:
        tracker.done(TP, offset)
        done.add(offset)
        position = tracker.position(TP)
        undone = [o for o in offsets if o not in done]
        if position is None:
            assert offsets[0] not in done
        else:
            assert all(o in done for o in offsets if o < position)
            assert not undone or position <= undone[0]
            # the position is as far as it may go: just past the contiguous done prefix
            expected = undone[0] if undone else offsets[-1] + 1
            prefix = [o for o in offsets if o < expected]
            assert position == prefix[-1] + 1
    if finished == len(order):
        assert tracker.position(TP) == offsets[-1] + 1


@settings(max_examples=200, deadline=None)
@given(
    steps=st.lists(
        st.tuples(
            st.sampled_from(["recv", "done", "revoke"]), st.integers(0, 1), st.integers(0, 30)
        ),
        max_size=120,
    )
)
def test_revocations_never_commit_for_forgotten_partitions(
    steps: list[tuple[str, int, int]],
) -> None:
    """Random interleavings of receive, done and revoke across two partitions."""
    tracker = OffsetTracker()
    received: dict[int, list[int]] = {0: [], 1: []}
    done: dict[int, set[int]] = {0: set(), 1: set()}
    for action, partition, offset in steps:
        tp = TopicPartition("t", partition)
        if action == "recv":
            last = received[partition][-1] if received[partition] else -1
            tracker.received(tp, offset)
            if offset > last:
                received[partition].append(offset)
        elif action == "done":
            tracker.done(tp, offset)
            if offset in received[partition]:
                done[partition].add(offset)
        else:
            tracker.forget(tp)
            received[partition], done[partition] = [], set()
            assert tracker.position(tp) is None
            assert tp not in tracker.commits_due()
        position = tracker.position(tp)
        if position is not None:
            assert all(o in done[partition] for o in received[partition] if o < position)
