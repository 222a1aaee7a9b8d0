"""Hypothesis strategies and fuzz targets for every wire decoder.

Shared by the property tests (tests/unit/test_decoders_property.py, few examples) and by
scripts/fuzz.py (many examples, for minutes). A target runs one decoder on one input and
returns a short outcome; the only exceptions it lets through are bugs: anything that is
not a :class:`~protocols.errors.ProtocolError` (or is one of the wrong kind).
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import trio
from hypothesis import strategies as st

from protocols import control, discovery, handoff
from protocols.boundedjson import parse_json
from protocols.errors import (
    FrameDecodeError,
    FrameTooLargeError,
    MessageValidationError,
    PeerErrorResponse,
    RemoteProtocolError,
    StreamClosedError,
    UnknownMessageTypeError,
)
from protocols.framing import FrameDecoder, encode_frame, encode_uvarint
from protocols.limits import FrameLimits
from protocols.stream import MessageStream
from protocols.wire import ErrorMessage, MessageCodec
from tests.unit.memory_stream import MemoryStream

PEER = "12D3KooWA1111111111111111111111111111111111111111111"

# -- seeds: one valid message of every type --------------------------------------------------

CARD: dict[str, Any] = {
    "peer_id": PEER,
    "addrs": [f"/ip4/127.0.0.1/tcp/4001/p2p/{PEER}"],
    "version": "0.1.0",
    "tools": [
        {
            "name": "text.upper",
            "version": "1.0.0",
            "description": "Upper-case a string",
            "input_schema": {"type": "object", "properties": {"text": {"type": "string"}}},
            "output_schema": {},
        }
    ],
    "load": {"running": 1, "capacity": 4},
    "ttl_s": 30.0,
}
STEP: dict[str, Any] = {
    "name": "shout",
    "tool": "text.upper",
    "status": "SUCCESSFUL",
    "node": PEER,
    "reason": "local",
    "error": None,
    "attempts": 1,
    "started_at": 1.5,
    "ended_at": 2.5,
}
SEEDS: dict[str, list[dict[str, Any]]] = {
    "discovery": [{"type": "hello", "card": CARD, "peers": [{"peer_id": PEER, "addrs": []}]}],
    "handoff": [
        {
            "type": "offer",
            "handoff_id": "wf/s@p",
            "workflow_id": "wf",
            "step": "s",
            "tool": "text.upper",
            "version": "1",
            "args": {"text": "hi", "n": [1, 2.5, None, True]},
            "deadline_ms": 1000,
            "hops": 0,
            "epoch": 0,
        },
        {"type": "accept", "handoff_id": "h"},
        {"type": "reject", "handoff_id": "h", "code": "overloaded", "message": "busy"},
        {"type": "heartbeat", "handoff_id": "h", "elapsed_ms": 5},
        {"type": "result", "handoff_id": "h", "outputs": {"r": "HI"}, "duration_ms": 3},
        {"type": "failed", "handoff_id": "h", "code": "tool_failed", "message": "boom"},
        {"type": "cancel", "handoff_id": "h", "reason": "done"},
        {"type": "canceled", "handoff_id": "h", "message": "canceled"},
        {"type": "not_canceled", "handoff_id": "h", "code": "finished", "message": "too late"},
    ],
    "control-request": [
        {"type": "info"},
        {"type": "submit", "workflow": "id: x\n", "source": "x.yaml", "inputs": {"a": 1}},
        {"type": "status", "workflow_id": "w"},
        {"type": "result", "workflow_id": "w", "wait": True},
        {"type": "cancel", "workflow_id": "w"},
        {"type": "list"},
        {"type": "peers"},
        {"type": "tools"},
    ],
    "control-response": [
        {"type": "info", "peer_id": PEER, "addrs": [], "tools": ["t"], "version": "1"},
        {"type": "submitted", "workflow_id": "w", "status": "RUNNING", "created": True},
        {
            "type": "status",
            "workflow_id": "w",
            "name": "n",
            "status": "RUNNING",
            "created_at": 1.0,
            "steps": [STEP],
        },
        {"type": "result", "workflow_id": "w", "status": "SUCCESSFUL", "outputs": {"s": 1}},
        {
            "type": "list",
            "workflows": [{"workflow_id": "w", "name": "n", "status": "FAILED", "created_at": 1.0}],
        },
        {
            "type": "peers",
            "peers": [{"peer_id": PEER, "addrs": [], "tools": [], "connected": False}],
        },
        {
            "type": "tools",
            "tools": [{"name": "t", "version": "1", "description": "", "providers": [PEER]}],
        },
    ],
}
ERROR_SEED: dict[str, Any] = {"type": "error", "code": "not_found", "message": "no such thing"}
CODECS: dict[str, MessageCodec[Any]] = {
    "discovery": discovery.CODEC,
    "handoff": handoff.CODEC,
    "control-request": control.REQUEST_CODEC,
    "control-response": control.RESPONSE_CODEC,
}
ALL_TYPES = sorted({m["type"] for seeds in SEEDS.values() for m in seeds} | {"error", "bogus"})

# Small limits in tests make every bound reachable with small inputs.
SMALL_LIMITS = FrameLimits(max_frame_size=1 << 16, max_depth=8, max_members=16, max_containers=40)

# -- strategies ------------------------------------------------------------------------------

TRICKY_TEXT = st.sampled_from(
    ["", "\n", "\x00\x1b[31m", "\u2028", "\ud800", "\\ud800", '"', "\\", "[{", "é🐝", "9" * 80]
)
TEXT = st.text(max_size=20) | TRICKY_TEXT
NUMBERS = st.one_of(
    st.integers(),
    st.integers(),
    st.floats(allow_nan=True, allow_infinity=True),
    st.integers(60, 300).map(lambda n: int("9" * n)),
)
JSON_VALUES = st.recursive(
    st.none() | st.booleans() | NUMBERS | TEXT,
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(TEXT, inner, max_size=5),
    max_leaves=30,
)


@st.composite
def mutated_objects(draw: st.DrawFn, codec_name: str) -> dict[str, Any]:
    """A seed message of ``codec_name`` (or another protocol's) with a few random edits."""
    own = draw(st.integers(0, 3)) > 0
    pool = SEEDS[codec_name] if own else [m for s in SEEDS.values() for m in s]
    obj: dict[str, Any] = json.loads(json.dumps(draw(st.sampled_from([*pool, ERROR_SEED]))))
    for _ in range(draw(st.integers(0, 3))):
        target = obj
        # walk into a nested object or array now and then
        while draw(st.integers(0, 2)) == 0:
            children = [v for v in target.values() if isinstance(v, dict)]
            if not children:
                break
            target = draw(st.sampled_from(children))
        action = draw(st.sampled_from(["set", "set", "set", "drop", "add", "retype"]))
        keys = sorted(target)
        if action == "set" and keys:
            target[draw(st.sampled_from(keys))] = draw(JSON_VALUES)
        elif action == "drop" and keys:
            del target[draw(st.sampled_from(keys))]
        elif action == "add":
            target[draw(TEXT)] = draw(JSON_VALUES)
        else:
            obj["type"] = draw(st.sampled_from(ALL_TYPES) | TEXT)
    return obj


JSON_PUNCTUATION = [b"\\", b'"', b'\\"', b"\\\\", b"[", b"{", b"]", b"}", b",", b":", b"9" * 70]


def _frame_of(obj: dict[str, Any]) -> bytes:
    """A frame around ``obj`` as JSON, even where our own encoder would refuse it (NaN,
    lone surrogates): a peer may send anything."""
    text = json.dumps(obj, ensure_ascii=True)  # \\ud800 escapes stay ASCII
    payload = text.encode()
    return encode_uvarint(len(payload)) + payload


@st.composite
def hostile_payloads(draw: st.DrawFn) -> bytes:
    """JSON that breaks (or just keeps) a bound: deep, wide, long numbers, big exponents."""
    kind = draw(st.sampled_from(["deep", "wide", "digits", "exponent", "surrogate", "brackets"]))
    size = draw(st.integers(1, 3000))
    if kind == "deep":
        opener, closer = draw(st.sampled_from([(b"[", b"]"), (b'{"a":', b"}"), (b"[", b"")]))
        body = opener * size + b"0" + closer * size
    elif kind == "wide":
        body = b"[" + b",".join([draw(st.sampled_from([b"0", b"[]", b"{}", b'""']))] * size) + b"]"
    elif kind == "digits":
        body = b"-" * draw(st.integers(0, 1)) + b"9" * size + draw(st.sampled_from([b"", b".5"]))
    elif kind == "exponent":
        body = b"1e" + str(size).encode()
    elif kind == "surrogate":
        tail = st.sampled_from([b"800", b"c00", b"83d\\udc1d", b"83d\\u0041"]) | st.binary(
            max_size=7
        )
        body = b'"\\u' + draw(st.sampled_from([b"d", b"D", b""])) + draw(tail) + b'"'
    else:
        body = b'"' + b"[" * size + b'\\"' + b"{" * size + b'"'
    return b'{"type":"hello","x":' + body + b"}"


@st.composite
def frame_streams(draw: st.DrawFn) -> bytes:
    """Bytes a peer might send: good frames, mutated frames, hostile JSON, junk."""
    frames = []
    for _ in range(draw(st.integers(1, 3))):
        kind = draw(
            st.sampled_from(["seed", "mutated", "mutated", "hostile", "hostile", "json", "raw"])
        )
        if kind == "seed":
            frames.append(_frame_of(draw(st.sampled_from([m for s in SEEDS.values() for m in s]))))
        elif kind == "mutated":
            frames.append(_frame_of(draw(mutated_objects(draw(st.sampled_from(sorted(SEEDS)))))))
        elif kind == "hostile":
            payload = draw(hostile_payloads())
            frames.append(encode_uvarint(len(payload)) + payload)
        elif kind == "json":
            frames.append(_frame_of({"type": draw(TEXT), "x": draw(JSON_VALUES)}))
        else:
            frames.append(draw(st.binary(max_size=64)))
    data = bytearray(b"".join(frames))
    # byte-level damage: flips, inserts, deletions, a hostile length prefix
    for _ in range(draw(st.sampled_from([0, 0, 0, 1, 2, 3]))):
        action = draw(st.sampled_from(["flip", "insert", "json", "delete", "prefix", "truncate"]))
        pos = draw(st.integers(0, len(data)))
        if action == "flip" and pos < len(data):
            data[pos] ^= draw(st.integers(1, 255))
        elif action == "insert":
            data[pos:pos] = draw(st.binary(min_size=1, max_size=8))
        elif action == "json":  # what JSON's structure and escapes hang on
            data[pos:pos] = draw(st.sampled_from(JSON_PUNCTUATION))
        elif action == "delete":
            del data[pos : pos + draw(st.integers(1, 8))]
        elif action == "prefix":
            data[0:0] = draw(
                st.sampled_from([b"\x00", b"\x80\x00", b"\xff" * 10, encode_uvarint(1 << 40)])
            )
        else:
            del data[pos:]
    return bytes(data)


def cut_points(data_size: int) -> st.SearchStrategy[list[int]]:
    return st.lists(st.integers(0, data_size), max_size=6).map(sorted)


def chunks(data: bytes, cuts: list[int]) -> list[bytes]:
    edges = [0, *cuts, len(data)]
    return [data[a:b] for a, b in itertools.pairwise(edges)]


# -- targets ---------------------------------------------------------------------------------

FRAME_ERRORS = (FrameDecodeError, FrameTooLargeError)


def decode_frames(data: bytes, cuts: list[int], limits: FrameLimits = SMALL_LIMITS) -> str:
    """Feed ``data`` in pieces to a FrameDecoder, then EOF. Checks that feeding it whole
    gives the same outcome (frame boundaries must not depend on how bytes arrive)."""
    outcomes = []
    for pieces in (chunks(data, cuts), [data]):
        decoder = FrameDecoder(limits=limits)
        got: list[dict[str, Any]] = []
        try:
            for piece in pieces:
                got += decoder.feed(piece)
            decoder.check_eof()
            outcomes.append(("ok", len(got)))
        except FRAME_ERRORS as exc:
            outcomes.append((type(exc).__name__, -1))
    assert outcomes[0][0] == outcomes[1][0], f"chunked {outcomes[0]} but whole {outcomes[1]}"
    return outcomes[1][0]


def decode_object(codec_name: str, obj: dict[str, Any]) -> str:
    """Decode one frame object with a protocol's codec (as parsed from JSON, so within the
    default limits); a decoded message must survive being sent again unchanged."""
    codec = CODECS[codec_name]
    try:
        obj = parse_json(json.dumps(obj).encode())
    except FrameDecodeError as exc:
        return type(exc).__name__
    try:
        message = codec.decode(obj)
    except (UnknownMessageTypeError, MessageValidationError) as exc:
        assert "\n" not in exc.message, exc.message
        return type(exc).__name__
    again = codec.decode(FrameDecoder().feed(encode_frame(codec.encode(message)))[0])
    assert again == message
    return "ok"


async def _serve(data: bytes, chunk: int, codec_name: str, limits: FrameLimits) -> str:
    """What a responder does: receive until EOF; on bad input reply ``error`` and reset."""
    stream = MemoryStream(data, chunk=chunk)
    ms = MessageStream(stream, CODECS[codec_name], limits=limits)
    while True:
        try:
            message = await ms.receive(raise_errors=False)
        except StreamClosedError:
            return "eof"
        except RemoteProtocolError as exc:
            assert not isinstance(exc, PeerErrorResponse)
            await ms.send_error(exc.code, exc.message)
            await ms.reset()
            # the reply is a well-formed, one-line error message
            reply = FrameDecoder().feed(bytes(stream.written))[-1]
            error = ErrorMessage.model_validate(reply)
            assert error.code == exc.code and "\n" not in error.message
            assert len(error.message) < 8192, len(error.message)
            return type(exc).__name__
        assert isinstance(message, ErrorMessage) or message.type != "error"


def serve_stream(
    data: bytes, chunk: int, codec_name: str, limits: FrameLimits = SMALL_LIMITS
) -> str:
    return trio.run(_serve, data, chunk, codec_name, limits)


@dataclass(frozen=True)
class Target:
    """A decoder under fuzzing: a strategy for its argument tuple and the call."""

    name: str
    strategy: st.SearchStrategy[tuple[Any, ...]]
    run: Callable[..., str]


@st.composite
def _stream_and_cuts(draw: st.DrawFn) -> tuple[bytes, list[int]]:
    data = draw(frame_streams() | st.binary(max_size=256))
    return data, draw(cut_points(len(data)))


TARGETS: list[Target] = [
    Target("frame-decoder", _stream_and_cuts(), decode_frames),
    *(
        Target(f"codec-{name}", st.tuples(st.just(name), mutated_objects(name)), decode_object)
        for name in CODECS
    ),
    *(
        Target(
            f"stream-{name}",
            st.tuples(frame_streams(), st.integers(1, 4096), st.just(name)),
            serve_stream,
        )
        for name in CODECS
    ),
]
