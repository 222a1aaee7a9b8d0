"""Fuzz every wire decoder and the workflow parser for a while: the property tests'
targets, with many examples.

    .venv/bin/python scripts/fuzz.py --minutes 30
    .venv/bin/python scripts/fuzz.py --minutes 2 --targets frame-decoder,stream-handoff

The targets and strategies are tests/unit/wire_fuzz.py's (random bytes, mutated valid
frames fed in random chunks, mutated message objects for each protocol's codec, and
MessageStream as a responder over an in-memory stream) and those of
tests/unit/test_dsl_properties.py (workflow files: mutated valid workflows, alias towers,
random text and bytes). Hypothesis generates the inputs
(no shrinking: a failure is recorded and the run goes on). A failure is any exception a
target lets through: an error that is not a typed ProtocolError, or a broken property
(AssertionError). SIGTERM or Ctrl-C ends the run early, with its report.

Prints, per target and in all: executions, executions per second, outcomes, distinct
failures (exception type and where it was raised, with a count and the first input) and
the slowest input (by CPU time of the call, which load on a shared machine hardly moves).
Exits 1 if anything failed.

Why hypothesis and not atheris: the same strategies serve the unit tests and this run, so
what the fuzzer explores is what the tests pin down; the decoders are pure Python over
C-implemented bytes/regex/json code, where atheris's coverage feedback on Python lines
would add little; and it needs no extra native dependency.
"""

from __future__ import annotations

import argparse
import collections
import random
import signal
import sys
import threading
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from hypothesis import HealthCheck, Phase, given, seed, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from tests.unit.test_dsl_properties import (  # noqa: E402
    alias_towers,
    mutated,
    parses_safely,
)
from tests.unit.wire_fuzz import TARGETS as WIRE_TARGETS  # noqa: E402
from tests.unit.wire_fuzz import Target  # noqa: E402


def parse_workflow_file(document: str | bytes) -> str:
    """The workflow parser, under the property tests' small limits: a typed one-line error
    or a spec that round-trips, within its time bound (parses_safely asserts all three)."""
    spec = parses_safely(document)
    return "parsed" if spec is not None else "refused"


TARGETS: list[Target] = [
    *WIRE_TARGETS,
    Target(
        "workflow-parser",
        st.tuples(
            st.one_of(
                mutated(),
                alias_towers(),
                st.text(max_size=2000),
                st.binary(max_size=2000),
            )
        ),
        parse_workflow_file,
    ),
]

ROUND_EXAMPLES = 200


@dataclass
class Failure:
    count: int
    example: str


@dataclass
class Stats:
    executions: int = 0
    seconds: float = 0.0
    outcomes: collections.Counter[str] = field(default_factory=collections.Counter)
    failures: dict[tuple[str, str], Failure] = field(default_factory=dict)
    slowest: tuple[float, str] = (0.0, "")


def _where(exc: BaseException) -> str:
    """The innermost frame of the traceback that is in this repository."""
    frames = traceback.extract_tb(exc.__traceback__)
    for frame in reversed(frames):
        path = Path(frame.filename)
        if ROOT in path.parents and ".venv" not in path.parts:
            return f"{path.relative_to(ROOT)}:{frame.lineno}"
    last = frames[-1] if frames else None
    return f"{last.filename}:{last.lineno}" if last else "?"


def _show(args: tuple[Any, ...], limit: int = 240) -> str:
    text = repr(args)
    size = sum(len(a) for a in args if isinstance(a, bytes | str))
    return (text[:limit] + f"... ({len(text)} chars)" if len(text) > limit else text) + (
        f" [{size} bytes]" if size else ""
    )


