"""Decode time of frames before and after the JSON bounds, and time to refuse hostile ones.

    .venv/bin/python scripts/bench/frames.py            # about a minute
    .venv/bin/python scripts/bench/frames.py --rounds 3 # quicker, noisier

"before" is the frame decoder as it was until the bounds came (its loop copied here:
buffer, varint, ``json.loads``), then the protocol's codec (pydantic). "after" is today's
FrameDecoder (the bounds, then ``json.loads``) and the same codec. Both are fed the frame
in 64 KiB reads, as MessageStream does. Times are CPU time of this process
(``time.process_time``), so other load on a shared machine disturbs them less; each figure
is the best of ``--rounds`` rounds, the two alternating.
The hostile frames are each decoded once after a warm-up, with the time to the typed
error and the peak of Python allocations.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import sys
import time
import tracemalloc
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent.parent))

from protocols import control, discovery, handoff
from protocols.errors import FrameDecodeError, FrameLimitError, ProtocolError
from protocols.framing import (
    FrameDecoder,
    decode_uvarint,
    encode_frame,
    encode_uvarint,
)
from protocols.limits import FrameLimits
from protocols.wire import MessageCodec

READ = 64 * 1024
MIB = 1024 * 1024
LIMIT = 8 * MIB  # room for the 4 MiB frames' envelope
LIMITS = FrameLimits(max_frame_size=LIMIT)  # and the default JSON limits
PEER = "12D3KooWSqxmF1xRXdLBiRewJcA6oH3E3xKy4rs42HZyAXXEyKRg"


def _result_text() -> dict[str, Any]:
    line = 'a line of tool output, with "quotes", digits 12345 and é\n'
    text = line * (4 * MIB // len(line.encode()) - 1)
    return {
        "type": "result",
        "handoff_id": "wf/step@peer",
        "outputs": {"text": text},
        "duration_ms": 1234,
    }


def _result_records() -> dict[str, Any]:
    rows = [
        {"id": i, "name": f"item {i}", "score": i / 7, "tags": ["a", "b"], "ok": i % 2 == 0}
        for i in range(48_000)
    ]
    return {
        "type": "result",
        "handoff_id": "wf/step@peer",
        "outputs": {"rows": rows},
        "duration_ms": 1234,
    }


def _hello() -> dict[str, Any]:
    schema = {
        "type": "object",
        "properties": {"text": {"type": "string"}, "n": {"type": "integer", "minimum": 0}},
        "required": ["text"],
    }
    tools = [
        {
            "name": f"tool.t{i}",
            "version": "1.0.0",
            "description": "does a thing",
            "input_schema": schema,
            "output_schema": {"type": "object"},
        }
        for i in range(16)
    ]
    card = {
        "peer_id": PEER,
        "addrs": [f"/ip4/127.0.0.1/tcp/4001/p2p/{PEER}"],
        "version": "0.1.0",
        "tools": tools,
        "load": {"running": 1, "capacity": 4},
        "ttl_s": 30.0,
    }
    peers = [
        {"peer_id": PEER, "addrs": [f"/ip4/10.0.{i // 250}.{i % 250}/tcp/4001/p2p/{PEER}"]}
        for i in range(256)
    ]
    return {"type": "hello", "card": card, "peers": peers}


def _status() -> dict[str, Any]:
    steps = [
        {
            "name": f"step{i}",
            "tool": "text.upper",
            "status": "SUCCESSFUL",
            "node": PEER,
            "reason": "remote: this node does not offer it; peer 12D3KooW…yAXXEyKRg is the "
            "only peer offering text.upper 1.0.0",
            "error": None,
            "attempts": 1,
            "started_at": 1718000000.15 + i,
            "ended_at": 1718000001.55 + i,
        }
        for i in range(1000)
    ]
    return {
        "type": "status",
        "workflow_id": "wf-1",
        "name": "big",
        "status": "RUNNING",
        "error": None,
        "created_at": 1718000000.0,
        "ended_at": None,
        "steps": steps,
    }


HONEST: list[tuple[str, dict[str, Any], MessageCodec[Any]]] = [
    ("handoff result, 4 MiB text", _result_text(), handoff.CODEC),
    ("handoff result, 48k records", _result_records(), handoff.CODEC),
    ("hello, 256 peers, 16 tools", _hello(), discovery.CODEC),
    ("control status, 1000 steps", _status(), control.RESPONSE_CODEC),
    (
        "heartbeat",
        {"type": "heartbeat", "handoff_id": "wf/step@peer", "elapsed_ms": 1000},
        handoff.CODEC,
    ),
]


def _hostile() -> list[tuple[str, bytes]]:
    def wrap(body: bytes) -> bytes:
        return b'{"type":"hello","x":' + body + b"}"

    fill = 4 * MIB - 64
    deep_unit = b"[" * 30 + b"0" + b"]" * 30 + b","
    return [
        ("nesting 100,000 deep", wrap(b"[" * 100_000 + b"]" * 100_000)),
        ("nesting 1,000,000 deep, unclosed", wrap(b'{"a":' * 200_000)),
        ("100,000-digit integer", wrap(b"9" * 100_000)),
        ("4 MiB-digit integer", wrap(b"9" * fill)),
        ("1e999", wrap(b"1e999")),
        ("2M-member array", wrap(b"[" + b"0," * (fill // 2) + b"0]")),
        ("1.4M empty objects", wrap(b"[" + b"{}," * (fill // 3) + b"{}]")),
        ("4 MiB of depth-31 arrays", wrap(b"[" + deep_unit * (fill // len(deep_unit)) + b"0]")),
        (
            "...and one depth-33 at the end",
            wrap(b"[" + deep_unit * (fill // len(deep_unit) - 1) + b"[" * 33 + b"]" * 33 + b"]"),
        ),
        ("lone surrogate after 4 MiB", wrap(b'"' + b"x" * fill + b'\\ud800"')),
        # the exact scan's worst cases: the problem at the end, all bounds kept before it
        (
            "199,000 containers deep, then depth 33",
            wrap(
                b"["
                + deep_unit * 6_400
                + b'"'
                + b"x" * (fill - 400_000)
                + b'",'
                + b"[" * 33
                + b"]" * 33
                + b"]"
            ),
        ),
        (
            "4 MiB of 99,999-float arrays, then 100,001",
            wrap(
                b"[" + (b"[" + b"1.5," * 99_998 + b"1.5],") * 10 + b"[" + b"0," * 100_000 + b"0]]"
            ),
        ),
    ]


class OldFrameDecoder:
    """The frame decoder as it was before the JSON bounds (protocols/framing.py at 745f3ca):
    the same buffering and varint checks, then ``json.loads`` straight away."""

    def __init__(self, max_frame_size: int) -> None:
        self.max_frame_size = max_frame_size
        self._buf = bytearray()

    def feed(self, data: bytes) -> list[dict[str, Any]]:
        self._buf += data
        out: list[dict[str, Any]] = []
        while True:
            header = decode_uvarint(self._buf)
            if header is None:
                break
            length, start = header
            if length == 0 or length > self.max_frame_size:
                raise FrameDecodeError("bad length")
            if len(self._buf) < start + length:
                break
            payload = bytes(self._buf[start : start + length])
            del self._buf[: start + length]
            obj = json.loads(payload.decode("utf-8"), parse_constant=_reject_constant)
            if not isinstance(obj, dict) or not isinstance(obj.get("type"), str):
                raise FrameDecodeError("not a message")
            out.append(obj)
        return out


def _reject_constant(name: str) -> Any:
    raise FrameDecodeError(f"frame contains {name}")


def before(frame: bytes, codec: MessageCodec[Any]) -> Any:
    decoder = OldFrameDecoder(LIMIT)
    out: list[dict[str, Any]] = []
    for i in range(0, len(frame), READ):
        out += decoder.feed(frame[i : i + READ])
    return codec.decode(out[0])


def after(frame: bytes, codec: MessageCodec[Any]) -> Any:
    decoder = FrameDecoder(limits=LIMITS)
    out: list[dict[str, Any]] = []
    for i in range(0, len(frame), READ):
        out += decoder.feed(frame[i : i + READ])
    return codec.decode(out[0])


def best_pair(
    first: Callable[[], Any], second: Callable[[], Any], rounds: int, budget_s: float = 0.2
) -> tuple[float, float]:
    """Best per-call CPU time of each over ``rounds`` rounds of about ``budget_s``, the two
    alternating so that drift of the machine's speed affects both alike."""
    first()
    second()
    start = time.process_time()
    first()
    calls = max(1, int(budget_s / max(time.process_time() - start, 1e-7)))
    times: tuple[list[float], list[float]] = ([], [])
    for _ in range(rounds):
        for fn, out in ((first, times[0]), (second, times[1])):
            start = time.process_time()
            for _ in range(calls):
                fn()
            out.append((time.process_time() - start) / calls)
    return min(times[0]), min(times[1])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=7)
    args = parser.parse_args()

    print(f"honest frames (ms per frame, best of {args.rounds} rounds)")
    print(f"{'frame':32s} {'bytes':>9s} {'before':>9s} {'after':>9s} {'change':>8s}")
    for name, message, codec in HONEST:
        frame = encode_frame(message, LIMIT)
        assert before(frame, codec) == after(frame, codec)
        b, a = best_pair(
            functools.partial(before, frame, codec),
            functools.partial(after, frame, codec),
            args.rounds,
        )
        print(f"{name:32s} {len(frame):9d} {b * 1e3:9.3f} {a * 1e3:9.3f} {(a / b - 1):+8.1%}")

    print("\nhostile frames (default limits; time to the typed error, peak Python memory)")
    # compile the exact scans' patterns (once per process) outside the timings
    for body in (b"[" * 40, b"9" * 80, b"[" + b"0," * 200_000 + b"0]", b"[[]," * 200_001 + b"0]"):
        warm = b'{"type":"warm","x":' + body + b"}"
        with contextlib.suppress(ProtocolError):
            FrameDecoder(limits=LIMITS).feed(encode_uvarint(len(warm)) + warm)
    for name, payload in _hostile():
        frame = encode_uvarint(len(payload)) + payload
        tracemalloc.start()
        start = time.process_time()
        try:
            FrameDecoder(limits=LIMITS).feed(frame)
            outcome = "accepted"
        except FrameLimitError as exc:
            outcome = f"{type(exc).__name__} ({exc.bound}, byte {exc.offset})"
        except FrameDecodeError as exc:
            outcome = f"FrameDecodeError: {exc.message[:60]}"
        except ProtocolError as exc:
            outcome = type(exc).__name__
        elapsed = time.process_time() - start
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        print(
            f"  {name:34s} {len(payload) / MIB:5.2f} MiB {elapsed * 1e3:8.1f} ms "
            f"peak {peak / MIB:6.1f} MiB  {outcome}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
