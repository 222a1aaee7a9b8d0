"""A tool: a named, versioned, typed function that workflow steps call.

Tools are plain functions wrapped by :func:`tool`, which derives pydantic models for the
inputs (from the signature) and the outputs (from ``output=``). :meth:`Tool.invoke` is the
one boundary where arguments are validated and foreign exceptions become
:class:`~workflows.errors.ToolError` subclasses.
"""

from __future__ import annotations

import inspect
import math
import re
import traceback
import typing
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any

from pydantic import BaseModel, ConfigDict, ValidationError, create_model

from workflows.errors import (
    ToolConfigError,
    ToolExecutionError,
    ToolInputError,
    ToolOutputError,
)

TOOL_NAME_PATTERN = r"^[a-z][a-z0-9_]*(\.[a-z][a-z0-9_]*)+$"
"""A tool name: dotted lower-case identifiers, the first part being the group (``text.upper``)."""

_TOOL_NAME_RE = re.compile(TOOL_NAME_PATTERN)
_VERSION_RE = re.compile(r"^[0-9]+(\.[0-9]+)*([-+][0-9A-Za-z.-]+)?$")

RESULT_FIELD = "result"
"""The single output field of tools declared with a plain ``output`` type."""

_MODEL_CONFIG = ConfigDict(extra="forbid", frozen=True)

MAX_TAGS = 16
_TAG_RE = re.compile(r"^[a-z0-9][a-z0-9_.-]{0,31}$")
MAX_RESOURCES = 8
_RESOURCE_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_.-]{0,63}$")
TRACEBACK_FRAMES = 30
"""Frames of a tool's traceback kept in its error (the innermost ones)."""


def check_tool_name(name: str) -> str:
    """Return ``name`` if it is a valid tool name, else raise :class:`ToolConfigError`."""
    if not _TOOL_NAME_RE.match(name):
        raise ToolConfigError(
            f"invalid tool name {name!r}: expected lower-case '<group>.<name>', "
            "e.g. 'text.upper' (letters, digits and '_', parts separated by '.')"
        )
    return name


@dataclass(frozen=True)
class Tool:
    """A callable tool with JSON-schema-described inputs and outputs.

    ``bare_result`` marks tools built with a plain ``output`` type: ``fn`` returns the bare
    value, which :meth:`invoke` wraps as ``{"result": value}``. Otherwise ``fn`` returns a
    mapping or an ``output_model`` instance.
    """

    name: str
    version: str
    description: str
    input_model: type[BaseModel]
    output_model: type[BaseModel]
    fn: Callable[..., Any]
    remote_callable: bool = True
    bare_result: bool = False
    # the same arguments always give the same outputs: its steps may be replicated on several
    # nodes and their outputs compared (``verify: {replicas: N}``)
    deterministic: bool = False
    # labels for people and for search (``hivemesh tools``), e.g. ("text", "nlp")
    tags: tuple[str, ...] = ()
    # what one call needs from Ray: {"num_cpus": 1}, {"num_gpus": 1}, {"memory": bytes}, or a
    # custom resource; the node asks Ray for it when it runs the tool's task
    resources: Mapping[str, float] = field(default_factory=dict, hash=False)
    # calling it twice with the same arguments (and idempotency key) has the effect of calling
    # it once: a step of it may be retried after a failure that may have happened mid-call
    idempotent: bool = False

    def __post_init__(self) -> None:
        check_tool_name(self.name)
        object.__setattr__(self, "tags", check_tags(self.name, self.tags))
        object.__setattr__(self, "resources", check_resources(self.name, self.resources))
        if not _VERSION_RE.match(self.version):
            raise ToolConfigError(
                f"tool {self.name!r} has invalid version {self.version!r}: "
                "expected dotted numbers such as '1.0.0'",
                self.name,
            )
        for label, model in (
            ("input_model", self.input_model),
            ("output_model", self.output_model),
        ):
            if not (isinstance(model, type) and issubclass(model, BaseModel)):
                raise ToolConfigError(
                    f"tool {self.name!r}: {label} must be a pydantic model class", self.name
                )
        if self.bare_result and set(self.output_model.model_fields) != {RESULT_FIELD}:
            raise ToolConfigError(
                f"tool {self.name!r}: bare_result needs an output model with the single "
                f"field {RESULT_FIELD!r}",
                self.name,
            )

    @property
    def group(self) -> str:
        """The tool's group: the part of the name before the first dot (``text``)."""
        return self.name.split(".", 1)[0]

    def input_schema(self) -> dict[str, Any]:
        """JSON schema of the arguments."""
        return self.input_model.model_json_schema()

    def output_schema(self) -> dict[str, Any]:
        """JSON schema of the result mapping."""
        return self.output_model.model_json_schema()

    def spec(self) -> dict[str, Any]:
        """A JSON-ready description, as advertised to peers."""
        return {
            "name": self.name,
            "version": self.version,
            "description": self.description,
            "input_schema": self.input_schema(),
            "output_schema": self.output_schema(),
            "deterministic": self.deterministic,
            "idempotent": self.idempotent,
            "tags": list(self.tags),
            "resources": dict(self.resources),
        }

    def invoke(self, args: Mapping[str, Any]) -> dict[str, Any]:
        """Validate ``args``, call the function, validate and return its outputs as JSON data.

        Raises :class:`ToolInputError` for bad arguments, :class:`ToolExecutionError` when the
        function raises and :class:`ToolOutputError` when it returns something invalid.
        """
        if not isinstance(args, Mapping):
            raise ToolInputError(
                f"invalid input for tool {self.name!r}: arguments must be a mapping of names "
                f"to values, not {type(args).__name__}",
                self.name,
            )
        try:
            validated = self.input_model.model_validate(dict(args))
        except ValidationError as exc:
            raise ToolInputError(
                f"invalid input for tool {self.name!r}: {_describe_input_errors(exc, self)}",
                self.name,
            ) from None

        kwargs = {field: getattr(validated, field) for field in type(validated).model_fields}
        try:
            returned = self.fn(**kwargs)
        except Exception as exc:  # the boundary: whatever a tool raises becomes a ToolError
            # with the tool's own frames (the runner bounds both: workflows.engine.limits)
            raise ToolExecutionError(
                f"tool {self.name!r} failed: {type(exc).__name__}: {exc}",
                self.name,
                type(exc).__name__,
                traceback=tool_traceback(exc),
            ) from exc

        raw = {RESULT_FIELD: returned} if self.bare_result else returned
        try:
            if isinstance(raw, BaseModel) and not isinstance(raw, self.output_model):
                raw = raw.model_dump()
            output = self.output_model.model_validate(raw)
            return output.model_dump(mode="json")
        except (ValidationError, ValueError, TypeError) as exc:
            raise ToolOutputError(
                f"tool {self.name!r} returned invalid output: {_first_line(exc)}", self.name
            ) from exc


