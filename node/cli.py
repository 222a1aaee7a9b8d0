"""``hivemesh``: the command line.

Click is used for parsing, help and shell-friendly errors (a dependency worth its weight
over hand-rolled argparse subcommand plumbing). Errors a user can cause print one line
and exit 1; usage errors exit 2; no tracebacks.
"""

from __future__ import annotations

import contextlib
import json
import logging
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, NoReturn, TypeVar

import click

from node.errors import NodeError
from node.home import Home, default_home
from workflows.errors import WorkflowError

F = TypeVar("F", bound=Callable[..., Any])


def fail(message: str, code: int = 1) -> NoReturn:
    # one line, whatever the message: a stray newline must not split or forge output lines
    click.echo(f"error: {' | '.join(message.splitlines()) or message}", err=True)
    sys.exit(code)


def home_option(f: F) -> F:
    return click.option(
        "--home",
        "home",
        type=click.Path(path_type=Path, file_okay=False),
        default=None,
        help="Home folder (default: $HIVEMESH_HOME, else ~/.hivemesh).",
    )(f)


def _remember_swarm_key(ctx: click.Context, param: click.Parameter, value: Path | None) -> None:
    ctx.meta["hivemesh.swarm_key"] = value


def swarm_key_option(help_text: str, *, expose: bool) -> Callable[[F], F]:
    return click.option(
        "--swarm-key",
        "swarm_key",
        type=click.Path(path_type=Path, dir_okay=False),
        default=None,
        metavar="FILE",
        help=help_text,
        expose_value=expose,
        callback=None if expose else _remember_swarm_key,
    )


def target_options(f: F) -> F:
    f = swarm_key_option(
        "Swarm key to reach the node with (default: the key the home's node runs with, "
        "else HOME/swarm.key).",
        expose=False,
    )(f)
    f = click.option(
        "--node",
        "node",
        default=None,
        metavar="MULTIADDR",
        help="Talk to the node at this /ip4/../tcp/../p2p/.. address.",
    )(f)
    f = click.option("--json", "as_json", is_flag=True, help="Print JSON.")(f)
    return home_option(f)


def _home(path: Path | None) -> Home:
    return Home(path.expanduser() if path is not None else default_home())


def _emit(as_json: bool, data: Any, human: Callable[[], None]) -> None:
    if as_json:
        click.echo(json.dumps(data, indent=2, sort_keys=False))
    else:
        human()


def _call(home: Path | None, node: str | None, message: Any, timeout_s: float | None = 30.0) -> Any:
    from node.client import call

    swarm_key = click.get_current_context().meta.get("hivemesh.swarm_key")
    return call(_home(home), node, message, timeout_s=timeout_s, swarm_key_file=swarm_key)


class _Group(click.Group):
    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except (NodeError, WorkflowError) as exc:
            fail(str(exc))
        except KeyboardInterrupt:
            fail("interrupted", 130)


@click.group(cls=_Group)
@click.version_option(package_name="hivemesh")
def main() -> None:
    """hivemesh: a peer-to-peer swarm that routes workflow steps to nodes that can run them."""
    # The CLI reports errors itself; libp2p's own warnings would only repeat them.
    logging.basicConfig(level=logging.ERROR, format="%(levelname)s %(name)s: %(message)s")
    for name in ("libp2p", "multiaddr", "async_service"):
        logging.getLogger(name).setLevel(logging.CRITICAL)


@main.command()
@home_option
@swarm_key_option(
    "Join the swarm of this swarm.key file (it is copied into the home). "
    "Default: create a new swarm.",
    expose=True,
)
@click.option(
    "--open",
    "open_swarm",
    is_flag=True,
    help="An open swarm: no swarm key, anyone who can reach the node may connect.",
)
def init(home: Path | None, swarm_key: Path | None, open_swarm: bool) -> None:
    """Create an identity key, a client key, a default config and a swarm key (a new private
    swarm, unless --swarm-key joins one or --open) in the home folder."""
    if swarm_key is not None and open_swarm:
        fail("--swarm-key joins a private swarm and --open makes an open one: choose one", 2)
    h = _home(home)
    report = h.init(join=swarm_key, open_swarm=open_swarm)
    click.echo(f"{'initialised' if report.created else 'already initialised'} {h.path}")
    click.echo(f"peer id: {report.peer_id}")
    click.echo(f"config:  {h.config_file}")
    click.echo(f"swarm:   {report.swarm_note}")
    if report.swarm.key is None:
        click.echo("warning: an open swarm: anyone who can reach this node may connect to it")
    elif report.swarm.created:
        click.echo(
            "         copy this file to every machine that should join this swarm "
            "('hivemesh init --swarm-key FILE')"
        )


@main.group("node")
def node_group() -> None:
    """Run and inspect a node."""


