"""retry/schedule.py: DelaySchedule, checked against a simple model."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from procpool_kafka.records import Record, TopicPartition
from procpool_kafka.retry.schedule import DelaySchedule


def rec(topic: str, partition: int, offset: int) -> Record:
    return Record(topic, partition, offset, None, b"v", attempt=2)


def test_delay_schedule_pops_due_records_earliest_first() -> None:
    schedule = DelaySchedule()
    a, b, c = rec("r", 0, 1), rec("r", 1, 5), rec("r2", 0, 9)
    schedule.hold(a.topic_partition, a, 300)
    schedule.hold(b.topic_partition, b, 100)
    schedule.hold(c.topic_partition, c, 200)
    assert len(schedule) == 3
    assert schedule.next_due_ms() == 100
    assert schedule.pop_due(99) == []
    assert schedule.pop_due(200) == [b, c]
    assert not schedule.holding(b.topic_partition)
    assert schedule.holding(a.topic_partition)
    assert schedule.next_due_ms() == 300
    assert schedule.pop_due(10**15) == [a]
    assert schedule.next_due_ms() is None
    assert len(schedule) == 0


def test_delay_schedule_ties_keep_hold_order() -> None:
    schedule = DelaySchedule()
    records = [rec("r", p, 0) for p in range(5)]
    for record in records:
        schedule.hold(record.topic_partition, record, 50)
    assert schedule.pop_due(50) == records


def test_delay_schedule_holds_one_per_partition() -> None:
    schedule = DelaySchedule()
    first, second = rec("r", 0, 1), rec("r", 0, 2)
    schedule.hold(TopicPartition("r", 0), first, 10)
    with pytest.raises(ValueError, match="already holds"):
        schedule.hold(TopicPartition("r", 0), second, 5)
    with pytest.raises(ValueError, match="not a record of"):
        schedule.hold(TopicPartition("r", 1), second, 5)
    assert schedule.pop_due(10) == [first]
    schedule.hold(TopicPartition("r", 0), second, 20)  # free again once popped
    assert schedule.partitions() == {TopicPartition("r", 0)}


def test_delay_schedule_drop() -> None:
    schedule = DelaySchedule()
    a, b, c = rec("r", 0, 1), rec("r", 1, 1), rec("r", 2, 1)
    schedule.hold(a.topic_partition, a, 30)
    schedule.hold(b.topic_partition, b, 10)
    schedule.hold(c.topic_partition, c, 20)
    dropped = schedule.drop([a.topic_partition, b.topic_partition, TopicPartition("x", 0)])
    assert dropped == [b, a]
    assert len(schedule) == 1
    assert schedule.next_due_ms() == 20
    assert schedule.drop([]) == []
    # a dropped partition can hold again, with a fresh due time
    schedule.hold(b.topic_partition, b, 40)
    assert schedule.pop_due(35) == [c]
    assert schedule.pop_due(40) == [b]


@given(
    ops=st.lists(
        st.tuples(
            st.sampled_from(["hold", "pop", "drop"]),
            st.integers(0, 5),
            st.integers(0, 1000),
        ),
        max_size=60,
    )
)
def test_delay_schedule_matches_a_simple_model(ops: list[tuple[str, int, int]]) -> None:
    schedule = DelaySchedule()
    model: dict[TopicPartition, tuple[int, int, Record]] = {}
    seq = 0
    for op, partition, number in ops:
        tp = TopicPartition("r", partition)
        if op == "hold":
            record = rec("r", partition, number)
            if tp in model:
                with pytest.raises(ValueError):
                    schedule.hold(tp, record, number)
            else:
                seq += 1
                schedule.hold(tp, record, number)
                model[tp] = (number, seq, record)
        elif op == "pop":
            due = sorted((d, s, tp_) for tp_, (d, s, _) in model.items() if d <= number)
            expected = [model.pop(tp_)[2] for _, _, tp_ in due]
            assert schedule.pop_due(number) == expected
        else:
            expected_dropped = [model.pop(tp)[2]] if tp in model else []
            assert schedule.drop([tp]) == expected_dropped
        assert len(schedule) == len(model)
        assert schedule.next_due_ms() == min((d for d, _, _ in model.values()), default=None)
        assert all(schedule.holding(tp_) for tp_ in model)
