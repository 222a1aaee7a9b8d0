"""What the engine's step kinds (tool steps, sleeps, events) need from the engine that
runs them: a protocol, so that they sit below :mod:`workflows.engine.execution` in the
import order instead of importing it (the engine implements it, nothing else does)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

from workflows.engine.graph import StepDef
from workflows.engine.loop import TimerOwner
from workflows.engine.runstate import Run, Task


class StepHost(Protocol):
    """The engine, as seen by the parts that run one kind of step (on its thread)."""

    def _value(self, run: Run, tid: str) -> Any:
        """The output of task ``tid`` (loaded from the journal if needed)."""
        ...

    def _consumed(self, run: Run, step: StepDef) -> None:
        """``step`` has read its dependencies' outputs."""
        ...

    def _succeed(
        self, run: Run, task: Task, value: Any, on_commit: Callable[[], None] | None = None
    ) -> None:
        """Record ``value`` as the task's output (committed, then dependents start)."""
        ...

    def _fail(self, run: Run, cause: BaseException, tid: str | None) -> None:
        """Fail the workflow because of task ``tid``."""
        ...

    def _on_committed(self, run: Run, tid: str) -> None:
        """The output of ``tid`` is durable: start what waited for it."""
        ...

    def _write(
        self,
        apply: Callable[[Any], None],
        on_commit: Callable[[], None] | None = None,
        blob: tuple[str, bytes] | None = None,
    ) -> None:
        """Journal a write (``on_commit`` runs on the engine thread once it is durable)."""
        ...

    def _post(self, fn: Callable[[], None]) -> None:
        """Run ``fn`` on the engine thread."""
        ...

    def _schedule(
        self, when: float, fn: Callable[[], None], owner: TimerOwner | None = None
    ) -> None:
        """Run ``fn`` on the engine thread at monotonic time ``when``."""
        ...