@node_group.command("start")
@home_option
@click.option(
    "--listen",
    multiple=True,
    metavar="MULTIADDR",
    help="Listen address (repeatable). Default /ip4/127.0.0.1/tcp/0.",
)
@click.option(
    "--bootstrap",
    multiple=True,
    metavar="MULTIADDR",
    help="Peer to join through, with /p2p/<peer id> (repeatable).",
)
@click.option("--tools", default=None, metavar="GROUP,...|all|none", help="Tool groups to offer.")
@click.option(
    "--config",
    "config_file",
    type=click.Path(path_type=Path, dir_okay=False),
    default=None,
    help="Config file (default: HOME/config.yaml).",
)
@swarm_key_option(
    "Run in the swarm of this swarm.key file (default: swarm.key_file, else HOME/swarm.key).",
    expose=True,
)
@click.option("--num-cpus", type=int, default=None, help="CPUs for the node's local Ray.")
@click.option("--ray-address", default=None, help="Join this Ray cluster instead.")
@click.option(
    "--log-level",
    default=None,
    type=click.Choice(["DEBUG", "INFO", "WARNING", "ERROR"], case_sensitive=False),
)
def node_start(
    home: Path | None,
    listen: tuple[str, ...],
    bootstrap: tuple[str, ...],
    tools: str | None,
    config_file: Path | None,
    swarm_key: Path | None,
    num_cpus: int | None,
    ray_address: str | None,
    log_level: str | None,
) -> None:
    """Run a node in the foreground until SIGINT or SIGTERM."""
    h = _home(home)
    # First, in milliseconds (before libp2p, Ray or any tool is imported): the home is
    # writable and its journal files openable, no node runs from it (its lock, held until
    # this process ends), and a stale node.json is removed.
    with contextlib.ExitStack() as stack:
        claim = stack.enter_context(h.claim_for_node())
        from node.config import load_config

        if claim.stale_runtime is not None:
            pid = claim.stale_runtime.get("pid")
            click.echo(
                f"removed {h.runtime_file}: left by a node that is no longer running"
                + (f" (pid {pid})" if isinstance(pid, int) else ""),
                err=True,
            )
        if not h.node_key.exists():
            h.init_identity()  # the swarm is settled below, once the config is known
        flags: dict[str, Any] = {}
        network: dict[str, Any] = {}
        if listen:
            network["listen"] = list(listen)
        if bootstrap:
            network["bootstrap"] = list(bootstrap)
        if network:
            flags["network"] = network
        if tools is not None:
            flags["tools"] = tools
        ray: dict[str, Any] = {}
        if num_cpus is not None:
            ray["num_cpus"] = num_cpus
        if ray_address is not None:
            ray["address"] = ray_address
        if ray:
            flags["ray"] = ray
        if log_level is not None:
            flags["log_level"] = log_level.upper()
        if swarm_key is not None:
            flags["swarm"] = {"key_file": swarm_key.expanduser().absolute(), "open": False}
        cfg_path = config_file if config_file is not None else h.config_file
        if config_file is not None and not config_file.exists():
            fail(f"config file {config_file} does not exist")
        config = load_config(config_file=cfg_path, flags=flags)
        # the ports next, still before libp2p, Ray and the tools are imported
        # (port 0: the port of the last start if it is free; ListenError if a port is taken)
        listen_sockets = h.bind_listen(config.network.listen, remember=config.network.remember_port)
        stack.callback(listen_sockets.close)
        from workflows.tools import ToolRegistry

        try:
            ToolRegistry.from_entry_points(config.tools)
        except ValueError as exc:
            fail(str(exc))
        # A home without a key that is not open starts a new private swarm, and says so.
        swarm = h.membership(config.swarm, create=True)
        if swarm.created:
            click.echo(
                f"created a new swarm key at {swarm.key_file}: this node starts a new private "
                "swarm; copy that file to machines that should join it "
                "('hivemesh init --swarm-key FILE')",
                err=True,
            )
        from node.daemon import run_daemon

        run_daemon(config, h, swarm, listen_sockets)


@node_group.command("info")
@target_options
def node_info(home: Path | None, node: str | None, as_json: bool) -> None:
    """Peer id, addresses, tools and Ray cluster of a node."""
    from protocols import control

    info = _call(home, node, control.InfoRequest())
    ray = info.ray.model_dump() if info.ray is not None else None
    data = {
        "peer_id": info.peer_id,
        "addrs": info.addrs,
        "tools": info.tools,
        "version": info.version,
        "ray": ray,
    }

    def human() -> None:
        click.echo(f"peer id: {info.peer_id}")
        for a in info.addrs:
            click.echo(f"addr:    {a}")
        click.echo(f"tools:   {', '.join(info.tools) or '(none)'}")
        click.echo(f"version: {info.version}")
        if info.ray is not None:
            how = "joined cluster" if info.ray.joined else "own Ray"
            cpus = f", {info.ray.cpus} CPUs" if info.ray.cpus is not None else ""
            click.echo(f"ray:     {how} at {info.ray.address or '(unknown)'}{cpus}")

    _emit(as_json, data, human)


def _parse_inputs(pairs: tuple[str, ...]) -> dict[str, Any]:
    inputs: dict[str, Any] = {}
    for pair in pairs:
        name, sep, raw = pair.partition("=")
        if not sep or not name:
            raise click.BadParameter(f"{pair!r} is not NAME=VALUE", param_hint="--input")
        try:
            inputs[name] = json.loads(raw)
        except ValueError:
            inputs[name] = raw
    return inputs


