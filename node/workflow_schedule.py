"""Registered workflows that run by themselves: ``run: {at_start | every | cron}``.

A trio task of the daemon (:meth:`WorkflowScheduler.serve`). Each run is started through the
node's one idempotent path (``ControlService.start``, as a submit) with an id made from the
workflow's id and the slot (:func:`workflows.schedule.slot_run_id`): a slot submitted twice
(the node restarted in between) is created once, and journaled like any other workflow.

- ``at_start``: once per start of the node, as ``ID@start-N``, N the node's start number
  (``HOME/starts``, counted up at each start).
- ``every`` / ``cron``: at each slot while the node runs. After a start, a slot missed while
  the node was down runs only if it is the latest one (``ID@<latest slot>`` not in the
  journal) and the workflow has run on schedule here before; never a backlog of slots. A
  workflow that never ran on this node first runs at its first slot after the start.

The clock is injected (``clock``: Unix time): a test drives it with trio's ``MockClock``.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import trio

from node.errors import HomeError
from node.home import STARTS_FILE, read_bounded
from node.workflow_registry import Registered, WorkflowRegistry
from protocols import logsafe
from workflows.dsl import WorkflowSpec
from workflows.schedule import CronExpr, latest_slot, next_slot, parse_cron, slot_run_id

log = logging.getLogger(__name__)

# (spec, inputs, run id, metadata) -> whatever the start answers
Start = Callable[[WorkflowSpec, dict[str, Any], str, dict[str, Any]], Awaitable[Any]]
MAX_SLEEP_S = 60.0  # wakes at least this often, so that a wall-clock jump is noticed
MAX_KEPT = 1000  # run ids kept in WorkflowScheduler.started (the journal has them all)


def next_start_number(home: Path) -> int:
    """Count this start of the node in ``HOME/starts`` and return its number (1, 2, …).
    A file that is not a number counts as 0 (HomeError if it cannot be read or written)."""
    path = home / STARTS_FILE
    raw = read_bounded(path, 64)
    try:
        previous = int(raw.decode().strip() or 0) if raw is not None else 0
    except (UnicodeDecodeError, ValueError):
        log.warning("%s is not a number; counting starts from 1 again", path)
        previous = 0
    number = previous + 1
    tmp = path.with_name(f".{STARTS_FILE}.tmp")
    try:
        with open(tmp, "w") as file:
            file.write(f"{number}\n")
            file.flush()
            os.fsync(file.fileno())
        os.replace(tmp, path)
    except OSError as exc:
        raise HomeError(f"cannot write {path}: {exc.strerror or exc}") from None
    return number


@dataclass
class _Timetable:
    entry: Registered
    every_s: float | None
    cron: CronExpr | None
    due: float  # the next slot (Unix time)

    def latest(self, now: float) -> int:
        return latest_slot(now, every_s=self.every_s, cron=self.cron)

    def following(self, now: float) -> int:
        return next_slot(now, every_s=self.every_s, cron=self.cron)


class WorkflowScheduler:
    """Starts the registered workflows that have a ``run`` section, at their times."""

    def __init__(
        self,
        registry: WorkflowRegistry,
        start: Start,
        known_ids: Callable[[], Awaitable[set[str]]],
        *,
        start_number: int,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.registry = registry
        self._start = start
        self._known_ids = known_ids
        self.start_number = start_number
        self.clock = clock
        self.started: list[str] = []  # the latest run ids it submitted, oldest first

    async def serve(self, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        """Run the ``at_start`` workflows and the missed latest slots, then every slot as it
        comes, until cancelled."""
        scheduled = [e for e in self.registry.all() if e.spec.run is not None]
        now = self.clock()
        timetables: list[_Timetable] = []
        known = await self._known_ids() if scheduled else set()
        for entry in scheduled:
            run = entry.spec.run
            assert run is not None
            if run.at_start:
                await self._submit(entry, f"{entry.spec.id}@start-{self.start_number}", "start")
            if run.every is None and run.cron is None:
                continue
            table = _Timetable(
                entry, run.every, parse_cron(run.cron) if run.cron else None, due=0.0
            )
            latest = table.latest(now)
            prefix = f"{entry.spec.id}@"
            ran_before = any(
                k.startswith(prefix) and not k.startswith(prefix + "start-") for k in known
            )
            if latest >= 0 and ran_before and slot_run_id(entry.spec.id, latest) not in known:
                await self._submit(entry, slot_run_id(entry.spec.id, latest), "missed slot")
            table.due = table.following(now)
            timetables.append(table)
        task_status.started()
        if not timetables:
            return
        while True:
            now = self.clock()
            soonest = min(t.due for t in timetables)
            if soonest > now:
                await trio.sleep(min(soonest - now, MAX_SLEEP_S))
                continue
            for table in timetables:
                if table.due <= now:
                    # the latest slot: after a long sleep (a suspended machine), one run
                    slot = table.latest(now)
                    await self._submit(table.entry, slot_run_id(table.entry.spec.id, slot), "slot")
                    table.due = table.following(now)

    async def _submit(self, entry: Registered, run_id: str, why: str) -> None:
        try:
            await self._start(entry.spec, {}, run_id, {"scheduled": why})
        except Exception as exc:  # (whatever it is, the schedule and the node go on)
            log.error(
                "scheduled run %s could not be started: %s: %s",
                run_id,
                type(exc).__name__,
                logsafe(exc),
            )
            return
        self.started.append(run_id)
        del self.started[:-MAX_KEPT]
        log.info("scheduled run %s started (%s)", run_id, why)
