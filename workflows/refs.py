"""References inside workflow values: ``{{inputs.<name>}}`` and
``{{steps.<step>.outputs.<name>}}``; in a ``foreach`` step also ``{{item}}`` (the list
item, or ``{{item.<key>}}`` of a mapping item) and ``{{index}}`` (its position), and in an
``on_error`` fallback ``{{error.type}}`` and ``{{error.message}}``.

References may appear in any string, at any depth of nested lists and mappings. A string
that is exactly one reference (surrounding whitespace allowed) resolves to the referenced
value itself, keeping its type; references inside longer strings are interpolated as text.
Every ``{{ ... }}`` is a reference: anything else between double braces is malformed.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any, Literal

from workflows.errors import ReferenceResolutionError, WorkflowDefinitionError

NAME_PATTERN = r"[A-Za-z0-9][A-Za-z0-9_-]*"
"""Names of workflow inputs, steps and outputs that references can point to."""

_EXACT_RE = re.compile(r"^\s*\{\{((?:(?!\}\}).)*)\}\}\s*$", re.DOTALL)
_INPUT_RE = re.compile(rf"^\s*inputs\.({NAME_PATTERN})\s*$")
_STEP_RE = re.compile(rf"^\s*steps\.({NAME_PATTERN})\.outputs\.({NAME_PATTERN})\s*$")
_ITEM_RE = re.compile(rf"^\s*item(?:\.({NAME_PATTERN}))?\s*$")
_INDEX_RE = re.compile(r"^\s*index\s*$")
_ERROR_RE = re.compile(r"^\s*error\.(type|message)\s*$")

RefKind = Literal["input", "step", "item", "index", "error"]
CONTEXT_KINDS = ("item", "index", "error")
"""Kinds of reference that only some places allow (``foreach`` steps, fallbacks)."""


@dataclass(frozen=True)
class Ref:
    """One reference: a workflow input (``kind="input"``, ``name``), an output of a step
    (``kind="step"``, ``step``, and ``name`` = the output's name), a ``foreach`` item
    (``kind="item"``, ``name`` = its key or ``""``) or index (``kind="index"``), or the
    error an ``on_error`` fallback handles (``kind="error"``, ``name`` = type or message)."""

    kind: RefKind
    name: str
    step: str | None = None

    @property
    def output(self) -> str | None:
        """The referenced step output's name (``None`` for input references)."""
        return self.name if self.kind == "step" else None

    def __str__(self) -> str:
        if self.kind == "input":
            return f"{{{{inputs.{self.name}}}}}"
        if self.kind == "item":
            return f"{{{{item.{self.name}}}}}" if self.name else "{{item}}"
        if self.kind == "index":
            return "{{index}}"
        if self.kind == "error":
            return f"{{{{error.{self.name}}}}}"
        return f"{{{{steps.{self.step}.outputs.{self.name}}}}}"


def parse_ref(inner: str) -> Ref | None:
    """Parse what is between the braces (``"steps.a.outputs.b"``); ``None`` if malformed."""
    if m := _INPUT_RE.match(inner):
        return Ref("input", m.group(1))
    if m := _STEP_RE.match(inner):
        return Ref("step", m.group(2), m.group(1))
    if m := _ITEM_RE.match(inner):
        return Ref("item", m.group(1) or "")
    if _INDEX_RE.match(inner):
        return Ref("index", "")
    if m := _ERROR_RE.match(inner):
        return Ref("error", m.group(1))
    return None


def find_refs(value: Any) -> list[Ref]:
    """All references in ``value`` (strings inside nested lists/mappings), in order.

    Raises :class:`WorkflowDefinitionError` for a ``{{ ... }}`` that is not a valid
    reference, such as ``{{steps.x}}``.
    """
    refs: list[Ref] = []
    for text in _strings(value):
        for start, end in _braces(text):
            ref = parse_ref(text[start + 2 : end - 2])
            if ref is None:
                raise WorkflowDefinitionError(_malformed_message(text[start:end]))
            refs.append(ref)
    return refs


def _braces(text: str) -> Iterator[tuple[int, int]]:
    """The spans of the ``{{ ... }}`` in ``text``: each from a ``{{`` to the first ``}}``
    after it. (Found with ``str.find``, in linear time: a lazy regex would retry from every
    ``{{`` of a string that never closes one, quadratic in its length.)"""
    at = text.find("{{")
    while at >= 0:
        close = text.find("}}", at + 2)
        if close < 0:
            return
        yield at, close + 2
        at = text.find("{{", close + 2)


SKIPPED = "__skipped__"
"""The key of a skipped step's outputs (its value says why): every output of such a step
resolves to ``null``. (No output name can collide with it: names start with a letter or a
digit.)"""


DEFAULT_OUTPUT = "__default__"
"""A key of a step's outputs: any output the step did not produce resolves to its value
(a ``foreach`` step over no items has every output ``[]``)."""


def resolve(
    value: Any,
    inputs: Mapping[str, Any],
    step_outputs: Mapping[str, Mapping[str, Any]],
    context: Mapping[str, Any] | None = None,
) -> Any:
    """Replace every reference in ``value`` by its value.

    Lists, tuples and mappings are rebuilt with resolved items (mapping keys are left as
    they are). ``context`` holds the values of ``item``, ``index`` and ``error`` where
    those references are allowed. Raises :class:`ReferenceResolutionError` naming the
    reference when it is malformed or has no value.
    """
    ctx = context or {}
    if isinstance(value, str):
        return _resolve_string(value, inputs, step_outputs, ctx)
    if isinstance(value, Mapping):
        return {key: resolve(item, inputs, step_outputs, ctx) for key, item in value.items()}
    if isinstance(value, list):
        return [resolve(item, inputs, step_outputs, ctx) for item in value]
    if isinstance(value, tuple):
        return tuple(resolve(item, inputs, step_outputs, ctx) for item in value)
    return value


def _resolve_string(
    text: str,
    inputs: Mapping[str, Any],
    step_outputs: Mapping[str, Mapping[str, Any]],
    context: Mapping[str, Any],
) -> Any:
    if "{{" not in text:
        return text
    if exact := _EXACT_RE.match(text):
        return _lookup(exact.group(1), inputs, step_outputs, context)

    parts: list[str] = []
    done = 0
    for start, end in _braces(text):
        found = _lookup(text[start + 2 : end - 2], inputs, step_outputs, context)
        parts += [
            text[done:start],
            found if isinstance(found, str) else json.dumps(found, default=str),
        ]
        done = end
    parts.append(text[done:])
    return "".join(parts)


def _lookup(
    inner: str,
    inputs: Mapping[str, Any],
    step_outputs: Mapping[str, Mapping[str, Any]],
    context: Mapping[str, Any],
) -> Any:
    ref = parse_ref(inner)
    if ref is None:
        text = f"{{{{{inner}}}}}"
        raise ReferenceResolutionError(_malformed_message(text), text)
    if ref.kind in CONTEXT_KINDS:
        return _lookup_context(ref, context)
    if ref.kind == "input":
        if ref.name not in inputs:
            raise ReferenceResolutionError(
                f"cannot resolve {ref}: workflow input {ref.name!r} has no value "
                f"(inputs given: {_names(inputs)})",
                str(ref),
            )
        return inputs[ref.name]
    assert ref.step is not None  # parse_ref sets it for step references
    outputs = step_outputs.get(ref.step)
    if outputs is None:
        raise ReferenceResolutionError(
            f"cannot resolve {ref}: step {ref.step!r} has no outputs yet "
            f"(finished steps: {_names(step_outputs)})",
            str(ref),
        )
    value = step_output(outputs, ref.name)
    if value is MISSING:
        raise ReferenceResolutionError(
            f"cannot resolve {ref}: step {ref.step!r} produced no output {ref.name!r} "
            f"(its outputs: {_names(outputs)})",
            str(ref),
        )
    return value


MISSING: Any = object()
"""What :func:`step_output` gives for an output the step did not produce."""


def step_output(outputs: Mapping[str, Any], name: str) -> Any:
    """Output ``name`` of a finished step's ``outputs``: ``None`` for a skipped step
    (:data:`SKIPPED`), its :data:`DEFAULT_OUTPUT` for one it did not produce if it has one,
    else :data:`MISSING`."""
    if SKIPPED in outputs:
        return None
    if name in outputs:
        return outputs[name]
    return outputs.get(DEFAULT_OUTPUT, MISSING)


def _lookup_context(ref: Ref, context: Mapping[str, Any]) -> Any:
    where = {"item": "a foreach step", "index": "a foreach step", "error": "an on_error fallback"}
    if ref.kind not in context:
        raise ReferenceResolutionError(
            f"cannot resolve {ref}: it is only defined in {where[ref.kind]}", str(ref)
        )
    value = context[ref.kind]
    if ref.kind == "index" or not ref.name:
        return value
    if not isinstance(value, Mapping) or ref.name not in value:
        raise ReferenceResolutionError(
            f"cannot resolve {ref}: the {ref.kind} has no key {ref.name!r}", str(ref)
        )
    return value[ref.name]


def _strings(value: Any) -> Iterator[str]:
    if isinstance(value, str):
        yield value
    elif isinstance(value, Mapping):
        for item in value.values():
            yield from _strings(item)
    elif isinstance(value, list | tuple):
        for item in value:
            yield from _strings(item)


def _names(mapping: Mapping[str, Any]) -> str:
    return ", ".join(sorted(mapping)) or "none"


def _malformed_message(text: str) -> str:
    if len(text) > 80:  # (the message is one line to show a user, not the whole value)
        text = text[:38] + "..." + text[-38:]
    return (
        f"malformed reference {text!r}: use '{{{{inputs.<name>}}}}' or "
        "'{{steps.<step>.outputs.<name>}}'"
    )