def start_options(id_help: str) -> Callable[[F], F]:
    """The options of the commands that start a workflow (submit, run): inputs, id, wait."""

    def decorate(fn: F) -> F:
        fn = click.option(
            "--wait",
            is_flag=True,
            help="Wait for the result, showing each step's progress live (with --json: the "
            "result only).",
        )(fn)
        fn = click.option("--id", "workflow_id", default=None, help=id_help)(fn)
        return click.option(
            "--input",
            "inputs",
            multiple=True,
            metavar="NAME=VALUE",
            help="Workflow input; VALUE is JSON if it parses, else a string.",
        )(fn)

    return decorate


@main.command()
@click.argument("file", type=click.Path(path_type=Path, dir_okay=False))
@target_options
@start_options("Workflow id (idempotent submit).")
def submit(
    file: Path,
    home: Path | None,
    node: str | None,
    as_json: bool,
    inputs: tuple[str, ...],
    workflow_id: str | None,
    wait: bool,
) -> None:
    """Submit a workflow YAML file to a node.

    The file is read and parsed here first, within the home's workflow_files, so that a
    bad file fails at once with its line. The workflow's id is chosen here (unless --id),
    so that a submit whose answer is lost can be asked about, or repeated, by that id.
    """
    import uuid

    import pydantic

    from node.config import load_config
    from protocols import control
    from workflows.dsl import parse_workflow, read_workflow_file

    h = _home(home)
    limits = load_config(config_file=h.config_file).workflow_files.parse_limits()
    data = read_workflow_file(file, limits)  # (bounded: never more than max_bytes + 1)
    spec = parse_workflow(data, source=str(file), limits=limits)
    bound = _parse_inputs(inputs)
    spec.bind_inputs(bound)  # unknown or missing inputs fail here, before any network
    wid = workflow_id or f"{spec.id[:200]}-{uuid.uuid4().hex[:12]}"
    try:
        request = control.SubmitRequest(
            workflow=data.decode(), source=file.name, inputs=bound, workflow_id=wid
        )
    except pydantic.ValidationError as exc:
        problem = exc.errors()[0]
        where = ".".join(str(part) for part in problem["loc"])
        fail(f"cannot send this workflow: {where}: {problem['msg']}")
    submitted = _submit_once_or_twice(home, node, request, wid)
    _after_submit(home, node, submitted, wid, as_json=as_json, wait=wait, verb="submitted")


@main.command("workflows")
@target_options
def workflows_(home: Path | None, node: str | None, as_json: bool) -> None:
    """Workflows the node registered at start (its workflows folders and installed packages),
    with their inputs and where they came from; and the files it skipped, with why."""
    from protocols import control

    reply = _call_newer(home, node, "workflows", control.WorkflowsRequest())
    data = {
        "workflows": [w.model_dump(mode="json", exclude={"type"}) for w in reply.workflows],
        "problems": [p.model_dump(mode="json") for p in reply.problems],
        "problems_dropped": reply.problems_dropped,
        "workflows_dropped": reply.workflows_dropped,
    }

    def human() -> None:
        if not reply.workflows:
            click.echo("no registered workflows (put workflow files in HOME/workflows)")
        for w in reply.workflows:
            title = f"  {w.name}" if w.name != w.workflow else ""
            click.echo(f"{w.workflow}{title}  ({w.source})")
            if w.description:
                click.echo(f"    {w.description}")
            for i in w.inputs:
                given = "required" if i.required else f"default {json.dumps(i.default)}"
                if i.default_omitted:
                    given = "a default too large to show"
                about = f": {i.description}" if i.description else ""
                click.echo(f"    input {i.name} ({given}){about}")
            if w.schedule:
                click.echo(f"    runs {w.schedule}")
        if reply.workflows_dropped:
            click.echo(f"... and {reply.workflows_dropped} more (too many for one answer)")
        for p in reply.problems:
            click.echo(f"skipped {p.source}: {p.error}")
        if reply.problems_dropped:
            click.echo(f"... and {reply.problems_dropped} more skipped (see the node's log)")

    _emit(as_json, data, human)


@main.command()
@click.argument("name")
@target_options
@start_options("The run's id (idempotent start).")
def run(
    name: str,
    home: Path | None,
    node: str | None,
    as_json: bool,
    inputs: tuple[str, ...],
    workflow_id: str | None,
    wait: bool,
) -> None:
    """Start a workflow the node registered, by its id ('hivemesh workflows' lists them).

    The run's id is chosen here (unless --id), so that a start whose answer is lost can be
    asked about, or repeated, by that id."""
    import uuid

    import pydantic

    from protocols import control

    wid = workflow_id or f"{name[:200]}-{uuid.uuid4().hex[:12]}"
    try:
        request = control.RunRequest(workflow=name, inputs=_parse_inputs(inputs), workflow_id=wid)
    except pydantic.ValidationError as exc:
        problem = exc.errors()[0]
        where = ".".join(str(part) for part in problem["loc"])
        fail(f"cannot send this request: {where}: {problem['msg']}")
    submitted = _started(home, node, request, wid)
    _after_submit(home, node, submitted, wid, as_json=as_json, wait=wait, verb="started")


def _started(home: Path | None, node: str | None, request: Any, wid: str) -> Any:
    """``_submit_once_or_twice`` for a ``run``: a node that does not know it, or the name,
    is one line saying what to do."""
    from node.errors import RequestFailedError

    try:
        return _submit_once_or_twice(home, node, request, wid)
    except RequestFailedError as exc:
        if exc.code == "unknown_type":
            fail("the node does not know 'run' (it runs an older hivemesh): upgrade it")
        if exc.code == "not_found":
            fail(str(exc))
        raise


