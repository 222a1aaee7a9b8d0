"""How a protocol's messages grow: the version rule, and dumping a message for an older peer.

Every object on a hivemesh wire is closed (a receiver rejects unknown members), so a member
that an older peer does not know breaks it. The rule (docs/protocols.md §3.1):

- a message gains an **optional** member, or the protocol gains a message type that is only
  sent in answer to one of the new kind → the **minor** version of the protocol id goes up
  (``/hivemesh/discovery/0.1.0`` → ``/hivemesh/discovery/0.2.0``);
- anything else (a member removed, made required, or given another meaning) → the **major**
  version goes up;
- a node MAY keep serving the older minor versions of the same major on their own protocol
  ids; there it sends only the members those versions define (:func:`dump_for`) and ignores
  nothing (an older peer never sends the newer members).

A member added in a version is marked in its model with ``json_schema_extra=since("0.2.0")``.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel

SINCE_KEY = "since"


def since(version: str) -> dict[str, Any]:
    """``json_schema_extra`` for a member added in protocol ``version``."""
    parse_version(version)
    return {SINCE_KEY: version}


def parse_version(version: str) -> tuple[int, ...]:
    """``"0.2.0"`` → ``(0, 2, 0)``. Raises ValueError for anything else."""
    parts = version.split(".")
    if len(parts) != 3 or not all(p.isdigit() for p in parts):
        raise ValueError(f"not a protocol version: {version!r} (expected MAJOR.MINOR.PATCH)")
    return tuple(int(p) for p in parts)


def version_of(protocol_id: str) -> str:
    """``"/hivemesh/discovery/0.2.0"`` → ``"0.2.0"``."""
    version = protocol_id.rsplit("/", 1)[-1]
    parse_version(version)
    return version


def dump_for(message: BaseModel, version: str) -> dict[str, Any]:
    """``message`` as a JSON object for a peer that speaks ``version`` of its protocol: the
    members marked as added in a later version are left out, at every nesting level."""
    data = message.model_dump(mode="json")
    _prune(message, data, parse_version(version))
    return data


def _added_in(extra: Any) -> tuple[int, ...] | None:
    if isinstance(extra, dict) and isinstance(extra.get(SINCE_KEY), str):
        return parse_version(extra[SINCE_KEY])
    return None


def _prune(value: Any, data: Any, version: tuple[int, ...]) -> None:
    if isinstance(value, BaseModel) and isinstance(data, dict):
        for name, field in type(value).model_fields.items():
            added = _added_in(field.json_schema_extra)
            if added is not None and added > version:
                data.pop(name, None)
            else:
                _prune(getattr(value, name), data.get(name), version)
    elif isinstance(value, (list, tuple)) and isinstance(data, list):
        for item, item_data in zip(value, data, strict=False):
            _prune(item, item_data, version)
    elif isinstance(value, dict) and isinstance(data, dict):
        for key, item in value.items():
            _prune(item, data.get(key), version)
