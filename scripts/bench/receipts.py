"""The cost of signed receipts per delegated step, against plain JSON encoding.

    .venv/bin/python scripts/bench/receipts.py                 # ~1-2 min
    .venv/bin/python scripts/bench/receipts.py --seconds 1     # shorter budget per operation

For a small step (``{"a": 2, "b": 40}`` -> ``{"result": 42}``) and for outputs of about
100 KB and 1 MB, each as one string (``text``) and as a list of small objects (``records``),
times what the receipt adds to a step, one call per sample:

- on the delegatee (the node that ran the step), as its handoff server does it: the size
  check of the canonical outputs, the canonical JSON hash (``protocols.canonical.json_sha256``)
  of the arguments and of the outputs, and the signature (``node.identity.sign`` over
  ``protocols.handoff.receipt.signed_bytes(receipt_payload(...))``);
- on the delegator: ``node.handoff.receipts.check_receipt`` (both hashes again, the public key
  from the peer id, the Ed25519 check);

and, as references for the same outputs, ``json.dumps`` (what a plain JSON encode costs) and
the result's wire frame (``model_dump`` + ``encode_frame``: what sending it costs anyway).
Prints the median and 90th percentile of each, and the receipt's cost as a multiple of
``json.dumps``. The machine may be shared: the load average is printed before and after.
"""

from __future__ import annotations

import argparse
import gc
import hashlib
import json
import os
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from libp2p.crypto.ed25519 import create_new_key_pair  # noqa: E402
from libp2p.peer.id import ID  # noqa: E402

from node import identity  # noqa: E402
from node.handoff.receipts import check_receipt  # noqa: E402
from protocols import handoff  # noqa: E402
from protocols.canonical import canonical_json, json_sha256  # noqa: E402
from protocols.framing import encode_frame  # noqa: E402
from protocols.handoff.receipt import receipt_payload, signed_bytes  # noqa: E402

TOOL_VERSION = "1.0.0"
FRAME_LIMIT = 64 * 1024 * 1024  # only the encoding is timed here, not the node's limit


@dataclass(frozen=True)
class Case:
    name: str
    tool: str
    args: dict[str, Any]
    outputs: dict[str, Any]


@dataclass(frozen=True)
class Timing:
    median_s: float
    p90_s: float
    samples: int


