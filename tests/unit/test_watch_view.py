"""What the CLI prints of a watched workflow (node.watch_view): plain lines, JSON lines, the
live table; node-supplied text never drives the terminal."""

from __future__ import annotations

import io
import json

from protocols import control

PEER = "12D3KooWSqxmF1xRXdLBiRewJcA6oH3E3xKy4rs42HZyAXXEyKRg"


def frames() -> list[object]:
    def ev(seq: int, kind: str, step: str | None = "up", **kw: object) -> control.ProgressEvent:
        return control.ProgressEvent(
            workflow_id="w1", seq=seq, time=1.0, kind=kind, step=step, **kw
        )

    return [
        control.Watching(
            workflow_id="w1",
            name="shout",
            status="RUNNING",
            seq=0,
            missed=2,
            reset=False,
            steps=[control.StepProgress(name="up", tool="text.upper", status="PENDING")],
        ),
        ev(3, "placed", node=PEER, reason="remote: the only peer offering text.upper"),
        ev(4, "waiting", reason="waiting: all providers of text.upper busy\x1b[2J"),
        control.Heartbeat(time=2.0, seq=4),
        ev(5, "running", node=PEER),
        ev(6, "finished", node=PEER),
        ev(7, "workflow_finished", step=None, status="SUCCESSFUL"),
    ]


def test_plain_lines_one_per_event() -> None:
    from node.watch_view import PlainView

    lines: list[str] = []
    view = PlainView(lines.append)
    for f in frames():
        view(f)
    assert lines == [
        "watching w1 (shout): RUNNING, 1 step(s)",
        "(2 earlier event(s) are no longer kept by the node)",
        "up    placed      on 12D3KooW…XEyKRg: remote: the only peer offering text.upper",
        "up    waiting     waiting: all providers of text.upper busy\\x1b[2J",
        "up    running     on 12D3KooW…XEyKRg",
        "up    finished    on 12D3KooW…XEyKRg",
        "workflow w1 SUCCESSFUL",
    ]


def test_json_lines_are_the_frames_without_heartbeats() -> None:
    from node.watch_view import JsonView

    lines: list[str] = []
    view = JsonView(lines.append)
    for f in frames():
        view(f)
    decoded = [json.loads(line) for line in lines]
    assert [d["type"] for d in decoded] == ["watching"] + ["event"] * 5
    assert decoded[-1]["status"] == "SUCCESSFUL"
    assert all("\x1b" not in line for line in lines)  # (escaped by JSON)


def test_the_table_shows_each_step_and_no_markup_or_escapes_from_the_node() -> None:
    from rich.console import Console

    from node.watch_view import TableView

    view = TableView()
    out = io.StringIO()
    view.console = Console(file=out, width=160, force_terminal=False)
    for f in frames():
        view(f)
    hostile = control.ProgressEvent(
        workflow_id="w1", seq=8, time=1.0, kind="failed", step="[red]x[/red]", error="\x1b]0;"
    )
    view(hostile)
    view.console.print(view._table())
    text = out.getvalue()
    assert "DONE" in text and "12D3KooW…XEyKRg" in text and "workflow SUCCESSFUL" in text
    assert "[red]x[/red]" in text and "\x1b" not in text
