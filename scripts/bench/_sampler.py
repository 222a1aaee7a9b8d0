"""Samples a benchmark run's process tree: peak memory, and CPU used by everyone else.

Memory is the sum of the resident set sizes of the driver and every process it started
(Ray's gcs_server, raylet, agents and worker processes are all descendants of a driver
that called ``ray.init(address="local")``), sampled every 100 ms by a daemon thread.
RSS counts pages shared between processes (Python's code pages, Ray's plasma store mmap)
once per process that touched them, so the absolute figure overstates real use; the
difference "peak minus the baseline just before the workload" is the fairer number.

The machine has 2 cores and may be shared (another engineer's test run), so the sampler
also reports "foreign" CPU time: busy CPU time of the whole machine during the workload
minus the CPU time of our own process tree. A large figure means the timing is suspect.

Only stdlib and psutil are used: this module runs in both the project venv and the
Ray 2.47 venv.
"""

from __future__ import annotations

import os
import threading

import psutil

MIB = 1024 * 1024
_GONE = (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess)


def _machine_busy_s() -> float:
    times = psutil.cpu_times()
    idle = times.idle + getattr(times, "iowait", 0.0)
    return sum(times) - idle


class TreeSampler:
    """Samples the process tree's summed RSS in a background thread and keeps the peak.

    Use as ``with TreeSampler() as sampler: baseline = sampler.start_measuring(); ...``
    and read ``peak_bytes``, ``baseline_bytes`` and ``foreign_cpu_s`` after the block.
    """

    def __init__(self, interval_s: float = 0.1, pid: int | None = None) -> None:
        self._interval_s = interval_s
        self._root = psutil.Process(pid if pid is not None else os.getpid())
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._run, name="tree-sampler", daemon=True)
        self._tree_cpu_at_start = 0.0
        self._busy_at_start = 0.0
        self.baseline_bytes = 0
        self.peak_bytes = 0
        self.samples = 0
        self.foreign_cpu_s = 0.0

    def _tree(self) -> list[psutil.Process]:
        try:
            return [self._root, *self._root.children(recursive=True)]
        except psutil.NoSuchProcess:
            return []

    def sample(self) -> int:
        """Take one sample now (also folded into the peak); return the summed RSS."""
        total = 0
        for proc in self._tree():
            try:
                total += proc.memory_info().rss
            except _GONE:
                continue
        with self._lock:
            self.peak_bytes = max(self.peak_bytes, total)
            self.samples += 1
        return total

    def _tree_cpu_s(self) -> float:
        """CPU seconds of the live tree, including children each process has reaped.

        Ray's raylet reaps the worker processes it starts, so a worker that came and went
        during the workload is counted through its parent's ``children_*`` times.
        """
        total = 0.0
        for proc in self._tree():
            try:
                t = proc.cpu_times()
            except _GONE:
                continue
            total += t.user + t.system + t.children_user + t.children_system
        return total

    def start_measuring(self) -> int:
        """Take the baseline sample and reset the peak and CPU counters; return baseline."""
        baseline = self.sample()
        with self._lock:
            self.baseline_bytes = self.peak_bytes = baseline
        self._tree_cpu_at_start = self._tree_cpu_s()
        self._busy_at_start = _machine_busy_s()
        return baseline

    def _run(self) -> None:
        while not self._stop.wait(self._interval_s):
            self.sample()

    def __enter__(self) -> TreeSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stop.set()
        self._thread.join()
        # One last sample so a workload shorter than the interval is still measured.
        self.sample()
        busy = _machine_busy_s() - self._busy_at_start
        ours = self._tree_cpu_s() - self._tree_cpu_at_start
        self.foreign_cpu_s = max(0.0, busy - ours)
