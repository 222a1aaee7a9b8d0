"""The workflow models (:class:`WorkflowSpec` and its parts) and the functions that parse
YAML into them; re-exported by :mod:`workflows.dsl`."""

from __future__ import annotations

import copy
import json
import re
from collections.abc import Collection, Mapping
from typing import Any

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic.json_schema import SkipJsonSchema

from workflows.dsl._checks import check_tools, check_workflow, unique_names
from workflows.dsl._source import Positions, Problem, listing, suggest, translate
from workflows.errors import WorkflowDefinitionError
from workflows.refs import NAME_PATTERN, find_refs
from workflows.schedule import CronError, parse_cron
from workflows.tools import check_tool_name, split_tool_ref

__all__ = [
    "InputSpec",
    "OutputDecl",
    "OutputSpec",
    "PlacementSpec",
    "RunSpec",
    "StepSpec",
    "ValueBinding",
    "VerifySpec",
    "WorkflowSpec",
    "check_tools",
    "workflow_json_schema",
]

_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
_PEER_ID_RE = re.compile(r"^[1-9A-HJ-NP-Za-km-z]{32,128}$")  # base58
_NAME_RE = re.compile(rf"^{NAME_PATTERN}$")
_FROZEN = ConfigDict(extra="forbid", frozen=True)
# names' pattern for the JSON Schema (validators check it, with messages that say why)
_NAME_SCHEMA: dict[str, Any] = {"pattern": _NAME_RE.pattern}
CHECKED_BY_PARSER = "hivemesh.checked_by_parser"
"""A validation context key: the workflow-wide checks run outside the model (to find them
all, even where a part of the file has the wrong shape)."""


def _check_name(value: str, what: str) -> str:
    if not _NAME_RE.match(value):
        raise ValueError(
            f"invalid {what} name {value!r}: start with a letter or digit and use only "
            "letters, digits, '_' and '-'"
        )
    return value


def _reject_mapping(value: Any, info: ValidationInfo) -> None:
    if isinstance(value, Mapping):
        raise ValueError(
            f"'{info.field_name}' must be a list of items like '- name: ...', not a mapping"
        )


class InputSpec(BaseModel):
    """A workflow input. Without a ``default`` it is required."""

    model_config = _FROZEN

    name: str = Field(
        description="The input's name; steps use it as {{inputs.NAME}}.",
        json_schema_extra=_NAME_SCHEMA,
    )
    default: Any = Field(default=None, description="Its value when none is given.")
    required: bool = Field(
        default=True, description="Whether a value must be given (default: when no default)."
    )
    description: str | None = Field(default=None, description="What the input is for.")

    @model_validator(mode="before")
    @classmethod
    def _required_unless_default(cls, data: Any) -> Any:
        if isinstance(data, dict) and "required" not in data:
            return {**data, "required": "default" not in data}
        return data

    @model_validator(mode="after")
    def _default_means_optional(self) -> InputSpec:
        if self.required and self.default is not None:
            raise Problem(
                "a default makes an input optional: remove 'required: true' or the default",
                ("required",),
            )
        return self

    @field_validator("name")
    @classmethod
    def _valid_name(cls, value: str) -> str:
        return _check_name(value, "input")


class ValueBinding(BaseModel):
    """An argument passed to a step's tool; ``value`` may contain references."""

    model_config = _FROZEN

    name: str = Field(
        description="The tool's input (argument) name.", json_schema_extra=_NAME_SCHEMA
    )
    value: Any = Field(
        description="Any JSON value; strings may hold references such as {{inputs.NAME}} "
        "and {{steps.STEP.outputs.NAME}}."
    )

    @field_validator("name")
    @classmethod
    def _valid_name(cls, value: str) -> str:
        return _check_name(value, "input")


class OutputDecl(BaseModel):
    """An output a step declares; other steps may reference only declared outputs."""

    model_config = _FROZEN

    name: str = Field(description="An output of the step's tool.", json_schema_extra=_NAME_SCHEMA)

    @field_validator("name")
    @classmethod
    def _valid_name(cls, value: str) -> str:
        return _check_name(value, "output")


class OutputSpec(BaseModel):
    """A workflow output: a value, usually a reference to a step's output."""

    model_config = _FROZEN

    name: str = Field(description="The workflow output's name.", json_schema_extra=_NAME_SCHEMA)
    value: Any = Field(
        description="Any JSON value, usually a reference such as {{steps.STEP.outputs.NAME}}."
    )

    @field_validator("name")
    @classmethod
    def _valid_name(cls, value: str) -> str:
        return _check_name(value, "output")


