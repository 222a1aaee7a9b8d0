"""The handoff responder (the real HandoffServer over an in-memory stream) against bad
input: every framing error gets its typed ``error`` reply and a reset, and one log line;
peer-supplied strings never forge a log line (issue 9: a newline in a handoff_id did)."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pytest

from node.config import HandoffConfig, NetworkConfig
from node.handoff.journal import AsyncHandoffJournal, HandoffJournal
from node.handoff.server import HandoffServer
from protocols.framing import DEFAULT_MAX_FRAME_SIZE, FrameDecoder, encode_frame, encode_uvarint
from tests.unit.memory_stream import MemoryStream
from workflows.tools import ToolRegistry

PEER = "12D3KooWA1111111111111111111111111111111111111111111"
FORGED = "h1\n2026-01-01 12:00:00 INFO node.handoff.server: handoff h2 accepted\r\x1b[2K"


class PeerStream(MemoryStream):
    remote_peer = PEER


async def _never_called(*args: Any) -> dict[str, Any]:
    raise AssertionError("no tool may run")


def server(tmp_path: Path) -> HandoffServer:
    journal = AsyncHandoffJournal(HandoffJournal(tmp_path / "handoffs.db"))
    return HandoffServer(
        ToolRegistry(),
        _never_called,
        journal,
        NetworkConfig(),
        HandoffConfig(allow=[]),
        peer_id="12D3KooWBsa4ZrY9mNuLpxoQ7Lq2cfXt5hdeF7b3PkWgsmcR8Y1z",
        sign=lambda data: "",
        slots=1,
    )


def log_lines(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [line for r in caplog.records for line in r.getMessage().splitlines()]


async def test_a_rejected_offer_logs_its_handoff_id_on_one_line(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    offer = {
        "type": "offer",
        "handoff_id": FORGED,
        "workflow_id": "wf",
        "step": "s",
        "tool": "text.upper",
        "deadline_ms": 1000,
    }
    stream = PeerStream(encode_frame(offer))
    with caplog.at_level(logging.INFO, logger="node"):
        await server(tmp_path).handle(stream)  # type: ignore[arg-type]
    (reply,) = FrameDecoder().feed(bytes(stream.written))
    assert (reply["type"], reply["code"]) == ("reject", "not_authorised")
    lines = log_lines(caplog)
    assert len(lines) == 1, lines
    assert "rejected handoff h1\\n2026-01-01" in lines[0] and "\\x1b[2K" in lines[0]


async def test_a_frame_breaking_a_limit_gets_bad_frame_and_one_log_line(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    payload = b'{"type":"offer","x":' + b"[" * 100_000 + b"]" * 100_000 + b"}"
    stream = PeerStream(encode_uvarint(len(payload)) + payload)
    with caplog.at_level(logging.INFO, logger="node"):
        await server(tmp_path).handle(stream)  # type: ignore[arg-type]
    (reply,) = FrameDecoder().feed(bytes(stream.written))
    assert reply["type"] == "error" and reply["code"] == "bad_frame"
    assert "nests deeper than the limit of 32 levels" in reply["message"]
    assert stream.was_reset
    lines = log_lines(caplog)
    assert len(lines) == 1 and PEER in lines[0], lines
    assert not any(r.exc_info for r in caplog.records)


def raw(payload: bytes) -> bytes:
    return encode_uvarint(len(payload)) + payload


@pytest.mark.parametrize(
    ("inbound", "code", "says"),
    [
        (raw(b"nope"), "bad_frame", "not JSON"),
        (raw(b"\xff\xfe{}"), "bad_frame", "not UTF-8"),
        (encode_uvarint(DEFAULT_MAX_FRAME_SIZE + 1), "frame_too_large", "exceeds the limit"),
        (encode_frame({"type": "hello", "card": {}}), "unknown_type", "unknown handoff message"),
        (encode_frame({"type": "accept", "handoff_id": "h"})[:-3], "bad_frame", "inside a frame"),
        (b"\x80\x00", "bad_frame", "non-minimal"),
        (b"\x00", "bad_frame", "zero-length"),
        (b"\xff" * 10, "bad_frame", "longer than 9 bytes"),
        (raw(b'{"type":"offer","x":' + b"9" * 100_000 + b"}"), "bad_frame", "64 digits"),
        (raw(b'{"type":"offer","x":1e999}'), "bad_frame", "float range"),
        (encode_frame({"type": "offer", "handoff_id": "h"}), "invalid_message", "Field required"),
        (b"", "stream_closed", "closed"),
    ],
)
async def test_bad_input_gets_its_error_reply_a_reset_and_one_log_line(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, inbound: bytes, code: str, says: str
) -> None:
    stream = PeerStream(inbound)
    with caplog.at_level(logging.INFO, logger="node"):
        await server(tmp_path).handle(stream)  # type: ignore[arg-type]
    (reply,) = FrameDecoder().feed(bytes(stream.written))
    assert (reply["type"], reply["code"]) == ("error", code)
    assert says in reply["message"] and "\n" not in reply["message"]
    assert stream.was_reset
    lines = log_lines(caplog)
    assert len(lines) == 1 and PEER in lines[0], lines
    assert not any(r.exc_info for r in caplog.records)
