"""Signed address records: where a node says it listens, in a form anyone can check.

A node signs its peer id, its listen addresses and a sequence number with its libp2p
identity key. The format is libp2p's own *signed peer record* — a peer record
(libp2p RFC 0003: ``peer_id`` bytes, ``seq`` uint64, ``addresses``) inside a signed
envelope (RFC 0002) whose signature covers the domain ``libp2p-peer-record`` (the domain
separation: such a signature cannot be replayed as anything else), the payload type
``0x0301`` and the payload — the same bytes go-libp2p and js-libp2p put in identify's
``signedPeerRecord``. On the hivemesh wire the envelope travels base64-encoded.

An Ed25519 peer id embeds the public key, so a record is checked against the peer id alone:
:func:`verify_addr_record` refuses a record whose key is not that peer's, whose signature
does not cover its content, or that describes another peer. Discovery dials a peer it heard
of from a third party only at addresses inside such a record (newest ``seq`` wins).
"""

from __future__ import annotations

import base64
import binascii
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import multiaddr
from libp2p.crypto.ed25519 import Ed25519PublicKey
from libp2p.crypto.keys import KeyPair
from libp2p.peer.envelope import make_unsigned, pub_key_to_protobuf, unmarshal_envelope
from libp2p.peer.id import ID
from libp2p.peer.pb import envelope_pb2, peer_record_pb2

from protocols.discovery.messages import MAX_ADDR_RECORD_BYTES, MAX_ADDRS
from protocols.errors import RemoteProtocolError

DOMAIN = "libp2p-peer-record"
PAYLOAD_TYPE = bytes([0x03, 0x01])  # multicodec libp2p-peer-record, as go-libp2p writes it


class InvalidAddrRecordError(RemoteProtocolError):
    """A signed address record that does not prove what it claims."""

    code = "invalid_record"


@dataclass(frozen=True)
class AddrRecord:
    """A verified (or freshly signed) address record.

    ``addrs`` are transport multiaddrs without ``/p2p/…``; ``encoded`` is the signed
    envelope in base64, relayed verbatim to other peers."""

    peer_id: str
    addrs: tuple[str, ...]
    seq: int
    encoded: str

    def dial_addrs(self) -> list[str]:
        """The addresses with ``/p2p/<peer id>`` appended, as the rest of the node writes them."""
        return [f"{a}/p2p/{self.peer_id}" for a in self.addrs]


def transport_part(addr: str, peer_id: str | None = None) -> str | None:
    """``/ip4/…/tcp/…/p2p/<id>`` → ``/ip4/…/tcp/…``; None if the address names another peer
    than ``peer_id`` (when given)."""
    base, sep, rest = addr.partition("/p2p/")
    if sep and peer_id is not None and rest.split("/", 1)[0] != peer_id:
        return None
    return base


def sign_addr_record(key: KeyPair, addrs: Sequence[str], seq: int) -> AddrRecord:
    """Sign ``addrs`` (with or without ``/p2p/…``) as this key's peer's addresses."""
    peer = ID.from_pubkey(key.public_key)
    bases = []
    for addr in addrs:
        base = transport_part(addr, str(peer))
        if base and base not in bases:
            bases.append(base)
    del bases[MAX_ADDRS:]
    record = peer_record_pb2.PeerRecord(
        peer_id=peer.to_bytes(),
        seq=seq,
        addresses=[
            peer_record_pb2.PeerRecord.AddressInfo(multiaddr=multiaddr.Multiaddr(a).to_bytes())
            for a in bases
        ],
    )
    payload = record.SerializeToString()
    signature = key.private_key.sign(make_unsigned(DOMAIN, PAYLOAD_TYPE, payload))
    envelope = envelope_pb2.Envelope(
        public_key=pub_key_to_protobuf(key.public_key),
        payload_type=PAYLOAD_TYPE,
        payload=payload,
        signature=signature,
    )
    encoded = base64.b64encode(envelope.SerializeToString()).decode("ascii")
    return AddrRecord(str(peer), tuple(bases), seq, encoded)


def verify_addr_record(encoded: str, peer_id: str) -> AddrRecord:
    """Check that ``encoded`` is a record signed by ``peer_id``'s own key about ``peer_id``.

    Raises :class:`InvalidAddrRecordError` saying what is wrong."""
    if len(encoded) > 4 * ((MAX_ADDR_RECORD_BYTES + 2) // 3):
        raise InvalidAddrRecordError(f"address record for {peer_id} is too large")
    try:
        data = base64.b64decode(encoded, validate=True)
    except (binascii.Error, ValueError):
        raise InvalidAddrRecordError(f"address record for {peer_id} is not base64") from None
    try:
        envelope = unmarshal_envelope(data)
    except Exception:  # protobuf and key parsing errors: translated once, here
        raise InvalidAddrRecordError(
            f"address record for {peer_id} is not a libp2p signed envelope"
        ) from None
    if not isinstance(envelope.public_key, Ed25519PublicKey):
        raise InvalidAddrRecordError(f"address record for {peer_id} is not signed with Ed25519")
    signer = str(ID.from_pubkey(envelope.public_key))
    if signer != peer_id:
        raise InvalidAddrRecordError(
            f"address record for {peer_id} is signed by another key ({signer})"
        )
    if envelope.payload_type != PAYLOAD_TYPE:
        raise InvalidAddrRecordError(f"address record for {peer_id} is not a peer record")
    try:
        valid = envelope.public_key.verify(
            make_unsigned(DOMAIN, envelope.payload_type, envelope.raw_payload),
            envelope.signature,
        )
    except Exception:
        valid = False
    if not valid:
        raise InvalidAddrRecordError(f"address record for {peer_id} has an invalid signature")
    record = peer_record_pb2.PeerRecord()
    try:
        record.ParseFromString(envelope.raw_payload)
        subject = str(ID(record.peer_id))
    except Exception:
        raise InvalidAddrRecordError(f"address record for {peer_id} is malformed") from None
    if subject != peer_id:
        raise InvalidAddrRecordError(
            f"address record signed by {peer_id} describes another peer ({subject})"
        )
    if len(record.addresses) > MAX_ADDRS:
        raise InvalidAddrRecordError(
            f"address record for {peer_id} lists more than {MAX_ADDRS} addresses"
        )
    addrs: list[str] = []
    for info in record.addresses:
        try:
            text = str(multiaddr.Multiaddr(info.multiaddr))
        except Exception:
            continue  # a protocol this node does not know: it could not dial it anyway
        base = transport_part(text, peer_id)
        if base and base not in addrs:
            addrs.append(base)
    return AddrRecord(peer_id, tuple(addrs), int(record.seq), encoded)


class AddrRecordSigner:
    """Keeps this node's current record: re-signed, with a higher ``seq``, when its
    addresses change. ``seq`` comes from the wall clock in nanoseconds (strictly increasing
    here), so the records of a restarted node supersede those of its previous run."""

    def __init__(self, key: KeyPair, *, clock_ns: Callable[[], int] = time.time_ns) -> None:
        self._key = key
        self._clock_ns = clock_ns
        self._last_seq = 0
        self._current: AddrRecord | None = None

    def current(self, addrs: Sequence[str]) -> AddrRecord:
        peer_id = str(ID.from_pubkey(self._key.public_key))
        wanted = tuple(dict.fromkeys(b for a in addrs if (b := transport_part(a, peer_id))))
        if self._current is None or self._current.addrs != wanted[:MAX_ADDRS]:
            self._last_seq = max(self._last_seq + 1, self._clock_ns())
            self._current = sign_addr_record(self._key, wanted, self._last_seq)
        return self._current