def _after_submit(
    home: Path | None,
    node: str | None,
    submitted: Any,
    wid: str,
    *,
    as_json: bool,
    wait: bool,
    verb: str,
) -> None:
    """What ``submit`` and ``run`` print once the node has the workflow: its id and status,
    or (``wait``) its progress and result."""
    from protocols import control

    if not wait:
        done = {"workflow_id": wid, "status": submitted.status, "created": submitted.created}

        def human() -> None:
            said = verb if submitted.created else f"already {verb}"
            if submitted.status == "PENDING":
                click.echo(
                    f"{said} {wid} (PENDING: the node is still creating it; "
                    f"'hivemesh status {wid}' shows when it runs)"
                )
            else:
                click.echo(f"{said} {wid} ({submitted.status})")

        _emit(as_json, done, human)
        return
    if as_json:  # (the documented shape: the result alone, one JSON document)
        result = _call(
            home, node, control.ResultRequest(workflow_id=wid, wait=True), timeout_s=None
        )
    else:  # each step's progress, live, then the result
        _, result = _watch(home, node, wid, as_json=False, then_result=True)
    # (after the progress, whose last line says how the workflow ended: its outputs only)
    _print_result(result, as_json, full=True, announced=not as_json)


def _watch(
    home: Path | None,
    node: str | None,
    workflow_id: str,
    *,
    as_json: bool,
    since: int = 0,
    then_result: bool = False,
) -> tuple[Any, Any]:
    """Show the workflow's progress until it ends: a live table on a terminal, else plain
    lines (JSON lines with ``as_json``). Returns its ``workflow_finished`` event and, if
    ``then_result``, its ``result``. Ctrl-C detaches (the workflow goes on)."""
    from node.client import ask, run, watch
    from node.watch_view import JsonView, PlainView, TableView
    from protocols import control

    swarm_key = click.get_current_context().meta.get("hivemesh.swarm_key")
    table = not as_json and sys.stdout.isatty()

    def echo(line: str) -> None:
        click.echo(line)
        sys.stdout.flush()  # (a line as it happens, through a pipe too)

    view: Any = JsonView(echo) if as_json else TableView() if table else PlainView(echo)

    async def follow(host: Any, peer: str) -> tuple[Any, Any]:
        final = await watch(host, peer, workflow_id, view, since=since)
        if not then_result:
            return final, None
        return final, await ask(host, peer, control.ResultRequest(workflow_id=workflow_id), 30)

    try:
        with view if table else contextlib.nullcontext():
            return run(_home(home), node, follow, swarm_key_file=swarm_key)
    except KeyboardInterrupt:
        fail(
            f"detached; workflow {workflow_id} goes on "
            f"('hivemesh watch {workflow_id}' follows it again)",
            130,
        )


@main.command()
@click.argument("workflow_id")
@target_options
@click.option(
    "--since", type=click.IntRange(min=0), default=0, help="Show only the events after this seq."
)
def watch(workflow_id: str, home: Path | None, node: str | None, as_json: bool, since: int) -> None:
    """Follow a workflow's progress live until it ends: one line per step on a terminal,
    one line per event otherwise, JSON lines with --json. Ctrl-C detaches; the workflow goes
    on. Exits 1 unless the workflow ends SUCCESSFUL."""
    final, _ = _watch(home, node, workflow_id, as_json=as_json, since=since)
    if final.status != "SUCCESSFUL":
        sys.exit(1)


def _submit_once_or_twice(home: Path | None, node: str | None, request: Any, wid: str) -> Any:
    """Send a submit; if no answer comes, send it again (same id: the node creates the
    workflow once); if none comes again, say how to find out what happened."""
    from node.errors import NoAnswerError

    try:
        return _call(home, node, request)
    except NoAnswerError:
        pass
    try:
        return _call(home, node, request)
    except NoAnswerError as exc:
        fail(
            f"{exc}; the workflow may have been submitted as {wid}: see 'hivemesh status "
            f"{wid}', or submit again with --id {wid} (the same id is never created twice)"
        )


def _print_result(result: Any, as_json: bool, *, full: bool, announced: bool = False) -> None:
    failed = result.status != "SUCCESSFUL"
    if as_json:
        if full:
            data: dict[str, Any] = {
                "workflow_id": result.workflow_id,
                "status": result.status,
                "outputs": result.outputs,
            }
            if result.error:
                data["error"] = result.error
            click.echo(json.dumps(data, indent=2))
            if failed:
                sys.exit(1)
            return
        if not failed:
            click.echo(json.dumps(result.outputs, indent=2))
            return
    if result.status == "SUCCESSFUL":
        if not announced:
            click.echo(f"workflow {result.workflow_id} SUCCESSFUL")
        for key, value in (result.outputs or {}).items():
            click.echo(f"  {key} = {json.dumps(value)}")
        return
    if result.status == "FAILED":
        fail(f"workflow {result.workflow_id} FAILED: {result.error}")
    if result.status == "QUARANTINED":
        wid = result.workflow_id
        why = (result.error or "").removeprefix("quarantined: ")
        fail(
            f"workflow {wid} is QUARANTINED ({why}): "
            f"'hivemesh resume {wid}' if it is safe, or 'hivemesh delete {wid}'"
        )
    fail(
        f"workflow {result.workflow_id} is {result.status}; no result yet "
        "(use --wait to wait for it)"
    )


