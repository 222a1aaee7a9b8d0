"""Errors of the ``workflows`` package.

::

    WorkflowError                       root of everything in ``workflows``
    ├── WorkflowExecutionError          a workflow failed; ``cause`` is the step's exception
    ├── WorkflowCancellationError       the workflow was canceled
    ├── WorkflowNotResumableError       resume of a workflow that cannot be resumed
    │   └── WorkflowQuarantinedError    not resumed on its own: resuming it stopped the process
    ├── WorkflowNotFoundError           no workflow with that id in the storage (also a
    │                                   ``ValueError``, as Ray Workflows' callers expect)
    ├── WorkflowStillActiveError        the workflow is running or pending
    ├── WorkflowDefinitionError         the workflow YAML (or its inputs) is invalid: fix the file
    │   └── WorkflowLimitError          the file breaks a parsing bound (size, depth, aliases, ...)
    ├── ReferenceResolutionError        a ``{{...}}`` reference has no value at run time
    └── ToolError                       anything about tools
        ├── UnknownToolError            no such tool (or no matching version) on this node
        ├── ToolInputError              the arguments do not match the tool's input schema
        ├── ToolOutputError             the tool returned something its output schema rejects
        │   └── StepOutputTooLargeError a step's output is over the size limit (any step)
        ├── ToolExecutionError          the tool's function raised
        └── ToolConfigError             a malformed tool, tool reference or group selection
                                        (also a ``ValueError``)

Every error is picklable (Ray ships them between processes): each class whose constructor
differs from ``Exception(message)`` defines ``__reduce__``.
"""

from __future__ import annotations

from typing import Any


class WorkflowError(Exception):
    """Root of all workflow errors."""


class WorkflowDefinitionError(WorkflowError):
    """A workflow definition is invalid.

    ``str(error)`` reads ``"source:line: message"`` when the source and line are known, e.g.
    ``"flow.yaml:12: step 'count' references unknown step 'shout2'"``. ``column`` (1-based),
    when the parser knows it, is kept for ``hivemesh validate``; the string leaves it out.
    """

    column: int | None = None

    def __init__(self, message: str, source: str | None = None, line: int | None = None) -> None:
        self.message = _one_line(message)
        self.source = source
        self.line = line
        super().__init__(_locate(self.message, source, line))

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.message, self.source, self.line), self.__dict__)

    def located(self, source: str | None, line: int | None = None) -> WorkflowDefinitionError:
        """The same error with ``source``/``line`` filled in where they were unknown."""
        return type(self)(self.message, self.source or source, self.line or line)


class WorkflowLimitError(WorkflowDefinitionError):
    """A workflow file breaks one of the bounds it is parsed within (a hostile or runaway file).

    ``bound`` names the bound as a key of :class:`workflows.dsl.ParseLimits` (the node's
    ``workflow_files`` config section), e.g. ``"max_depth"``, and ``limit`` is its value;
    ``detail`` says what was found. ``str(error)`` adds where and names the bound, e.g.
    ``"flow.yaml:12: nested deeper than 64 levels (workflow_files.max_depth)"``.
    """

    def __init__(
        self,
        detail: str,
        source: str | None = None,
        line: int | None = None,
        *,
        bound: str,
        limit: float,
    ) -> None:
        self.detail = detail
        self.bound = bound
        self.limit = limit
        super().__init__(f"{detail} (workflow_files.{bound})", source, line)

    def __reduce__(self) -> tuple[Any, ...]:
        return (_limit_error, (self.detail, self.source, self.line, self.bound, self.limit))

    def located(self, source: str | None, line: int | None = None) -> WorkflowLimitError:
        return type(self)(
            self.detail,
            self.source or source,
            self.line or line,
            bound=self.bound,
            limit=self.limit,
        )


def _limit_error(
    detail: str, source: str | None, line: int | None, bound: str, limit: float
) -> WorkflowLimitError:
    return WorkflowLimitError(detail, source, line, bound=bound, limit=limit)


class ReferenceResolutionError(WorkflowError):
    """A reference such as ``{{steps.count.outputs.result}}`` has no value to resolve to."""

    def __init__(self, message: str, ref: str | None = None) -> None:
        self.message = message
        self.ref = ref
        super().__init__(message)

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.message, self.ref), self.__dict__)


class ToolError(WorkflowError):
    """Root of tool errors; ``tool`` names the tool concerned when there is one."""

    def __init__(self, message: str, tool: str | None = None) -> None:
        self.message = message
        self.tool = tool
        super().__init__(message)

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.message, self.tool), self.__dict__)


class UnknownToolError(ToolError):
    """The tool is not installed or enabled here, or no installed version matches.

    ``str(error)`` is ``"unknown tool 'nope.tool'"``, followed by ``detail`` when given.
    """

    tool: str

    def __init__(self, tool: str, detail: str | None = None) -> None:
        self.detail = detail
        message = f"unknown tool {tool!r}" + (f": {detail}" if detail else "")
        super().__init__(message, tool)

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.tool, self.detail), self.__dict__)


class ToolInputError(ToolError):
    """The arguments given to a tool do not match its input schema (a caller's mistake)."""


class ToolOutputError(ToolError):
    """A tool returned a value its output schema rejects (a bug in the tool)."""


