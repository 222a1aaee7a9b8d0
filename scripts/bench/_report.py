"""The engine benchmark's report: results table, wall-time ratios, the issue's targets."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from _common import SYSTEMS

TITLES = {
    "chain": "chain 1000 x+1",
    "fanout": "fan-out 1000 -> sum",
    "fib": "fib(12)",
    "chain10k": "chain 10k x+1",
    "fanout100k": "fan-out 100k -> sum",
}
ONE_GB_MB = 1024.0
BUSY_WARN_PCT = 10.0

Record = dict[str, Any]


def _index(records: Iterable[Record]) -> dict[tuple[str, str], Record]:
    return {(r["system"], r["workload"]): r for r in records}


def _ok(record: Record | None) -> bool:
    return bool(record and record.get("wall_s") is not None and record.get("correct"))


def _num(value: float | None, fmt: str) -> str:
    return "-" if value is None else format(value, fmt)


def _why_not(record: Record | None, system: str) -> str:
    if record is None:
        return f"{SYSTEMS[system]} not run"
    if record.get("wall_s") is not None and not record.get("correct"):
        return f"{SYSTEMS[system]} gave a wrong result"
    reason = record.get("error") or record.get("skipped") or "no result"
    return f"{SYSTEMS[system]}: {_short(reason)}"


def _short(text: str, limit: int = 110) -> str:
    """One line, cut to ``limit`` characters (the JSON and the worker log have it all)."""
    line = " ".join(str(text).split())
    return line if len(line) <= limit else line[: limit - 3] + "..."


def _ratio(a: Record | None, b: Record | None) -> float | None:
    if _ok(a) and _ok(b):
        assert a is not None and b is not None
        return a["wall_s"] / b["wall_s"]
    return None


def _paired_median(a: Record | None, b: Record | None) -> float | None:
    """Median over rounds of a's time / b's time in the same round (with --repeat, the
    systems' runs alternate, so a round's two runs saw the same machine)."""
    runs_a = (a or {}).get("runs") or []
    runs_b = (b or {}).get("runs") or []
    ratios = sorted(x / y for x, y in zip(runs_a, runs_b, strict=False) if x is not None and y)
    if len(ratios) < 2:
        return None
    mid = len(ratios) // 2
    return ratios[mid] if len(ratios) % 2 else (ratios[mid - 1] + ratios[mid]) / 2


def _unmeasured(record: Record | None, system: str) -> str:
    """Verdict when a target cannot be computed: a failed hivemesh run misses it; a system
    that is not available, skipped or not selected makes it n/a."""
    why = _why_not(record, system)
    failed = (
        record is not None
        and not record.get("unavailable")
        and not record.get("skipped")
        and record.get("phase") != "ray start-up"  # Ray itself did not come up: no verdict
    )
    return f"MISSED ({why})" if failed and system == "hivemesh" else f"n/a ({why})"


def targets(records: Iterable[Record]) -> list[dict[str, Any]]:
    """The issue's targets for hivemesh: name, value, measured text, verdict."""
    by_key = _index(records)
    selected = {workload for _, workload in by_key}
    rows: list[dict[str, Any]] = []

    def row(name: str, value: float | None, measured: str, verdict: str) -> None:
        rows.append({"target": name, "value": value, "measured": measured, "verdict": verdict})

    # issue 11's targets: durable chains and fan-outs cost what plain Ray's cost
    for workload, limit, name in (
        ("chain", 1.2, "chain 1000: within 1.2x of plain Ray"),
        ("chain10k", 1.2, "chain 10k: within 1.2x of plain Ray"),
        ("fanout", 1.1, "fan-out 1000: within 1.1x of plain Ray"),
        ("fib", 2.0, "fib(12): within 2x of plain Ray's nested fib"),
        ("fanout100k", 1.1, "fan-out 100k: within 1.1x of plain Ray"),
    ):
        if workload not in selected:
            continue
        hm, plain = by_key.get(("hivemesh", workload)), by_key.get(("ray", workload))
        ratio = _ratio(hm, plain)
        if ratio is not None:
            row(name, ratio, f"{ratio:.2f}x", "met" if ratio <= limit else "MISSED")
        elif not _ok(hm):
            row(name, None, "-", _unmeasured(hm, "hivemesh"))
        else:
            row(name, None, "-", _unmeasured(plain, "ray"))

    if "fanout100k" in selected:
        name, hm = (
            "fan-out 100k: peak memory < 1 GB over baseline",
            by_key.get(("hivemesh", "fanout100k")),
        )
        if _ok(hm):
            assert hm is not None
            delta, absolute = hm["peak_rss_mb"], hm["peak_rss_abs_mb"]
            measured = f"+{delta:.0f} MB over baseline (absolute {absolute:.0f} MB)"
            row(name, delta, measured, "met" if delta < ONE_GB_MB else "MISSED")
        else:
            row(name, None, "-", _unmeasured(hm, "hivemesh"))
    return rows


