"""XSalsa20, the stream cipher of the libp2p private-network layer.

XSalsa20 extends Salsa20's nonce from 8 to 24 bytes (D. J. Bernstein, "Extending the Salsa20
nonce", 2008): HSalsa20 derives a subkey from the key and the first 16 nonce bytes, and
Salsa20 under that subkey with the last 8 nonce bytes gives the keystream:

    XSalsa20(key, n) = Salsa20(HSalsa20(key, n[:16]), n[16:])

pycryptodome (a py-libp2p dependency) provides Salsa20 in C; HSalsa20 is one 20-round
Salsa20 core over 16 words, computed here in Python once per connection direction.
"""

from __future__ import annotations

import struct

from Crypto.Cipher import Salsa20

KEY_SIZE = 32
NONCE_SIZE = 24

# "expand 32-byte k", the Salsa20 constant for 256-bit keys, as four little-endian words
_SIGMA = (0x61707865, 0x3320646E, 0x79622D32, 0x6B206574)
_MASK = 0xFFFFFFFF


def _rotl(value: int, shift: int) -> int:
    return ((value << shift) | (value >> (32 - shift))) & _MASK


def _quarter_round(x: list[int], a: int, b: int, c: int, d: int) -> None:
    x[b] ^= _rotl((x[a] + x[d]) & _MASK, 7)
    x[c] ^= _rotl((x[b] + x[a]) & _MASK, 9)
    x[d] ^= _rotl((x[c] + x[b]) & _MASK, 13)
    x[a] ^= _rotl((x[d] + x[c]) & _MASK, 18)


def hsalsa20(key: bytes, nonce16: bytes) -> bytes:
    """The 32-byte HSalsa20 subkey of a 32-byte ``key`` and a 16-byte nonce."""
    if len(key) != KEY_SIZE:
        raise ValueError(f"HSalsa20 needs a {KEY_SIZE}-byte key, not {len(key)} bytes")
    if len(nonce16) != 16:
        raise ValueError(f"HSalsa20 needs a 16-byte nonce, not {len(nonce16)} bytes")
    k = struct.unpack("<8I", key)
    n = struct.unpack("<4I", nonce16)
    # The Salsa20 input matrix: constants on the diagonal, key around them, the 16 nonce
    # bytes where Salsa20 keeps its nonce and block counter.
    x = [
        _SIGMA[0], k[0], k[1], k[2],
        k[3], _SIGMA[1], n[0], n[1],
        n[2], n[3], _SIGMA[2], k[4],
        k[5], k[6], k[7], _SIGMA[3],
    ]  # fmt: skip
    for _ in range(10):  # 20 rounds: a column round and a row round, ten times
        _quarter_round(x, 0, 4, 8, 12)
        _quarter_round(x, 5, 9, 13, 1)
        _quarter_round(x, 10, 14, 2, 6)
        _quarter_round(x, 15, 3, 7, 11)
        _quarter_round(x, 0, 1, 2, 3)
        _quarter_round(x, 5, 6, 7, 4)
        _quarter_round(x, 10, 11, 8, 9)
        _quarter_round(x, 15, 12, 13, 14)
    # Unlike the Salsa20 block function, HSalsa20 does not add the input back; its output
    # is the diagonal and the nonce positions.
    return struct.pack("<8I", x[0], x[5], x[10], x[15], x[6], x[7], x[8], x[9])


class XSalsa20:
    """A running XSalsa20 keystream: :meth:`xor` en- or decrypts the next bytes."""

    def __init__(self, key: bytes, nonce: bytes) -> None:
        if len(nonce) != NONCE_SIZE:
            raise ValueError(f"XSalsa20 needs a {NONCE_SIZE}-byte nonce, not {len(nonce)} bytes")
        self._cipher = Salsa20.new(key=hsalsa20(key, nonce[:16]), nonce=nonce[16:])

    def xor(self, data: bytes) -> bytes:
        """XOR ``data`` with the next ``len(data)`` keystream bytes."""
        return self._cipher.encrypt(data) if data else b""
