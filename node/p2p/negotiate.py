"""Inbound multistream-select in one read, with the echo sent along with the first answer.

py-libp2p 0.8.1's listener (``Multiselect.negotiate``) writes the multistream header before it
has read anything, reads the dialer's header and proposal a varint byte at a time (a yamux
read each), and writes its echo of the protocol on its own: two frames out, each encrypted
and read back by the dialer, and a handful of reads for every inbound stream before the
handler runs. A dialer that negotiates lazily (hivemesh's own streams, go-libp2p's and
js-libp2p's when they propose one protocol) has already sent its header, its proposal and its
first message in one frame, and does not wait for the echoes.

:func:`negotiate` reads what is there, answers as multistream-select 1.0.0 requires, and when
the dialer's first message came with its proposal (so it is not waiting for the echo) leaves
the echo to go out with the handler's first write (:class:`node.p2p.host.P2PStream` sends it
then, or before a read that must wait, or at close or reset). A dialer that waits for each
answer gets each one as soon as it is due, as from py-libp2p. A stream that does not speak
multistream-select, sends a line over ``MAX_LINE`` or proposes more than ``MAX_PROPOSALS``
protocols is refused (``None``: the caller resets it).
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass
from typing import Any

import trio
from libp2p.protocol_muxer.multiselect import MULTISELECT_PROTOCOL_ID, PROTOCOL_NOT_FOUND_MSG
from libp2p.utils.varint import encode_delim

MAX_LINE = 1024  # a multistream-select line (protocol ids are short)
MAX_PROPOSALS = 16  # protocols a dialer may propose on one stream before one is accepted
READ_SIZE = 64 * 1024


@dataclass(frozen=True)
class Negotiated:
    """The protocol agreed on a stream, what the dialer sent after it (its first message, or
    a part of it: the handler reads it first), and the answer not yet written (``None``:
    written)."""

    protocol: str
    leftover: bytes
    unsent: bytes | None


class NegotiationError(Exception):
    """The stream does not speak multistream-select as it must."""


def _line(buffer: bytearray) -> str | None:
    """Take one complete varint-prefixed, newline-terminated line off ``buffer`` (None: it
    is not all there yet)."""
    length = shift = 0
    for i, byte in enumerate(buffer[:3]):  # MAX_LINE + 1 needs at most two varint bytes
        length |= (byte & 0x7F) << shift
        shift += 7
        if byte & 0x80:
            continue
        if length == 0 or length > MAX_LINE + 1:
            raise NegotiationError(f"multistream-select line of {length} bytes")
        end = i + 1 + length
        if len(buffer) < end:
            return None
        raw = bytes(buffer[i + 1 : end])
        del buffer[:end]
        if not raw.endswith(b"\n"):
            raise NegotiationError("multistream-select line without its newline")
        try:
            return raw[:-1].decode("utf-8")
        except UnicodeDecodeError:
            raise NegotiationError("multistream-select line that is not UTF-8") from None
    if len(buffer) >= 3:
        raise NegotiationError("multistream-select length prefix too long")
    return None


async def negotiate(
    stream: Any, protocols: Collection[str], *, timeout_s: float
) -> Negotiated | None:
    """Agree on one of ``protocols`` with the dialer of ``stream`` (a libp2p stream: ``read``
    and ``write``). None if the dialer closed the stream or went silent for ``timeout_s``
    before proposing one; :class:`NegotiationError` if it broke the protocol."""
    buffer = bytearray()
    unsent = b""

    async def flush() -> None:
        nonlocal unsent
        if unsent:
            await stream.write(unsent)
            unsent = b""

    async def next_line() -> str | None:
        while True:
            try:
                line = _line(buffer)
            except NegotiationError:
                # a lazy dialer's first message after a protocol refused here: it must
                # still read the "na" (and the header) to know why the stream ends
                await flush()
                raise
            if line is not None:
                return line
            await flush()  # the dialer may be waiting for it before it says more
            data = await stream.read(READ_SIZE)
            if not data:
                return None
            buffer.extend(data)

    with trio.move_on_after(timeout_s):
        header = await next_line()
        if header is None:
            return None
        if header != MULTISELECT_PROTOCOL_ID:
            raise NegotiationError(f"not multistream-select: {header[:64]!r}")
        unsent = encode_delim(MULTISELECT_PROTOCOL_ID.encode())
        for _ in range(MAX_PROPOSALS):
            proposal = await next_line()
            if proposal is None:
                return None
            if proposal == "ls":
                listing = "\n".join(sorted(protocols)) + "\n"
                unsent += encode_delim(listing.encode())
                continue
            if proposal in protocols:
                unsent += encode_delim(proposal.encode())
                if not buffer:  # the dialer waits for the echo before its first message
                    await stream.write(unsent)
                    return Negotiated(proposal, b"", None)
                return Negotiated(proposal, bytes(buffer), unsent)
            unsent += encode_delim(PROTOCOL_NOT_FOUND_MSG.encode())
        raise NegotiationError(f"more than {MAX_PROPOSALS} protocols proposed")
    return None
