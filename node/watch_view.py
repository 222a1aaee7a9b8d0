"""How the CLI shows a watched workflow: one line per event (plain), one JSON object per
frame (``--json``), or, on a terminal, a live table with one line per step (rich).

Imported only by the commands that watch; ``rich`` only when a table is drawn. Everything
the node sends is shown through :func:`protocols.logsafe` (a step name or a reason with a
control character must not drive the terminal).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from protocols import control, logsafe


def short(peer: str | None) -> str:
    if not peer:
        return "-"
    return peer if len(peer) <= 16 else f"{peer[:8]}…{peer[-6:]}"


def _safe(value: object, limit: int = 300) -> str:
    return logsafe(value, limit)


def event_detail(e: control.ProgressEvent) -> str:
    """What an event says, in a few words."""
    on = f"on {short(e.node)}" if e.node else ""
    if e.kind == "pending":
        return _safe(e.tool or "")
    if e.kind in ("placed", "reattached", "failed_over"):
        return f"{on}: {_safe(e.reason)}" if e.reason else on
    if e.kind in ("running", "finished"):
        return on
    if e.kind == "failed":
        return _safe(e.error or "failed")
    return _safe(e.reason or e.error or e.status or "")


class PlainView:
    """One line per event; the workflow's end as ``workflow ID STATUS``."""

    def __init__(self, echo: Callable[[str], None]) -> None:
        self.echo = echo
        self.width = 4
        self.started = False

    def __call__(self, frame: Any) -> None:
        if isinstance(frame, control.Watching):
            self.width = max([self.width, *(len(_safe(s.name, 40)) for s in frame.steps)])
            if not self.started:
                self.echo(
                    f"watching {_safe(frame.workflow_id)} ({_safe(frame.name)}): "
                    f"{_safe(frame.status)}, {len(frame.steps)} step(s)"
                )
                self.started = True
            if frame.missed:
                self.echo(f"({frame.missed} earlier event(s) are no longer kept by the node)")
            if frame.reset:
                self.echo("(the node's events of this workflow started again)")
        elif isinstance(frame, control.ProgressEvent):
            if frame.kind == "workflow_finished":
                line = f"workflow {_safe(frame.workflow_id)} {_safe(frame.status)}"
                self.echo(f"{line}: {_safe(frame.error)}" if frame.error else line)
                return
            step = _safe(frame.step or "-", 40)
            self.echo(f"{step:<{self.width}}  {_safe(frame.kind, 20):<11} {event_detail(frame)}")


class JsonView:
    """One JSON object per line: the ``watching`` frame and every event (not heartbeats)."""

    def __init__(self, echo: Callable[[str], None]) -> None:
        self.echo = echo

    def __call__(self, frame: Any) -> None:
        if not isinstance(frame, control.Heartbeat):
            self.echo(json.dumps(frame.model_dump(mode="json"), ensure_ascii=True))


_STATE = {
    "pending": "PENDING",
    "placed": "PLACED",
    "running": "RUNNING",
    "waiting": "WAITING",
    "retried": "RETRYING",
    "reattached": "REATTACHED",
    "failed_over": "MOVED",
    "finished": "DONE",
    "failed": "FAILED",
    "skipped": "SKIPPED",
}
_STYLE = {"DONE": "green", "SUCCESSFUL": "green", "FAILED": "red", "WAITING": "yellow"}


class TableView:
    """A live table on a terminal (rich): one line per step, redrawn as events come."""

    def __init__(self) -> None:
        from rich.console import Console
        from rich.live import Live

        self.console = Console()
        self.rows: dict[str, dict[str, str]] = {}
        self.title = ""
        self.footer = ""
        self.seq = 0
        self.live = Live(console=self.console, refresh_per_second=8, transient=False)

    def __enter__(self) -> TableView:
        self.live.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.live.update(self._table(), refresh=True)
        self.live.stop()

    def __call__(self, frame: Any) -> None:
        if isinstance(frame, control.Watching):
            self.title = f"{_safe(frame.workflow_id)} ({_safe(frame.name)}): {_safe(frame.status)}"
            self.seq = frame.seq
            for s in frame.steps:
                self.rows[s.name] = {
                    "tool": _safe(s.tool),
                    "state": "WAITING" if s.waiting else _safe(s.status),
                    "node": short(s.node),
                    "note": _safe(s.waiting or ""),
                }
        elif isinstance(frame, control.ProgressEvent):
            if frame.seq <= self.seq:
                return  # (history: the snapshot has it already)
            self.seq = frame.seq
            if frame.kind == "workflow_finished":
                self.title = self.title.rsplit(": ", 1)[0] + f": {_safe(frame.status)}"
                self.footer = f"workflow {_safe(frame.status)}"
                if frame.error:
                    self.footer += f": {_safe(frame.error)}"
            elif frame.step is not None:
                row = self.rows.setdefault(
                    frame.step, {"tool": _safe(frame.tool or ""), "state": "", "node": "-"}
                )
                row["state"] = _STATE.get(frame.kind, _safe(frame.kind, 20))
                if frame.node:
                    row["node"] = short(frame.node)
                row["note"] = "" if frame.kind in ("running", "finished") else event_detail(frame)
        else:
            return
        self.live.update(self._table())

    def _table(self) -> Any:
        from rich.table import Table
        from rich.text import Text

        # (Text, never markup: a step name like "[red]" is shown as it is)
        table = Table(title=Text(self.title), caption=Text(self.footer) if self.footer else None)
        for column in ("step", "tool", "state", "node", "note"):
            table.add_column(column, overflow="fold" if column == "note" else "ellipsis")
        for name, row in self.rows.items():
            state = row["state"]
            table.add_row(
                Text(_safe(name, 40)),
                Text(row["tool"]),
                Text(state, style=_STYLE.get(state, "")),
                Text(row["node"]),
                Text(row.get("note", "")),
            )
        return table
