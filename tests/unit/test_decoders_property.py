"""Property tests: every wire decoder, fed random, mutated and hostile input, raises only
its documented typed errors, and answers within a deadline.

The strategies and targets live in tests/unit/wire_fuzz.py; scripts/fuzz.py runs the same
targets for minutes. Here each gets a fixed, small set of examples (derandomized, so the
suite is reproducible and stays fast).
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
from hypothesis import HealthCheck, event, given, settings

from tests.unit.wire_fuzz import TARGETS, Target

EXAMPLES = 120


@pytest.mark.parametrize("target", TARGETS, ids=[t.name for t in TARGETS])
def test_decoder_raises_only_typed_errors(target: Target) -> None:
    @settings(
        max_examples=EXAMPLES,
        deadline=timedelta(seconds=2),  # a hang detector: typical calls take ~1 ms
        derandomize=True,
        database=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )
    @given(args=target.strategy)
    def check(args: tuple[Any, ...]) -> None:
        event(target.run(*args))

    check()
