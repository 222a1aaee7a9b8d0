"""Errors of the wire protocols.

::

    ProtocolError                     root of everything in ``protocols``
    ├── LocalProtocolError            we tried to send something invalid (our bug)
    └── RemoteProtocolError           the peer sent something we reject
        ├── FrameTooLargeError        a frame's declared length exceeds the limit
        ├── FrameDecodeError          truncated frame, bad varint, not UTF-8 JSON object
        │   └── FrameLimitError       the JSON breaks a bound of FrameLimits (before parsing)
        │       ├── NestingTooDeepError       arrays/objects nested deeper than max_depth
        │       ├── TooManyMembersError       an array/object with more than max_members
        │       ├── TooManyContainersError    more than max_containers arrays/objects in all
        │       ├── NumberTooLongError        a digit run longer than max_number_digits
        │       └── NumberOutOfRangeError     a number beyond the 64-bit float range
        ├── UnknownMessageTypeError   a well-formed frame whose ``type`` we do not know here
        ├── MessageValidationError    a known ``type`` whose fields are invalid
        ├── StreamClosedError         the stream ended before the final message
        ├── PeerErrorResponse         the peer answered with an ``error`` message
        ├── PeerOverLimitError        the peer holds more of this node than it may at once
        └── ProtocolTimeoutError      no frame within the allowed time: outcome unknown

Every error carries a ``code`` that is also used on the wire in ``error`` messages.
"""

from __future__ import annotations

from protocols._logsafe import logsafe


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


class FrameLimitError(FrameDecodeError):
    """The frame's JSON breaks one of the receiver's :class:`~protocols.limits.FrameLimits`.

    Raised before the JSON is parsed. ``bound`` names the limit (as in FrameLimits),
    ``limit`` is its value and ``offset`` the byte of the payload where it was broken.
    """

    def __init__(self, message: str, *, bound: str, limit: int, offset: int) -> None:
        super().__init__(message)
        self.bound = bound
        self.limit = limit
        self.offset = offset


class NestingTooDeepError(FrameLimitError):
    pass


class TooManyMembersError(FrameLimitError):
    pass


class TooManyContainersError(FrameLimitError):
    pass


class NumberTooLongError(FrameLimitError):
    pass


class NumberOutOfRangeError(FrameLimitError):
    pass


class UnknownMessageTypeError(RemoteProtocolError):
    code = "unknown_type"


class MessageValidationError(RemoteProtocolError):
    code = "invalid_message"


class StreamClosedError(RemoteProtocolError):
    """The stream closed or was reset before the message we waited for.

    On yamux a peer that died looks like a clean close, so this never means success.
    """

    code = "stream_closed"


class ProtocolRefusedError(StreamClosedError):
    """The peer answered the stream's protocol proposal with something else than its echo
    (multistream-select's ``na``): it does not speak that protocol id. An opener may propose
    an older id of the protocol on a new stream (docs/protocols.md §3.1)."""


class PeerOverLimitError(RemoteProtocolError):
    """The peer holds more of this node than its limits allow at once (bytes of unfinished
    frames, per peer or of all peers together); the stream is reset (docs/security.md)."""

    code = "over_limit"


class ProtocolTimeoutError(RemoteProtocolError):
    """Nothing arrived in time. The outcome of the request is unknown."""

    code = "timeout"


class PeerErrorResponse(RemoteProtocolError):
    """The peer replied with an ``error`` message (``code`` is the peer's code).

    Both are the peer's text, so they are kept as :func:`~protocols.logsafe` makes them:
    one line, bounded, safe to log and to show.
    """

    def __init__(self, code: str, message: str) -> None:
        super().__init__(logsafe(message, 2048))
        self.code = logsafe(code, 64)