@main.command()
@click.argument("workflow_id")
@target_options
@click.option(
    "--explain",
    is_flag=True,
    help="Say why each step ran where it ran: the reason, and the candidates with their scores.",
)
def status(
    workflow_id: str, home: Path | None, node: str | None, as_json: bool, explain: bool
) -> None:
    """Status of a workflow and of each of its steps."""
    from node.scheduler import short
    from protocols import control

    request = control.StatusRequest(workflow_id=workflow_id, explain=explain)
    reply = _call(home, node, request)
    data: dict[str, Any] = {
        "workflow_id": reply.workflow_id,
        "status": reply.status,
        "steps": [
            {
                "name": s.name,
                "tool": s.tool,
                "status": s.status,
                "node": s.node,
                "reason": s.reason,
                **({"waiting": s.waiting} if s.waiting else {}),
                **({"error": s.error} if s.error else {}),
                **({"receipt": s.receipt} if s.receipt else {}),
                **(
                    {"placement": s.placement.model_dump(mode="json")}
                    if explain and s.placement
                    else {}
                ),
            }
            for s in reply.steps
        ],
    }
    if reply.error:
        data["error"] = reply.error

    def human() -> None:
        click.echo(f"workflow {reply.workflow_id} ({reply.name}): {reply.status}")
        if reply.error:
            click.echo(f"  error: {reply.error}")
        width = max((len(s.name) for s in reply.steps), default=4)
        for s in reply.steps:
            where = short(s.node) if s.node else "-"
            click.echo(f"  {s.name:<{width}}  {s.tool:<18} {s.status:<10} on {where}")
            if s.waiting:
                click.echo(f"  {'':<{width}}  {s.waiting}")
            if explain and s.reason:
                click.echo(f"  {'':<{width}}  why: {s.reason}")
            if explain and s.placement:
                for line in placement_table(s.placement):
                    click.echo(f"  {'':<{width}}    {line}")
            if explain and s.receipt:
                r = s.receipt
                click.echo(
                    f"  {'':<{width}}  receipt: signed by {short(str(r.get('delegatee')))} "
                    f"(epoch {r.get('epoch')}): {r.get('tool')} {r.get('tool_version')}, "
                    f"args sha256 {str(r.get('args_sha256'))[:16]}…, "
                    f"outputs sha256 {str(r.get('outputs_sha256'))[:16]}…"
                )
            if s.error:
                click.echo(f"  {'':<{width}}  error: {s.error}")

    _emit(as_json, data, human)


def placement_table(placement: Any) -> list[str]:
    """A step's placement (control ``Placement``) as lines of a plain-text table: each
    candidate with what placement believed of it, the chosen one first."""
    from node.scheduler import short

    def ms(value: float | None) -> str:
        return "-" if value is None else f"{value:.0f}"

    rows = [("candidate", "load", "done/failed", "run ms", "rtt ms", "est ms", "")]
    for c in placement.candidates:
        record = "-" if c.local else f"{c.done}/{c.failed}"
        if c.recent_failures:
            record += f" ({c.recent_failures} recent)"
        rows.append(
            (
                "this node" if c.local else short(c.node),
                f"{c.running}/{c.capacity}",
                record,
                ms(c.run_ms),
                ms(c.rtt_ms),
                ms(c.est_ms),
                "".join(ch if ch.isprintable() else "?" for ch in " ".join(c.note.split())),
            )
        )
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]) - 1)]
    return [
        (
            "  ".join(f"{cell:<{w}}" for cell, w in zip(r[:-1], widths, strict=True)) + f"  {r[-1]}"
        ).rstrip()
        for r in rows
    ]


@main.command()
@click.argument("workflow_id")
@target_options
@click.option("--wait", is_flag=True, help="Wait until the workflow finishes.")
def result(
    workflow_id: str, home: Path | None, node: str | None, as_json: bool, wait: bool
) -> None:
    """Outputs of a finished workflow."""
    from protocols import control

    reply = _call(
        home,
        node,
        control.ResultRequest(workflow_id=workflow_id, wait=wait),
        timeout_s=None if wait else 30.0,
    )
    _print_result(reply, as_json, full=False)


@main.command()
@click.argument("workflow_id")
@target_options
def cancel(workflow_id: str, home: Path | None, node: str | None, as_json: bool) -> None:
    """Cancel a workflow: its running steps are abandoned and it ends CANCELED."""
    from protocols import control

    reply = _call(home, node, control.CancelRequest(workflow_id=workflow_id))
    data = {"workflow_id": reply.workflow_id, "status": reply.status}
    _emit(as_json, data, lambda: click.echo(f"workflow {reply.workflow_id} {reply.status}"))


