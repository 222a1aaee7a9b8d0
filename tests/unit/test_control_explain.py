"""``status`` with ``explain`` (node.control): placements only when asked, at most
MAX_EXPLAINED_STEPS of them, and a journaled detail that is not what this version wrote is
left out rather than failing the answer."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

from node.control import ControlService
from node.workflow_service import StepView
from protocols import control

CANDIDATE = {"node": "p", "local": False, "running": 1, "capacity": 2, "note": "chosen"}


def step(i: int, placement: dict[str, Any] | None) -> StepView:
    return StepView(f"s{i}", "util.echo", "SUCCESSFUL", "p", "why", None, 1, 1.0, 2.0, placement)


def reply(steps: list[StepView], explain: bool) -> control.WorkflowStatusReply:
    view = SimpleNamespace(
        workflow_id="w",
        name="n",
        status=SimpleNamespace(value="SUCCESSFUL"),
        error=None,
        created_at=1.0,
        ended_at=2.0,
        steps=steps,
    )
    service: Any = SimpleNamespace(_waiting=lambda *args: None)
    return ControlService._status_reply(service, view, explain=explain)


def test_placements_only_when_asked_and_bounded() -> None:
    many = [step(i, {"candidates": [CANDIDATE]}) for i in range(control.MAX_EXPLAINED_STEPS + 5)]
    assert all(s.placement is None for s in reply(many, explain=False).steps)
    explained = reply([step(-1, None), *many], explain=True).steps
    assert explained[0].placement is None  # (never placed)
    with_placement = [s.name for s in explained if s.placement is not None]
    assert with_placement == [f"s{i}" for i in range(control.MAX_EXPLAINED_STEPS)]


def test_a_stored_detail_of_another_shape_is_left_out() -> None:
    odd = [step(0, {"candidates": [{"node": "p"}]}), step(1, {"something": "else"})]
    assert [s.placement for s in reply(odd, explain=True).steps] == [None, None]
