"""When a scheduled workflow runs: cron expressions and interval slots, as pure functions.

A workflow file may say ``run: {every: 10m}`` or ``run: {cron: "*/5 * * * *"}``. Each time
it is due is a **slot**: a whole second of UTC time. A run of a slot has a workflow id made
from the workflow's id and the slot (:func:`slot_run_id`, e.g. ``nightly@2026-12-07T10:00Z``),
so that submitting it twice (a restart in between) creates it once.

- ``every: D`` (a whole number of seconds, at least 1): the slots are the multiples of D
  seconds since the Unix epoch (``every: 1h`` runs on the hour, ``every: 10m`` at :00, :10…).
- ``cron: "M H DOM MON DOW"``: the five classic fields, each ``*``, a number, a range
  ``a-b``, a step ``*/n`` or ``a-b/n``, or a comma-separated list of those; minute 0-59,
  hour 0-23, day of month 1-31, month 1-12, day of week 0-7 (0 and 7 are Sunday). As in
  Vixie cron, when both day fields are restricted a day matches if either does. Times are
  UTC. No names (``MON``, ``JAN``) and no ``@daily`` shortcuts.

No third-party cron library is installed on the node; this one is small and pure (no I/O,
no clock: every function takes the time it works from).
"""

from __future__ import annotations

import calendar
import math
import time
from dataclasses import dataclass

__all__ = [
    "CronError",
    "CronExpr",
    "latest_slot",
    "next_slot",
    "parse_cron",
    "slot_run_id",
]

MAX_CRON_TEXT = 200
SEARCH_YEARS = 5  # a cron expression that matches no minute within this is refused
_FIELDS = (
    ("minute", 0, 59),
    ("hour", 0, 23),
    ("day of month", 1, 31),
    ("month", 1, 12),
    ("day of week", 0, 7),
)


class CronError(ValueError):
    """A cron expression that cannot be used; the message says which field and why."""


@dataclass(frozen=True)
class CronExpr:
    """A parsed 5-field cron expression (UTC); build it with :func:`parse_cron`."""

    text: str
    minutes: frozenset[int]
    hours: frozenset[int]
    days: frozenset[int]
    months: frozenset[int]
    weekdays: frozenset[int]  # 0 = Sunday … 6 = Saturday (7 folded into 0)
    days_restricted: bool
    weekdays_restricted: bool

    def matches_day(self, year: int, month: int, day: int) -> bool:
        """Whether the date is one the expression runs on (its hours and minutes aside)."""
        if month not in self.months:
            return False
        weekday = (calendar.weekday(year, month, day) + 1) % 7  # Monday=0 -> Sunday=0
        in_days, in_weekdays = day in self.days, weekday in self.weekdays
        if self.days_restricted and self.weekdays_restricted:
            return in_days or in_weekdays  # (cron's rule: either day field)
        return in_days and in_weekdays

    def matches(self, t: float) -> bool:
        """Whether the minute that contains ``t`` (Unix time) is one of the expression's."""
        tm = time.gmtime(t)
        return (
            tm.tm_min in self.minutes
            and tm.tm_hour in self.hours
            and self.matches_day(tm.tm_year, tm.tm_mon, tm.tm_mday)
        )

    def latest(self, t: float) -> int | None:
        """The latest minute (Unix time, a multiple of 60) at or before ``t`` that matches;
        None if there is none within :data:`SEARCH_YEARS`."""
        return self._search(math.floor(t / 60) * 60, -1)

    def next_after(self, t: float) -> int | None:
        """The first matching minute strictly after ``t``; None if none within the years."""
        return self._search((math.floor(t / 60) + 1) * 60, 1)

    def _search(self, start: int, direction: int) -> int | None:
        """From minute ``start``, the first matching minute going ``direction`` (±1):
        whole days and hours that cannot match are skipped, so this costs at most a few
        thousand steps a year."""
        limit = SEARCH_YEARS * 366 * 86400
        t = start
        while abs(t - start) <= limit:
            tm = time.gmtime(t)
            if not self.matches_day(tm.tm_year, tm.tm_mon, tm.tm_mday):
                day_start = t - (tm.tm_hour * 3600 + tm.tm_min * 60)
                t = day_start + 86400 if direction > 0 else day_start - 60
                continue
            if tm.tm_hour not in self.hours:
                hour_start = t - tm.tm_min * 60
                t = hour_start + 3600 if direction > 0 else hour_start - 60
                continue
            if tm.tm_min in self.minutes:
                return t
            t += 60 * direction
        return None