@main.command()
@click.argument("workflow_id")
@target_options
def resume(workflow_id: str, home: Path | None, node: str | None, as_json: bool) -> None:
    """Resume a workflow by hand: a QUARANTINED one, or one that is RESUMABLE, FAILED or
    CANCELED. It continues from its checkpoints; finished steps do not run again."""
    from protocols import control

    reply = _call_newer(home, node, "resume", control.ResumeRequest(workflow_id=workflow_id))
    data = {"workflow_id": reply.workflow_id, "status": reply.status}
    _emit(as_json, data, lambda: click.echo(f"workflow {reply.workflow_id} {reply.status}"))


@main.command()
@click.argument("workflow_id")
@target_options
def delete(workflow_id: str, home: Path | None, node: str | None, as_json: bool) -> None:
    """Delete a workflow that is not running (cancel a running one first): its journal
    records and stored outputs. The id can be used again."""
    from protocols import control

    reply = _call_newer(home, node, "delete", control.DeleteRequest(workflow_id=workflow_id))
    gone = reply.workflows[0] if reply.workflows else None
    was = gone.status if gone is not None else "unknown"
    data = {"workflow_id": workflow_id, "deleted": True, "was": was}
    _emit(as_json, data, lambda: click.echo(f"workflow {workflow_id} deleted (it was {was})"))


def _call_newer(home: Path | None, node: str | None, what: str, message: Any) -> Any:
    """``_call`` for a request that nodes of older hivemesh versions do not know (they
    answer ``unknown_type``): that answer becomes a line saying so."""
    from node.errors import RequestFailedError

    try:
        return _call(home, node, message)
    except RequestFailedError as exc:
        if exc.code != "unknown_type":
            raise
        fail(f"the node does not know '{what}' (it runs an older hivemesh): upgrade it")


@main.command("list")
@target_options
def list_(home: Path | None, node: str | None, as_json: bool) -> None:
    """Workflows this node knows."""
    from protocols import control

    reply = _call(home, node, control.ListRequest())
    data = [
        {
            "workflow_id": w.workflow_id,
            "name": w.name,
            "status": w.status,
            "created_at": w.created_at,
        }
        for w in reply.workflows
    ]

    def human() -> None:
        if not reply.workflows:
            click.echo("no workflows")
        for w in reply.workflows:
            click.echo(f"{w.workflow_id}  {w.status:<10}  {w.name}")

    _emit(as_json, data, human)


def _evidence_line(ev: Any) -> str:
    if ev.done == 0 and ev.failed == 0:
        text = "has not run a step for this node yet"
    else:
        text = f"{ev.done} step(s) done for this node, {ev.failed} failed"
    if ev.mean_run_ms is not None:
        text += f", mean run {ev.mean_run_ms:.0f} ms"
    if ev.rtt_ms is not None:
        text += f", rtt {ev.rtt_ms:.0f} ms"
    if ev.outstanding:
        text += f", {ev.outstanding} running now"
    return text


def _duration(seconds: float) -> str:
    whole = round(seconds)
    if whole < 60:
        return f"{whole} s"
    minutes, secs = divmod(whole, 60)
    if minutes < 60:
        return f"{minutes} min {secs} s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes} min"


def peer_lines(p: Any) -> list[str]:
    """``hivemesh peers``' lines for one control ``PeerEntry``."""
    import time

    from node.scheduler import short

    state = "connected" if p.connected else "not connected"
    lines = [f"{p.peer_id}  ({state})"]
    lines += [f"    addr:     {a}" for a in p.addrs[:3]]
    lines.append(f"    tools:    {', '.join(p.tools) or '(none)'}")
    if p.load is not None:
        lines.append(f"    card:     load {p.load} (its own claim)")
    if p.learned_from is not None:
        lines.append(f"    heard of: from peer {short(p.learned_from)} only")
    if p.evidence is not None:
        lines.append(f"    record:   {_evidence_line(p.evidence)}")
    if p.excluded is not None:
        until = time.strftime("%H:%M:%S", time.localtime(p.excluded.until))
        lines.append(
            f"    EXCLUDED: for {_duration(p.excluded.remaining_s)} more "
            f"(until {until}): {p.excluded.reason}"
        )
    return lines


@main.command()
@target_options
def peers(home: Path | None, node: str | None, as_json: bool) -> None:
    """Peers this node knows: addresses, tools, what they did for it, and exclusions."""
    from protocols import control

    reply = _call(home, node, control.PeersRequest())
    data = [p.model_dump() for p in reply.peers]

    def human() -> None:
        if not reply.peers:
            click.echo("no known peers")
        for p in reply.peers:
            click.echo("\n".join(peer_lines(p)))

    _emit(as_json, data, human)


@main.command()
@target_options
@click.option(
    "--local",
    "local_only",
    is_flag=True,
    help="This machine's own tools (installed entry points, the home's tool groups) with "
    "their input and output schemas; no node needed.",
)
def tools(home: Path | None, node: str | None, as_json: bool, local_only: bool) -> None:
    """Tools offered in the swarm, and by which peers (--local: this node's own tools)."""
    if local_only:
        _local_tools(home, as_json)
        return
    from node.scheduler import short
    from protocols import control

    reply = _call(home, node, control.ToolsRequest())
    data = [t.model_dump() for t in reply.tools]

    def human() -> None:
        if not reply.tools:
            click.echo("no tools known in the swarm")
        for t in reply.tools:
            who = ", ".join(short(p) for p in t.providers)
            click.echo(f"{t.name:<18} {t.version:<8} {who}")
            if t.description:
                click.echo(f"{'':<18} {t.description}")

    _emit(as_json, data, human)