def format_report(records: list[Record], workloads: list[str], systems: list[str]) -> str:
    by_key = _index(records)
    out: list[str] = []
    header = (
        f"{'workload':<20} {'system':<19} {'wall s':>8} {'ms/step':>8} {'steps':>7} "
        f"{'peak +MB':>9} {'peak MB':>8} {'other%':>6}  result"
    )
    out += [header, "-" * len(header)]
    notes: list[str] = []
    for workload in workloads:
        for i, system in enumerate(systems):
            r = by_key.get((system, workload))
            if r is None:
                continue
            first = TITLES[workload] if i == 0 else ""
            prefix = f"{first:<20} {SYSTEMS[system]:<19}"
            if r.get("wall_s") is None:
                reason = r.get("skipped") or r.get("error") or "no result"
                out.append(f"{prefix} {_short(reason, 120)}")
                continue
            result = (
                f"{r['result']} ok"
                if r.get("correct")
                else (f"{r['result']!r} WRONG (expected {r.get('expected')})")
            )
            out.append(
                f"{prefix} {r['wall_s']:>8.3f} {r['per_step_ms']:>8.2f} {r['steps']:>7} "
                f"{_num(r.get('peak_rss_mb'), '>9.0f')} {_num(r.get('peak_rss_abs_mb'), '>8.0f')}"
                f" {_num(r.get('foreign_cpu_pct'), '>6.0f')}  {result}"
            )
            notes += [f"{TITLES[workload]} / {SYSTEMS[system]}: {n}" for n in r.get("notes", [])]
    out.append("")
    out.append(
        "wall s: the workload only (after Ray start-up and a warm-up); best of the runs. "
        "ms/step: wall / steps\n(fib: 697 workflow steps = 465 fib + 232 add; plain Ray: 465 "
        "nested tasks). peak MB: summed RSS of driver +\nall Ray processes, sampled every 100 ms; "
        "peak +MB: that peak minus the baseline just before the workload.\nother%: CPU "
        "time used meanwhile by processes outside the benchmark, as % of all cores; above "
        f"{BUSY_WARN_PCT:.0f}% the\nmachine was shared and the timing is suspect."
    )
    busy = [
        f"{TITLES[r['workload']]} / {SYSTEMS[r['system']]}"
        for r in records
        if (r.get("foreign_cpu_pct") or 0) > BUSY_WARN_PCT
    ]
    if busy:
        out.append(
            f"warning: other processes used over {BUSY_WARN_PCT:.0f}% of the CPU during: "
            + "; ".join(busy)
            + ". Re-run on an idle machine (or with --repeat) before trusting those figures."
        )
    if notes:
        out += ["", *[f"note: {n}" for n in notes]]

    pairs = [
        ("hivemesh / plain Ray", "hivemesh", "ray"),
        ("hivemesh / 2.47", "hivemesh", "ray247"),
        ("2.47 / plain Ray", "ray247", "ray"),
    ]
    pairs = [p for p in pairs if p[1] in systems and p[2] in systems]
    if pairs:
        out += ["", f"{'wall-time ratio':<20} " + " ".join(f"{p[0]:>22}" for p in pairs)]
        for workload in workloads:
            cells = []
            for _, a, b in pairs:
                ratio = _ratio(by_key.get((a, workload)), by_key.get((b, workload)))
                cells.append(f"{_num(ratio, '.2f') + ('x' if ratio is not None else ''):>22}")
            out.append(f"{TITLES[workload]:<20} " + " ".join(cells))
        paired = {
            (workload, a, b): _paired_median(by_key.get((a, workload)), by_key.get((b, workload)))
            for workload in workloads
            for _, a, b in pairs
        }
        if any(v is not None for v in paired.values()):
            out += [
                "",
                "median of same-round ratios (the runs alternate between systems; less",
                "sensitive to one lucky or unlucky run than the ratio of the best runs)",
            ]
            for workload in workloads:
                cells = []
                for _, a, b in pairs:
                    ratio = paired[(workload, a, b)]
                    cells.append(f"{_num(ratio, '.2f') + ('x' if ratio is not None else ''):>22}")
                out.append(f"{TITLES[workload]:<20} " + " ".join(cells))

    rows = targets(records)
    if rows:
        out += ["", f"{'target (hivemesh)':<46} {'measured':<40} verdict"]
        for row in rows:
            out.append(f"{row['target']:<46} {row['measured']:<40} {row['verdict']}")
    return "\n".join(out)