def _text(size: int) -> str:
    """About ``size`` characters of prose with the escapes JSON needs (quotes, newlines)."""
    line = 'The quick brown fox said "jump" over the lazy dog, 0123456789 times.\n'
    return (line * (size // len(line) + 1))[:size]


def _records(size: int) -> list[dict[str, Any]]:
    """Small objects (ints, floats, strings, a list, a bool) whose JSON is about ``size``."""
    rows: list[dict[str, Any]] = []
    total = 2
    i = 0
    while total < size:
        row = {
            "id": i,
            "name": f"item-{i:06d}",
            "score": round(i * 0.37, 2),
            "tags": ["alpha", "beta"],
            "ok": i % 2 == 0,
        }
        total += len(json.dumps(row)) + 2
        rows.append(row)
        i += 1
    return rows


def cases() -> list[Case]:
    found = [Case("small", "math.add", {"a": 2, "b": 40}, {"result": 42})]
    for label, size in (("100 KB", 100_000), ("1 MB", 1_000_000)):
        found.append(Case(f"{label} text", "util.echo", {"text": "hello"}, {"result": _text(size)}))
        found.append(Case(f"{label} records", "util.echo", {"n": size}, {"result": _records(size)}))
    return found


def measure(fn: Callable[[], object], budget_s: float, max_samples: int) -> Timing:
    """Time single calls of ``fn`` until ``budget_s`` is spent (at least 10 samples)."""
    for _ in range(3):  # warm-up
        fn()
    samples: list[float] = []
    started = time.perf_counter()
    while len(samples) < max_samples and (
        len(samples) < 10 or time.perf_counter() - started < budget_s
    ):
        t0 = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - t0)
    samples.sort()
    p90 = samples[min(len(samples) - 1, int(len(samples) * 0.9))]
    return Timing(statistics.median(samples), p90, len(samples))


def fmt(seconds: float) -> str:
    if seconds < 1e-3:
        return f"{seconds * 1e6:7.1f} µs"
    return f"{seconds * 1e3:7.2f} ms"


class Bench:
    """One case's operations, built as the delegatee and the delegator build them."""

    def __init__(self, case: Case) -> None:
        self.case = case
        self.key = create_new_key_pair()
        self.delegatee = str(ID.from_pubkey(self.key.public_key))
        self.delegator = str(ID.from_pubkey(create_new_key_pair().public_key))
        self.offer = handoff.Offer(
            handoff_id=f"bench-wf/step@{self.delegatee}",
            workflow_id="bench-wf",
            step="step",
            tool=case.tool,
            args=case.args,
            deadline_ms=60_000,
            epoch=1,
        )
        self.result = self.sign_result()
        check_receipt(  # it must check out, or the timings below mean nothing
            self.result, self.offer, delegator=self.delegator, delegatee=self.delegatee
        )

    def sign_payload(self, args_sha256: str, outputs_sha256: str) -> str:
        payload = receipt_payload(
            handoff_id=self.offer.handoff_id,
            epoch=self.offer.epoch,
            delegator=self.delegator,
            delegatee=self.delegatee,
            tool=self.offer.tool,
            tool_version=TOOL_VERSION,
            args_sha256=args_sha256,
            outputs_sha256=outputs_sha256,
        )
        return identity.sign(self.key, signed_bytes(payload))

    def sign_result(self) -> handoff.StepResult:
        """What the handoff server does once a step has run: the size check, both hashes,
        the signature, the result message."""
        outputs = self.case.outputs
        len(canonical_json(outputs))  # the server's result-size check
        args_sha256 = json_sha256(self.offer.args)
        outputs_sha256 = json_sha256(outputs)
        receipt = handoff.Receipt(
            tool_version=TOOL_VERSION,
            args_sha256=args_sha256,
            outputs_sha256=outputs_sha256,
            signature=self.sign_payload(args_sha256, outputs_sha256),
        )
        return handoff.StepResult(
            handoff_id=self.offer.handoff_id,
            epoch=self.offer.epoch,
            outputs=outputs,
            duration_ms=1,
            receipt=receipt,
        )

    def operations(self) -> dict[str, Callable[[], object]]:
        outputs = self.case.outputs
        hashes = (json_sha256(self.offer.args), json_sha256(outputs))
        return {
            "json.dumps(outputs)  [reference]": lambda: json.dumps(outputs),
            "sorted compact json.dumps + sha256  [reference]": lambda: hashlib.sha256(
                json.dumps(
                    outputs, sort_keys=True, separators=(",", ":"), ensure_ascii=False
                ).encode()
            ).hexdigest(),
            "result frame: model_dump + encode_frame  [reference]": lambda: encode_frame(
                self.result.model_dump(mode="json"), FRAME_LIMIT
            ),
            "canonical_json(outputs)  (size check)": lambda: canonical_json(outputs),
            "json_sha256(args)": lambda: json_sha256(self.offer.args),
            "json_sha256(outputs)": lambda: json_sha256(outputs),
            "sign: signed_bytes + identity.sign": lambda: self.sign_payload(*hashes),
            "delegatee: size check + hashes + sign": self.sign_result,
            "delegator: check_receipt": lambda: check_receipt(
                self.result, self.offer, delegator=self.delegator, delegatee=self.delegatee
            ),
        }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=2.0, help="time budget per operation")
    parser.add_argument("--max-samples", type=int, default=2000)
    args = parser.parse_args()

    load_before = os.getloadavg()
    summary = []
    print("signed receipts per step: one call per sample (median, p90, samples)")
    for case in cases():
        bench = Bench(case)
        size = len(json.dumps(case.outputs).encode())
        print(f"\n{case.name}: tool {case.tool}, outputs {size:,} B as JSON")
        timings: dict[str, Timing] = {}
        for label, fn in bench.operations().items():
            gc.collect()
            timings[label] = t = measure(fn, args.seconds, args.max_samples)
            print(f"  {label:<54} {fmt(t.median_s)} {fmt(t.p90_s)} {t.samples:6d}")
        dumps = timings["json.dumps(outputs)  [reference]"].median_s
        signed = timings["delegatee: size check + hashes + sign"].median_s
        checked = timings["delegator: check_receipt"].median_s
        summary.append((case.name, size, dumps, signed, checked))

    print("\nper step, medians: what the receipt adds, and as a multiple of json.dumps(outputs)")
    head = f"{'outputs':<18} {'JSON bytes':>11} {'json.dumps':>11} {'delegatee':>11}"
    print(f"{head} {'delegator':>11} {'sign+verify':>11} {'x dumps':>8}")
    for name, size, dumps, signed, checked in summary:
        both = signed + checked
        print(
            f"{name:<18} {size:>11,} {fmt(dumps):>11} {fmt(signed):>11} {fmt(checked):>11} "
            f"{fmt(both):>11} {both / dumps:>8.0f}"
        )
    load_after = os.getloadavg()
    print(
        f"\nload average (1 min) {load_before[0]:.2f} before, {load_after[0]:.2f} after "
        f"({os.cpu_count()} CPUs; a shared machine adds noise)"
    )


if __name__ == "__main__":
    main()
