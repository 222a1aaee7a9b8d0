"""Checking a delegated step's outputs before they are believed.

A peer's result is checked against the tool's output model when this node has the same tool
(name and version), else against the ``output_schema`` of the peer's card, with a small
JSON-Schema checker that covers what tools' pydantic models produce (types, properties,
required, additionalProperties, items, anyOf/oneOf/allOf, enum/const, local ``$ref``,
numeric and length bounds). Keywords it does not know are ignored; regular expressions
(``pattern``) are not evaluated, because the schema comes from the peer and a hostile regex
could stall the node. Work is bounded: a schema that nests too deeply or needs too many steps
to check counts as a failed check.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

import pydantic
from pydantic import BaseModel

MAX_DEPTH = 64
MAX_STEPS = 100_000


class _TooComplex(Exception):
    pass


def check_outputs(
    outputs: Mapping[str, Any],
    *,
    model: type[BaseModel] | None = None,
    schema: Mapping[str, Any] | None = None,
) -> str | None:
    """None if ``outputs`` are valid, else one line saying what is wrong.

    ``model`` (the local tool's output model) wins over ``schema`` (a JSON schema)."""
    if model is not None:
        try:
            # strict, from JSON: the data came from JSON, so no coercion ("5" is no int)
            model.model_validate_json(json.dumps(outputs), strict=True)
        except pydantic.ValidationError as exc:
            return _describe(exc)
        except (TypeError, ValueError) as exc:
            return f"not JSON data: {exc}"
        return None
    if not schema:
        return None
    checker = _Checker(schema)
    try:
        return checker.check(outputs, schema, "", 0)
    except _TooComplex as exc:
        return str(exc)


def _describe(exc: pydantic.ValidationError) -> str:
    parts = []
    for err in exc.errors()[:3]:
        where = ".".join(str(p) for p in err["loc"]) or "outputs"
        parts.append(f"{where}: {err['msg']}")
    return "; ".join(parts)


_TYPES: dict[str, Any] = {
    "object": lambda v: isinstance(v, dict),
    "array": lambda v: isinstance(v, list),
    "string": lambda v: isinstance(v, str),
    "boolean": lambda v: isinstance(v, bool),
    "null": lambda v: v is None,
    "number": lambda v: isinstance(v, (int, float)) and not isinstance(v, bool),
    "integer": lambda v: (
        (isinstance(v, int) and not isinstance(v, bool))
        or (isinstance(v, float) and v.is_integer())
    ),
}


def _type_name(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, (int, float)):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    return "object" if isinstance(value, dict) else type(value).__name__


class _Checker:
    def __init__(self, root: Mapping[str, Any]) -> None:
        self.root = root
        self.steps = 0

    def check(self, value: Any, schema: Any, path: str, depth: int) -> str | None:
        self.steps += 1
        if self.steps > MAX_STEPS:
            raise _TooComplex("the output schema is too complex to check")
        if depth > MAX_DEPTH:
            raise _TooComplex("the output schema nests too deeply to check")
        where = path or "outputs"
        if schema is True or schema == {}:
            return None
        if schema is False:
            return f"{where}: not allowed"
        if not isinstance(schema, Mapping):
            return None  # not a schema: nothing to check
        ref = schema.get("$ref")
        if isinstance(ref, str):
            target = self._resolve(ref)
            if target is None:
                return f"{where}: unresolvable schema reference {ref!r}"
            problem = self.check(value, target, path, depth + 1)
            if problem:
                return problem
        problem = self._check_type(value, schema, where)
        if problem:
            return problem
        if "const" in schema and value != schema["const"]:
            return f"{where}: must be {schema['const']!r}"
        enum = schema.get("enum")
        if isinstance(enum, list) and value not in enum:
            return f"{where}: must be one of {enum!r:.200}"
        for key in ("allOf", "anyOf", "oneOf"):
            branches = schema.get(key)
            if isinstance(branches, list) and branches:
                problem = self._combine(key, branches, value, path, depth)
                if problem:
                    return problem
        problem = None
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            problem = _bounds(value, schema, where)
        elif isinstance(value, str):
            problem = _length(len(value), schema, "minLength", "maxLength", where, "characters")
        elif isinstance(value, list):
            problem = _length(len(value), schema, "minItems", "maxItems", where, "items")
            problem = problem or self._items(value, schema, path, depth)
        elif isinstance(value, dict):
            problem = self._object(value, schema, path, depth)
        return problem

    def _resolve(self, ref: str) -> Any:
        if ref != "#" and not ref.startswith("#/"):
            return None  # remote documents and anchors: not in tools' schemas
        node: Any = self.root
        for part in ref[2:].split("/") if ref != "#" else []:
            part = part.replace("~1", "/").replace("~0", "~")
            if not isinstance(node, Mapping) or part not in node:
                return None
            node = node[part]
        return node

    def _check_type(self, value: Any, schema: Mapping[str, Any], where: str) -> str | None:
        wanted = schema.get("type")
        if wanted is None:
            return None
        names = wanted if isinstance(wanted, list) else [wanted]
        known = [n for n in names if isinstance(n, str) and n in _TYPES]
        if not known or any(_TYPES[n](value) for n in known):
            return None
        return f"{where}: expected {' or '.join(known)}, got {_type_name(value)}"

    def _combine(
        self, key: str, branches: list[Any], value: Any, path: str, depth: int
    ) -> str | None:
        results = [self.check(value, b, path, depth + 1) for b in branches]
        where = path or "outputs"
        if key == "allOf":
            return next((r for r in results if r), None)
        matched = sum(1 for r in results if r is None)
        if key == "anyOf" and matched == 0:
            return f"{where}: matches none of the allowed forms ({results[0]})"
        if key == "oneOf" and matched != 1:
            return f"{where}: must match exactly one allowed form, matches {matched}"
        return None

    def _items(self, value: list[Any], schema: Mapping[str, Any], path: str, depth: int) -> Any:
        prefix = schema.get("prefixItems")
        start = 0
        if isinstance(prefix, list):
            for i, (item, sub) in enumerate(zip(value, prefix, strict=False)):
                problem = self.check(item, sub, f"{path}[{i}]", depth + 1)
                if problem:
                    return problem
            start = len(prefix)
        items = schema.get("items")
        if items is None:
            return None
        for i in range(start, len(value)):
            problem = self.check(value[i], items, f"{path}[{i}]", depth + 1)
            if problem:
                return problem
        return None

    def _object(
        self, value: dict[str, Any], schema: Mapping[str, Any], path: str, depth: int
    ) -> str | None:
        where = path or "outputs"
        required = schema.get("required")
        if isinstance(required, list):
            missing = [k for k in required if isinstance(k, str) and k not in value]
            if missing:
                return f"{where}: missing {', '.join(repr(m) for m in missing[:5])}"
        props = schema.get("properties")
        props = props if isinstance(props, Mapping) else {}
        extra = schema.get("additionalProperties", True)
        for key, item in value.items():
            sub_path = f"{path}.{key}" if path else str(key)
            if key in props:
                problem = self.check(item, props[key], sub_path, depth + 1)
            elif extra is False:
                problem = f"{where}: unexpected member {key!r:.80}"
            else:
                problem = self.check(item, extra, sub_path, depth + 1)
            if problem:
                return problem
        return None


def _bounds(value: float, schema: Mapping[str, Any], where: str) -> str | None:
    checks = (
        ("minimum", lambda b: value >= b, ">="),
        ("maximum", lambda b: value <= b, "<="),
        ("exclusiveMinimum", lambda b: value > b, ">"),
        ("exclusiveMaximum", lambda b: value < b, "<"),
    )
    for key, ok, op in checks:
        bound = schema.get(key)
        if isinstance(bound, (int, float)) and not isinstance(bound, bool) and not ok(bound):
            return f"{where}: must be {op} {bound}"
    return None


def _length(
    n: int, schema: Mapping[str, Any], low: str, high: str, where: str, unit: str
) -> str | None:
    lo, hi = schema.get(low), schema.get(high)
    if isinstance(lo, int) and n < lo:
        return f"{where}: at least {lo} {unit} required, got {n}"
    if isinstance(hi, int) and n > hi:
        return f"{where}: at most {hi} {unit} allowed, got {n}"
    return None
