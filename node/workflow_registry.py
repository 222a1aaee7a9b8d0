"""The node's registry of workflow files: found at start, registered by their ``id``.

Where a node looks, in this order (the first file of an id wins):

1. its workflows folders (``workflows.dirs``, default ``[HOME/workflows]``): every
   ``*.yaml`` / ``*.yml`` regular file directly in each (not in subfolders; hidden files
   skipped), in name order;
2. installed distributions that publish a folder through the entry-point group
   ``hivemesh.workflows``: an entry point's value names an importable **package** (e.g.
   ``my_flows = "my_flows.workflows"``), and the YAML files in that package's directory are
   its workflows (found without importing the package itself; its parents are imported, as
   for any import). Distributions in name order.

Each file is read within ``workflow_files.max_bytes`` and parsed by the node's parse workers
(node.parse_pool), like a submitted file. A file that cannot be used — bad YAML, a bound
broken, an id already registered, a sub-workflow that is not registered or that runs itself
(directly or through others), a ``run`` schedule whose workflow has a required input — is
one logged line naming the file and why, kept in :attr:`WorkflowRegistry.problems` (the
``workflows`` control request lists them), and skipped: the node starts anyway.
"""

from __future__ import annotations

import difflib
import importlib.util
import logging
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from importlib.metadata import entry_points
from pathlib import Path

import trio

from node.errors import NodeError
from protocols import logsafe
from workflows.dsl import ParseLimits, WorkflowSpec, read_workflow_file
from workflows.errors import WorkflowDefinitionError, WorkflowError

log = logging.getLogger(__name__)

ENTRY_POINT_GROUP = "hivemesh.workflows"
SUFFIXES = (".yaml", ".yml")
MAX_PROBLEMS = 1000  # problems kept (and listed); beyond, counted only
# a parse worker may still be starting when the node registers its files: a file waits this
# long in all for one before it is reported as a problem
PARSER_START_S = 60.0

Parse = Callable[[bytes, str], Awaitable[WorkflowSpec]]


@dataclass(frozen=True)
class WorkflowFile:
    """A file to register: its path, and where it came from (``source``: the path itself,
    or ``package:<distribution>``)."""

    path: Path
    source: str


@dataclass(frozen=True)
class Registered:
    """A registered workflow: its spec, where it came from and its file."""

    spec: WorkflowSpec
    source: str
    path: str


@dataclass(frozen=True)
class Problem:
    """A file (or a folder or a package) that was skipped, and why (one line)."""

    source: str
    error: str


