"""A process that parses workflow files for a host that must not do it in its own process
(a node: its event loop must keep answering, and its memory must not move).

Run as ``python -m workflows.dsl.worker --memory-mb N``. It limits its own address space
(RLIMIT_AS) before it reads anything and, for each parse, its CPU time (RLIMIT_CPU: the
kernel kills it past ``timeout_s`` + 1 s of CPU), says it is ready (:data:`READY`), then
answers requests one at a time on stdin/stdout until stdin closes. The host adds a
wall-clock bound and replaces a worker that died or overran (``node.parse_pool``).

Frames both ways: a 4-byte big-endian length, then that many bytes. A request is two
frames: a JSON header ``{"source": str, "limits": {ParseLimits}}`` and the file's bytes.
A reply is a JSON header, ``{"ok": true, "cpu_s": float, "peak_kib": int}`` followed by a
frame with the spec's JSON (:meth:`WorkflowSpec.to_json`), or ``{"ok": false, "error":
{...}}`` alone (:func:`error_fields`). After a ``MemoryError`` the worker answers and exits.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import resource
import struct
import sys
from typing import Any, BinaryIO

from workflows.dsl._limits import ParseLimits
from workflows.dsl._parse import parse_workflow
from workflows.errors import WorkflowDefinitionError, WorkflowLimitError

LENGTH = struct.Struct(">I")
MAX_HEADER = 64 * 1024
READY = b'{"ready": true}'
"""The frame a worker sends once, when it is ready for requests."""
EXIT_MEMORY = 3
"""The exit status of a worker that ran out of its address space."""


class FrameError(Exception):
    """The other side broke the framing (a truncated or oversized frame)."""


def frame(payload: bytes) -> bytes:
    """``payload`` with its length prefix."""
    return LENGTH.pack(len(payload)) + payload


def read_frame(stream: BinaryIO, limit: int) -> bytes | None:
    """The next frame's payload; ``None`` at a clean end of the stream."""
    head = stream.read(LENGTH.size)
    if not head:
        return None
    if len(head) < LENGTH.size:
        raise FrameError("the stream ended inside a length prefix")
    (size,) = LENGTH.unpack(head)
    if size > limit:
        raise FrameError(f"a frame of {size} bytes, more than {limit}")
    payload = stream.read(size)
    if len(payload) < size:
        raise FrameError("the stream ended inside a frame")
    return payload


def error_fields(exc: WorkflowDefinitionError) -> dict[str, Any]:
    """A definition error as the JSON a reply carries (:func:`error_from_fields` reverses)."""
    if isinstance(exc, WorkflowLimitError):
        return {
            "type": "limit",
            "detail": exc.detail,
            "source": exc.source,
            "line": exc.line,
            "bound": exc.bound,
            "limit": exc.limit,
        }
    return {"type": "definition", "message": exc.message, "source": exc.source, "line": exc.line}


def error_from_fields(fields: dict[str, Any]) -> WorkflowDefinitionError:
    """The error a reply's ``error`` describes; ``ValueError`` if it describes none."""
    kind = fields.get("type")
    source, line = fields.get("source"), fields.get("line")
    if not (source is None or isinstance(source, str)) or not (
        line is None or isinstance(line, int)
    ):
        raise ValueError("a malformed error in a worker's reply")
    if kind == "limit" and isinstance(fields.get("detail"), str):
        bound, limit = fields.get("bound"), fields.get("limit")
        if isinstance(bound, str) and isinstance(limit, int | float):
            return WorkflowLimitError(fields["detail"], source, line, bound=bound, limit=limit)
    if kind == "definition" and isinstance(fields.get("message"), str):
        return WorkflowDefinitionError(fields["message"], source, line)
    raise ValueError("a malformed error in a worker's reply")


def _cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _limit_cpu(budget_s: float) -> None:
    """Let the kernel kill this process once it has used ``budget_s`` more of CPU."""
    soft = math.ceil(_cpu_seconds() + budget_s)
    _, hard = resource.getrlimit(resource.RLIMIT_CPU)
    if hard != resource.RLIM_INFINITY:
        soft = min(soft, hard)
    resource.setrlimit(resource.RLIMIT_CPU, (soft, hard))


def serve(requests: BinaryIO, replies: BinaryIO) -> int:
    """Answer requests until ``requests`` ends; the process's exit status."""
    while True:
        try:
            header = read_frame(requests, MAX_HEADER)
            if header is None:
                return 0
            request = json.loads(header)
            limits = ParseLimits.model_validate(request["limits"])
            source = str(request["source"])
            body = read_frame(requests, limits.max_bytes)
            if body is None:
                raise FrameError("the stream ended before the file's bytes")
        except (FrameError, ValueError, KeyError, TypeError) as exc:
            print(f"parse worker: bad request: {exc}", file=sys.stderr)
            return 2
        _limit_cpu(limits.timeout_s + 1)
        started = _cpu_seconds()
        try:
            spec = parse_workflow(body, source=source, limits=limits)
            result = spec.to_json().encode()
        except WorkflowDefinitionError as exc:
            reply: dict[str, Any] = {"ok": False, "error": error_fields(exc)}
            replies.write(frame(json.dumps(reply).encode()))
            replies.flush()
            continue
        except MemoryError:
            reply = {"ok": False, "error": {"type": "memory"}}
            replies.write(frame(json.dumps(reply).encode()))
            replies.flush()
            return EXIT_MEMORY  # its heap may be in pieces: let the host start a fresh one
        reply = {
            "ok": True,
            "cpu_s": round(_cpu_seconds() - started, 4),
            "peak_kib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
        }
        replies.write(frame(json.dumps(reply).encode()) + frame(result))
        replies.flush()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--memory-mb", type=int, required=True, help="address-space limit")
    args = parser.parse_args(argv)
    limit = args.memory_mb * 1024 * 1024
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))  # a worker killed for CPU dumps nothing
    # the replies get their own descriptor; anything printed by accident goes to stderr
    replies = os.fdopen(os.dup(sys.stdout.fileno()), "wb")
    os.dup2(sys.stderr.fileno(), sys.stdout.fileno())
    replies.write(frame(READY))  # imported and limited: the host may send requests
    replies.flush()
    try:
        return serve(sys.stdin.buffer, replies)
    except MemoryError:  # wherever it struck, even while answering: say so by the status
        os._exit(EXIT_MEMORY)


if __name__ == "__main__":
    sys.exit(main())
