"""The small, safe expression language of a step's ``when`` condition.

A condition reads the workflow's inputs and earlier steps' outputs and compares them::

    when: "inputs.mode == 'full' and steps.count.outputs.result > 3"
    when: "not inputs.dry_run"
    when: "'error' in steps.scan.outputs.result or len(inputs.files) >= 2"

It is parsed by its own recursive-descent parser into a tree of tuples and evaluated by a
small interpreter: never Python's ``eval``. What it has: ``true``/``false``/``null``,
numbers, quoted strings, lists ``[a, b]``; names ``inputs.NAME`` and
``steps.STEP.outputs.NAME`` (as in ``{{...}}`` references, which may also be written with
their braces), ``item`` and ``index`` in a ``foreach`` step; ``.key`` and ``[i]`` on
values; ``== != < <= > >= in not in``, ``and or not``, ``+ - * / %`` on numbers (``+`` on
two strings or two lists too); and the functions ``len``, ``lower``, ``upper``, ``str``,
``int``, ``float``, ``bool``. Texts are at most :data:`MAX_EXPR_CHARS` long and nest at
most :data:`MAX_DEPTH` deep, so a condition is checked and evaluated in bounded time.

:func:`parse_expr` raises :class:`ExprSyntaxError` (with the column) for a malformed
condition; :func:`evaluate` raises :class:`ExprError` for one that cannot be evaluated
(a missing value, a comparison of a number with a text). Truth is Python's (``0``, ``""``,
``[]``, ``{}`` and ``null`` are false).
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from workflows.refs import MISSING, NAME_PATTERN, step_output

MAX_EXPR_CHARS = 1000
MAX_DEPTH = 32
MAX_RESULT_CHARS = 1 << 20  # a string or list built by + stays below this

__all__ = [
    "Expr",
    "ExprError",
    "ExprSyntaxError",
    "evaluate",
    "parse_expr",
]


class ExprError(ValueError):
    """A condition that cannot be evaluated."""


class ExprSyntaxError(ExprError):
    """A malformed condition; ``column`` (1-based) is where it goes wrong."""

    def __init__(self, message: str, column: int) -> None:
        super().__init__(f"{message} (at column {column})")
        self.column = column


_TOKEN_RE = re.compile(
    r"""
    (?P<space>\s+)
  | (?P<number>(?:\d+\.\d*|\.\d+|\d+)(?:[eE][+-]?\d+)?)
  | (?P<string>'(?:[^'\\]|\\.)*'|"(?:[^"\\]|\\.)*")
  | (?P<name>[A-Za-z_][A-Za-z0-9_-]*)
  | (?P<op>==|!=|<=|>=|<|>|\+|-|\*|/|%|\(|\)|\[|\]|\.|,)
    """,
    re.VERBOSE,
)
_KEYWORDS = {"and", "or", "not", "in", "true", "false", "null"}
_ROOTS = ("inputs", "steps", "item", "index")
_NAME_RE = re.compile(rf"^{NAME_PATTERN}$")


@dataclass(frozen=True)
class _Tok:
    kind: str
    text: str
    col: int


# A parsed expression: nested tuples, the first member naming the node.
Node = tuple[Any, ...]


@dataclass(frozen=True)
class Expr:
    """A parsed condition: its ``text``, its tree, and what it reads (``inputs`` names,
    ``steps`` names, and whether it uses ``item``/``index``)."""

    text: str
    tree: Node
    inputs: frozenset[str]
    steps: frozenset[tuple[str, str]]  # (step, output)
    uses_item: bool


def _tokens(text: str) -> list[_Tok]:
    tokens: list[_Tok] = []
    at = 0
    while at < len(text):
        match = _TOKEN_RE.match(text, at)
        if match is None:
            raise ExprSyntaxError(f"unexpected character {text[at]!r}", at + 1)
        kind = match.lastgroup or ""
        if kind != "space":
            tokens.append(_Tok(kind, match.group(), at + 1))
        at = match.end()
    tokens.append(_Tok("end", "", len(text) + 1))
    return tokens


class _Parser:
    def __init__(self, text: str) -> None:
        self.tokens = _tokens(text)
        self.at = 0
        self.depth = 0
        self.inputs: set[str] = set()
        self.steps: set[tuple[str, str]] = set()
        self.uses_item = False

    # -- helpers -------------------------------------------------------------------------

    def peek(self) -> _Tok:
        return self.tokens[self.at]

    def take(self) -> _Tok:
        tok = self.tokens[self.at]
        self.at += 1
        return tok

    def is_op(self, *ops: str) -> bool:
        tok = self.peek()
        return tok.kind == "op" and tok.text in ops

    def is_word(self, word: str) -> bool:
        tok = self.peek()
        return tok.kind == "name" and tok.text == word

    def expect(self, op: str) -> None:
        tok = self.take()
        if tok.kind != "op" or tok.text != op:
            raise ExprSyntaxError(f"expected {op!r}, found {_shown(tok)}", tok.col)

    def enter(self, tok: _Tok) -> None:
        self.depth += 1
        if self.depth > MAX_DEPTH:
            raise ExprSyntaxError(f"nested more than {MAX_DEPTH} deep", tok.col)

    # -- grammar -------------------------------------------------------------------------

    def parse(self) -> Node:
        node = self.or_()
        tok = self.peek()
        if tok.kind != "end":
            raise ExprSyntaxError(f"unexpected {_shown(tok)}", tok.col)
        return node

    def or_(self) -> Node:
        node = self.and_()
        while self.is_word("or"):
            self.take()
            node = ("or", node, self.and_())
        return node

    def and_(self) -> Node:
        node = self.not_()
        while self.is_word("and"):
            self.take()
            node = ("and", node, self.not_())
        return node

    def not_(self) -> Node:
        if self.is_word("not"):
            tok = self.take()
            self.enter(tok)
            node = ("not", self.not_())
            self.depth -= 1
            return node
        return self.compare()

    def compare(self) -> Node:
        node = self.sum_()
        tok = self.peek()
        if tok.kind == "op" and tok.text in ("==", "!=", "<", "<=", ">", ">="):
            self.take()
            return ("cmp", tok.text, node, self.sum_(), tok.col)
        if self.is_word("in"):
            self.take()
            return ("in", node, self.sum_(), tok.col)
        if self.is_word("not") and self.tokens[self.at + 1].text == "in":
            self.take()
            self.take()
            return ("not", ("in", node, self.sum_(), tok.col))
        return node

    def sum_(self) -> Node:
        node = self.product()
        while self.is_op("+", "-"):
            tok = self.take()
            node = ("arith", tok.text, node, self.product(), tok.col)
        return node

    def product(self) -> Node:
        node = self.unary()
        while self.is_op("*", "/", "%"):
            tok = self.take()
            node = ("arith", tok.text, node, self.unary(), tok.col)
        return node

    def unary(self) -> Node:
        if self.is_op("-"):
            tok = self.take()
            self.enter(tok)
            node = ("neg", self.unary(), tok.col)
            self.depth -= 1
            return node
        return self.postfix()

    def postfix(self) -> Node:
        node = self.primary()
        while self.is_op(".", "["):
            tok = self.take()
            if tok.text == ".":
                key = self.take()
                if key.kind not in ("name", "number") or key.text in _KEYWORDS:
                    raise ExprSyntaxError(
                        f"expected a name after '.', found {_shown(key)}", key.col
                    )
                node = ("get", node, int(key.text) if key.kind == "number" else key.text, tok.col)
            else:
                node = self.named(node)  # (inputs.files[0]: the reference, then the index)
                self.enter(tok)
                index = self.or_()
                self.depth -= 1
                self.expect("]")
                node = ("index", node, index, tok.col)
        return self.named(node)

    def named(self, node: Node) -> Node:
        """``inputs.X`` and ``steps.S.outputs.X`` become references (checked by name)."""
        chain: list[Any] = []
        inner = node
        while inner[0] == "get":
            chain.append(inner[2])
            inner = inner[1]
        if inner[0] != "root":
            return node
        chain.reverse()
        root, col = inner[1], inner[2]
        if root == "inputs":
            if not chain or not isinstance(chain[0], str) or not _NAME_RE.match(chain[0]):
                raise ExprSyntaxError("write inputs.NAME", col)
            self.inputs.add(chain[0])
            return _rebuild(("input", chain[0], col), chain[1:])
        if root == "steps":
            if (
                len(chain) < 3
                or chain[1] != "outputs"
                or not all(isinstance(c, str) and _NAME_RE.match(c) for c in (chain[0], chain[2]))
            ):
                raise ExprSyntaxError("write steps.STEP.outputs.NAME", col)
            self.steps.add((chain[0], chain[2]))
            return _rebuild(("output", chain[0], chain[2], col), chain[3:])
        return node

    def primary(self) -> Node:
        tok = self.take()
        if tok.kind == "number":
            value = float(tok.text) if any(c in tok.text for c in ".eE") else int(tok.text)
            if isinstance(value, float) and not math.isfinite(value):
                raise ExprSyntaxError("number out of range", tok.col)
            if isinstance(value, int) and len(tok.text) > 64:
                raise ExprSyntaxError("number has more than 64 digits", tok.col)
            return ("const", value)
        if tok.kind == "string":
            return ("const", _unquote(tok))
        if tok.kind == "op" and tok.text == "(":
            self.enter(tok)
            node = self.or_()
            self.depth -= 1
            self.expect(")")
            return node
        if tok.kind == "op" and tok.text == "[":
            self.enter(tok)
            items: list[Node] = []
            if not self.is_op("]"):
                items.append(self.or_())
                while self.is_op(","):
                    self.take()
                    items.append(self.or_())
            self.depth -= 1
            self.expect("]")
            return ("list", tuple(items))
        if tok.kind == "name":
            word = tok.text
            if word in ("true", "false", "null"):
                return ("const", {"true": True, "false": False, "null": None}[word])
            if word in _FUNCTIONS and self.is_op("("):
                self.take()
                self.enter(tok)
                arg = self.or_()
                self.depth -= 1
                self.expect(")")
                return ("call", word, arg, tok.col)
            if word in _ROOTS:
                if word in ("item", "index"):
                    self.uses_item = True
                return ("root", word, tok.col)
            known = ", ".join([*_ROOTS, *sorted(_FUNCTIONS)])
            raise ExprSyntaxError(
                f"unknown name {word!r} (a condition reads {known}; quote a text: '{word}')",
                tok.col,
            )
        raise ExprSyntaxError(f"unexpected {_shown(tok)}", tok.col)


def _rebuild(node: Node, rest: list[Any]) -> Node:
    for key in rest:
        node = ("get", node, key, node[-1])
    return node


def _unquote(tok: _Tok) -> str:
    body = tok.text[1:-1]
    out: list[str] = []
    i = 0
    while i < len(body):
        char = body[i]
        if char == "\\" and i + 1 < len(body):
            nxt = body[i + 1]
            out.append({"n": "\n", "t": "\t"}.get(nxt, nxt))
            i += 2
            continue
        out.append(char)
        i += 1
    return "".join(out)


def _shown(tok: _Tok) -> str:
    return "the end" if tok.kind == "end" else repr(tok.text)


_BRACED_RE = re.compile(r"\{\{\s*((?:(?!\}\}).)*?)\s*\}\}", re.DOTALL)


def parse_expr(text: str) -> Expr:
    """Parse a condition; :class:`ExprSyntaxError` says what is wrong and where.

    References may be written with or without their braces (``{{inputs.x}} > 2`` is
    ``inputs.x > 2``); columns count in the text as written."""
    if not isinstance(text, str):
        raise ExprSyntaxError(f"a condition is a text, not {type(text).__name__}", 1)
    if len(text) > MAX_EXPR_CHARS:
        raise ExprSyntaxError(
            f"a condition is at most {MAX_EXPR_CHARS} characters (this one has {len(text)})", 1
        )
    # braces are replaced by as many spaces, so that columns stay those of the text
    plain = _BRACED_RE.sub(lambda m: "  " + m.group(1) + "  ", text)
    if not plain.strip():
        raise ExprSyntaxError("the condition is empty", 1)
    for bad in ("{{", "}}"):
        if bad in plain:
            raise ExprSyntaxError(f"unmatched {bad!r}", plain.index(bad) + 1)
    parser = _Parser(plain)
    tree = parser.parse()
    return Expr(text, tree, frozenset(parser.inputs), frozenset(parser.steps), parser.uses_item)


# -- evaluation -------------------------------------------------------------------------


def _len(value: Any) -> int:
    if isinstance(value, str | list | dict):
        return len(value)
    raise ExprError(f"len() of {_kind(value)}")


def _text_fn(name: str) -> Callable[[Any], str]:
    def fn(value: Any) -> str:
        if not isinstance(value, str):
            raise ExprError(f"{name}() of {_kind(value)}")
        return value.lower() if name == "lower" else value.upper()

    return fn


def _str(value: Any) -> str:
    if isinstance(value, bool) or value is None:
        return {True: "true", False: "false", None: "null"}[value]
    if isinstance(value, str | int | float):
        return str(value)
    raise ExprError(f"str() of {_kind(value)}")


def _number(kind: type) -> Callable[[Any], Any]:
    def fn(value: Any) -> Any:
        if isinstance(value, bool) or not isinstance(value, str | int | float):
            raise ExprError(f"{kind.__name__}() of {_kind(value)}")
        if isinstance(value, str) and len(value) > 64:
            raise ExprError(f"{kind.__name__}() of a text longer than 64 characters")
        try:
            result = kind(value)
        except (ValueError, OverflowError):
            raise ExprError(f"{kind.__name__}() of {value!r}") from None
        if isinstance(result, float) and not math.isfinite(result):
            raise ExprError(f"{kind.__name__}() of {value!r} is not a finite number")
        return result

    return fn


_FUNCTIONS: dict[str, Callable[[Any], Any]] = {
    "len": _len,
    "lower": _text_fn("lower"),
    "upper": _text_fn("upper"),
    "str": _str,
    "int": _number(int),
    "float": _number(float),
    "bool": bool,
}


def _kind(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "a text"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, dict):
        return "a mapping"
    return type(value).__name__


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def evaluate(
    expr: Expr,
    inputs: Mapping[str, Any],
    outputs: Mapping[str, Mapping[str, Any]],
    item: Any = None,
    index: int | None = None,
) -> Any:
    """The value of ``expr`` given the workflow's ``inputs``, the finished steps'
    ``outputs`` and (in a ``foreach`` step) the ``item`` and its ``index``."""

    def ev(node: Node) -> Any:
        op = node[0]
        if op == "const":
            return node[1]
        if op == "list":
            return [ev(item) for item in node[1]]
        if op == "input":
            if node[1] not in inputs:
                raise ExprError(f"workflow input {node[1]!r} has no value")
            return inputs[node[1]]
        if op == "output":
            got = outputs.get(node[1])
            if got is None:
                raise ExprError(f"step {node[1]!r} has no outputs")
            value = step_output(got, node[2])
            if value is MISSING:
                raise ExprError(f"step {node[1]!r} produced no output {node[2]!r}")
            return value
        if op == "root":
            if node[1] == "item":
                return item
            if node[1] == "index":
                return index
            raise ExprError(f"{node[1]!r} alone is not a value: write {node[1]}.NAME")
        if op == "get":
            return _get(ev(node[1]), node[2])
        if op == "index":
            return _get(ev(node[1]), ev(node[2]))
        if op == "not":
            return not ev(node[1])
        if op == "and":
            left = ev(node[1])
            return ev(node[2]) if left else left
        if op == "or":
            left = ev(node[1])
            return left if left else ev(node[2])
        if op == "neg":
            value = ev(node[1])
            if not _is_number(value):
                raise ExprError(f"cannot negate {_kind(value)}")
            return -value
        if op == "call":
            return _FUNCTIONS[node[1]](ev(node[2]))
        if op == "cmp":
            return _compare(node[1], ev(node[2]), ev(node[3]))
        if op == "in":
            needle, hay = ev(node[1]), ev(node[2])
            if isinstance(hay, str):
                if not isinstance(needle, str):
                    raise ExprError(f"'in' a text needs a text, not {_kind(needle)}")
                return needle in hay
            if isinstance(hay, list | dict):
                try:
                    return needle in hay
                except TypeError:  # (an unhashable key in a mapping)
                    return False
            raise ExprError(f"'in' needs a text, list or mapping on its right, not {_kind(hay)}")
        if op == "arith":
            return _arith(node[1], ev(node[2]), ev(node[3]))
        raise ExprError(f"unknown expression node {op!r}")  # pragma: no cover

    return ev(expr.tree)


def _get(value: Any, key: Any) -> Any:
    if isinstance(value, dict) and isinstance(key, str):
        if key not in value:
            raise ExprError(f"no key {key!r} (keys: {', '.join(sorted(map(str, value))[:10])})")
        return value[key]
    if isinstance(value, list | str) and _is_number(key) and float(key).is_integer():
        i = int(key)
        if not -len(value) <= i < len(value):
            raise ExprError(f"index {i} out of range (length {len(value)})")
        return value[i]
    raise ExprError(f"cannot take [{key!r}] of {_kind(value)}")


def _compare(op: str, left: Any, right: Any) -> bool:
    if op == "==":
        return bool(left == right)
    if op == "!=":
        return bool(left != right)
    comparable = (_is_number(left) and _is_number(right)) or (
        isinstance(left, str) and isinstance(right, str)
    )
    if not comparable:
        raise ExprError(f"cannot compare {_kind(left)} {op} {_kind(right)}")
    if op == "<":
        return bool(left < right)
    if op == "<=":
        return bool(left <= right)
    if op == ">":
        return bool(left > right)
    return bool(left >= right)


def _arith(op: str, left: Any, right: Any) -> Any:
    if op == "+" and (
        (isinstance(left, str) and isinstance(right, str))
        or (isinstance(left, list) and isinstance(right, list))
    ):
        if len(left) + len(right) > MAX_RESULT_CHARS:
            raise ExprError(f"a result longer than {MAX_RESULT_CHARS}")
        lhs: Any = left  # (both texts or both lists: checked above)
        return lhs + right
    if not (_is_number(left) and _is_number(right)):
        raise ExprError(f"cannot compute {_kind(left)} {op} {_kind(right)}")
    if op in ("/", "%") and right == 0:
        raise ExprError("division by zero")
    if op == "+":
        result = left + right
    elif op == "-":
        result = left - right
    elif op == "*":
        big = isinstance(left, int) and isinstance(right, int)
        if big and left.bit_length() + right.bit_length() > 1024:
            raise ExprError("a number too large")
        result = left * right
    elif op == "/":
        result = left / right
    else:
        result = left % right
    if isinstance(result, float) and not math.isfinite(result):
        raise ExprError("a number out of range")
    return result