@dataclass
class WorkflowRegistry:
    """The workflows a node registered at start, by id (empty until :func:`load_registry`)."""

    workflows: dict[str, Registered] = field(default_factory=dict)
    problems: list[Problem] = field(default_factory=list)
    problems_dropped: int = 0
    loaded: bool = False
    ready: trio.Event = field(default_factory=trio.Event)  # set once loaded

    def get(self, workflow_id: str) -> Registered | None:
        return self.workflows.get(workflow_id)

    def all(self) -> list[Registered]:
        """The registered workflows, by id."""
        return [self.workflows[k] for k in sorted(self.workflows)]

    def problem(self, source: str, error: str) -> None:
        """Record (and log, one line) a file skipped (each text cut to 1000 characters)."""
        source, error = _cut(source), _cut(error)
        log.warning("workflow file %s skipped: %s", logsafe(source), logsafe(error))
        if len(self.problems) < MAX_PROBLEMS:
            self.problems.append(Problem(source, error))
        else:
            self.problems_dropped += 1

    def unknown(self, workflow_id: str) -> WorkflowError:
        """The error for a workflow id this node has not registered."""
        known = sorted(self.workflows)
        return WorkflowError(
            f"no workflow {workflow_id!r} is registered on this node"
            f"{suggest(workflow_id, known)} (registered: {listing(known)}; "
            "'hivemesh workflows' lists them)"
        )

    def check_sub_workflows(self, spec: WorkflowSpec) -> None:
        """Refuse ``spec`` if a step runs a workflow that is not registered, or if it would
        run itself (directly or through others): :class:`WorkflowDefinitionError` at the
        step's line."""
        for step, child in spec.sub_workflows():
            if child not in self.workflows and child != spec.id:
                known = sorted(self.workflows)
                raise WorkflowDefinitionError(
                    f"step {step.name!r} runs workflow {child!r}, which is not registered on "
                    f"this node{suggest(child, known)} (registered: "
                    f"{listing(known)})",
                    spec.source,
                    step.line,
                )
            path = self._path_to(child, spec.id, [spec.id])
            if path is not None:
                raise WorkflowDefinitionError(
                    f"step {step.name!r} makes workflow {spec.id!r} run itself "
                    f"({' -> '.join(path)}): a workflow cannot contain itself",
                    spec.source,
                    step.line,
                )

    def _path_to(self, start: str, target: str, path: list[str]) -> list[str] | None:
        """A chain of sub-workflows from ``start`` to ``target`` through registered ones,
        after ``path``; None if there is none. Iterative, and each workflow explored once
        (a registry of many workflows nested deep, or sharing sub-workflows, costs linear
        time, not a recursion error or exponential time)."""
        explored: set[str] = set()
        chain: list[str] = [start]
        pending = [iter(self._children(start))]
        if start == target:
            return [*path, start]
        while pending:
            child = next(pending[-1], None)
            if child is None:
                explored.add(chain.pop())
                pending.pop()
                continue
            if child == target:
                return [*path, *chain, child]
            if child in explored or child in chain:
                continue  # (a cycle not through target: reported at its own load)
            chain.append(child)
            pending.append(iter(self._children(child)))
        return None

    def _children(self, workflow_id: str) -> list[str]:
        entry = self.workflows.get(workflow_id)
        return [child for _, child in entry.spec.sub_workflows()] if entry is not None else []