def tool(
    name: str,
    *,
    version: str = "1.0.0",
    description: str | None = None,
    output: Any = Any,
    remote_callable: bool = True,
    deterministic: bool = False,
    tags: Iterable[str] = (),
    resources: Mapping[str, float] | None = None,
    idempotent: bool = False,
) -> Callable[[Callable[..., Any]], Tool]:
    """Turn a function into a :class:`Tool`.

    The input model is built from the function's signature (annotations, defaults, and
    ``Annotated[..., Field(...)]`` constraints); extra arguments are rejected. ``description``
    defaults to the first line of the docstring. ``output`` is either a pydantic model class
    (the function returns a mapping or an instance of it) or a plain type ``T``, in which case
    the outputs are ``{"result": T}`` and the function returns the bare value.
    ``deterministic`` declares that equal arguments always give equal outputs;
    ``idempotent`` that a repeated call (same arguments, same idempotency key) has the effect
    of one (retries may then repeat a call that failed midway). ``tags`` are labels;
    ``resources`` is what one call needs from Ray (``{"num_cpus": 1}``, ``{"num_gpus": 1}``,
    ``{"memory": bytes}`` or a custom resource), asked for when the node runs it.
    ``remote_callable`` false keeps the tool off the node's card: peers cannot call it.
    """
    check_tool_name(name)

    def decorate(fn: Callable[..., Any]) -> Tool:
        model_prefix = "".join(part.title().replace("_", "") for part in name.split("."))
        input_model = _input_model(name, fn, f"{model_prefix}Input")
        bare = not (isinstance(output, type) and issubclass(output, BaseModel))
        if bare:
            result_field: dict[str, Any] = {RESULT_FIELD: (output, ...)}
            output_model: type[BaseModel] = create_model(
                f"{model_prefix}Output",
                __config__=_MODEL_CONFIG,
                __module__=fn.__module__,
                **result_field,
            )
        else:
            output_model = output
        return Tool(
            name=name,
            version=version,
            description=description if description is not None else _doc_summary(fn),
            input_model=input_model,
            output_model=output_model,
            fn=fn,
            remote_callable=remote_callable,
            bare_result=bare,
            deterministic=deterministic,
            tags=check_tags(name, tags),
            resources=check_resources(name, resources or {}),
            idempotent=idempotent,
        )

    return decorate


