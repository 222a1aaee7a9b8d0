"""Signed address records: what a forger, an editor or another key cannot get past."""

from __future__ import annotations

import base64

import pytest
from libp2p.crypto.ed25519 import create_new_key_pair
from libp2p.crypto.secp256k1 import create_new_key_pair as create_secp256k1_key_pair
from libp2p.peer.envelope import consume_envelope, make_unsigned, pub_key_to_protobuf
from libp2p.peer.id import ID
from libp2p.peer.pb import envelope_pb2, peer_record_pb2

from node.addr_record import (
    DOMAIN,
    PAYLOAD_TYPE,
    AddrRecordSigner,
    InvalidAddrRecordError,
    sign_addr_record,
    verify_addr_record,
)

ADDRS = ["/ip4/127.0.0.1/tcp/4001", "/ip4/127.0.0.1/tcp/4002"]


def peer_of(key: object) -> str:
    return str(ID.from_pubkey(key.public_key))  # type: ignore[attr-defined]


def envelope_of(encoded: str) -> envelope_pb2.Envelope:
    env = envelope_pb2.Envelope()
    env.ParseFromString(base64.b64decode(encoded))
    return env


def encode(env: envelope_pb2.Envelope) -> str:
    return base64.b64encode(env.SerializeToString()).decode()


def test_a_signed_record_verifies_against_the_peer_id_alone() -> None:
    key = create_new_key_pair()
    rec = sign_addr_record(key, [*ADDRS, f"/ip4/127.0.0.1/tcp/4003/p2p/{peer_of(key)}"], 7)
    assert rec.peer_id == peer_of(key)
    assert rec.addrs == (*ADDRS, "/ip4/127.0.0.1/tcp/4003")  # /p2p suffix stripped
    assert verify_addr_record(rec.encoded, peer_of(key)) == rec
    assert rec.dial_addrs()[0] == f"{ADDRS[0]}/p2p/{peer_of(key)}"


def test_it_is_a_standard_libp2p_signed_peer_record() -> None:
    """py-libp2p's own envelope code (as go/js-libp2p) reads and verifies it."""
    key = create_new_key_pair()
    rec = sign_addr_record(key, ADDRS, 42)
    _, peer_record = consume_envelope(base64.b64decode(rec.encoded), "libp2p-peer-record")
    assert str(peer_record.peer_id) == peer_of(key)
    assert [str(a) for a in peer_record.addrs] == ADDRS
    assert peer_record.seq == 42


def test_addresses_naming_another_peer_are_not_signed() -> None:
    key = create_new_key_pair()
    other = peer_of(create_new_key_pair())
    rec = sign_addr_record(key, [f"/ip4/127.0.0.1/tcp/9/p2p/{other}", ADDRS[0]], 1)
    assert rec.addrs == (ADDRS[0],)


def test_a_record_for_one_peer_is_refused_for_another() -> None:
    rec = sign_addr_record(create_new_key_pair(), ADDRS, 1)
    other = peer_of(create_new_key_pair())
    with pytest.raises(InvalidAddrRecordError, match="signed by another key"):
        verify_addr_record(rec.encoded, other)


def test_an_altered_record_is_refused() -> None:
    key = create_new_key_pair()
    env = envelope_of(sign_addr_record(key, ADDRS, 1).encoded)
    record = peer_record_pb2.PeerRecord()
    record.ParseFromString(env.payload)
    record.addresses[0].multiaddr = record.addresses[1].multiaddr  # point it elsewhere
    env.payload = record.SerializeToString()
    with pytest.raises(InvalidAddrRecordError, match="invalid signature"):
        verify_addr_record(encode(env), peer_of(key))
    record.ParseFromString(envelope_of(sign_addr_record(key, ADDRS, 1).encoded).payload)
    record.seq = 2  # a replayed record with a higher sequence number
    env.payload = record.SerializeToString()
    with pytest.raises(InvalidAddrRecordError, match="invalid signature"):
        verify_addr_record(encode(env), peer_of(key))


