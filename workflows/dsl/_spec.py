"""The workflow models (:class:`WorkflowSpec` and its parts) and the functions that parse
YAML into them; re-exported by :mod:`workflows.dsl`."""

from __future__ import annotations

import copy
import json
import re
from collections.abc import Collection, Mapping
from typing import Any, Literal

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
from workflows.dsl._source import Positions, Problem, kind_of, listing, suggest, translate
from workflows.errors import WorkflowDefinitionError
from workflows.expr import ExprSyntaxError, parse_expr
from workflows.refs import NAME_PATTERN, find_refs
from workflows.schedule import CronError, parse_cron
from workflows.tools import (
    check_parameters,
    check_requirement,
    check_tool_name,
    is_package_ref,
    normalize_package,
    package_requirement,
    requirement_name,
    split_tool_ref,
)
from workflows.tools._packages import PACKAGE_NAME_RE

__all__ = [
    "FallbackSpec",
    "ForeachSpec",
    "InputSpec",
    "OnErrorSpec",
    "OutputDecl",
    "OutputSpec",
    "ParameterSpec",
    "PlacementSpec",
    "RetrySpec",
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


class ParameterSpec(BaseModel):
    """An environment variable of the step's process: ``name`` and a string value (a number
    is converted)."""

    model_config = _FROZEN

    name: str = Field(
        description="An environment variable name (letters, digits and '_').",
        json_schema_extra={"pattern": r"^[A-Za-z_][A-Za-z0-9_]*$"},
    )
    value: str | int | float = Field(
        description="Its value: a string (a number is converted to its text)."
    )

    @field_validator("value", mode="before")
    @classmethod
    def _text_or_number(cls, value: Any) -> Any:
        if isinstance(value, bool) or not isinstance(value, str | int | float):
            what = "a boolean" if isinstance(value, bool) else kind_of(value)
            raise ValueError(f"a parameter's value must be a string or a number, not {what}")
        return value


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


PlacementMode = Literal["auto", "local", "remote"]
MAX_RESOURCE_KINDS = 16


class PlacementSpec(BaseModel):
    """Where a step may run. ``mode``: ``auto`` (the scheduler decides), ``local`` (only the
    node running the workflow), ``remote`` (only a peer). ``peers`` lists the node ids
    allowed (a node's own id included); ``resources`` are what the step needs of the Ray
    cluster it runs on (``num_cpus``, ``num_gpus``, ``memory`` in bytes, or a custom
    resource name), given to its Ray task. In YAML, ``placement: local`` is short for
    ``placement: {mode: local}``."""

    model_config = _FROZEN

    mode: PlacementMode = Field(
        default="auto",
        description="auto: the scheduler decides; local: only this node; remote: only a peer.",
    )
    peers: tuple[str, ...] | None = Field(
        default=None,
        max_length=MAX_PLACEMENT_PEERS,
        description="Peer ids (base58, like 12D3KooW...) of the nodes the step may run on.",
    )
    resources: dict[str, float] = Field(
        default_factory=dict,
        max_length=MAX_RESOURCE_KINDS,
        description="What the step needs of a Ray cluster, e.g. {num_cpus: 2, num_gpus: 1}.",
    )

    @model_validator(mode="before")
    @classmethod
    def _shorthand(cls, data: Any) -> Any:
        if isinstance(data, str):
            return {"mode": data}
        return data

    @field_validator("peers", mode="before")
    @classmethod
    def _list(cls, value: Any) -> Any:
        if isinstance(value, str):
            raise ValueError("'peers' must be a list of peer ids, e.g. [12D3KooW...]")
        if isinstance(value, list | tuple) and not value:
            raise ValueError("'placement.peers' must not be empty: leave it out for any node")
        return value

    @model_validator(mode="after")
    def _consistent(self) -> PlacementSpec:
        if self.mode == "local" and self.peers:
            raise Problem(
                "placement 'local' runs the step on this node only: remove 'peers', or use "
                "mode auto",
                ("peers",),
            )
        return self

    @field_validator("peers")
    @classmethod
    def _peer_ids(cls, value: tuple[str, ...] | None) -> tuple[str, ...] | None:
        for peer in value or ():
            if not _PEER_ID_RE.match(peer):
                raise ValueError(f"{peer!r} is not a peer id (base58, like 12D3KooW...)")
        return value

    @field_validator("resources")
    @classmethod
    def _resources(cls, value: dict[str, float]) -> dict[str, float]:
        for name, amount in value.items():
            if not _RESOURCE_RE.match(name):
                raise ValueError(
                    f"invalid resource name {name!r}: use num_cpus, num_gpus, memory or a "
                    "custom resource's name (letters, digits, '_', '-', '.', ':')"
                )
            if not 0 <= amount < 1e15:  # (NaN fails this too)
                raise ValueError(f"resource {name!r} must be a number >= 0, not {amount!r}")
        return value

    def run_options(self) -> dict[str, Any]:
        options: dict[str, Any] = {}
        if self.peers:
            options["peers"] = list(self.peers)
        if self.mode != "auto":
            options["mode"] = self.mode
        if self.resources:
            options["resources"] = dict(self.resources)
        return options


_RESOURCE_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_.:-]{0,63}$")
MAX_RETRIES = 100
MAX_BACKOFF_S = 3600.0
_ERROR_TYPE_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_.]{0,127}$")