def check_tags(name: str, tags: Iterable[str]) -> tuple[str, ...]:
    """The tags, checked: at most :data:`MAX_TAGS` lower-case words; :class:`ToolConfigError`
    otherwise."""
    if isinstance(tags, str):
        raise ToolConfigError(f"tool {name!r}: tags must be a list of words, not a string", name)
    out = tuple(tags)
    if len(out) > MAX_TAGS:
        raise ToolConfigError(f"tool {name!r} has {len(out)} tags; at most {MAX_TAGS}", name)
    for tag in out:
        if not isinstance(tag, str) or not _TAG_RE.match(tag):
            raise ToolConfigError(
                f"tool {name!r}: invalid tag {tag!r}: lower-case letters, digits, '_', '.', '-'"
                ", at most 32 characters",
                name,
            )
    return out


def check_resources(name: str, resources: Mapping[str, float]) -> dict[str, float]:
    """The resources, checked: names of Ray resources (``num_cpus``, ``num_gpus``,
    ``memory`` or custom ones) with finite non-negative amounts."""
    if not isinstance(resources, Mapping):
        raise ToolConfigError(f"tool {name!r}: resources must be a mapping", name)
    if len(resources) > MAX_RESOURCES:
        raise ToolConfigError(f"tool {name!r}: at most {MAX_RESOURCES} resources", name)
    out: dict[str, float] = {}
    for key, amount in resources.items():
        if not isinstance(key, str) or not _RESOURCE_RE.match(key):
            raise ToolConfigError(f"tool {name!r}: invalid resource name {key!r}", name)
        if (
            isinstance(amount, bool)
            or not isinstance(amount, int | float)
            or not math.isfinite(amount)
            or amount < 0
        ):
            raise ToolConfigError(
                f"tool {name!r}: resource {key!r} needs a non-negative number, not {amount!r}",
                name,
            )
        out[key] = amount
    return out


def tool_traceback(exc: BaseException) -> str:
    """The traceback of an exception a tool raised, from the tool's own frames (the
    innermost :data:`TRACEBACK_FRAMES`), ending with the exception line."""
    tb = exc.__traceback__
    if tb is not None and tb.tb_next is not None:
        tb = tb.tb_next  # (the first frame is Tool.invoke's)
    lines = traceback.format_exception(type(exc), exc, tb, limit=-TRACEBACK_FRAMES, chain=False)
    return "".join(lines).rstrip("\n")


def _input_model(name: str, fn: Callable[..., Any], model_name: str) -> type[BaseModel]:
    # Only the parameters matter: an unresolvable return annotation must not get in the way.
    params_only = SimpleNamespace(
        __annotations__={
            k: v for k, v in getattr(fn, "__annotations__", {}).items() if k != "return"
        },
        __globals__=getattr(inspect.unwrap(fn), "__globals__", {}),
    )
    try:
        hints = typing.get_type_hints(params_only, include_extras=True)
    except (NameError, TypeError) as exc:
        raise ToolConfigError(f"tool {name!r}: cannot read annotations: {exc}", name) from exc
    fields: dict[str, Any] = {}
    for param in inspect.signature(fn).parameters.values():
        if param.kind not in (param.POSITIONAL_OR_KEYWORD, param.KEYWORD_ONLY):
            raise ToolConfigError(
                f"tool {name!r}: parameter {param.name!r} must be a named parameter "
                "(no *args, **kwargs or positional-only parameters)",
                name,
            )
        if param.name.startswith("_"):
            raise ToolConfigError(
                f"tool {name!r}: parameter {param.name!r} must not start with '_'", name
            )
        annotation = hints.get(param.name, Any)
        default = ... if param.default is param.empty else param.default
        fields[param.name] = (annotation, default)
    return create_model(model_name, __config__=_MODEL_CONFIG, __module__=fn.__module__, **fields)


def _doc_summary(fn: Callable[..., Any]) -> str:
    doc = inspect.getdoc(fn) or ""
    return doc.strip().splitlines()[0] if doc.strip() else ""


def _describe_input_errors(exc: ValidationError, tool: Tool) -> str:
    expected = ", ".join(tool.input_model.model_fields) or "no inputs"
    parts: list[str] = []
    seen: set[str] = set()
    for error in exc.errors():
        field = str(error["loc"][0]) if error["loc"] else "arguments"
        if field in seen:  # a union type reports one error per member; the first one will do
            continue
        seen.add(field)
        if error["type"] == "missing":
            parts.append(f"missing required input {field!r}")
        elif error["type"] == "extra_forbidden":
            parts.append(f"unexpected input {field!r} (expected: {expected})")
        else:
            parts.append(f"input {field!r}: {error['msg']} (got {_short_repr(error['input'])})")
    return "; ".join(parts)


def _short_repr(value: Any, limit: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _first_line(exc: Exception) -> str:
    if isinstance(exc, ValidationError):
        return "; ".join(
            f"{'.'.join(str(p) for p in e['loc']) or 'value'}: {e['msg']}" for e in exc.errors()
        )
    return str(exc).splitlines()[0] if str(exc) else type(exc).__name__
