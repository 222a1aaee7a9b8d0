"""Serialization of step outputs for the journal (the user's own values: cloudpickle).

ObjectRefs inside a value are checkpointed by value and come back as new ObjectRefs
(``ray.put``) when the value is loaded. Nothing from the network is ever unpickled here:
the node's cross-node data is JSON.
"""

from __future__ import annotations

import io
import pickle
from collections.abc import Callable
from typing import Any

import ray
from ray import cloudpickle


class HasObjectRefs(Exception):
    """The value holds ObjectRefs; serialize it with ``resolve_refs=True`` (blocking)."""


def _restore_ref(value: Any) -> ray.ObjectRef:
    return ray.put(value)


# type -> its reduce function, for the engine's own many-per-graph types: answered here,
# the pickler skips its dispatch table (a Python ChainMap lookup per object in cloudpickle)
_REDUCERS: dict[type, Callable[[Any], tuple[Any, ...]]] = {}


def register_reducer(cls: type, reduce: Callable[[Any], tuple[Any, ...]]) -> None:
    _REDUCERS[cls] = reduce


class _Pickler(cloudpickle.Pickler):
    def __init__(self, file: io.BytesIO, resolve_refs: bool) -> None:
        super().__init__(file, protocol=pickle.HIGHEST_PROTOCOL)
        self._resolve_refs = resolve_refs

    def reducer_override(self, obj: Any) -> Any:
        reduce = _REDUCERS.get(type(obj))
        if reduce is not None:
            return reduce(obj)
        if isinstance(obj, ray.ObjectRef):
            if not self._resolve_refs:
                raise HasObjectRefs
            return _restore_ref, (ray.get(obj),)
        return super().reducer_override(obj)


_SIMPLE = (int, float, str, bytes, bool, type(None))


def dumps(value: Any, *, resolve_refs: bool = False) -> bytes:
    if type(value) in _SIMPLE:  # the common case: no Pickler set-up
        return pickle.dumps(value, protocol=pickle.HIGHEST_PROTOCOL)
    buf = io.BytesIO()
    _Pickler(buf, resolve_refs).dump(value)
    return buf.getvalue()


# Where the engine's parts lived before they moved into ``workflows.engine``: journals
# written then hold pickles that name those modules (a stored graph's steps, a failed
# workflow's error), and they must still load.
_MOVED = {
    f"workflows._{old}": f"workflows.engine.{new}"
    for old, new in (
        ("completions", "completions"),
        ("engine", "lifecycle"),
        ("execution", "execution"),
        ("graph", "graph"),
        ("liveness", "liveness"),
        ("loop", "loop"),
        ("outputs", "outputs"),
        ("results", "results"),
        ("runstate", "runstate"),
        ("serde", "serde"),
        ("step", "step"),
        ("storage", "storage"),
        ("tool_runs", "tool_runs"),
        ("waits", "waits"),
    )
}


class _Unpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        return super().find_class(_MOVED.get(module, module), name)


def loads(data: bytes) -> Any:
    return _Unpickler(io.BytesIO(data)).load()