class RetrySpec(BaseModel):
    """Run a failed step again, up to ``max`` more times, waiting ``backoff`` before the
    first retry and ``factor`` times longer before each next one (at most an hour); only
    for errors whose type is listed in ``on`` (the tool's exception type, e.g.
    ``ValueError``, or ``StepTimeout`` for a step stopped by its ``timeout``), or for any
    error when ``on`` is empty. In YAML, ``retries: 3`` is short for ``retries: {max: 3}``.
    """

    model_config = _FROZEN

    max: int = Field(ge=0, le=MAX_RETRIES, description="How many times to retry (0 to 100).")
    backoff: float = Field(
        default=1.0,
        description="Seconds before the first retry (or a duration such as 500ms, 10s).",
        json_schema_extra=lambda schema: _duration_schema(schema, MAX_BACKOFF_S),
    )
    factor: float = Field(
        default=2.0, ge=1.0, le=10.0, description="How much longer each next wait is."
    )
    on: tuple[str, ...] = Field(
        default=(),
        max_length=64,
        description="Retry only errors of these types (e.g. ValueError, StepTimeout); "
        "empty: any error.",
    )

    @model_validator(mode="before")
    @classmethod
    def _shorthand(cls, data: Any) -> Any:
        if isinstance(data, int) and not isinstance(data, bool):
            return {"max": data}
        return data

    @field_validator("backoff", mode="before")
    @classmethod
    def _duration(cls, value: Any) -> Any:
        seconds = parse_duration(value, "backoff")
        if seconds > MAX_BACKOFF_S:
            raise ValueError(f"backoff must be at most 1h, not {value!r}")
        return seconds

    @field_validator("on", mode="before")
    @classmethod
    def _listed(cls, value: Any) -> Any:
        return [value] if isinstance(value, str) else value

    @field_validator("on")
    @classmethod
    def _types(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        for name in value:
            if not _ERROR_TYPE_RE.match(name):
                raise ValueError(f"{name!r} is not an error type name (e.g. ValueError)")
        return value

    def delay(self, retry: int) -> float:
        """Seconds to wait before retry number ``retry`` (1 for the first)."""
        return float(min(MAX_BACKOFF_S, self.backoff * self.factor ** max(0, retry - 1)))

    def applies_to(self, error_type: str | None) -> bool:
        return not self.on or (error_type is not None and error_type in self.on)


MAX_FOREACH_ITEMS = 10_000
MAX_PARALLEL = 10_000


class ForeachSpec(BaseModel):
    """Run the step once per item of ``items`` (a list, or a reference to a list-valued
    input or output), at most ``max_parallel`` at a time; the step's inputs may use
    ``{{item}}`` (``{{item.KEY}}`` of a mapping) and ``{{index}}``. Each output of the step is
    the list of that output of every item, in the items' order. In YAML, ``foreach: LIST``
    is short for ``foreach: {items: LIST}``."""

    model_config = _FROZEN

    items: Any = Field(
        description="A list, or a reference such as {{inputs.files}} to one "
        f"(at most {MAX_FOREACH_ITEMS} items)."
    )
    max_parallel: int | None = Field(
        default=None, ge=1, le=MAX_PARALLEL, description="How many items run at once."
    )

    @model_validator(mode="before")
    @classmethod
    def _shorthand(cls, data: Any) -> Any:
        if isinstance(data, str | list | tuple):
            return {"items": data}
        return data

    @field_validator("items")
    @classmethod
    def _list_or_reference(cls, value: Any) -> Any:
        if isinstance(value, list | tuple):
            if len(value) > MAX_FOREACH_ITEMS:
                raise ValueError(f"foreach has {len(value)} items, over {MAX_FOREACH_ITEMS}")
            return value
        if isinstance(value, str):
            try:
                refs = find_refs(value)
            except WorkflowDefinitionError as exc:
                raise ValueError(exc.message) from None
            text = value.strip()
            if (
                len(refs) == 1
                and refs[0].kind in ("input", "step")
                and text.startswith("{{")
                and text.endswith("}}")
                and text.count("{{") == 1
            ):
                return value
        raise ValueError(
            "foreach items must be a list or one reference to a list, such as "
            "'{{inputs.files}}' or '{{steps.STEP.outputs.NAME}}'"
        )


class FallbackSpec(BaseModel):
    """The step run instead of a failed one (its outputs become the failed step's); its
    inputs may use ``{{error.type}}`` and ``{{error.message}}``."""

    model_config = _FROZEN

    tool: str = Field(description="The tool the fallback calls: NAME or NAME@VERSION.")
    version: str | None = Field(default=None, description="The tool's version (a string).")
    inputs: tuple[ValueBinding, ...] = Field(
        default=(), description="The arguments passed to the tool."
    )

    @model_validator(mode="before")
    @classmethod
    def _split_tool_version(cls, data: Any) -> Any:
        return _split_tool_version(data)

    @field_validator("tool")
    @classmethod
    def _valid_tool(cls, value: str) -> str:
        return check_tool_name(value)

    @field_validator("inputs", mode="before")
    @classmethod
    def _list_not_mapping(cls, value: Any, info: ValidationInfo) -> Any:
        _reject_mapping(value, info)
        return value

    @model_validator(mode="after")
    def _unique(self) -> FallbackSpec:
        unique_names(self.inputs, "inputs", "input")
        return self

    def run_options(self) -> dict[str, Any]:
        return {
            "tool": self.tool,
            "version": self.version,
            "args": {binding.name: binding.value for binding in self.inputs},
        }


class OnErrorSpec(BaseModel):
    """What a step's failure (after its retries) does: ``continue`` with the given outputs
    (``{continue: {NAME: VALUE}}``; ``continue`` alone: every output null), or run a
    ``fallback`` tool instead. ``on_error: fail`` (the default) fails the workflow."""

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    continue_: dict[str, Any] | None = Field(
        default=None,
        alias="continue",
        description="Go on with these outputs (a mapping of output name to value).",
    )
    fallback: FallbackSpec | None = Field(
        default=None, description="A tool step to run instead; its outputs are the step's."
    )

    @model_validator(mode="before")
    @classmethod
    def _shorthand(cls, data: Any) -> Any:
        if data == "continue":
            return {"continue": {}}
        if isinstance(data, dict) and "continue" in data and data["continue"] is None:
            return {**data, "continue": {}}
        return data

    @model_validator(mode="after")
    def _one(self) -> OnErrorSpec:
        if (self.continue_ is None) == (self.fallback is None):
            raise Problem(
                "on_error takes 'fail', 'continue', {continue: {OUTPUT: VALUE}} or "
                "{fallback: {tool: ..., inputs: [...]}}"
            )
        for name in self.continue_ or {}:
            _check_name(name, "output")
        return self

    def run_options(self) -> dict[str, Any]:
        if self.fallback is not None:
            return {"fallback": self.fallback.run_options()}
        return {"continue": dict(self.continue_ or {})}


def _package_form(data: Any) -> Any:
    """A step's ``tool: PACKAGE@VERSION`` (no dot in PACKAGE: not a tool name) as the
    package's own tool: ``tool: PACKAGE`` with ``package: PACKAGE==VERSION``."""
    if not (
        isinstance(data, dict)
        and isinstance(data.get("tool"), str)
        and data.get("package") is None
        and is_package_ref(data["tool"])
    ):
        return data
    if data.get("version") is not None:
        raise Problem(
            "'tool: PACKAGE@VERSION' gives the version already: remove 'version'", ("version",)
        )
    name, _, version = data["tool"].strip().partition("@")
    try:
        requirement = package_requirement(name, version)
    except ValueError as exc:
        raise Problem(str(exc), ("tool",)) from None
    return {**data, "tool": name.strip(), "package": requirement}


def _split_tool_version(data: Any) -> Any:
    if isinstance(data, dict) and isinstance(data.get("tool"), str) and "@" in data["tool"]:
        if data.get("version") is not None:
            raise Problem(
                "give the tool version either in 'tool' (name@version) or in 'version', not both",
                ("version",),
            )
        try:
            name, version = split_tool_ref(data["tool"])
        except ValueError as exc:
            raise Problem(str(exc), ("tool",)) from None
        return {**data, "tool": name, "version": version}
    return data


def _duration_schema(schema: dict[str, Any], maximum: float) -> None:
    """A duration field's schema: seconds, or a text such as ``500ms``, ``30s``, ``5m``."""
    schema.pop("type", None)
    schema["anyOf"] = [
        {"type": "number", "minimum": 0, "maximum": maximum},
        {"type": "string", "pattern": _DURATION_RE.pattern},
    ]


def _also(schema: dict[str, Any], *shapes: dict[str, Any]) -> None:
    """Add the YAML shorthands (``retries: 3``, ``foreach: LIST``) to a field's schema."""
    schema.setdefault("anyOf", []).extend(shapes)


MAX_TIMEOUT_S = MAX_WAIT_FOR_PROVIDER_S
MAX_DEPENDS_ON = 1000


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
    placement: PlacementSpec | None = Field(
        default=None,
        description="Where the step may run: auto, local, remote, or {mode, peers, resources}.",
        json_schema_extra=lambda schema: _also(schema, {"enum": ["auto", "local", "remote"]}),
    )
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
    depends_on: tuple[str, ...] = Field(
        default=(),
        max_length=MAX_DEPENDS_ON,
        description="Steps that must finish first, beyond those whose outputs it references.",
    )
    retries: RetrySpec | None = Field(
        default=None,
        description="Run the step again when it fails: a count, or {max, backoff, factor, on}.",
        json_schema_extra=lambda schema: _also(
            schema, {"type": "integer", "minimum": 0, "maximum": MAX_RETRIES}
        ),
    )
    timeout: float | None = Field(
        default=None,
        description="Stop the step after this long (seconds, or a duration such as 30s, 5m); "
        "it then fails with error type StepTimeout (or is retried).",
        json_schema_extra={
            "anyOf": [
                {"type": "number", "exclusiveMinimum": 0, "maximum": MAX_TIMEOUT_S},
                {"type": "string", "pattern": _DURATION_RE.pattern},
                {"type": "null"},
            ]
        },
    )
    foreach: ForeachSpec | None = Field(
        default=None,
        description="Run the step once per item of a list: a list, a reference to one, or "
        "{items, max_parallel}; its inputs may use {{item}} and {{index}}.",
        json_schema_extra=lambda schema: _also(schema, {"type": "array"}, {"type": "string"}),
    )
    when: str | None = Field(
        default=None,
        description="Run the step only if this condition holds, e.g. "
        "\"inputs.mode == 'full' and steps.count.outputs.result > 3\"; otherwise it is "
        "skipped (and so are the steps that need it).",
    )
    on_error: OnErrorSpec | None = Field(
        default=None,
        description="After a failure (and its retries): fail (default), continue (outputs "
        "null), {continue: {OUTPUT: VALUE}}, or {fallback: {tool, inputs}}.",
        json_schema_extra=lambda schema: _also(schema, {"enum": ["fail", "continue"]}),
    )
    package: str | None = Field(
        default=None,
        description="A pip requirement (e.g. 'my-tools==1.2.0') installed for this step on a "
        "node that allows installs (tools.install); 'tool' names a tool it publishes. "
        "'tool: PACKAGE@VERSION' (no dot in PACKAGE) is short for the package's own tool.",
    )
    parameters: tuple[ParameterSpec, ...] = Field(
        default=(),
        description="Environment variables of the step's process, as [{name, value}].",
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
        return _split_tool_version(_package_form(data))

    @field_validator("on_error", mode="before")
    @classmethod
    def _on_error(cls, value: Any) -> Any:
        return None if value == "fail" else value

    @field_validator("depends_on", mode="before")
    @classmethod
    def _depends_list(cls, value: Any) -> Any:
        return [value] if isinstance(value, str) else value

    @field_validator("depends_on")
    @classmethod
    def _depends_names(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        for name in value:
            _check_name(name, "step")
        return value

    @field_validator("timeout", mode="before")
    @classmethod
    def _timeout(cls, value: Any) -> Any:
        if value is None:
            return None
        seconds = parse_duration(value, "timeout")
        if seconds <= 0:
            raise ValueError(f"timeout must be more than 0s, not {value!r}")
        return seconds

    @field_validator("when")
    @classmethod
    def _condition(cls, value: str | None) -> str | None:
        if value is not None:
            try:
                parse_expr(value)
            except ExprSyntaxError as exc:
                raise ValueError(f"invalid 'when' condition: {exc}") from None
        return value

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
        if "." not in value and PACKAGE_NAME_RE.match(value):
            return value  # a package's own tool: checked with 'package' (_package_tool)
        return check_tool_name(value)

    @field_validator("package")
    @classmethod
    def _valid_package(cls, value: str | None) -> str | None:
        return None if value is None else check_requirement(value)

    @field_validator("parameters", mode="before")
    @classmethod
    def _parameters_list(cls, value: Any, info: ValidationInfo) -> Any:
        _reject_mapping(value, info)
        return value

    @field_validator("parameters")
    @classmethod
    def _valid_parameters(cls, value: tuple[ParameterSpec, ...]) -> tuple[ParameterSpec, ...]:
        check_parameters([(p.name, p.value) for p in value])
        return value

    @model_validator(mode="after")
    def _package_tool(self) -> StepSpec:
        if "." in self.tool:
            return self
        # a tool without a dot is only the short form of a package's own tool
        if self.package is None or normalize_package(
            requirement_name(self.package)
        ) != normalize_package(self.tool):
            try:
                check_tool_name(self.tool)
            except ValueError as exc:
                raise Problem(str(exc), ("tool",)) from None
        return self

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

    @property
    def placement_spec(self) -> PlacementSpec | None:
        return self.placement

    @property
    def on_error_spec(self) -> OnErrorSpec | None:
        return self.on_error

    def dependencies(self) -> set[str]:
        """Names of the steps this step waits for: those whose outputs it references (in
        its inputs, ``foreach``, ``when`` or ``on_error``) and those in ``depends_on``."""
        values: list[Any] = [binding.value for binding in self.inputs]
        if self.foreach is not None:
            values.append(self.foreach.items)
        on_error = self.on_error_spec
        if on_error is not None:
            values.append(on_error.continue_)
            if on_error.fallback is not None:
                values += [binding.value for binding in on_error.fallback.inputs]
        found = {ref.step for ref in find_refs(values) if ref.step is not None}
        if self.when is not None:
            found.update(step for step, _ in parse_expr(self.when).steps)
        found.update(self.depends_on)
        return found

    def args_template(self) -> dict[str, Any]:
        """The tool arguments, references not yet resolved."""
        return {binding.name: binding.value for binding in self.inputs}

    def run_options(self) -> dict[str, Any]:
        """How the step is run beyond its tool and arguments (empty: anywhere, once)."""
        options: dict[str, Any] = {}
        placement = self.placement_spec
        if placement is not None:
            options.update(placement.run_options())
        if self.retries is not None and self.retries.max > 0:
            options["retries"] = self.retries.model_dump(mode="json")
        if self.timeout is not None:
            options["timeout_s"] = self.timeout
        if self.foreach is not None:
            options["foreach"] = self.foreach.model_dump(mode="json")
        if self.when is not None:
            options["when"] = self.when
        on_error = self.on_error_spec
        if on_error is not None:
            options["on_error"] = on_error.run_options()
        if self.verify is not None and self.verify.replicas > 1:
            options["replicas"] = self.verify.replicas
        if self.wait_for_provider is not None:
            options["provider_wait_s"] = self.wait_for_provider
        if self.package is not None:
            options["package"] = self.package
        if self.parameters:
            options["parameters"] = self.parameter_values()
        if self.workflow is not None:
            options["workflow"] = self.workflow
        return options

    @property
    def package_tool(self) -> str | None:
        """The tool of a package step: its name, or None for the package's own tool
        (``tool: PACKAGE@VERSION``)."""
        if self.package is None:
            return None
        return self.tool if "." in self.tool else None

    def parameter_values(self) -> dict[str, str]:
        """The parameters as environment variables (numbers as text)."""
        return check_parameters([(p.name, p.value) for p in self.parameters])


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
        """In words, for listings: ``at start, every 10m``."""
        parts = ["at start"] if self.at_start else []
        if self.every is not None:
            seconds = int(self.every)  # (whole seconds: the largest whole unit)
            for unit, size in (("h", 3600), ("m", 60), ("s", 1)):
                if seconds % size == 0:
                    parts.append(f"every {seconds // size}{unit}")
                    break
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
    ("steps", "placement"): PlacementSpec,
    ("steps", "retries"): RetrySpec,
    ("steps", "foreach"): ForeachSpec,
    ("steps", "on_error"): OnErrorSpec,
    ("steps", "on_error", "fallback"): FallbackSpec,
    ("steps", "on_error", "fallback", "inputs"): ValueBinding,
    ("steps", "parameters"): ParameterSpec,
    ("run",): RunSpec,
}
