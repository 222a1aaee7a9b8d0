"""Peer-supplied strings never forge a log line on the node (issue 9: a newline in a
peer's handoff_id did)."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pytest

from node.config import HandoffConfig, NetworkConfig
from node.handoff.journal import AsyncHandoffJournal, HandoffJournal
from node.handoff.server import HandoffServer
from protocols.framing import FrameDecoder, encode_frame, encode_uvarint
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
        ToolRegistry(), _never_called, journal, NetworkConfig(), HandoffConfig(allow=[])
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
