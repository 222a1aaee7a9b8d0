"""Hostile workflow files, as an attacker would write them (issue 9): shared by the parser's
unit tests, the hostile-input test on a real node and scripts/bench/hostile_parse.py.

Each maker returns the file's bytes; :data:`HOSTILE` names them all.
"""

from __future__ import annotations

import random
from collections.abc import Callable

_HEAD = "id: hostile\nname: hostile\n"


def _shout_step(name: str, text: str) -> str:
    return (
        f"  - name: {name}\n"
        "    tool: text.upper\n"
        "    inputs:\n"
        "      - name: text\n"
        f"        value: {text}\n"
    )


def _laughs(levels: int = 9, width: int = 9, indent: str = "") -> str:
    """Anchors ``l0`` .. ``l{levels-1}``, each a list of ``width`` aliases of the one before:
    the last expands to ``width ** levels`` strings (9 ** 9 = 387,420,489)."""
    lines = [f"{indent}- &l0 [{', '.join(['lol'] * width)}]"]
    for level in range(1, levels):
        items = ", ".join([f"*l{level - 1}"] * width)
        lines.append(f"{indent}- &l{level} [{items}]")
    return "\n".join(lines) + "\n"


def alias_bomb_in_default() -> bytes:
    """The issue's bomb: an input whose ``default`` expands to 387 million strings."""
    return (
        _HEAD
        + "inputs:\n  - name: pad\n    default:\n"
        + _laughs(indent="      ")
        + "  - name: text\n    default: *l8\n"
        + "steps:\n"
        + _shout_step("shout", "'{{inputs.text}}'")
    ).encode()


def alias_bomb_in_step() -> bytes:
    """The bomb in a step's input value (anchors defined in the value itself)."""
    bomb = "[" + ", ".join(["*l7"] * 9) + "]"
    return (
        _HEAD
        + "steps:\n"
        + "  - name: shout\n    tool: text.upper\n    inputs:\n"
        + "      - name: junk\n        value:\n"
        + _laughs(levels=8, indent="          ")
        + "      - name: text\n"
        + f"        value: {bomb}\n"
    ).encode()


def alias_bomb_at_top() -> bytes:
    """A document that is nothing but the bomb (no workflow keys at all)."""
    return _laughs().encode() + b"- *l8\n"


def merge_key_bomb() -> bytes:
    """Merge keys (``<<``) that copy ever larger mappings into each other."""
    lines = ["inputs:", "  - name: pad", "    default:", "      - &m0 {a: 1, b: 2, c: 3, d: 4}"]
    for level in range(1, 30):
        prev = f"*m{level - 1}"
        lines.append(f"      - &m{level} {{<<: {prev}, k{level}: [{prev}, {prev}]}}")
    return (_HEAD + "\n".join(lines) + "\nsteps:\n" + _shout_step("s", "'*'")).encode()


def big_file(size: int = 20 * 1024 * 1024) -> bytes:
    """A valid-looking workflow of ``size`` bytes: one huge comment after the steps."""
    body = (_HEAD + "steps:\n" + _shout_step("shout", "hello")).encode()
    filler = b"# " + b"x" * 1022 + b"\n"
    count = max(0, (size - len(body)) // len(filler))
    return body + filler * count


def long_value(size: int = 900 * 1024) -> bytes:
    """One string value of ``size`` characters (under the default file size)."""
    return (_HEAD + "steps:\n" + _shout_step("shout", "x" * size)).encode()


def deep_nesting(depth: int = 10_000) -> bytes:
    """A step value nested ``depth`` lists deep (flow style: 2 bytes a level)."""
    return (_HEAD + "steps:\n" + _shout_step("shout", "[" * depth + "]" * depth)).encode()


def deep_block_nesting(depth: int = 600) -> bytes:
    """Block-style nesting (a mapping per level, indented two more spaces each time)."""
    lines = [_HEAD + "steps:\n" + _shout_step("shout", "").rstrip("\n")]
    lines += [f"{'  ' * (level + 5)}k:" for level in range(depth)]
    return ("\n".join(lines) + " end\n").encode()


def binary_garbage(size: int = 4096) -> bytes:
    """Bytes that are not UTF-8 (a fixed seed: the same garbage every run)."""
    data = bytearray(random.Random(9).randbytes(size))
    data[0] = 0xFF  # never valid UTF-8, whatever the rest happens to be
    return bytes(data)


def control_character() -> bytes:
    """A BEL character (0x07) inside a value on line 6: valid UTF-8, invalid YAML."""
    return (_HEAD + "steps:\n" + _shout_step("shout", "'ring \x07 the bell'")).encode()


def invalid_yaml() -> bytes:
    """A flow list that never closes."""
    return (_HEAD + "steps:\n" + _shout_step("shout", "[1, 2, 3")).encode()


def huge_integer(digits: int = 100_000) -> bytes:
    """An integer of ``digits`` digits (Python refuses to convert more than 4300)."""
    return (_HEAD + "steps:\n" + _shout_step("shout", "9" * digits)).encode()


def many_steps(count: int = 10_000) -> bytes:
    """A valid workflow of ``count`` independent steps."""
    steps = "".join(_shout_step(f"s{i}", f"t{i}") for i in range(count))
    return (_HEAD + "steps:\n" + steps).encode()


def brace_storm(pairs: int = 60_000) -> bytes:
    """A value of ``{{`` repeated without a closing ``}}`` (quadratic for a naive regex)."""
    return (_HEAD + "steps:\n" + _shout_step("shout", "'" + "{{" * pairs + "'")).encode()


def recursive_alias() -> bytes:
    """A list that contains itself."""
    return (_HEAD + "steps:\n" + _shout_step("shout", "&me [1, *me]")).encode()


HOSTILE: dict[str, Callable[[], bytes]] = {
    "alias bomb in a default": alias_bomb_in_default,
    "alias bomb in a step value": alias_bomb_in_step,
    "alias bomb at top level": alias_bomb_at_top,
    "merge-key bomb": merge_key_bomb,
    "20 MB file": big_file,
    "900 KiB value": long_value,
    "10,000-deep nesting": deep_nesting,
    "600-deep block nesting": deep_block_nesting,
    "binary garbage": binary_garbage,
    "control character": control_character,
    "invalid YAML": invalid_yaml,
    "100,000-digit integer": huge_integer,
    "10,000 steps": many_steps,
    "brace storm": brace_storm,
    "recursive alias": recursive_alias,
}
