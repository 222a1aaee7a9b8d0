"""Bounded YAML composition: the YAML event stream turned into a node tree, counting as it
goes, so that a hostile document is refused before anything large is built.

PyYAML's own composer recurses once per nesting level (a RecursionError past ~1000) and
shares a node between an anchor and its aliases, so nothing counts what the document
becomes once something walks it: the 9 levels of 9 aliases of a billion-laughs bomb are
a few hundred bytes of YAML and 387 million strings in JSON. This composer is a loop over
the parser's events (libyaml's when installed: fast, and it keeps its own stack on the
heap) with a stack of open collections. It keeps, for every anchor, the size of what it
anchors (nodes, scalar bytes, levels) so that each alias adds a full copy's worth to the
totals, and stops at the first event that breaks a bound of :class:`ParseLimits`.
Every event costs O(1), so the time is bounded by the file's size and the deadline.

Only JSON data is accepted: strings, numbers, booleans, null, lists and mappings (plus
``<<`` merge keys). Timestamps stay strings; explicit tags such as ``!!set`` or
``!!binary`` are refused, since a workflow's values must travel as JSON.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import yaml
from yaml.events import (
    AliasEvent,
    DocumentStartEvent,
    MappingEndEvent,
    MappingStartEvent,
    ScalarEvent,
    SequenceEndEvent,
    SequenceStartEvent,
    StreamEndEvent,
)
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

from workflows.dsl._limits import MAX_NUMBER_DIGITS, ParseLimits
from workflows.errors import WorkflowDefinitionError, WorkflowLimitError

_STR = "tag:yaml.org,2002:str"
_INT = "tag:yaml.org,2002:int"
_FLOAT = "tag:yaml.org,2002:float"
_MERGE = "tag:yaml.org,2002:merge"
_SCALAR_TAGS = {
    _STR,
    _INT,
    _FLOAT,
    "tag:yaml.org,2002:bool",
    "tag:yaml.org,2002:null",
    _MERGE,
}
_SEQ = "tag:yaml.org,2002:seq"
_MAP = "tag:yaml.org,2002:map"

_CHECK_CLOCK_EVERY = 512  # events between two looks at the clock


class JsonResolver(yaml.resolver.Resolver):
    """PyYAML's resolver for the JSON-like scalars only (no timestamps, no ``=``)."""


JsonResolver.yaml_implicit_resolvers = {
    first: [(tag, regexp) for tag, regexp in resolvers if tag in _SCALAR_TAGS]
    for first, resolvers in yaml.resolver.Resolver.yaml_implicit_resolvers.items()
}


@dataclass
class _Anchor:
    node: Node
    line: int
    closed: bool = False
    nodes: int = 1
    size: int = 0
    height: int = 0


_NO_KEY: Any = object()


@dataclass
class _Open:
    """A collection being composed, and the totals of what it holds so far."""

    node: SequenceNode | MappingNode
    anchor: _Anchor | None
    is_steps: bool = False  # the workflow's top-level 'steps' list
    key: Any = _NO_KEY  # a mapping's key waiting for its value
    nodes: int = 1
    size: int = 0
    height: int = 0  # levels of the tallest child (0: scalars only)
    items: int = 0
    pairs: list[tuple[Node, Node]] = field(default_factory=list)


def new_parser(text: str) -> Any:
    """libyaml's parser when PyYAML was built with it, else PyYAML's own."""
    if getattr(yaml, "__with_libyaml__", False):
        return yaml.CSafeLoader(text)  # (libyaml's CParser, plus methods this never calls)
    return yaml.SafeLoader(text)


def reader_error_line(exc: yaml.reader.ReaderError, text: str) -> int:
    """The line of a reader error (libyaml counts the offset in UTF-8 bytes)."""
    if getattr(yaml, "__with_libyaml__", False):
        return text.encode("utf-8", "surrogatepass").count(b"\n", 0, exc.position) + 1
    return text.count("\n", 0, exc.position) + 1


