"""The per-workflow event log behind ``watch`` (node.progress): order, resume, bounds."""

from __future__ import annotations

import itertools

import pytest

from node.progress import ProgressHub, WatchLimitError


def hub(**kw: int) -> ProgressHub:
    ticks = itertools.count(1000)
    return ProgressHub(clock=lambda: float(next(ticks)), **kw)


def test_events_are_numbered_in_order_per_workflow() -> None:
    h = hub()
    h.step("wf", "a", "pending", tool="t")
    h.step("other", "x", "placed", node="n1")
    h.step("wf", "a", "placed", node="n1", reason="local")
    h.workflow_finished("wf", "SUCCESSFUL")
    sub = h.subscribe("wf", "peer", 0, lambda: None)
    assert [(e.seq, e.kind) for e in sub.backlog] == [
        (1, "pending"),
        (2, "placed"),
        (3, "workflow_finished"),
    ]
    assert sub.backlog[1].reason == "local" and sub.backlog[2].status == "SUCCESSFUL"
    assert sub.missed == 0 and not sub.reset and sub.last_seq == 3
    assert h.last_seq("other") == 1


def test_since_resumes_after_the_last_event_seen() -> None:
    h = hub()
    for kind in ("pending", "placed", "running", "finished"):
        h.step("wf", "a", kind)
    sub = h.subscribe("wf", "peer", 2, lambda: None)
    assert [e.seq for e in sub.backlog] == [3, 4] and sub.missed == 0


def test_dropped_events_are_reported_as_missed() -> None:
    h = hub(events_kept=3)
    for _ in range(10):
        h.step("wf", "a", "retried")
    sub = h.subscribe("wf", "peer", 2, lambda: None)
    assert [e.seq for e in sub.backlog] == [8, 9, 10]
    assert sub.missed == 5  # 3..7 are gone
    assert h.subscribe("wf", "peer", 0, lambda: None).missed == 7


def test_since_beyond_the_log_is_a_reset() -> None:
    h = hub()
    h.step("wf", "a", "pending")
    sub = h.subscribe("wf", "peer", 50, lambda: None)
    assert sub.reset and [e.seq for e in sub.backlog] == [1] and sub.missed == 0


def test_live_events_reach_watchers_and_wake_them() -> None:
    h = hub()
    rung: list[int] = []
    sub = h.subscribe("wf", "peer", 0, lambda: rung.append(1))
    h.step("wf", "a", "placed")
    h.step("else", "a", "placed")
    assert [e.kind for e in sub.watcher.take()] == ["placed"] and rung == [1]
    assert sub.watcher.take() == []


def test_a_watcher_that_falls_behind_is_lagged_and_holds_nothing() -> None:
    h = hub(queue=4)
    sub = h.subscribe("wf", "peer", 0, lambda: None)
    for _ in range(100):
        h.step("wf", "a", "retried")
    assert sub.watcher.lagged and len(sub.watcher) == 0
    assert h.last_seq("wf") == 100


def test_waiting_reason_is_current_and_not_repeated() -> None:
    h = hub()
    busy = "waiting: all providers of util busy"
    assert h.step("wf", "a", "waiting", reason=busy) is not None
    assert h.step("wf", "a", "waiting", reason=busy) is None  # (the same: no new event)
    assert h.waiting("wf", "a") == busy
    h.step("wf", "a", "retried")
    assert h.waiting("wf", "a") is None
    h.step("wf", "a", "waiting", reason="waiting: no live node offers util")
    h.workflow_finished("wf", "FAILED", "no provider")
    assert h.waiting("wf", "a") is None


def test_workflow_finished_is_recorded_once_until_it_runs_again() -> None:
    h = hub()
    first = h.workflow_finished("wf", "FAILED", "boom")
    assert h.workflow_finished("wf", "FAILED", "boom") is first
    h.step("wf", "a", "failed", error="late")  # a straggler does not reopen it
    assert h.finished("wf") is first
    h.step("wf", "a", "placed")  # resumed by hand
    assert h.finished("wf") is None
    assert h.workflow_finished("wf", "SUCCESSFUL").seq == 4


def test_watch_bounds_in_all_and_per_peer() -> None:
    h = hub(max_watches=3, max_watches_per_peer=2)
    a1 = h.subscribe("wf", "a", 0, lambda: None)
    h.subscribe("wf", "a", 0, lambda: None)
    with pytest.raises(WatchLimitError, match="max_watches_per_peer"):
        h.subscribe("wf", "a", 0, lambda: None)
    h.subscribe("wf", "b", 0, lambda: None)
    with pytest.raises(WatchLimitError, match="max_watches"):
        h.subscribe("wf", "c", 0, lambda: None)
    h.unsubscribe(a1.watcher)
    h.unsubscribe(a1.watcher)  # (twice: counted once)
    assert h.watches == 2
    h.subscribe("wf", "a", 0, lambda: None)


def test_workflows_kept_are_bounded_and_watched_ones_stay() -> None:
    h = hub(workflows_kept=3)
    watched = h.subscribe("w0", "peer", 0, lambda: None)
    h.step("w0", "a", "placed")
    h.step("w1", "a", "placed")
    h.workflow_finished("w2", "SUCCESSFUL")
    for i in range(3, 50):
        h.step(f"w{i}", "a", "placed")
    assert h.workflows() == 3
    assert h.last_seq("w0") == 1 and h.last_seq("w49") == 1 and h.last_seq("w2") == 0
    h.unsubscribe(watched.watcher)
    h.step("w50", "a", "placed")
    assert h.workflows() == 3 and h.last_seq("w0") == 0
