"""Errors of the wire protocols.

::

    ProtocolError                     root of everything in ``protocols``
    ├── LocalProtocolError            we tried to send something invalid (our bug)
    └── RemoteProtocolError           the peer sent something we reject
        ├── FrameTooLargeError        a frame's declared length exceeds the limit
        ├── FrameDecodeError          truncated frame, bad varint, not UTF-8 JSON object
        ├── UnknownMessageTypeError   a well-formed frame whose ``type`` we do not know here
        ├── MessageValidationError    a known ``type`` whose fields are invalid
        ├── StreamClosedError         the stream ended before the final message
        ├── PeerErrorResponse         the peer answered with an ``error`` message
        └── ProtocolTimeoutError      no frame within the allowed time: outcome unknown

Every error carries a ``code`` that is also used on the wire in ``error`` messages.
"""

from __future__ import annotations


class ProtocolError(Exception):
    """Root of all protocol errors."""

    code = "protocol_error"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class LocalProtocolError(ProtocolError):
    """We were about to send something the protocol does not allow."""

    code = "local_error"


class RemoteProtocolError(ProtocolError):
    """The remote side sent something we cannot accept."""

    code = "bad_frame"


class FrameTooLargeError(RemoteProtocolError):
    code = "frame_too_large"


class FrameDecodeError(RemoteProtocolError):
    code = "bad_frame"


class UnknownMessageTypeError(RemoteProtocolError):
    code = "unknown_type"


class MessageValidationError(RemoteProtocolError):
    code = "invalid_message"


class StreamClosedError(RemoteProtocolError):
    """The stream closed or was reset before the message we waited for.

    On yamux a peer that died looks like a clean close, so this never means success.
    """

    code = "stream_closed"


class ProtocolTimeoutError(RemoteProtocolError):
    """Nothing arrived in time. The outcome of the request is unknown."""

    code = "timeout"


class PeerErrorResponse(RemoteProtocolError):
    """The peer replied with an ``error`` message (``code`` is the peer's code)."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