def _local_tools(home: Path | None, as_json: bool) -> None:
    """``tools --local``: what this machine's node offers (or would), read from the installed
    entry points with the home's tool groups; imports pydantic, not libp2p or Ray."""
    from node.config import load_config
    from workflows.tools import ToolRegistry

    config = load_config(config_file=_home(home).config_file)
    try:
        registry = ToolRegistry.from_entry_points(config.tools)
    except ValueError as exc:
        fail(str(exc))
    data = {
        "tools": [{**t.spec(), "remote_callable": t.remote_callable} for t in registry],
        "installs": config.tool_packages.install,
    }

    def human() -> None:
        if not len(registry):
            click.echo(f"no tools enabled here (tools: {config.tools!r})")
        for t in registry:
            flags = [
                name
                for name, on in (
                    ("deterministic", t.deterministic),
                    ("idempotent", t.idempotent),
                    ("local only", not t.remote_callable),
                )
                if on
            ]
            extra = f"  [{', '.join(flags)}]" if flags else ""
            click.echo(f"{t.name:<18} {t.version:<8} {t.description}{extra}")
            inputs = t.input_schema().get("properties", {})
            required = set(t.input_schema().get("required", []))
            args = ", ".join(
                f"{k}{'' if k in required else '?'}: {_schema_type(v)}" for k, v in inputs.items()
            )
            outputs = ", ".join(
                f"{k}: {_schema_type(v)}"
                for k, v in t.output_schema().get("properties", {}).items()
            )
            click.echo(f"{'':<18} inputs: {args or '(none)'} -> outputs: {outputs or '(none)'}")
            if t.tags or t.resources:
                res = ", ".join(f"{k}={v:g}" for k, v in t.resources.items())
                click.echo(f"{'':<18} tags: {', '.join(t.tags) or '-'}; resources: {res or '-'}")
        state = "allowed (tools.install)" if config.tool_packages.install else "off"
        click.echo(f"packages named by steps: {state}")

    _emit(as_json, data, human)


def _schema_type(schema: dict[str, Any]) -> str:
    if "type" in schema:
        return str(schema["type"])
    options = schema.get("anyOf") or schema.get("oneOf")
    if isinstance(options, list):
        return " | ".join(_schema_type(o) for o in options if isinstance(o, dict))
    return "any"


@main.group("tool")
def tool_group() -> None:
    """Write tool packages."""


@tool_group.command("new")
@click.argument("name")
@click.option(
    "--dir",
    "folder",
    type=click.Path(path_type=Path, file_okay=False),
    default=Path("."),
    show_default=True,
    help="Where to create the package's folder.",
)
def tool_new(name: str, folder: Path) -> None:
    """Create a tool package NAME: pyproject with the hivemesh.tools entry point, the tool
    module and its test; ready for 'pip install -e' or 'pip wheel'."""
    from workflows.tools._scaffold import new_tool_package

    try:
        target = new_tool_package(name, folder)
    except ValueError as exc:
        fail(str(exc))
    click.echo(f"created {target}: pip install -e '{target}[test]' && pytest {target}")


@main.group("handoffs", invoke_without_command=True)
@target_options
@click.pass_context
def handoffs(ctx: click.Context, home: Path | None, node: str | None, as_json: bool) -> None:
    """Steps peers are running on this node (peer, tool, age, deadline)."""
    if ctx.invoked_subcommand is not None:
        ctx.obj = {"home": home, "node": node, "as_json": as_json}
        return
    from protocols import control

    reply = _call(home, node, control.HandoffsRequest())
    _print_handoffs(reply.handoffs, as_json, empty="no peer is running steps on this node")


@handoffs.command("cancel")
@click.argument("handoff_id")
@click.option("--peer", default=None, metavar="PEER_ID", help="Only the handoff of this peer.")
@click.pass_context
def handoffs_cancel(ctx: click.Context, handoff_id: str, peer: str | None) -> None:
    """Stop a step a peer runs here; the peer is told it was canceled."""
    from protocols import control

    opts = ctx.obj or {}
    reply = _call(
        opts.get("home"),
        opts.get("node"),
        control.HandoffCancelRequest(handoff_id=handoff_id, peer=peer),
    )
    _print_handoffs(reply.handoffs, bool(opts.get("as_json")), empty="", verb="stopping ")


def _print_handoffs(entries: list[Any], as_json: bool, *, empty: str, verb: str = "") -> None:
    from node.scheduler import short

    def human() -> None:
        if not entries and empty:
            click.echo(empty)
        for h in entries:
            running = f"running {h.running_s:.0f}s" if h.running_s is not None else h.state
            click.echo(
                f"{verb}{h.handoff_id}  from {short(h.peer)}  {h.tool}  {running}, "
                f"age {h.age_s:.0f}s, deadline {h.deadline_s:.0f}s"
            )

    _emit(as_json, [h.model_dump() for h in entries], human)


