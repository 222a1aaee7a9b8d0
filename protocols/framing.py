"""Sans-I/O frame codec shared by every hivemesh protocol.

A frame is an unsigned LEB128 varint length followed by that many bytes of UTF-8 JSON.
The JSON must be an object with a string ``type`` field. Length 0 is invalid. What a
receiver accepts is bounded by :class:`~protocols.limits.FrameLimits`.
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any

from protocols.boundedjson import parse_json
from protocols.errors import FrameDecodeError, FrameTooLargeError, LocalProtocolError
from protocols.limits import DEFAULT_LIMITS, DEFAULT_MAX_FRAME_SIZE, FrameLimits

__all__ = [
    "DEFAULT_MAX_FRAME_SIZE",
    "MAX_VARINT_BYTES",
    "FrameDecoder",
    "FrameLimits",
    "FrameMeter",
    "decode_payload",
    "decode_uvarint",
    "encode_frame",
    "encode_payload",
    "encode_uvarint",
    "resolve_limits",
]

MAX_VARINT_BYTES = 9  # enough for 2**63 - 1; longer is garbage


def encode_uvarint(value: int) -> bytes:
    if value < 0:
        raise LocalProtocolError("varint must be non-negative")
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def decode_uvarint(buf: bytes | bytearray, pos: int = 0) -> tuple[int, int] | None:
    """Decode a varint at ``pos``; return ``(value, next_pos)`` or None if incomplete."""
    value = 0
    shift = 0
    for i in range(MAX_VARINT_BYTES):
        if pos + i >= len(buf):
            return None
        byte = buf[pos + i]
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            if i > 0 and byte == 0:
                raise FrameDecodeError("non-minimal varint length prefix")
            return value, pos + i + 1
        shift += 7
    raise FrameDecodeError(f"varint length prefix longer than {MAX_VARINT_BYTES} bytes")


def encode_payload(message: dict[str, Any]) -> bytes:
    if not isinstance(message.get("type"), str):
        raise LocalProtocolError("every message needs a string 'type' field")
    try:
        # allow_nan=False: NaN and Infinity are not JSON, every receiver would refuse them
        text = json.dumps(message, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
        return text.encode("utf-8")
    except (ValueError, TypeError, RecursionError) as exc:  # UnicodeEncodeError: a surrogate
        raise LocalProtocolError(
            f"message of type {message['type']!r:.80} cannot be sent as JSON: {exc}"
        ) from None


def encode_frame(message: dict[str, Any], max_frame_size: int = DEFAULT_MAX_FRAME_SIZE) -> bytes:
    payload = encode_payload(message)
    if len(payload) > max_frame_size:
        raise LocalProtocolError(
            f"message of type {message['type']!r} is {len(payload)} bytes, "
            f"over the frame limit of {max_frame_size}"
        )
    return encode_uvarint(len(payload)) + payload


def resolve_limits(max_frame_size: int | None, limits: FrameLimits | None) -> FrameLimits:
    """``limits`` (default :data:`DEFAULT_LIMITS`), with ``max_frame_size`` if one is given."""
    limits = DEFAULT_LIMITS if limits is None else limits
    if max_frame_size is None or max_frame_size == limits.max_frame_size:
        return limits
    return dataclasses.replace(limits, max_frame_size=max_frame_size)


def decode_payload(payload: bytes, limits: FrameLimits = DEFAULT_LIMITS) -> dict[str, Any]:
    """The message object of one frame's payload, or a :class:`FrameDecodeError`."""
    obj = parse_json(payload, limits)
    if not isinstance(obj, dict):
        raise FrameDecodeError(f"frame is JSON {type(obj).__name__}, expected an object")
    if not isinstance(obj.get("type"), str):
        raise FrameDecodeError("frame has no string 'type' field")
    return obj


class FrameDecoder:
    """Incremental decoder: ``feed`` bytes, get complete message objects.

    ``limits`` bounds every frame (default :data:`~protocols.limits.DEFAULT_LIMITS`);
    ``max_frame_size``, if given, replaces its frame size. After an error the decoder is
    unusable (the stream must be reset).
    """

    def __init__(
        self, max_frame_size: int | None = None, *, limits: FrameLimits | None = None
    ) -> None:
        self.limits = resolve_limits(max_frame_size, limits)
        self.max_frame_size = self.limits.max_frame_size
        self._buf = bytearray()
        self._broken = False

    @property
    def buffered(self) -> int:
        return len(self._buf)

    def feed(self, data: bytes) -> list[dict[str, Any]]:
        if self._broken:
            raise FrameDecodeError("decoder already failed")
        self._buf += data
        out: list[dict[str, Any]] = []
        try:
            while True:
                header = decode_uvarint(self._buf)
                if header is None:
                    break
                length, start = header
                if length == 0:
                    raise FrameDecodeError("zero-length frame")
                if length > self.max_frame_size:
                    raise FrameTooLargeError(
                        f"frame of {length} bytes exceeds the limit of {self.max_frame_size}"
                    )
                if len(self._buf) < start + length:
                    break
                payload = bytes(self._buf[start : start + length])
                del self._buf[: start + length]
                out.append(decode_payload(payload, self.limits))
        except Exception:
            self._broken = True
            raise
        return out

    def check_eof(self) -> None:
        """Call at end of stream: a partial frame left over is an error."""
        if self._buf:
            raise FrameDecodeError(f"stream ended inside a frame ({len(self._buf)} bytes pending)")


class FrameMeter:
    """Counts, in a byte stream read as frames, the bytes of the frame not yet complete
    (its prefix and the payload so far), without keeping them.

    A reader that hands every byte to a :class:`FrameDecoder` holds exactly that many bytes
    in it; a node bounds them per peer and in total. Garbage in a prefix (too long a varint)
    stops the count: the decoder refuses the frame anyway."""

    def __init__(self) -> None:
        self.pending = 0
        self._remaining = 0  # payload bytes of the current frame still to come
        self._value = 0
        self._shift = 0
        self._prefix_len = 0
        self._broken = False

    def feed(self, data: bytes) -> int:
        """Account for ``data`` (the next bytes read); returns :attr:`pending`."""
        pos, end = 0, len(data)
        while pos < end and not self._broken:
            if self._remaining:
                take = min(self._remaining, end - pos)
                pos += take
                self._remaining -= take
                self.pending = 0 if not self._remaining else self.pending + take
                continue
            byte = data[pos]
            pos += 1
            self.pending += 1
            self._prefix_len += 1
            self._value |= (byte & 0x7F) << self._shift
            self._shift += 7
            if not byte & 0x80:
                self._remaining, self._value, self._shift, self._prefix_len = self._value, 0, 0, 0
                if not self._remaining:  # a zero-length frame: the decoder refuses it
                    self.pending = 0
            elif self._prefix_len >= MAX_VARINT_BYTES:
                self._broken = True
        return self.pending
