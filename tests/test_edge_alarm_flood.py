"""Alarm flood suppression (edge/alarm_flood.py): each tool's alarms past its budget are held
back and sent as one summary per flood; a held-back alarm still names the failure mode."""

from __future__ import annotations

import pytest

from edge.alarm_flood import MAX_MESSAGES, OTHER, AlarmFlood


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def test_a_flood_past_the_budget_is_held_back_and_summarised_once_quiet():
    clock = Clock()
    gate = AlarmFlood(per_tool_per_hour=60.0, burst=3, quiet_s=60.0, summary_every_s=600.0, clock=clock)
    sent = [gate.admit("etch-01", 5000.0 + i, "RF reflected power high", 500 + i) for i in range(10)]
    assert sent == [True] * 3 + [False] * 7
    assert gate.admit("etch-02", 5000.0, "RF reflected power high", 500), "each tool has its own budget"
    assert gate.admit("etch-01", 5010.0, "ESC leak", 900) is False
    clock.t += 30.0
    assert gate.summaries() == [], "not quiet for 60 s yet"
    clock.t += 30.0
    ((tool, ts, detail),) = gate.summaries()
    assert tool == "etch-01" and ts == 5010.0
    assert detail["held_back"] == 8 and detail["first_ts"] == 5003.0 and detail["last_ts"] == 5010.0
    assert detail["messages"] == {"RF reflected power high": 7, "ESC leak": 1}
    assert detail["severity"] == 900
    assert detail["message"].startswith("8 alarms held back in a flood (more than 60 an hour, burst 3)")
    assert gate.summaries() == [], "a flood is summarised once"
    # The bucket refilled at one a minute: the next alarm goes.
    assert gate.admit("etch-01", 5100.0, "RF reflected power high", 500)


def test_a_flood_that_goes_on_is_summarised_as_it_goes_and_all_at_a_stop():
    clock = Clock()
    gate = AlarmFlood(per_tool_per_hour=1.0, burst=1, quiet_s=60.0, summary_every_s=300.0, clock=clock)
    assert gate.admit("pump-01", 0.0, "chatter", 100)
    for i in range(1, 40):  # one every 10 s: never quiet for 60 s
        clock.t += 10.0
        assert not gate.admit("pump-01", float(i), "chatter", 100)
    ((_, _, first),) = gate.summaries()  # 390 s since the first held back: past summary_every_s
    assert first["held_back"] == 39
    clock.t += 10.0
    assert not gate.admit("pump-01", 40.0, "chatter", 100)
    assert gate.summaries() == []
    ((_, ts, last),) = gate.summaries(force=True)  # the edge stops: what is held goes now
    assert last["held_back"] == 1 and ts == 40.0


def test_distinct_messages_are_counted_by_name_up_to_a_bound():
    clock = Clock()
    gate = AlarmFlood(per_tool_per_hour=1.0, burst=1, quiet_s=1.0, summary_every_s=600.0, clock=clock)
    gate.admit("cvd-01", 0.0, "first", 1)
    for i in range(MAX_MESSAGES + 5):
        gate.admit("cvd-01", float(i), f"message {i}", 1)
    ((_, _, detail),) = gate.summaries(force=True)
    assert len(detail["messages"]) == MAX_MESSAGES + 1 and detail["messages"][OTHER] == 5
    assert sum(detail["messages"].values()) == detail["held_back"] == MAX_MESSAGES + 5


def test_a_budget_must_make_sense():
    with pytest.raises(ValueError, match="positive rate"):
        AlarmFlood(per_tool_per_hour=0.0, burst=3, quiet_s=60.0, summary_every_s=600.0)