def _tool_catalog(home: Path | None, node: str | None, local_only: bool) -> tuple[Any, str]:
    """The tools to check steps against, and a note saying where they come from: the
    swarm's, as the node (``--node``, else the home's) sees them, or else this machine's
    installed tools (a node is asked only when there is one to ask)."""
    from workflows.dsl import ToolCatalog
    from workflows.tools import ToolRegistry

    local = ToolRegistry.from_entry_points("all")
    why = "--local"
    if not local_only:
        from node.home_lock import lock_holder

        if node is None and lock_holder(_home(home).path) is None:
            why = f"no node running from {_home(home).path} and no --node"
        else:
            from protocols import control

            try:
                reply = _call(home, node, control.ToolsRequest(), timeout_s=10.0)
            except NodeError as exc:
                why = f"could not ask the node: {exc}"
            else:
                offered = [(t.name, t.version) for t in reply.tools]
                return ToolCatalog.of_swarm(offered, local), "tools checked against the swarm's"
    catalog = ToolCatalog.of_registry(local, "this machine")
    return catalog, f"tools checked against this machine's installed tools only ({why})"


def _registered_ids(
    home: Path | None, node: str | None, local_only: bool
) -> tuple[set[str] | None, str]:
    """The ids of the workflows the node registered (None if it cannot be asked), and a
    note saying so."""
    if local_only:
        return None, "sub-workflows not checked (--local)"
    from node.home_lock import lock_holder
    from protocols import control

    if node is None and lock_holder(_home(home).path) is None:
        return None, "sub-workflows not checked (no node to ask)"
    try:
        reply = _call(home, node, control.WorkflowsRequest(), timeout_s=10.0)
    except NodeError as exc:
        return None, f"sub-workflows not checked (could not ask the node: {exc})"
    return {w.workflow for w in reply.workflows}, "sub-workflows checked against the node's"


def _sub_workflow_problems(spec: Any, registered: set[str]) -> tuple[Any, ...]:
    import difflib

    from workflows.dsl import Diagnostic

    found = []
    for step, wid in spec.sub_workflows():
        if wid == spec.id:
            found.append(
                Diagnostic(
                    f"step {step.name!r} runs workflow {wid!r}, the workflow itself: a "
                    "workflow cannot contain itself",
                    spec.source,
                    step.line,
                )
            )
            continue
        if wid in registered:
            continue
        close = difflib.get_close_matches(wid, sorted(registered), n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        found.append(
            Diagnostic(
                f"step {step.name!r} runs workflow {wid!r}, which the node has not "
                f"registered{hint} ('hivemesh workflows' lists them)",
                spec.source,
                step.line,
            )
        )
    return tuple(found)


@main.command()
@click.argument("files", nargs=-1, required=True, type=click.Path(path_type=Path, dir_okay=False))
@target_options
@click.option(
    "--local", "local_only", is_flag=True, help="Check tools against this machine's only."
)
def validate(
    files: tuple[Path, ...], home: Path | None, node: str | None, as_json: bool, local_only: bool
) -> None:
    """Check workflow files and report every problem, one line each:
    FILE:LINE:COL: error: what is wrong (and what was expected).

    Files are read within the home's workflow_files bounds, as a node reads them. Steps are
    checked against the swarm's tools when a node is reachable (the home's, or --node),
    else against the tools installed here. Exit status 0 only if every file is valid.
    """
    from node.config import load_config
    from workflows.dsl import Diagnostic, check_document, read_workflow_file
    from workflows.errors import WorkflowDefinitionError

    limits = load_config(config_file=_home(home).config_file).workflow_files.parse_limits()
    catalog, note = _tool_catalog(home, node, local_only)
    results: list[tuple[str, tuple[Diagnostic, ...]]] = []
    specs: dict[str, Any] = {}
    for file in files:
        try:
            data = read_workflow_file(file, limits)
        except WorkflowDefinitionError as exc:
            results.append((str(file), (Diagnostic.of(exc),)))
            continue
        report = check_document(data, source=str(file), limits=limits, tools=catalog)
        results.append((str(file), report.problems))
        if report.spec is not None and report.spec.sub_workflows():
            specs[str(file)] = report.spec
    if specs:  # steps that run a workflow: checked against the node's registered ones
        registered, said = _registered_ids(home, node, local_only)
        note += f"; {said}"
        if registered is not None:
            results = [
                (f, p + _sub_workflow_problems(specs[f], registered) if f in specs else p)
                for f, p in results
            ]
    valid = all(not problems for _, problems in results)
    if as_json:
        click.echo(
            json.dumps(
                {
                    "valid": valid,
                    "note": note,
                    "files": [
                        {"file": f, "valid": not p, "errors": [d.as_dict() for d in p]}
                        for f, p in results
                    ],
                },
                indent=2,
            )
        )
    else:
        click.echo(f"note: {note}", err=True)
        for file_name, problems in results:
            for problem in problems:
                click.echo(" ".join(problem.format().splitlines()))
            if not problems:
                click.echo(f"{file_name}: ok")
    if not valid:
        sys.exit(1)


@main.group("schema")
def schema_group() -> None:
    """JSON Schemas of hivemesh's file formats (for editors and other tools)."""


@schema_group.command("workflow")
def schema_workflow() -> None:
    """The JSON Schema of a workflow YAML file."""
    from workflows.dsl import workflow_json_schema

    click.echo(json.dumps(workflow_json_schema(), indent=2))


if __name__ == "__main__":
    main()
