"""Signing with a node's libp2p identity key, and checking a signature against a peer id.

An Ed25519 peer id embeds its public key (identity multihash), so a signature can be checked
from the peer id alone, with nothing else exchanged. Used for signed handoff receipts.
"""

from __future__ import annotations

import base64
import binascii
import functools

from libp2p.crypto.keys import KeyPair, PublicKey
from libp2p.peer.id import ID


def sign(key_pair: KeyPair, data: bytes) -> str:
    """Base64 (standard, padded) signature of ``data`` with ``key_pair``'s private key."""
    return base64.b64encode(key_pair.private_key.sign(data)).decode("ascii")


def verify(peer_id: str, data: bytes, signature: str) -> bool:
    """True if ``signature`` (base64) is ``peer_id``'s signature of ``data``. Never raises:
    a malformed peer id, a key that cannot be extracted or bad base64 are all False."""
    try:
        raw = base64.b64decode(signature, validate=True)
        key = _public_key(peer_id)
    except (ValueError, binascii.Error):
        return False
    if key is None:
        return False
    try:
        return bool(key.verify(data, raw))
    except Exception:  # foreign verifier errors on garbage mean "not a valid signature"
        return False


@functools.lru_cache(maxsize=1024)
def _public_key(peer_id: str) -> PublicKey | None:
    """The public key a peer id embeds (None: it embeds none), remembered: base58 decoding
    and key parsing are pure Python, and a delegator checks the same peers' receipts again
    and again. Raises ValueError for a malformed id (not remembered)."""
    return ID.from_base58(peer_id).extract_public_key()
