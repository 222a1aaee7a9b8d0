"""What the benchmark parents share: paths, systems, the Ray 2.47 venv, isolated runs.

Stdlib only (psutil is used when importable): engine.py and recovery.py run in the project
venv, but the worker scripts they start may run in the Ray 2.47 venv.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parent
ROOT = BENCH_DIR.parent.parent
STATE_DIR = ROOT / ".bench"
RAY247_VENV = STATE_DIR / "ray247"
RAY247_PYTHON = RAY247_VENV / "bin" / "python"
RAY247_INSTALL_LOG = STATE_DIR / "ray247-install.log"
RAY247_REQUIREMENTS = ("ray[default]==2.47.1", "pyarrow", "psutil")

SYSTEMS: dict[str, str] = {
    "hivemesh": "hivemesh",
    "ray": "plain Ray",
    "ray247": "Ray Workflows 2.47",
}
SYSTEM_ALIASES = {"plain": "ray", "plain-ray": "ray", "2.47": "ray247", "ray-workflows": "ray247"}


def parse_systems(text: str) -> list[str]:
    """``"plain,hivemesh"`` -> ``["hivemesh", "ray"]``; ValueError names the known ones."""
    chosen: list[str] = []
    for raw in text.split(","):
        name = SYSTEM_ALIASES.get(raw.strip().lower(), raw.strip().lower())
        if name not in SYSTEMS:
            known = ", ".join([*SYSTEMS, *SYSTEM_ALIASES])
            raise ValueError(f"unknown system {raw!r} (known: {known})")
        if name not in chosen:
            chosen.append(name)
    return [name for name in SYSTEMS if name in chosen]  # report in a fixed order


def bench_env(system: str, **extra: str) -> dict[str, str]:
    """Environment for a benchmark child: loopback-only Ray, no usage stats, the import
    switch, and a PYTHONPATH that lets Ray's workers import the bench modules (and, for
    hivemesh, the repo's ``workflows`` package even without an editable install)."""
    env = dict(os.environ)
    env["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"  # bind 127.0.0.1, not the outward IP
    env["RAY_USAGE_STATS_ENABLED"] = "0"
    env["BENCH_SYSTEM"] = system
    paths = [str(BENCH_DIR)]
    if system == "hivemesh":
        paths.append(str(ROOT))
    if env.get("PYTHONPATH"):
        paths.append(env["PYTHONPATH"])
    env["PYTHONPATH"] = os.pathsep.join(paths)
    env.update(extra)
    return env


def python_for(system: str) -> Path:
    """hivemesh and plain Ray run on the project venv's Ray; 2.47 on its own venv."""
    return RAY247_PYTHON if system == "ray247" else Path(sys.executable)


# --- the Ray 2.47 venv -----------------------------------------------------------------


class VenvSetupError(Exception):
    """The Ray 2.47 venv could not be created or installed; the message says why."""


def _ray247_works() -> bool:
    check = (
        "import warnings; warnings.simplefilter('ignore');"
        "import psutil, pyarrow, ray; from ray import workflow;"
        "assert ray.__version__ == '2.47.1', ray.__version__"
    )
    if not RAY247_PYTHON.exists():
        return False
    env = bench_env("ray247")
    done = subprocess.run(
        [str(RAY247_PYTHON), "-c", check], env=env, capture_output=True, timeout=120
    )
    return done.returncode == 0


def _shown(path: Path) -> str:
    """``path`` relative to the repo root when it is inside it."""
    return str(path.relative_to(ROOT)) if path.is_relative_to(ROOT) else str(path)


def _log_tail(path: Path, lines: int = 15) -> str:
    """The install log's last lines without pip's harmless 'WARNING: Location' noise."""
    try:
        text = path.read_text(errors="replace").splitlines()
    except OSError:
        return ""
    kept = [line for line in text if not line.startswith("WARNING: Location")]
    return "\n".join(kept[-lines:])


def ensure_ray247_venv(echo: Callable[[str], None]) -> Path:
    """Return the Ray 2.47 venv's python, creating ``.bench/ray247`` if needed.

    Raises VenvSetupError (for example without network access to the package index).
    """
    if _ray247_works():
        return RAY247_PYTHON
    RAY247_INSTALL_LOG.parent.mkdir(parents=True, exist_ok=True)
    echo(
        f"setting up {_shown(RAY247_VENV)} "
        f"({' '.join(RAY247_REQUIREMENTS)}; one-time, a minute or two)"
    )
    started = time.monotonic()
    with RAY247_INSTALL_LOG.open("w") as log:
        # The project interpreter is the base: Python 3.11, which Ray 2.47 supports.
        steps = []
        if not RAY247_PYTHON.exists():
            steps.append([sys.executable, "-m", "venv", str(RAY247_VENV)])
        steps.append(
            [
                str(RAY247_PYTHON),
                "-m",
                "pip",
                "install",
                "--disable-pip-version-check",
                "--retries",
                "2",
                *RAY247_REQUIREMENTS,
            ]
        )
        for cmd in steps:
            log.write(f"$ {' '.join(cmd)}\n")
            log.flush()
            done = subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT)
            if done.returncode != 0:
                raise VenvSetupError(
                    f"`{' '.join(cmd[-3:])}` failed (exit {done.returncode}; no access to "
                    f"the package index?). Full log: {RAY247_INSTALL_LOG}\n"
                    f"{_log_tail(RAY247_INSTALL_LOG)}"
                )
    if not _ray247_works():
        raise VenvSetupError(
            f"{RAY247_VENV} was installed but `from ray import workflow` fails there; "
            f"delete the folder to reinstall. Log: {RAY247_INSTALL_LOG}"
        )
    echo(f"  done in {time.monotonic() - started:.0f} s")
    return RAY247_PYTHON


# --- isolated child processes ----------------------------------------------------------


@dataclass(frozen=True)
class ChildRun:
    returncode: int | None  # None when it timed out
    stdout: str
    stderr: str
    elapsed_s: float

    @property
    def timed_out(self) -> bool:
        return self.returncode is None


def kill_tree(pid: int) -> None:
    """SIGKILL ``pid``'s descendants (by id, via psutil) and then its process group.

    The children are started with ``start_new_session=True``, so the group is theirs
    alone; Ray's own processes are descendants of the driver that started them.
    """
    try:
        import psutil
    except ImportError:  # pragma: no cover - psutil comes with ray[default]
        psutil = None
    if psutil is not None:
        try:
            descendants = psutil.Process(pid).children(recursive=True)
        except psutil.NoSuchProcess:
            descendants = []
        for proc in descendants:
            with contextlib.suppress(psutil.NoSuchProcess):
                proc.kill()
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signal.SIGKILL)


def run_child(
    cmd: list[str], env: dict[str, str], timeout_s: float, *, cwd: Path = ROOT
) -> ChildRun:
    """Run ``cmd`` in its own session; on timeout kill it and everything it started.

    ``cwd`` matters to Ray: its workers put the driver's working directory early on
    ``sys.path``, so packages there win over PYTHONPATH."""
    started = time.monotonic()
    proc = subprocess.Popen(
        cmd,
        cwd=cwd,
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    returncode: int | None
    try:
        stdout, stderr = proc.communicate(timeout=timeout_s)
        returncode = proc.returncode
    except subprocess.TimeoutExpired:
        kill_tree(proc.pid)
        stdout, stderr = proc.communicate()
        returncode = None
    finally:
        # Whatever the child left behind in its session (a crashed driver's raylet...).
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)
    return ChildRun(returncode, stdout, stderr, time.monotonic() - started)
