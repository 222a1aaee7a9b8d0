"""Local swarm demo: three ``hivemesh node start`` daemons on loopback.

* ``text`` offers the text tools, ``math`` the math tools, ``none`` no tools at all;
* the three form one private swarm (one swarm key, given to each with ``--swarm-key``);
* ``math`` and ``none`` join the swarm through ``text`` only (``none`` learns of ``math``
  by peer exchange);
* a workflow that needs both text and math tools is submitted to ``none`` with the CLI,
  and the result and, per step, the node it ran on and why, are printed.

Every process started here is stopped at the end, also on Ctrl-C or failure.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

from node.localswarm import LocalSwarm, NodeProcess
from node.swarmkey import SwarmKey

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_WORKFLOW = ROOT / "workflows" / "examples" / "text_math.yaml"


def say(text: str = "") -> None:
    print(text, flush=True)


def wait_for_tools(
    swarm: LocalSwarm, node: NodeProcess, needed: set[str], timeout_s: float = 60
) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        out = swarm.cli("tools", "--home", str(node.home), "--json")
        if out.returncode == 0:
            offered = {t["name"] for t in json.loads(out.stdout) if t["providers"]}
            if needed <= offered:
                return
        time.sleep(0.5)
    raise TimeoutError(f"node {node.name} did not learn of tools {sorted(needed)}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workflow", type=Path, default=DEFAULT_WORKFLOW)
    parser.add_argument("--input", action="append", default=[], metavar="NAME=VALUE")
    parser.add_argument("--keep", action="store_true", help="keep the demo folder")
    args = parser.parse_args()

    root = Path(tempfile.mkdtemp(prefix="hivemesh-demo-"))
    ok = False
    started = time.monotonic()
    swarm = LocalSwarm(root, num_cpus=1)
    try:
        say(f"hivemesh demo: three nodes on 127.0.0.1 (homes and logs in {root})")
        text = swarm.wait_ready(swarm.start("text", "text"))
        fingerprint = SwarmKey.load(swarm.swarm_key_file).fingerprint
        say(f"  a private swarm: every node runs with {swarm.swarm_key_file} ({fingerprint})")
        say(f"  node text  {text.peer_id}  tools: text.*   {text.addr}")
        math = swarm.start("math", "math", bootstrap=[text.addr])
        none = swarm.start("none", "none", bootstrap=[text.addr])
        swarm.wait_ready(math)
        say(f"  node math  {math.peer_id}  tools: math.*   bootstrap: text")
        swarm.wait_ready(none)
        say(f"  node none  {none.peer_id}  tools: (none)   bootstrap: text")
        names = {n.peer_id: n.name for n in swarm.nodes}

        wf_text = args.workflow.read_text()
        needed = {
            line.split(":", 1)[1].strip().split("@")[0]
            for line in wf_text.splitlines()
            if line.strip().startswith("tool:")
        }
        wait_for_tools(swarm, none, needed)
        say(f"  node none knows every tool the workflow needs: {', '.join(sorted(needed))}")
        say()
        shown = args.workflow.resolve()
        shown = shown.relative_to(ROOT) if shown.is_relative_to(ROOT) else shown
        say(f"$ hivemesh submit {shown} --home <none> --wait --json")
        cmd = ["submit", str(args.workflow), "--home", str(none.home), "--wait", "--json"]
        for item in args.input:
            cmd += ["--input", item]
        out = swarm.cli(*cmd)
        if out.returncode != 0:
            say(out.stdout)
            say(out.stderr.strip())
            return 1
        result = json.loads(out.stdout)
        say(json.dumps(result, indent=2))
        status = json.loads(
            swarm.cli("status", result["workflow_id"], "--home", str(none.home), "--json").stdout
        )
        say()
        say("where each step ran, and why:")
        width = max(len(s["name"]) for s in status["steps"])
        for step in status["steps"]:
            where = names.get(step["node"], step["node"])
            say(
                f"  {step['name']:<{width}}  {step['tool']:<16} on node {where:<5} "
                f"({step['status']})"
            )
            say(f"  {'':<{width}}  why: {step['reason']}")
            receipt = step.get("receipt")
            if receipt:  # signed by the node that ran it, checked by the delegator (none)
                signer = names.get(receipt["delegatee"], receipt["delegatee"])
                say(
                    f"  {'':<{width}}  receipt: signed by node {signer} "
                    f"(outputs sha256 {receipt['outputs_sha256'][:16]}…), checked by node none"
                )
        ok = result["status"] == "SUCCESSFUL"
        say()
        say(
            f"workflow {result['status']} in a swarm of 3 nodes "
            f"({time.monotonic() - started:.1f}s including node start-up)"
        )
        return 0 if ok else 1
    except KeyboardInterrupt:
        say("\ninterrupted")
        return 130
    except Exception as exc:
        say(f"demo failed: {exc}")
        for node in swarm.nodes:
            say(f"--- {node.name} log (last lines) ---\n{node.log_tail(15)}")
        return 1
    finally:
        say("stopping nodes…")
        swarm.stop_all()
        if ok and not args.keep:
            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
