"""XSalsa20 and HSalsa20 against published test vectors.

The vectors are those of NaCl's test suite (``tests/core1.c``, ``core2.c``, ``stream.c``,
``stream3.c``), which Bernstein's "Extending the Salsa20 nonce" also works through and which
libsodium carries over: a 32-byte shared secret from the crypto_box example, a first
HSalsa20 with an all-zero nonce, a second with the first 16 bytes of the example nonce, then
the XSalsa20 keystream under that first subkey and the full 24-byte nonce.
"""

from __future__ import annotations

import hashlib
import os

import pytest

from node.p2p.xsalsa20 import XSalsa20, hsalsa20

# The Curve25519 shared secret of the crypto_box example's Alice and Bob.
SHARED = bytes.fromhex("4a5d9d5ba4ce2de1728e3bf480350f25e07e21c947d19e3376f09b3c1e161742")
# HSalsa20(SHARED, 16 zero bytes): the key crypto_box derives from it ("core1").
FIRST_KEY = bytes.fromhex("1b27556473e985d462cd51197a9a46c76009549eac6474f206c4ee0844f68389")
# The example's 24-byte nonce.
NONCE = bytes.fromhex("69696ee955b62b73cd62bda875fc73d68219e0036b7a0b37")
# HSalsa20(FIRST_KEY, NONCE[:16]): the subkey XSalsa20 runs Salsa20 under ("core2").
SECOND_KEY = bytes.fromhex("dc908dda0b9344a953629b733820778880f3ceb421bb61b91cbd4c3e66256ce4")
# The first 32 bytes of XSalsa20(FIRST_KEY, NONCE) ("stream3").
STREAM_HEAD = bytes.fromhex("eea6a7251c1e72916d11c2cb214d3c252539121d8e234e652d651fa4c8cff880")
# SHA-256 of its first 4 MiB ("stream").
STREAM_4MIB_SHA256 = "662b9d0e3463029156069b12f918691a98f7dfb2ca0393c96bbfc6b1fbd630a2"


def test_hsalsa20_with_a_zero_nonce() -> None:
    assert hsalsa20(SHARED, bytes(16)) == FIRST_KEY


def test_hsalsa20_with_the_example_nonce() -> None:
    assert hsalsa20(FIRST_KEY, NONCE[:16]) == SECOND_KEY


def test_xsalsa20_keystream_head() -> None:
    assert XSalsa20(FIRST_KEY, NONCE).xor(bytes(32)) == STREAM_HEAD


def test_xsalsa20_four_mebibytes_in_uneven_pieces() -> None:
    stream = XSalsa20(FIRST_KEY, NONCE)
    digest = hashlib.sha256()
    sizes = [1, 63, 64, 65, 7, 1000, 4096]
    done, i = 0, 0
    total = 4 * 1024 * 1024
    while done < total:
        n = min(sizes[i % len(sizes)], total - done)
        digest.update(stream.xor(bytes(n)))
        done += n
        i += 1
    assert digest.hexdigest() == STREAM_4MIB_SHA256


def test_xor_twice_gives_the_plaintext_back() -> None:
    key, nonce = os.urandom(32), os.urandom(24)
    message = os.urandom(1000)
    assert XSalsa20(key, nonce).xor(XSalsa20(key, nonce).xor(message)) == message
    assert XSalsa20(key, nonce).xor(b"") == b""


def test_agrees_with_libsodium_secretbox() -> None:
    """crypto_secretbox is XSalsa20-Poly1305: after its 16-byte tag comes the message XORed
    with the keystream from byte 32 on (the first 32 bytes key Poly1305)."""
    bindings = pytest.importorskip("nacl.bindings")
    for _ in range(5):
        key, nonce = os.urandom(32), os.urandom(24)
        message = os.urandom(300)
        boxed = bindings.crypto_secretbox_easy(message, nonce, key)
        assert boxed[16:] == XSalsa20(key, nonce).xor(bytes(32) + message)[32:]


@pytest.mark.parametrize(
    ("key", "nonce"), [(bytes(31), bytes(24)), (bytes(32), bytes(23)), (bytes(33), bytes(24))]
)
def test_wrong_sizes_are_refused(key: bytes, nonce: bytes) -> None:
    with pytest.raises(ValueError, match="needs a"):
        XSalsa20(key, nonce)
