"""How long a package step takes on this machine: the first run (Ray builds the step's
runtime env: clones the node's virtualenv and pip-installs the package from a local folder of
wheels, no network) against the cached runs, with an installed tool's step as the reference.

    .venv/bin/python scripts/bench/tool_install.py [--repeat 5]

Each figure is one step through the node's tool runner (``RayToolRunner``), from the call to
its outputs, on a fresh local Ray (2 CPUs, 127.0.0.1). Rows:

- installed tool: ``util.echo``, no runtime env (the reference);
- package, first run: ``hm-bench==1.0.0``, its runtime env built now;
- package, cached: the same requirement again (Ray keeps the env and its worker);
- package, cached, other parameters: the same env, new environment variables (a new worker);
- second version, first run: ``hm-bench==2.0.0`` while 1.0.0 stays installed.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from tests.tool_wheels import write_tool_wheel
from workflows._loopback import keep_ray_on_loopback


async def _timed(call: Callable[[], Awaitable[Any]]) -> float:
    started = time.perf_counter()
    await call()
    return time.perf_counter() - started


async def measure(wheels: Path, repeat: int) -> list[tuple[str, list[float]]]:
    from workflows.ray_tools import PackageInstall, RayToolRunner

    runner = RayToolRunner(
        num_cpus=0.5,
        install=PackageInstall(no_index=True, find_links=(str(wheels),), timeout_s=600),
    )
    rows: list[tuple[str, list[float]]] = []

    async def echo() -> Any:
        return await runner("util.echo", None, {"value": 1})

    def package(version: str, mode: str) -> Callable[[], Awaitable[Any]]:
        async def run() -> Any:
            ran = await runner.run_package(
                f"hm-bench=={version}",
                None,
                None,
                {"value": "x", "env": "MODE"},
                parameters={"MODE": mode},
            )
            assert ran.outputs["result"]["version"] == version, ran
            return ran

        return run

    await echo()  # a warm worker for the reference, as a running node has
    rows.append(("installed tool (reference)", [await _timed(echo) for _ in range(repeat)]))
    rows.append(("package, first run (install)", [await _timed(package("1.0.0", "a"))]))
    rows.append(("package, cached", [await _timed(package("1.0.0", "a")) for _ in range(repeat)]))
    rows.append(
        (
            "package, cached, other parameters",
            [await _timed(package("1.0.0", f"m{i}")) for i in range(repeat)],
        )
    )
    rows.append(("second version, first run", [await _timed(package("2.0.0", "a"))]))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=5, help="runs of each cached row")
    args = parser.parse_args()
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
    keep_ray_on_loopback()
    import ray
    import trio

    with tempfile.TemporaryDirectory(prefix="hm-bench-wheels") as tmp:
        wheels = Path(tmp)
        write_tool_wheel(wheels, "hm-bench", "1.0.0")
        write_tool_wheel(wheels, "hm-bench", "2.0.0")
        ray.init(
            address="local",
            num_cpus=2,
            include_dashboard=False,
            log_to_driver=False,
            logging_level="ERROR",
        )
        try:
            rows = trio.run(measure, wheels, args.repeat)
        finally:
            ray.shutdown()
    reference = statistics.median(rows[0][1])
    print(f"{'step':<36} {'runs':>4} {'median s':>9} {'min s':>7} {'x reference':>12}")
    for name, times in rows:
        median = statistics.median(times)
        print(
            f"{name:<36} {len(times):>4} {median:>9.3f} {min(times):>7.3f} "
            f"{median / reference:>12.1f}"
        )


if __name__ == "__main__":
    main()