def _field(text: str, name: str, low: int, high: int) -> frozenset[int]:
    values: set[int] = set()
    for part in text.split(","):
        if not part:
            raise CronError(f"the {name} field {text!r} has an empty item")
        base, slash, step_text = part.partition("/")
        step = 1
        if slash:
            if not step_text.isdigit() or int(step_text) == 0:
                raise CronError(f"the {name} field: step {step_text!r} must be a number above 0")
            step = int(step_text)
        if base == "*":
            first, last = low, high
        else:
            first_text, dash, last_text = base.partition("-")
            for number in (first_text, last_text) if dash else (first_text,):
                if not number.isdigit():
                    raise CronError(
                        f"the {name} field: {part!r} is not a number, a range a-b, '*' or a "
                        "step such as */5"
                    )
            first = int(first_text)
            last = int(last_text) if dash else (high if slash else first)
            for bound in (first, last):
                if not low <= bound <= high:
                    raise CronError(f"the {name} field: {bound} is not within {low}-{high}")
            if first > last:
                raise CronError(f"the {name} field: the range {base!r} goes backwards")
        values.update(range(first, last + 1, step))
    return frozenset(values)


def parse_cron(text: str) -> CronExpr:
    """Parse a 5-field cron expression; :class:`CronError` (one line) saying what is wrong.
    An expression that matches no minute in :data:`SEARCH_YEARS` years (``0 0 31 2 *``)
    is refused too."""
    if not isinstance(text, str):
        raise CronError(f"a cron expression is a text such as '*/5 * * * *', not {text!r}")
    if len(text) > MAX_CRON_TEXT:
        raise CronError(f"the cron expression is longer than {MAX_CRON_TEXT} characters")
    parts = text.split()
    if len(parts) != 5:
        raise CronError(
            f"cron expression {text!r} has {len(parts)} field{'s' if len(parts) != 1 else ''}; "
            "expected 5: minute hour day-of-month month day-of-week (e.g. '*/5 * * * *')"
        )
    sets = [_field(p, name, low, high) for p, (name, low, high) in zip(parts, _FIELDS, strict=True)]
    weekdays = frozenset(d % 7 for d in sets[4])
    expr = CronExpr(
        text=" ".join(parts),
        minutes=sets[0],
        hours=sets[1],
        days=sets[2],
        months=sets[3],
        weekdays=weekdays,
        days_restricted=not parts[2].startswith("*"),
        weekdays_restricted=not parts[4].startswith("*"),
    )
    if expr.next_after(0) is None and expr.next_after(time.time()) is None:
        raise CronError(f"cron expression {text!r} never matches a date")
    return expr


def latest_slot(now: float, *, every_s: float | None = None, cron: CronExpr | None = None) -> int:
    """The latest slot at or before ``now`` (Unix time, whole seconds) of an interval or a
    cron expression (exactly one of them). For a cron expression with no slot in the years
    searched, -1."""
    if every_s is not None:
        step = max(1, int(every_s))
        return math.floor(now / step) * step
    assert cron is not None
    found = cron.latest(now)
    return -1 if found is None else found


def next_slot(after: float, *, every_s: float | None = None, cron: CronExpr | None = None) -> int:
    """The first slot strictly after ``after`` (Unix time); for a cron expression with no
    slot in the years searched, a time far in the future (it is then never due)."""
    if every_s is not None:
        step = max(1, int(every_s))
        return (math.floor(after / step) + 1) * step
    assert cron is not None
    found = cron.next_after(after)
    return 2**62 if found is None else found


def slot_run_id(workflow_id: str, slot: int) -> str:
    """The id of the run of ``workflow_id`` for ``slot``: ``ID@2026-12-07T10:00Z`` (with
    seconds, ``…T10:00:05Z``, when the slot is not on a whole minute)."""
    tm = time.gmtime(slot)
    text = time.strftime("%Y-%m-%dT%H:%M", tm) + (f":{tm.tm_sec:02d}" if tm.tm_sec else "")
    return f"{workflow_id}@{text}Z"
