"""The sans-I/O frame codec: varint length prefix + UTF-8 JSON object with a string ``type``."""

from __future__ import annotations

import json
from typing import Any

import pytest

from protocols.errors import (
    FrameDecodeError,
    FrameTooLargeError,
    LocalProtocolError,
    RemoteProtocolError,
)
from protocols.framing import (
    DEFAULT_MAX_FRAME_SIZE,
    MAX_VARINT_BYTES,
    FrameDecoder,
    decode_payload,
    decode_uvarint,
    encode_frame,
    encode_payload,
    encode_uvarint,
)

MESSAGES: list[dict[str, Any]] = [
    {"type": "hello", "card": {"peer_id": "12D3KooW", "version": "0.1.0"}, "peers": []},
    {"type": "offer", "handoff_id": "wf/step#1", "args": {"text": "grüße 你好 🐝"}},
    {"type": "heartbeat", "handoff_id": "h", "elapsed_ms": 1000},
    {"type": "é"},
]


def stream_of(messages: list[dict[str, Any]]) -> bytes:
    return b"".join(encode_frame(m) for m in messages)


def raw_frame(payload: bytes) -> bytes:
    """A frame around arbitrary bytes (bypassing the encoder's checks)."""
    return encode_uvarint(len(payload)) + payload


# -- varints ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "encoded"),
    [
        (0, b"\x00"),
        (1, b"\x01"),
        (127, b"\x7f"),
        (128, b"\x80\x01"),
        (300, b"\xac\x02"),
        (16383, b"\xff\x7f"),
        (16384, b"\x80\x80\x01"),
        (DEFAULT_MAX_FRAME_SIZE, b"\x80\x80\x80\x02"),
        (2**63 - 1, b"\xff" * 8 + b"\x7f"),
    ],
)
def test_uvarint_known_encodings(value: int, encoded: bytes) -> None:
    assert encode_uvarint(value) == encoded
    assert decode_uvarint(encoded) == (value, len(encoded))


def test_uvarint_decodes_at_an_offset_and_reports_the_next_position() -> None:
    buf = b"junk" + b"\xac\x02" + b"rest"
    assert decode_uvarint(buf, 4) == (300, 6)


@pytest.mark.parametrize("partial", [b"", b"\x80", b"\xff\xff", b"\x80" * (MAX_VARINT_BYTES - 1)])
def test_incomplete_uvarint_waits_for_more(partial: bytes) -> None:
    assert decode_uvarint(partial) is None


def test_negative_uvarint_is_a_local_error() -> None:
    with pytest.raises(LocalProtocolError):
        encode_uvarint(-1)


@pytest.mark.parametrize("encoded", [b"\x80\x00", b"\x81\x00", b"\xff\x80\x00", b"\x80\x80\x00"])
def test_non_minimal_uvarint_is_rejected(encoded: bytes) -> None:
    with pytest.raises(FrameDecodeError, match="non-minimal"):
        decode_uvarint(encoded)


def test_uvarint_longer_than_nine_bytes_is_rejected() -> None:
    with pytest.raises(FrameDecodeError, match=f"longer than {MAX_VARINT_BYTES} bytes"):
        decode_uvarint(b"\xff" * MAX_VARINT_BYTES + b"\x01")


# -- round trips -----------------------------------------------------------------------------


@pytest.mark.parametrize("message", MESSAGES)
def test_frame_round_trip(message: dict[str, Any]) -> None:
    frame = encode_frame(message)
    decoder = FrameDecoder()
    assert decoder.feed(frame) == [message]
    assert decoder.buffered == 0
    decoder.check_eof()


