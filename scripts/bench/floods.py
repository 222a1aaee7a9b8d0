"""A real node under floods, with its flood guard and without it (the reference, in the
same run): its RSS and its ``info`` latency during each kind of flood.

For each system (``guarded``: the defaults; ``unguarded``: ``network.flood_guard: false``,
nothing refused and nobody banned), a node is started as the README says (``hivemesh node
start``, tools ``util``, its own Ray). Each flood (tests/floods.py, in a process of its own,
from libp2p hosts with keys of their own) runs for ``--seconds`` while this process samples
the node's RSS every 50 ms, asks ``info`` every 250 ms over a new connection (as the CLI
does), and runs one honest workflow through the control protocol.

    .venv/bin/python scripts/bench/floods.py [--kinds idle,trickle,connections,garbage]
        [--seconds 15] [--scale 1] [--systems guarded,unguarded] [--env NAME=VALUE ...]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import trio

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from tests.floods import KINDS, FloodRound, flood_round  # noqa: E402  (the repo's own floods)

MiB = 1024 * 1024
SYSTEMS = {"guarded": {}, "unguarded": {"HIVEMESH_NETWORK__FLOOD_GUARD": "false"}}


def row(system: str, r: FloodRound) -> str:
    lat = sorted(r.latencies)
    p50 = f"{statistics.median(lat) * 1000:7.0f}ms" if lat else "      -  "
    worst = f"{lat[-1] * 1000:7.0f}ms" if lat else "      -  "
    counts = ", ".join(f"{k} {v}" for k, v in r.flooder.items() if k not in ("kind", "seconds"))
    return (
        f"{system:10} {r.kind:12} {r.baseline_rss / MiB:7.0f}MB {r.peak_rss / MiB:7.0f}MB "
        f"{(r.peak_rss - r.baseline_rss) / MiB:+7.0f}MB {p50} {worst} {len(lat):4} "
        f"{len(r.info_failures):4}  {r.workflow[:40]:40}  {counts}"
    )


def run_system(
    system: str, kinds: list[str], seconds: float, scale: float, tmp: Path, env: dict[str, str]
) -> None:
    from node.home import Home
    from node.localswarm import LocalSwarm

    with LocalSwarm(tmp / system, num_cpus=1, env={**env, **SYSTEMS[system]}) as local:
        node = local.wait_ready(local.start("a", "util"))
        key = Home(node.home).load_client_key()
        time.sleep(2)  # let the node settle (Ray's workers start)
        for kind in kinds:
            result = trio.run(
                lambda k=kind: flood_round(
                    k,
                    pid=node.proc.pid,
                    addr=node.addr,
                    client_key=key,
                    swarm_key_file=local.swarm_key_file,
                    seconds=seconds,
                    scale=scale,
                )
            )
            print(row(system, result), flush=True)
            for failure in result.info_failures[:3]:
                print(f"{'':24}info failed: {failure}")
            if not node.alive():
                print(f"{'':24}the node died:\n{node.log_tail()}")
                return
            time.sleep(3)  # the flood's connections close, its streams time out
        bans = [line for line in node.log_path.read_text().splitlines() if "banned peer" in line]
        print(f"{'':24}{system}: {len(bans)} log lines about banned peers, e.g.:")
        for line in bans[:3]:
            print(f"{'':26}{line[:160]}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--kinds", default=",".join(KINDS))
    parser.add_argument("--systems", default=",".join(SYSTEMS))
    parser.add_argument("--seconds", type=float, default=15.0)
    parser.add_argument("--scale", type=float, default=1.0)
    parser.add_argument(
        "--env",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="node config through the environment, e.g. HIVEMESH_NETWORK__BAN_S=60",
    )
    args = parser.parse_args()
    env = dict(item.split("=", 1) for item in args.env)
    kinds = [k for k in args.kinds.split(",") if k]
    print(
        f"{'system':10} {'flood':12} {'RSS base':>9} {'RSS peak':>9} {'growth':>9} "
        f"{'info p50':>9} {'info max':>9} {'n':>4} {'fail':>4}  {'honest workflow':40}  flooder"
    )
    with tempfile.TemporaryDirectory(prefix="hm-floods-") as tmp:
        for system in args.systems.split(","):
            run_system(system, kinds, args.seconds, args.scale, Path(tmp), env)


if __name__ == "__main__":
    main()