class StepOutputTooLargeError(ToolOutputError):
    """A step's output is larger than the limit (``size`` and ``limit`` in bytes).

    Raised for tool steps (in the Ray worker, before the output leaves it) and for the
    Python API's checkpointed outputs when a limit is set (``max_step_output_bytes``)."""

    def __init__(self, size: int, limit: int, what: str = "the step's output") -> None:
        self.size = size
        self.limit = limit
        self.what = what
        super().__init__(
            f"{what} is {size} bytes, over the limit of {limit} bytes "
            "(max_step_output_bytes): return less, or raise the limit"
        )

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.size, self.limit, self.what), self.__dict__)


class ToolExecutionError(ToolError):
    """The tool's function raised. ``exc_type`` is the name of the original exception type;
    ``traceback`` the text of the tool's own frames (None when unknown). ``str(error)`` is
    the message alone; :func:`error_text` adds the traceback."""

    def __init__(
        self,
        message: str,
        tool: str | None = None,
        exc_type: str | None = None,
        traceback: str | None = None,
    ) -> None:
        self.exc_type = exc_type
        self.traceback = traceback
        super().__init__(message, tool)

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.message, self.tool, self.exc_type, self.traceback), self.__dict__)


def error_text(exc: BaseException) -> str:
    """What a step's error says: the message, and for a tool that raised, its traceback on
    the lines below (``Traceback (most recent call last): ...``)."""
    text = str(exc)
    tb = getattr(exc, "traceback", None) if isinstance(exc, ToolExecutionError) else None
    return f"{text}\n{tb}" if tb else text


class ToolConfigError(ToolError, ValueError):
    """A malformed tool definition, tool reference or tool-group selection.

    Also a ``ValueError`` so that it reads naturally where a bad value was passed in (and so
    that pydantic validators can raise it).
    """


MAX_MESSAGE = 1000
"""Longest message of a definition error: it quotes the file, which may be hostile."""


def _one_line(message: str) -> str:
    """``message`` on one line and at most :data:`MAX_MESSAGE` characters (the middle of a
    longer one is cut: a name quoted from the file may be 200 KB long)."""
    if "\n" in message or "\r" in message:
        message = " ".join(message.split())
    if len(message) > MAX_MESSAGE:
        half = (MAX_MESSAGE - 5) // 2
        message = f"{message[:half]} ... {message[-half:]}"
    return message


def _locate(message: str, source: str | None, line: int | None) -> str:
    if source and line:
        return f"{source}:{line}: {message}"
    if source:
        return f"{source}: {message}"
    if line:
        return f"line {line}: {message}"
    return message


class WorkflowExecutionError(WorkflowError):
    """A workflow failed. ``cause`` is the exception that made it fail (when known)."""

    def __init__(
        self, workflow_id: str, message: str | None = None, cause: BaseException | None = None
    ) -> None:
        self.workflow_id = workflow_id
        self.cause = cause
        detail = message or (f"{type(cause).__name__}: {cause}" if cause is not None else "")
        self.message = (
            f"workflow {workflow_id!r} failed: {detail}"
            if detail
            else (f"workflow {workflow_id!r} failed")
        )
        # not super(): in a dual-typed error (engine.outputs.execution_error) the next
        # class is the cause's, whose constructor may want other arguments
        Exception.__init__(self, self.message)

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.workflow_id, None, self.cause), {"message": self.message})


class WorkflowCancellationError(WorkflowError):
    def __init__(self, workflow_id: str) -> None:
        self.workflow_id = workflow_id
        super().__init__(f"workflow {workflow_id!r} was canceled")

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.workflow_id,))


class WorkflowNotResumableError(WorkflowError):
    def __init__(self, workflow_id: str, why: str = "it does not exist") -> None:
        self.workflow_id = workflow_id
        self.why = why
        super().__init__(f"workflow {workflow_id!r} cannot be resumed: {why}")

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.workflow_id, self.why))


class WorkflowQuarantinedError(WorkflowNotResumableError):
    """The workflow is QUARANTINED: the process that ran it died (or stalled) while resuming
    it too often, so it is not resumed on its own (at a node's start, by ``resume_all`` or
    by ``run`` with its id). ``reason`` says why; ``resume`` it by hand or ``delete`` it."""

    def __init__(self, workflow_id: str, reason: str) -> None:
        self.reason = reason
        super().__init__(
            workflow_id,
            f"it is QUARANTINED ({reason}); resume it by hand if it is safe, or delete it",
        )

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.workflow_id, self.reason))


class WorkflowNotFoundError(WorkflowError, ValueError):
    """No workflow with that id. Also a ``ValueError``: Ray Workflows raised ``ValueError``
    for an unknown id from ``get_metadata`` and ``get_output``, and callers catch that."""

    def __init__(self, workflow_id: str, message: str | None = None) -> None:
        self.workflow_id = workflow_id
        super().__init__(message or f"no workflow with id {workflow_id!r}")

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.workflow_id, str(self)))


class WorkflowStillActiveError(WorkflowError):
    def __init__(self, operation: str, workflow_id: str) -> None:
        self.operation = operation
        self.workflow_id = workflow_id
        super().__init__(
            f"cannot {operation} workflow {workflow_id!r}: it is still running or pending"
        )

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.operation, self.workflow_id))