def test_length_prefix_counts_utf8_bytes_not_characters() -> None:
    message = {"type": "t", "text": "🐝" * 10}
    frame = encode_frame(message)
    payload = json.dumps(message, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
    assert frame == encode_uvarint(len(payload)) + payload
    assert "🐝".encode() in frame  # sent as UTF-8, not as \\u escapes


def test_payload_is_compact_json() -> None:
    assert encode_payload({"type": "x", "a": [1, 2]}) == b'{"type":"x","a":[1,2]}'


def test_several_frames_in_one_feed() -> None:
    assert FrameDecoder().feed(stream_of(MESSAGES)) == MESSAGES


def test_split_at_every_byte_boundary() -> None:
    data = stream_of(MESSAGES)
    for cut in range(len(data) + 1):
        decoder = FrameDecoder()
        got = decoder.feed(data[:cut]) + decoder.feed(data[cut:])
        assert got == MESSAGES, f"cut at byte {cut}"
        decoder.check_eof()


def test_byte_by_byte_feed() -> None:
    data = stream_of(MESSAGES)
    decoder = FrameDecoder()
    got: list[dict[str, Any]] = []
    for i in range(len(data)):
        got += decoder.feed(data[i : i + 1])
    assert got == MESSAGES
    assert decoder.buffered == 0


def test_partial_frame_is_buffered_until_complete() -> None:
    frame = encode_frame(MESSAGES[1])
    decoder = FrameDecoder()
    assert decoder.feed(frame[:-1]) == []
    assert decoder.buffered == len(frame) - 1
    assert decoder.feed(frame[-1:]) == [MESSAGES[1]]


def test_frame_exactly_at_the_limit_is_accepted() -> None:
    message = {"type": "t", "pad": ""}
    size = len(encode_payload(message))
    frame = encode_frame(message, max_frame_size=size)
    assert FrameDecoder(max_frame_size=size).feed(frame) == [message]


# -- rejections ------------------------------------------------------------------------------


def test_oversized_frame_is_rejected_as_soon_as_the_header_arrives() -> None:
    decoder = FrameDecoder(max_frame_size=100)
    with pytest.raises(FrameTooLargeError, match="101 bytes exceeds the limit of 100"):
        decoder.feed(encode_uvarint(101))  # no body yet


def test_oversized_frame_after_a_good_one() -> None:
    good = encode_frame({"type": "ok"})
    decoder = FrameDecoder(max_frame_size=100)
    with pytest.raises(FrameTooLargeError):
        decoder.feed(good + encode_uvarint(10_000))


def test_default_limit_is_4_mib() -> None:
    assert DEFAULT_MAX_FRAME_SIZE == 4 * 1024 * 1024
    FrameDecoder().feed(encode_uvarint(DEFAULT_MAX_FRAME_SIZE))  # header only: fine
    with pytest.raises(FrameTooLargeError):
        FrameDecoder().feed(encode_uvarint(DEFAULT_MAX_FRAME_SIZE + 1))


@pytest.mark.parametrize(
    "pending",
    [
        b"\x05",  # a header and no body
        b'\x05{"ty',  # part of a body
        b"\x80",  # part of a header
    ],
)
def test_truncated_frame_at_eof(pending: bytes) -> None:
    decoder = FrameDecoder()
    assert decoder.feed(pending) == []
    with pytest.raises(FrameDecodeError, match="stream ended inside a frame"):
        decoder.check_eof()


def test_clean_eof_after_complete_frames() -> None:
    decoder = FrameDecoder()
    decoder.feed(stream_of(MESSAGES))
    decoder.check_eof()  # nothing pending: no error


@pytest.mark.parametrize(
    ("payload", "match"),
    [
        (b"\xff\xfe{}", "not UTF-8"),
        (b'{"type":"x","t":"\xc3"}', "not UTF-8"),  # truncated multi-byte sequence
        (b"hello", "not JSON"),
        (b'{"type":"x"', "not JSON"),
        (b'["type", "x"]', "JSON list, expected an object"),
        (b'"hello"', "JSON str, expected an object"),
        (b"42", "JSON int, expected an object"),
        (b"null", "JSON NoneType, expected an object"),
        (b"{}", "no string 'type'"),
        (b'{"kind":"hello"}', "no string 'type'"),
        (b'{"type":1}', "no string 'type'"),
        (b'{"type":null}', "no string 'type'"),
        (b'{"type":["hello"]}', "no string 'type'"),
    ],
)
def test_garbage_payload_is_rejected(payload: bytes, match: str) -> None:
    with pytest.raises(FrameDecodeError, match=match):
        FrameDecoder().feed(raw_frame(payload))
    with pytest.raises(FrameDecodeError):
        decode_payload(payload)


def test_zero_length_frame_is_rejected() -> None:
    with pytest.raises(FrameDecodeError, match="zero-length frame"):
        FrameDecoder().feed(b"\x00")


def test_non_minimal_length_prefix_in_a_stream_is_rejected() -> None:
    payload = b'{"type":"x"}'
    with pytest.raises(FrameDecodeError, match="non-minimal"):
        FrameDecoder().feed(bytes([0x80 | len(payload), 0x00]) + payload)


def test_over_long_length_prefix_in_a_stream_is_rejected() -> None:
    with pytest.raises(FrameDecodeError, match="longer than"):
        FrameDecoder().feed(b"\x80" * 10)


def test_decoder_is_unusable_after_an_error() -> None:
    decoder = FrameDecoder()
    with pytest.raises(FrameDecodeError):
        decoder.feed(raw_frame(b"not json"))
    with pytest.raises(FrameDecodeError, match="already failed"):
        decoder.feed(encode_frame({"type": "ok"}))


def test_decoder_is_unusable_after_an_oversized_frame() -> None:
    decoder = FrameDecoder(max_frame_size=10)
    with pytest.raises(FrameTooLargeError):
        decoder.feed(encode_uvarint(11))
    with pytest.raises(FrameDecodeError, match="already failed"):
        decoder.feed(b"")


def test_frames_before_the_bad_one_are_lost_with_the_error() -> None:
    """The stream is reset on error, so nothing decoded in the same feed is delivered."""
    decoder = FrameDecoder()
    with pytest.raises(FrameDecodeError):
        decoder.feed(encode_frame({"type": "ok"}) + b"\x00")


def test_remote_errors_carry_their_wire_codes() -> None:
    assert issubclass(FrameTooLargeError, RemoteProtocolError)
    assert issubclass(FrameDecodeError, RemoteProtocolError)
    assert FrameTooLargeError.code == "frame_too_large"
    assert FrameDecodeError.code == "bad_frame"


# -- encoder refusals ------------------------------------------------------------------------


def test_encode_frame_refuses_a_message_over_the_limit() -> None:
    message = {"type": "big", "data": "x" * 100}
    with pytest.raises(LocalProtocolError, match=r"'big' is \d+ bytes, over the frame limit of 50"):
        encode_frame(message, max_frame_size=50)


@pytest.mark.parametrize("message", [{}, {"type": 1}, {"type": None}, {"kind": "hello"}])
def test_encode_refuses_a_message_without_a_string_type(message: dict[str, Any]) -> None:
    with pytest.raises(LocalProtocolError, match="string 'type'"):
        encode_frame(message)


@pytest.mark.parametrize(
    ("value", "match"),
    [
        (float("nan"), "Out of range float"),
        (float("inf"), "Out of range float"),
        ("\ud800", "surrogate"),
    ],
)
def test_encode_refuses_what_is_not_json_or_not_utf8(value: Any, match: str) -> None:
    with pytest.raises(LocalProtocolError, match=match):
        encode_frame({"type": "t", "x": value})