def test_a_record_signed_by_another_key_under_the_victims_public_key_is_refused() -> None:
    """The forger puts the victim's public key in the envelope and signs with its own key."""
    victim, forger = create_new_key_pair(), create_new_key_pair()
    record = peer_record_pb2.PeerRecord(
        peer_id=ID.from_pubkey(victim.public_key).to_bytes(),
        seq=99,
        addresses=[peer_record_pb2.PeerRecord.AddressInfo(multiaddr=b"\x04\x7f\x00\x00\x01")],
    )
    payload = record.SerializeToString()
    env = envelope_pb2.Envelope(
        public_key=pub_key_to_protobuf(victim.public_key),
        payload_type=PAYLOAD_TYPE,
        payload=payload,
        signature=forger.private_key.sign(make_unsigned(DOMAIN, PAYLOAD_TYPE, payload)),
    )
    with pytest.raises(InvalidAddrRecordError, match="invalid signature"):
        verify_addr_record(encode(env), peer_of(victim))


def test_a_record_signed_by_the_peer_about_another_peer_is_refused() -> None:
    signer, subject = create_new_key_pair(), create_new_key_pair()
    record = peer_record_pb2.PeerRecord(
        peer_id=ID.from_pubkey(subject.public_key).to_bytes(), seq=1
    )
    payload = record.SerializeToString()
    env = envelope_pb2.Envelope(
        public_key=pub_key_to_protobuf(signer.public_key),
        payload_type=PAYLOAD_TYPE,
        payload=payload,
        signature=signer.private_key.sign(make_unsigned(DOMAIN, PAYLOAD_TYPE, payload)),
    )
    with pytest.raises(InvalidAddrRecordError, match="describes another peer"):
        verify_addr_record(encode(env), peer_of(signer))


def test_a_signature_made_for_another_domain_is_refused() -> None:
    """Domain separation: a signature the key made for something else does not carry over."""
    key = create_new_key_pair()
    env = envelope_of(sign_addr_record(key, ADDRS, 1).encoded)
    env.signature = key.private_key.sign(make_unsigned("some-other-use", PAYLOAD_TYPE, env.payload))
    with pytest.raises(InvalidAddrRecordError, match="invalid signature"):
        verify_addr_record(encode(env), peer_of(key))
    env = envelope_of(sign_addr_record(key, ADDRS, 1).encoded)
    env.payload_type = b"\x03\x02"
    with pytest.raises(InvalidAddrRecordError, match="not a peer record"):
        verify_addr_record(encode(env), peer_of(key))


def test_non_ed25519_keys_and_garbage_are_refused() -> None:
    key = create_secp256k1_key_pair()
    rec = sign_addr_record(key, ADDRS, 1)
    with pytest.raises(InvalidAddrRecordError, match="not signed with Ed25519"):
        verify_addr_record(rec.encoded, rec.peer_id)
    peer = peer_of(create_new_key_pair())
    for junk, why in [
        ("not base64!", "not base64"),
        (base64.b64encode(b"\xff\x00garbage").decode(), "not a libp2p signed envelope"),
        ("A" * 6000, "too large"),
    ]:
        with pytest.raises(InvalidAddrRecordError, match=why):
            verify_addr_record(junk, peer)


def test_the_signer_re_signs_with_a_higher_seq_only_when_the_addresses_change() -> None:
    key = create_new_key_pair()
    now = [1_000]
    signer = AddrRecordSigner(key, clock_ns=lambda: now[0])
    first = signer.current(ADDRS)
    assert first.seq == 1_000
    assert signer.current(ADDRS) is first
    now[0] = 500  # the wall clock went back: seq still grows
    second = signer.current(ADDRS[:1])
    assert second.seq == 1_001 and second.addrs == (ADDRS[0],)
    assert verify_addr_record(second.encoded, peer_of(key)) == second