def run_round(fuzz_target: Target, stats: Stats, round_seed: int, stop: threading.Event) -> None:
    @seed(round_seed)
    @settings(
        max_examples=ROUND_EXAMPLES,
        phases=[Phase.generate],  # not Phase.target: hill-climbing on noisy times never ends
        deadline=None,
        database=None,
        suppress_health_check=list(HealthCheck),
    )
    @given(args=fuzz_target.strategy)
    def one(args: tuple[Any, ...]) -> None:
        if stop.is_set():  # finish the round quickly
            return
        start = time.process_time()  # CPU time: a loaded machine's stalls are not the input's
        try:
            outcome = fuzz_target.run(*args)
        except Exception as exc:  # everything that escapes is a finding
            outcome = "FAILURE"
            key = (type(exc).__name__, _where(exc))
            found = stats.failures.get(key)
            if found is None:
                stats.failures[key] = Failure(1, f"{exc!s:.200} <- {_show(args)}")
            else:
                found.count += 1
        elapsed = time.process_time() - start
        stats.executions += 1
        stats.seconds += elapsed
        stats.outcomes[outcome] += 1
        if elapsed > stats.slowest[0]:
            stats.slowest = (elapsed, _show(args))

    one()


def report(all_stats: dict[str, Stats], wall: float) -> int:
    total = sum(s.executions for s in all_stats.values())
    failures = sum(len(s.failures) for s in all_stats.values())
    print(
        f"\n== fuzz report: {wall / 60:.1f} min, {total} executions "
        f"({total / wall:.0f}/s), {failures} distinct failures =="
    )
    for name, stats in all_stats.items():
        rate = stats.executions / stats.seconds if stats.seconds else 0.0
        print(f"\n{name}: {stats.executions} executions ({rate:.0f}/s of target time)")
        outcomes = ", ".join(f"{k} {v}" for k, v in stats.outcomes.most_common())
        print(f"  outcomes: {outcomes}")
        print(f"  slowest: {stats.slowest[0] * 1000:.1f} ms for {stats.slowest[1]}")
        for (kind, where), failure in stats.failures.items():
            print(f"  FAILURE {kind} at {where} x{failure.count}: {failure.example}")
    slowest = max(all_stats.items(), key=lambda item: item[1].slowest[0])
    print(f"\nslowest input overall: {slowest[1].slowest[0] * 1000:.1f} ms ({slowest[0]})")
    return 1 if failures else 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=5.0, help="how long to run (5)")
    parser.add_argument("--targets", default="", help="comma-separated target names (all)")
    parser.add_argument("--seed", type=int, default=None, help="first round's seed (random)")
    parser.add_argument("--progress-s", type=float, default=60.0, help="progress line every")
    args = parser.parse_args()
    chosen = [t for t in TARGETS if not args.targets or t.name in args.targets.split(",")]
    if not chosen:
        names = ", ".join(t.name for t in TARGETS)
        print(f"error: no such target (known: {names})", file=sys.stderr)
        return 2
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda signum, frame: stop.set())
    signal.signal(signal.SIGINT, lambda signum, frame: stop.set())
    rng = random.Random(args.seed)
    all_stats = {t.name: Stats() for t in chosen}
    start = time.monotonic()
    print(f"fuzzing {', '.join(all_stats)} for {args.minutes:g} min", flush=True)
    _fuzz(chosen, all_stats, rng, start + args.minutes * 60, args.progress_s, stop)
    if stop.is_set():  # SIGTERM or Ctrl-C: report what was found so far
        print("  stopped early", flush=True)
    return report(all_stats, time.monotonic() - start)


def _fuzz(
    chosen: list[Target],
    all_stats: dict[str, Stats],
    rng: random.Random,
    deadline: float,
    progress_s: float,
    stop: threading.Event,
) -> None:
    start = last = time.monotonic()
    while time.monotonic() < deadline and not stop.is_set():
        for fuzz_target in chosen:
            run_round(fuzz_target, all_stats[fuzz_target.name], rng.randrange(2**32), stop)
            if time.monotonic() >= deadline or stop.is_set():
                break
        if time.monotonic() - last >= progress_s:
            last = time.monotonic()
            done = sum(s.executions for s in all_stats.values())
            found = sum(len(s.failures) for s in all_stats.values())
            print(
                f"  {(last - start) / 60:5.1f} min: {done} executions, {found} failures", flush=True
            )


if __name__ == "__main__":
    sys.exit(main())