def _cut(text: str, limit: int = 1000) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def suggest(name: str, candidates: Iterable[str]) -> str:
    close = difflib.get_close_matches(name, list(candidates), n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


def listing(names: Iterable[str], most: int = 20) -> str:
    """``'a', 'b'``, at most ``most`` of them (then how many more); ``none``."""
    names = list(names)
    shown = ", ".join(repr(n) for n in names[:most])
    more = f" and {len(names) - most} more" if len(names) > most else ""
    return shown + more if names else "none"


def folder_files(folder: Path, max_files: int) -> tuple[list[WorkflowFile], list[Problem]]:
    """The workflow files directly in ``folder`` (a missing folder: none), in name order."""
    try:
        names = sorted(
            entry.name
            for entry in folder.iterdir()
            if entry.suffix in SUFFIXES
            and not entry.name.startswith(".")
            # (regular files only: reading a FIFO named x.yaml would never end)
            and entry.is_file()
        )
    except FileNotFoundError:
        return [], []
    except OSError as exc:
        return [], [Problem(str(folder), f"cannot read the folder: {exc.strerror or exc}")]
    problems = []
    if len(names) > max_files:
        problems.append(
            Problem(
                str(folder),
                f"{len(names)} workflow files, more than workflows.max_files ({max_files}): "
                f"only the first {max_files} by name are read",
            )
        )
    files = [WorkflowFile(folder / name, str(folder / name)) for name in names[:max_files]]
    return files, problems


def package_folders() -> tuple[list[tuple[str, Path]], list[Problem]]:
    """The folders that installed distributions publish under ``hivemesh.workflows``:
    (distribution name, folder), by distribution name."""
    found: list[tuple[str, Path]] = []
    problems: list[Problem] = []
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        dist = ep.dist.name if ep.dist is not None else ep.name
        where = f"package:{dist} (entry point {ep.name} = {ep.value})"
        if ":" in ep.value:
            problems.append(Problem(where, "the value must name a package, not 'module:attr'"))
            continue
        try:
            spec = importlib.util.find_spec(ep.value)
        except (ImportError, ValueError) as exc:
            problems.append(Problem(where, f"cannot find package {ep.value!r}: {exc}"))
            continue
        if spec is None:
            problems.append(Problem(where, f"no package {ep.value!r} is installed"))
            continue
        if spec.submodule_search_locations:
            folder = Path(next(iter(spec.submodule_search_locations)))
        elif spec.origin and spec.has_location:
            folder = Path(spec.origin).parent
        else:
            problems.append(Problem(where, f"{ep.value!r} has no folder"))
            continue
        found.append((dist, folder))
    found.sort(key=lambda item: item[0])
    return found, problems


def workflow_files(
    dirs: Iterable[Path], max_files: int
) -> tuple[list[WorkflowFile], list[Problem]]:
    """Every file to register: the folders', then the packages' (see the module doc)."""
    files: list[WorkflowFile] = []
    problems: list[Problem] = []
    for folder in dirs:
        more, trouble = folder_files(folder, max_files)
        files += more
        problems += trouble
    packages, trouble = package_folders()
    problems += trouble
    for dist, folder in packages:
        more, trouble = folder_files(folder, max_files)
        files += [WorkflowFile(f.path, f"package:{dist}") for f in more]
        problems += [Problem(f"package:{dist} ({p.source})", p.error) for p in trouble]
    return files, problems


def _label(source: str, path: str) -> str:
    return path if source == path else f"{source} ({path})"


async def load_registry(
    files: Iterable[WorkflowFile],
    parse: Parse,
    limits: ParseLimits,
    problems: Iterable[Problem] = (),
    registry: WorkflowRegistry | None = None,
    concurrency: int = 2,
) -> WorkflowRegistry:
    """Read, parse and register ``files`` in order (into ``registry``, or a new one), up to
    ``concurrency`` at once (the parse workers); whatever cannot be registered is a problem
    of the registry, never an exception."""
    registry = registry if registry is not None else WorkflowRegistry()
    for p in problems:
        registry.problem(p.source, p.error)
    files = list(files)
    parsed: list[WorkflowSpec | Exception | None] = [None] * len(files)
    limiter = trio.Semaphore(max(1, concurrency))

    async def read_and_parse(index: int, file: WorkflowFile) -> None:
        async with limiter:
            try:
                data = await trio.to_thread.run_sync(read_workflow_file, file.path, limits)
                parsed[index] = await _parse_patiently(parse, data, str(file.path))
            except (WorkflowError, NodeError) as exc:
                parsed[index] = exc

    # parsed at once by the pool's workers, registered in order (the first of an id wins)
    async with trio.open_nursery() as nursery:
        for index, file in enumerate(files):
            nursery.start_soon(read_and_parse, index, file)
    for file, result in zip(files, parsed, strict=True):
        label = _label(file.source, str(file.path))
        if not isinstance(result, WorkflowSpec):
            registry.problem(label, str(result))
            continue
        spec = result
        first = registry.workflows.get(spec.id)
        if first is not None:
            registry.problem(
                label,
                f"duplicate workflow id {spec.id!r}: already registered from {first.path}",
            )
            continue
        if spec.run is not None:
            required = [i.name for i in spec.inputs if i.required]
            if required:
                registry.problem(
                    label,
                    f"workflow {spec.id!r} runs by itself ('run'), so every input needs a "
                    f"default: {listing(required)} has none",
                )
                continue
        registry.workflows[spec.id] = Registered(spec, file.source, str(file.path))
    _drop_broken_references(registry)
    registry.loaded = True
    registry.ready.set()
    return registry


async def _parse_patiently(parse: Parse, data: bytes, source: str) -> WorkflowSpec:
    """``parse``, waiting for a parse worker that is still starting (the node's start)."""
    from node.errors import ParserBusyError

    with trio.move_on_after(PARSER_START_S):
        while True:
            try:
                return await parse(data, source)
            except ParserBusyError:
                await trio.sleep(0.1)
    raise ParserBusyError(f"no workflow-parse worker was free for {PARSER_START_S:g} s")


def _drop_broken_references(registry: WorkflowRegistry) -> None:
    """Unregister the workflows whose sub-workflows are not registered or run themselves,
    until none is left (one dropped may break another)."""
    changed = True
    while changed:
        changed = False
        for wid in sorted(registry.workflows):
            entry = registry.workflows[wid]
            try:
                registry.check_sub_workflows(entry.spec)
            except WorkflowDefinitionError as exc:
                registry.problem(_label(entry.source, entry.path), str(exc))
                del registry.workflows[wid]
                changed = True