class BoundedComposer:
    """Compose one YAML document from ``parser``'s events within ``limits``.

    Raises :class:`WorkflowLimitError` for a bound broken, :class:`WorkflowDefinitionError`
    for a document PyYAML's composer would also refuse (an undefined or duplicate anchor, a
    second document) or that holds something other than JSON data, and lets the parser's
    own ``yaml.YAMLError`` through (the caller words those).
    """

    def __init__(
        self,
        source: str,
        limits: ParseLimits,
        *,
        deadline: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.source = source
        self.limits = limits
        self.deadline = deadline
        self.clock = clock
        self.resolver = JsonResolver()
        self.numbers = yaml.constructor.SafeConstructor()  # to read floats as PyYAML will
        self.anchors: dict[str, _Anchor] = {}
        self.stack: list[_Open] = []
        self.anchored: list[_Open] = []  # the open collections that have an anchor
        self.root: Node | None = None
        self.nodes = 0  # the document's nodes, every alias counted as a copy
        self.size = 0  # its scalars' bytes, likewise
        self.event: Any = None  # the event being composed (for an error's column)

    def compose(self, parser: Any) -> Node | None:
        """The document's root node (None for an empty document); an error raised here
        carries the column of the event it was raised at, when it is on that line."""
        try:
            return self._compose(parser)
        except WorkflowDefinitionError as exc:
            event = self.event
            if exc.column is None and event is not None and exc.line == _line(event):
                exc.column = int(event.start_mark.column) + 1
            raise

    def _compose(self, parser: Any) -> Node | None:
        documents = 0
        count = 0
        while True:
            event = self.event = parser.get_event()
            count += 1
            if count % _CHECK_CLOCK_EVERY == 0 and self.clock() > self.deadline:
                self._limit(
                    f"reading the YAML took longer than {self.limits.timeout_s:g} s",
                    event,
                    "timeout_s",
                    self.limits.timeout_s,
                )
            kind = type(event)
            if kind is ScalarEvent:
                self._scalar(event)
            elif kind is MappingStartEvent or kind is SequenceStartEvent:
                self._open(event, kind is MappingStartEvent)
            elif kind is MappingEndEvent or kind is SequenceEndEvent:
                self._close(event)
            elif kind is AliasEvent:
                self._alias(event)
            elif kind is DocumentStartEvent:
                documents += 1
                if documents > 1:
                    raise WorkflowDefinitionError(
                        "a second YAML document starts here ('---'): a workflow file holds "
                        "one document",
                        self.source,
                        _line(event),
                    )
            elif kind is StreamEndEvent:
                self._check_steps()
                return self.root

    # -- events ----------------------------------------------------------------------------

    def _scalar(self, event: Any) -> None:
        value: str = event.value
        size = len(value) if value.isascii() else len(value.encode("utf-8", "surrogatepass"))
        if size > self.limits.max_value_bytes:
            self._limit(
                f"a value of {size} bytes, more than {self.limits.max_value_bytes}",
                event,
                "max_value_bytes",
                self.limits.max_value_bytes,
            )
        tag = event.tag
        if tag is None or tag == "!":
            tag = self.resolver.resolve(ScalarNode, value, event.implicit)
            if tag != _MERGE and self._at_key():
                tag = _STR  # a mapping key is its text, as JSON's keys are strings
        elif tag != _STR:  # an explicit tag: the text must be what it claims to be
            if tag not in _SCALAR_TAGS:
                self._unsupported(tag, event)
            plain = self.resolver.resolve(ScalarNode, value, (True, False))
            if plain != tag and not (tag == _FLOAT and plain == _INT):
                shown = tag.replace("tag:yaml.org,2002:", "!!")
                raise WorkflowDefinitionError(
                    f"{_clip(value)!r} is not a valid {shown}", self.source, _line(event)
                )
        if tag not in _SCALAR_TAGS:
            self._unsupported(tag, event)
        node = ScalarNode(tag, value, event.start_mark, event.end_mark, event.style)
        if tag in (_INT, _FLOAT):
            self._check_number(node, event)
        self._count(1, size, event, None)
        anchor = self._anchor(event, node)
        if anchor is not None:
            anchor.closed, anchor.size = True, size
        self._attach(node, 1, size, 0, event)

    def _check_number(self, node: ScalarNode, event: Any) -> None:
        if len(node.value) > MAX_NUMBER_DIGITS:
            raise WorkflowDefinitionError(
                f"a number of {len(node.value)} characters: numbers may have at most "
                f"{MAX_NUMBER_DIGITS} digits (quote it to make it a string)",
                self.source,
                _line(event),
            )
        if node.tag == _FLOAT and not math.isfinite(self.numbers.construct_yaml_float(node)):
            raise WorkflowDefinitionError(
                f"{_clip(node.value)!r} is not a finite number: JSON has no NaN or infinity "
                "(quote it to make it a string)",
                self.source,
                _line(event),
            )

    def _at_key(self) -> bool:
        top = self.stack[-1] if self.stack else None
        return top is not None and top.key is _NO_KEY and isinstance(top.node, MappingNode)

    def _open(self, event: Any, mapping: bool) -> None:
        if len(self.stack) >= self.limits.max_depth:
            self._limit(
                f"nested deeper than {self.limits.max_depth} levels",
                event,
                "max_depth",
                self.limits.max_depth,
            )
        tag = event.tag
        default = _MAP if mapping else _SEQ
        if tag is None or tag == "!":
            tag = default
        if tag != default:
            self._unsupported(tag, event)
        node: MappingNode | SequenceNode
        if mapping:
            node = MappingNode(tag, [], event.start_mark, None, event.flow_style)
        else:
            node = SequenceNode(tag, [], event.start_mark, None, event.flow_style)
        self._count(1, 0, event, None)
        is_steps = (
            not mapping
            and len(self.stack) == 1
            and isinstance(self.stack[0].node, MappingNode)
            and isinstance(self.stack[0].key, ScalarNode)
            and self.stack[0].key.value == "steps"
        )
        opened = _Open(node, self._anchor(event, node), is_steps=is_steps)
        self.stack.append(opened)
        if opened.anchor is not None:
            self.anchored.append(opened)

    def _close(self, event: Any) -> None:
        done = self.stack.pop()
        node = done.node
        node.end_mark = event.end_mark
        if isinstance(node, MappingNode):
            node.value = done.pairs
        height = done.height + 1
        if done.anchor is not None:
            self.anchored.pop()
            done.anchor.closed = True
            done.anchor.nodes, done.anchor.size = done.nodes, done.size
            done.anchor.height = height
        self._attach(node, done.nodes, done.size, height, event)

    def _alias(self, event: Any) -> None:
        anchor = self.anchors.get(event.anchor)
        if anchor is None:
            raise WorkflowDefinitionError(
                f"alias *{event.anchor} refers to no anchor (define '&{event.anchor}' first)",
                self.source,
                _line(event),
            )
        if not anchor.closed:
            raise WorkflowDefinitionError(
                f"alias *{event.anchor} is inside the value it refers to (anchored on line "
                f"{anchor.line}): a value cannot contain itself",
                self.source,
                _line(event),
            )
        if len(self.stack) + anchor.height > self.limits.max_depth:
            self._limit(
                f"alias *{event.anchor} nests deeper than {self.limits.max_depth} levels",
                event,
                "max_depth",
                self.limits.max_depth,
            )
        self._count(anchor.nodes, anchor.size, event, event.anchor)
        node = anchor.node
        if isinstance(node, ScalarNode) and node.tag not in (_STR, _MERGE) and self._at_key():
            node = ScalarNode(_STR, node.value, node.start_mark, node.end_mark, node.style)
        self._attach(node, anchor.nodes, anchor.size, anchor.height, event)

    # -- bookkeeping -----------------------------------------------------------------------

    def _anchor(self, event: Any, node: Node) -> _Anchor | None:
        name = event.anchor
        if name is None:
            return None
        if name in self.anchors:
            raise WorkflowDefinitionError(
                f"anchor &{name} is defined twice (first on line {self.anchors[name].line})",
                self.source,
                _line(event),
            )
        anchor = _Anchor(node, _line(event))
        self.anchors[name] = anchor
        return anchor

    def _count(self, nodes: int, size: int, event: Any, alias: str | None) -> None:
        self.nodes += nodes
        self.size += size
        for open_ in self.anchored:  # what an alias of them will copy, counted as it comes
            open_.nodes += nodes
            open_.size += size
        if self.nodes > self.limits.max_nodes:
            what = f"{self.limits.max_nodes} YAML nodes"
            self._limit(
                f"alias *{alias} makes the document larger than {what} once aliases are expanded"
                if alias
                else f"the document has more than {what}",
                event,
                "max_nodes",
                self.limits.max_nodes,
            )
        if self.size > self.limits.max_expanded_bytes:
            what = f"{self.limits.max_expanded_bytes} bytes of values"
            self._limit(
                f"alias *{alias} makes the document hold more than {what} once aliases are expanded"
                if alias
                else f"the document holds more than {what}",
                event,
                "max_expanded_bytes",
                self.limits.max_expanded_bytes,
            )

    def _attach(self, node: Node, nodes: int, size: int, height: int, event: Any) -> None:
        if not self.stack:
            self.root = node
            return
        parent = self.stack[-1]
        if parent.anchor is None:  # (anchored ones were counted as the nodes came)
            parent.nodes += nodes
            parent.size += size
        parent.height = max(parent.height, height)
        if isinstance(parent.node, MappingNode):
            if parent.key is _NO_KEY:
                parent.key = node
            else:
                parent.pairs.append((parent.key, node))
                parent.key = _NO_KEY
            return
        parent.node.value.append(node)
        if parent.is_steps and len(parent.node.value) > self.limits.max_steps:
            raise WorkflowLimitError(
                f"more than {self.limits.max_steps} steps",
                self.source,
                node.start_mark.line + 1,  # where the first step too many starts
                bound="max_steps",
                limit=self.limits.max_steps,
            )

    def _check_steps(self) -> None:
        """The steps counted once more on the whole document: an alias may stand for them."""
        if not isinstance(self.root, MappingNode):
            return
        limit = self.limits.max_steps
        for key, steps in self.root.value:
            listed = steps.value if isinstance(steps, SequenceNode) else ()
            if key.value == "steps" and len(listed) > limit:
                raise WorkflowLimitError(
                    f"more than {limit} steps",
                    self.source,
                    listed[limit].start_mark.line + 1,
                    bound="max_steps",
                    limit=limit,
                )

    def _unsupported(self, tag: str, event: Any) -> None:
        shown = tag.replace("tag:yaml.org,2002:", "!!")
        raise WorkflowDefinitionError(
            f"unsupported YAML tag {shown!r}: a workflow holds JSON data (strings, numbers, "
            "true/false, null, lists and mappings)",
            self.source,
            _line(event),
        )

    def _limit(self, detail: str, event: Any, bound: str, limit: float) -> None:
        raise WorkflowLimitError(detail, self.source, _line(event), bound=bound, limit=limit)


def _clip(text: str, width: int = 40) -> str:
    return text if len(text) <= width else text[: width - 3] + "..."


def _line(event: Any) -> int:
    return int(event.start_mark.line) + 1