MAX_REPLICAS = 8
MAX_PLACEMENT_PEERS = 64
MAX_WAIT_FOR_PROVIDER_S = 7 * 24 * 3600.0
_DURATION_RE = re.compile(r"^\s*(\d+(?:\.\d+)?|\.\d+)\s*(ms|s|m|h)?\s*$")
_DURATION_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}


def parse_duration(value: Any, what: str) -> float:
    """Seconds from a number (seconds) or a text like ``"30s"``, ``"5m"``, ``"1.5h"``,
    ``"250ms"``; ``ValueError`` naming ``what`` otherwise."""
    if isinstance(value, bool):
        raise ValueError(f"{what} must be a duration such as 30s or 5m, not {value!r}")
    if isinstance(value, int | float):
        seconds = float(value)
    elif isinstance(value, str) and (match := _DURATION_RE.match(value)):
        seconds = float(match.group(1)) * _DURATION_UNITS[match.group(2) or "s"]
    else:
        raise ValueError(f"{what} must be a duration such as 30s or 5m, not {value!r}")
    if not 0 <= seconds <= MAX_WAIT_FOR_PROVIDER_S:  # NaN fails this too
        raise ValueError(f"{what} must be between 0s and 7 days, not {value!r}")
    return seconds


class PlacementSpec(BaseModel):
    """Where a step may run: ``peers`` lists the node ids allowed (a node's own id included);
    the scheduler places the step on none other."""

    model_config = _FROZEN

    peers: tuple[str, ...] = Field(
        min_length=1,
        max_length=MAX_PLACEMENT_PEERS,
        description="Peer ids (base58, like 12D3KooW...) of the nodes the step may run on.",
    )

    @field_validator("peers", mode="before")
    @classmethod
    def _list(cls, value: Any) -> Any:
        if isinstance(value, str):
            raise ValueError("'peers' must be a list of peer ids, e.g. [12D3KooW...]")
        return value

    @field_validator("peers")
    @classmethod
    def _peer_ids(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        for peer in value:
            if not _PEER_ID_RE.match(peer):
                raise ValueError(f"{peer!r} is not a peer id (base58, like 12D3KooW...)")
        return value


class VerifySpec(BaseModel):
    """Run the step on ``replicas`` distinct nodes and accept its output only if they all
    agree (canonical JSON equality). Only for tools declared deterministic."""

    model_config = _FROZEN

    replicas: int = Field(
        ge=1, le=MAX_REPLICAS, description="How many distinct nodes run the step."
    )


class StepSpec(BaseModel):
    """One step: call ``tool`` (bare name; ``version`` from ``tool: name@version``).

    ``outputs`` is optional; when given, only those outputs may be referenced. ``line`` is
    where the step starts in its source file, when parsed from one. ``placement`` restricts
    where it may run; ``verify`` replicates it; ``wait_for_provider`` (seconds; ``30s``,
    ``5m`` in YAML) is how long it waits for a node offering its tool (the node's
    ``routing.provider_wait_s`` if not given).
    """

    model_config = _FROZEN

    name: str = Field(
        description="The step's name, unique in the workflow.", json_schema_extra=_NAME_SCHEMA
    )
    tool: str = Field(
        description="The tool the step calls: NAME (e.g. text.upper) or NAME@VERSION, where "
        "VERSION matches as a dotted prefix (text.upper@1 matches 1.4.2)."
    )
    version: str | None = Field(
        default=None, description="The tool's version, if not given in 'tool' (a string)."
    )
    inputs: tuple[ValueBinding, ...] = Field(
        default=(), description="The arguments passed to the tool."
    )
    outputs: tuple[OutputDecl, ...] = Field(
        default=(), description="If given, the only outputs other steps may reference."
    )
    placement: PlacementSpec | None = Field(default=None, description="Where the step may run.")
    verify: VerifySpec | None = Field(
        default=None, description="Run the step on several nodes and compare their outputs."
    )
    wait_for_provider: float | None = Field(
        default=None,
        description="How long the step waits for a node offering its tool to appear: seconds, "
        "or a duration such as 30s, 5m, 1h (default: the node's routing.provider_wait_s).",
        json_schema_extra={
            "anyOf": [
                {"type": "number", "minimum": 0, "maximum": MAX_WAIT_FOR_PROVIDER_S},
                {"type": "string", "pattern": _DURATION_RE.pattern},
                {"type": "null"},
            ]
        },
    )
    line: SkipJsonSchema[int | None] = None
    workflow: str | None = Field(
        default=None,
        description="Instead of 'tool': the id of a workflow registered on the node (its "
        "workflows folder or a package), run as this step; 'inputs' are that workflow's "
        "inputs and its outputs are the step's outputs.",
        json_schema_extra={"pattern": _ID_RE.pattern},
    )

    @model_validator(mode="before")
    @classmethod
    def _workflow_instead_of_tool(cls, data: Any) -> Any:
        """A sub-workflow step (``workflow: ID``) gets the reserved tool name
        :data:`SUBWORKFLOW_TOOL`, so that the engine hands it to the node's tool runner like
        any step (the run options carry the workflow's id)."""
        if not isinstance(data, dict) or data.get("workflow") is None:
            return data
        if data.get("tool") not in (None, SUBWORKFLOW_TOOL):
            raise Problem(
                "a step runs either a 'tool' or a 'workflow', not both: remove one", ("workflow",)
            )
        if data.get("version") is not None:
            raise Problem("a 'workflow' step has no 'version': remove it", ("version",))
        return {**data, "tool": SUBWORKFLOW_TOOL}

    @field_validator("workflow")
    @classmethod
    def _valid_workflow_id(cls, value: str | None) -> str | None:
        if value is not None and not _ID_RE.match(value):
            raise ValueError(
                f"invalid workflow id {value!r}: start with a letter or digit and use only "
                "letters, digits, '.', '_' and '-'"
            )
        return value

    @model_validator(mode="before")
    @classmethod
    def _split_tool_version(cls, data: Any) -> Any:
        if isinstance(data, dict) and isinstance(data.get("tool"), str) and "@" in data["tool"]:
            if data.get("version") is not None:
                raise Problem(
                    "give the tool version either in 'tool' (name@version) or in 'version', "
                    "not both",
                    ("version",),
                )
            try:
                name, version = split_tool_ref(data["tool"])
            except ValueError as exc:
                raise Problem(str(exc), ("tool",)) from None
            return {**data, "tool": name, "version": version}
        return data

    @field_validator("name")
    @classmethod
    def _valid_name(cls, value: str) -> str:
        return _check_name(value, "step")

    @field_validator("wait_for_provider", mode="before")
    @classmethod
    def _duration(cls, value: Any) -> Any:
        return None if value is None else parse_duration(value, "wait_for_provider")

    @field_validator("tool")
    @classmethod
    def _valid_tool(cls, value: str) -> str:
        return check_tool_name(value)

    @field_validator("version", mode="before")
    @classmethod
    def _quoted_version(cls, value: Any) -> Any:
        if isinstance(value, int | float) and not isinstance(value, bool):
            raise ValueError(f'version {value!r} must be a quoted string, e.g. "{value}"')
        if isinstance(value, str) and not value.strip():
            raise ValueError("version must not be empty")
        return value

    @field_validator("inputs", "outputs", mode="before")
    @classmethod
    def _list_not_mapping(cls, value: Any, info: ValidationInfo) -> Any:
        _reject_mapping(value, info)
        return value

    @model_validator(mode="after")
    def _unique(self) -> StepSpec:
        unique_names(self.inputs, "inputs", "input")
        unique_names(self.outputs, "outputs", "output")
        return self

    @property
    def tool_ref(self) -> str:
        """``"tool@version"``, or just the tool name."""
        return f"{self.tool}@{self.version}" if self.version else self.tool

    def dependencies(self) -> set[str]:
        """Names of the steps whose outputs this step references."""
        return {
            ref.step
            for binding in self.inputs
            for ref in find_refs(binding.value)
            if ref.step is not None
        }

    def args_template(self) -> dict[str, Any]:
        """The tool arguments, references not yet resolved."""
        return {binding.name: binding.value for binding in self.inputs}

    def run_options(self) -> dict[str, Any]:
        """How the step is run beyond its tool and arguments (empty: anywhere, once)."""
        options: dict[str, Any] = {}
        if self.placement is not None:
            options["peers"] = list(self.placement.peers)
        if self.verify is not None and self.verify.replicas > 1:
            options["replicas"] = self.verify.replicas
        if self.wait_for_provider is not None:
            options["provider_wait_s"] = self.wait_for_provider
        if self.workflow is not None:
            options["workflow"] = self.workflow
        return options


SUBWORKFLOW_TOOL = "hivemesh.workflow"
"""The tool name a ``workflow: ID`` step carries: no node offers a tool of that name; the
node runs such a step by starting the workflow ID (node/executor.py)."""
MIN_EVERY_S = 1.0


class RunSpec(BaseModel):
    """When a workflow registered on a node runs by itself: once at each start of the node
    (``at_start``), and/or on a schedule, ``every`` (an interval) or ``cron`` (5 fields,
    UTC). Each scheduled run is journaled like any other, once per slot
    (:mod:`workflows.schedule`)."""

    model_config = _FROZEN

    at_start: bool = Field(default=False, description="Run once each time the node starts.")
    every: float | None = Field(
        default=None,
        description="Run every this long: a whole number of seconds, or a duration such as "
        "30s, 10m, 1h (slots at multiples of it since the Unix epoch, UTC).",
        json_schema_extra={
            "anyOf": [
                {"type": "number", "minimum": MIN_EVERY_S, "maximum": MAX_WAIT_FOR_PROVIDER_S},
                {"type": "string", "pattern": _DURATION_RE.pattern},
                {"type": "null"},
            ]
        },
    )
    cron: str | None = Field(
        default=None,
        description="Run at the minutes of this cron expression: 'MINUTE HOUR DAY-OF-MONTH "
        "MONTH DAY-OF-WEEK' in UTC, each field *, N, A-B, */N or a list (e.g. '*/5 * * * *').",
    )

    @field_validator("every", mode="before")
    @classmethod
    def _every(cls, value: Any) -> Any:
        if value is None:
            return None
        seconds = parse_duration(value, "every")
        if seconds < MIN_EVERY_S or seconds != int(seconds):
            raise ValueError(f"every must be a whole number of seconds, at least 1s, not {value!r}")
        return seconds

    @field_validator("cron")
    @classmethod
    def _cron(cls, value: str | None) -> str | None:
        if value is None:
            return None
        try:
            return parse_cron(value).text
        except CronError as exc:
            raise ValueError(str(exc)) from None

    @model_validator(mode="after")
    def _something(self) -> RunSpec:
        if self.every is not None and self.cron is not None:
            raise Problem("give either 'every' or 'cron', not both", ("cron",))
        if not self.at_start and self.every is None and self.cron is None:
            raise Problem("'run' needs at least one of 'at_start: true', 'every' or 'cron'", ())
        return self

    def describe(self) -> str:
        """In words, for listings: ``at start, every 600s``."""
        parts = ["at start"] if self.at_start else []
        if self.every is not None:
            parts.append(f"every {self.every:g}s")
        if self.cron is not None:
            parts.append(f"cron {self.cron!r} (UTC)")
        return ", ".join(parts)


class WorkflowSpec(BaseModel):
    """A validated workflow: names are unique, references point at declared things and the
    steps form a DAG. Build it with :func:`parse_workflow` / :func:`load_workflow`."""

    model_config = _FROZEN

    id: str = Field(
        description="The workflow's id: letters, digits, '.', '_' and '-', starting with a "
        "letter or digit.",
        json_schema_extra={"pattern": _ID_RE.pattern},
    )
    name: str = Field(description="A readable name (default: the id).")
    description: str | None = Field(default=None, description="What the workflow does.")
    inputs: tuple[InputSpec, ...] = Field(
        default=(), description="Values given when the workflow is submitted."
    )
    steps: tuple[StepSpec, ...] = Field(
        description="The steps; each runs once the steps whose outputs it references are done."
    )
    outputs: tuple[OutputSpec, ...] = Field(default=(), description="The workflow's results.")
    source: SkipJsonSchema[str | None] = None
    run: RunSpec | None = Field(
        default=None,
        description="When a node that registered this workflow (from its workflows folder or "
        "a package) runs it by itself: at_start, every or cron.",
    )

    @model_validator(mode="before")
    @classmethod
    def _name_defaults_to_id(cls, data: Any) -> Any:
        if isinstance(data, dict) and data.get("name") is None:
            # with an invalid id, "" stands in so that only the id is reported
            return {**data, "name": data["id"] if isinstance(data.get("id"), str) else ""}
        return data

    @field_validator("id")
    @classmethod
    def _valid_id(cls, value: str) -> str:
        if not _ID_RE.match(value):
            raise ValueError(
                f"invalid workflow id {value!r}: start with a letter or digit and use only "
                "letters, digits, '.', '_' and '-'"
            )
        return value

    @field_validator("inputs", "steps", "outputs", mode="before")
    @classmethod
    def _list_not_mapping(cls, value: Any, info: ValidationInfo) -> Any:
        _reject_mapping(value, info)
        if info.field_name == "steps" and isinstance(value, list | tuple) and not value:
            raise ValueError("'steps' must list at least one step")
        return value

    @model_validator(mode="after")
    def _consistent(self, info: ValidationInfo) -> WorkflowSpec:
        if not (isinstance(info.context, dict) and info.context.get(CHECKED_BY_PARSER)):
            check_workflow(self)  # (the parser runs these checks itself, on the raw data)
        return self

    def step(self, name: str) -> StepSpec:
        """The step called ``name`` (``KeyError`` if there is none)."""
        for step in self.steps:
            if step.name == name:
                return step
        raise KeyError(f"workflow {self.id!r} has no step {name!r}")

    def tools(self) -> set[tuple[str, str | None]]:
        """The ``(tool, version)`` pairs the steps use."""
        return {(step.tool, step.version) for step in self.steps}

    def sub_workflows(self) -> list[tuple[StepSpec, str]]:
        """The steps that run another workflow, with its id, in file order."""
        return [(step, step.workflow) for step in self.steps if step.workflow is not None]

    def bind_inputs(self, given: Mapping[str, Any]) -> dict[str, Any]:
        """The workflow's input values: ``given`` plus defaults.

        Raises :class:`WorkflowDefinitionError` for an undeclared or a missing required input.
        """
        declared = [spec.name for spec in self.inputs]
        unknown = sorted(set(given) - set(declared))
        if unknown:
            raise WorkflowDefinitionError(
                f"workflow {self.id!r} has no input {unknown[0]!r}"
                f"{suggest(unknown[0], declared)} (its inputs: {listing(declared)})",
                self.source,
            )
        bound: dict[str, Any] = {}
        missing: list[str] = []
        for spec in self.inputs:
            if spec.name in given:
                bound[spec.name] = given[spec.name]
            elif spec.required:
                missing.append(spec.name)
            else:
                bound[spec.name] = copy.deepcopy(spec.default)
        if missing:
            raise WorkflowDefinitionError(
                f"workflow {self.id!r} needs a value for required input"
                f"{'s' if len(missing) > 1 else ''} {listing(missing)}",
                self.source,
            )
        return bound

    def ready_steps(self, finished: Collection[str], started: Collection[str]) -> list[StepSpec]:
        """Steps neither finished nor started whose dependencies have all finished, in file
        order."""
        return [
            step
            for step in self.steps
            if step.name not in finished
            and step.name not in started
            and all(dep in finished for dep in step.dependencies())
        ]

    def topological_order(self) -> list[str]:
        """Step names in an order that respects dependencies; among steps that could go next,
        the one earliest in the file comes first."""
        order: list[str] = []
        while len(order) < len(self.steps):
            ready = self.ready_steps(finished=order, started=())
            if not ready:  # cannot happen for a validated spec; never loop forever
                raise WorkflowDefinitionError("the steps form a dependency cycle", self.source)
            order.append(ready[0].name)
        return order

    def to_json(self) -> str:
        """JSON text that :meth:`from_json` turns back into an equal spec."""
        return self.model_dump_json()

    @classmethod
    def from_json(cls, text: str | bytes) -> WorkflowSpec:
        """The spec stored by :meth:`to_json`; :class:`WorkflowDefinitionError` if invalid."""
        try:
            return cls.model_validate_json(text)
        except ValidationError as exc:
            try:
                data = json.loads(text)
            except ValueError:
                data = None
            source = data.get("source") if isinstance(data, dict) else None
            raise translate(
                exc, data, Positions(), source if isinstance(source, str) else None, MODELS
            ) from None


def workflow_json_schema() -> dict[str, Any]:
    """The JSON Schema (2020-12) of a workflow file, from the models (for editors: YAML
    language servers read it). What the schema cannot say (references resolve, no cycle,
    unique names) ``hivemesh validate`` checks."""
    schema = WorkflowSpec.model_json_schema()
    schema["required"] = [key for key in schema.get("required", []) if key != "name"]
    step = schema.get("$defs", {}).get("StepSpec", {})
    if "tool" in step.get("required", []):  # a step has a 'tool' or a 'workflow'
        step["required"] = [key for key in step["required"] if key != "tool"]
        step["anyOf"] = [{"required": ["tool"]}, {"required": ["workflow"]}]
    schema["description"] = (
        "A hivemesh workflow: a DAG of steps, each calling one tool with arguments that may "
        "reference the workflow's inputs and other steps' outputs."
    )
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "title": "hivemesh workflow",
        **{key: value for key, value in schema.items() if key != "title"},
    }


# where each model sits in the document: for error messages that list allowed keys
MODELS: dict[tuple[str, ...], type[BaseModel]] = {
    (): WorkflowSpec,
    ("inputs",): InputSpec,
    ("steps",): StepSpec,
    ("outputs",): OutputSpec,
    ("steps", "inputs"): ValueBinding,
    ("steps", "outputs"): OutputDecl,
    ("run",): RunSpec,
}
