"""One node of ``routing.py --processes`` in a process of its own.

    python _node_proc.py SPEC_JSON

SPEC_JSON: ``{"tmp", "name", "tools", "bootstrap", "handoff", "delegate_to", "cpus",
"synchronous", "ray_address"}``. The node joins the bench's Ray at ``ray_address`` (one Ray
for every node: local and routed steps run on the same workers), builds its home under
``tmp/name`` as ``_routed_driver.NodeFactory`` does (the swarm key ``tmp/swarm.key`` exists
already), starts, and prints ``{"peer_id", "addrs"}`` as its first line on stdout. Then it
answers requests, one JSON line on stdin to one JSON line on stdout:

- ``{"op": "define", "name", "yaml"}``: parse a workload once (large limits);
- ``{"op": "cards", "peers"}``: wait until this node holds a fresh card of each;
- ``{"op": "run", "name", "steps", "expected", "ran_on"}``: submit the workload to this node
  and wait for it, as ``run_checked`` does; answers the seconds from submit to end (measured
  here, so no pipe is in the timing) and each step's ``[name, started_at, ended_at]``, or
  ``{"error"}``;
- ``{"op": "clock", "keys"}``: the seconds this node's tool runner took for those step keys
  (``WORKFLOW/STEP``; a provider's handed-off steps and its own local ones);
- ``{"op": "busy"}``: the busy-peer rejections this node asked again after;
- ``{"op": "stop"}``: stop the node and exit.

Diagnostics go to stderr.
"""

from __future__ import annotations

import json
import sys
import traceback
from pathlib import Path
from typing import Any

# scripts/bench is on sys.path as the running script's folder (it is not a package).
from _routed_driver import NodeFactory, run_checked, setup_process
from routing import BusyCounter, StepClock, big_limits


def main() -> None:
    spec = json.loads(sys.argv[1])
    setup_process()
    busy = BusyCounter.installed()

    import trio

    from node.config import NodeConfig
    from node.daemon import Node, start_ray, stop_ray
    from node.home import Home
    from node.swarmkey import SwarmKey

    start_ray(NodeConfig.model_validate({"ray": {"address": spec["ray_address"]}}).ray)
    try:
        factory = NodeFactory(
            Path(spec["tmp"]),
            Node,
            Home,
            NodeConfig,
            SwarmKey,
            private=True,
            cpus=spec["cpus"],
            synchronous=spec["synchronous"],
            handoff=spec["handoff"],
            key_ready=True,
        )
        trio.run(serve, factory, spec, busy)
    finally:
        stop_ray()


def reply(record: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(record) + "\n")
    sys.stdout.flush()


async def serve(factory: NodeFactory, spec: dict[str, Any], busy: BusyCounter) -> None:
    import trio

    from workflows.dsl import parse_workflow

    clock = StepClock()
    specs: dict[str, Any] = {}
    extra = {} if spec["delegate_to"] is None else {"delegate_to": spec["delegate_to"]}
    async with trio.open_nursery() as nursery:
        node = factory(spec["name"], spec["tools"], spec["bootstrap"], **extra)
        await nursery.start(node.run)
        node.handoff.run_tool = clock.wrap(node.handoff.run_tool)
        node.executor.run_local = clock.wrap(node.executor.run_local)
        reply({"peer_id": node.peer_id, "addrs": node.host.addrs()})
        while True:
            line = await trio.to_thread.run_sync(sys.stdin.readline)
            if not line:
                break
            request = json.loads(line)
            op = request["op"]
            if op == "stop":
                break
            try:
                if op == "define":
                    specs[request["name"]] = parse_workflow(request["yaml"], limits=big_limits())
                    reply({})
                elif op == "cards":
                    with trio.fail_after(60):
                        while not all(node.registry.has_fresh_card(p) for p in request["peers"]):
                            await trio.sleep(0.05)
                    reply({})
                elif op == "run":
                    seconds, view = await run_checked(
                        node,
                        specs[request["name"]],
                        request["steps"],
                        request["expected"],
                        request["ran_on"],
                        timeout_s=3600,
                    )
                    reply(
                        {
                            "seconds": seconds,
                            "workflow_id": view.workflow_id,
                            "steps": [[s.name, s.started_at, s.ended_at] for s in view.steps],
                        }
                    )
                elif op == "clock":
                    reply({k: clock.seconds.pop(k) for k in request["keys"] if k in clock.seconds})
                elif op == "busy":
                    reply({"busy": busy.busy})
                else:
                    reply({"error": f"unknown op {op!r}"})
            except Exception as exc:
                reply({"error": f"{type(exc).__name__}: {exc}"})
        nursery.cancel_scope.cancel()


if __name__ == "__main__":
    try:
        main()
    except BaseException:
        traceback.print_exc()
        raise
