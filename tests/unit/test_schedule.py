"""Cron expressions, interval slots and the ids of scheduled runs (workflows.schedule), and
the ``run`` field of a workflow file."""

from __future__ import annotations

import calendar

import pytest

from workflows.dsl import parse_workflow, workflow_json_schema
from workflows.errors import WorkflowDefinitionError
from workflows.schedule import CronError, latest_slot, next_slot, parse_cron, slot_run_id


def utc(text: str) -> int:
    """Unix time of ``YYYY-MM-DD HH:MM[:SS]`` UTC."""
    date, clock = text.split()
    parts = [int(p) for p in date.split("-")] + [int(p) for p in clock.split(":")]
    return calendar.timegm((*parts, *[0] * (6 - len(parts)), 0, 0, 0)[:9])


def test_cron_fields_lists_ranges_and_steps():
    expr = parse_cron("*/15 9-17/4 * * 1,3-5")
    assert sorted(expr.minutes) == [0, 15, 30, 45]
    assert sorted(expr.hours) == [9, 13, 17]
    assert sorted(expr.weekdays) == [1, 3, 4, 5]
    assert sorted(parse_cron("0 0 * * 7").weekdays) == [0]  # 7 is Sunday too
    assert sorted(parse_cron("5/20 * * * *").minutes) == [5, 25, 45]


@pytest.mark.parametrize(
    ("text", "said"),
    [
        ("* * * *", "has 4 fields; expected 5"),
        ("60 * * * *", "the minute field: 60 is not within 0-59"),
        ("* 24 * * *", "the hour field: 24 is not within 0-23"),
        ("* * 0 * *", "the day of month field: 0 is not within 1-31"),
        ("*/0 * * * *", "step '0' must be a number above 0"),
        ("5-1 * * * *", "the range '5-1' goes backwards"),
        ("MON * * * *", "'MON' is not a number"),
        ("1,,2 * * * *", "has an empty item"),
        ("0 0 30 2 *", "never matches a date"),
    ],
)
def test_bad_cron_expressions_say_what_is_wrong(text: str, said: str):
    with pytest.raises(CronError, match=None) as caught:
        parse_cron(text)
    assert said in str(caught.value)


def test_cron_next_and_latest_minutes():
    every5 = parse_cron("*/5 * * * *")
    now = utc("2026-12-07 10:03:20")
    assert every5.next_after(now) == utc("2026-12-07 10:05")
    assert every5.latest(now) == utc("2026-12-07 10:00")
    assert every5.latest(utc("2026-12-07 10:05")) == utc("2026-12-07 10:05")  # at: included
    assert every5.next_after(utc("2026-12-07 10:05")) == utc("2026-12-07 10:10")  # after: not
    nightly = parse_cron("30 2 * * *")
    assert nightly.next_after(now) == utc("2026-12-08 02:30")
    assert nightly.latest(now) == utc("2026-12-07 02:30")
    # the first of the month or any Monday (both day fields restricted: either one)
    either = parse_cron("0 12 1 * 1")
    assert either.next_after(utc("2026-12-07 13:00")) == utc("2026-12-14 12:00")  # a Monday
    assert either.next_after(utc("2026-12-29 13:00")) == utc("2027-01-01 12:00")  # the 1st
    leap = parse_cron("0 0 29 2 *")
    assert leap.next_after(now) == utc("2028-02-29 00:00")
    assert leap.latest(now) == utc("2024-02-29 00:00")


def test_interval_slots_are_multiples_of_the_interval():
    now = utc("2026-12-07 10:03:20")
    assert latest_slot(now, every_s=600) == utc("2026-12-07 10:00")
    assert next_slot(now, every_s=600) == utc("2026-12-07 10:10")
    assert next_slot(utc("2026-12-07 10:10"), every_s=600) == utc("2026-12-07 10:20")
    assert latest_slot(now + 0.5, every_s=7) == (now // 7) * 7
    cron = parse_cron("0 * * * *")
    assert latest_slot(now, cron=cron) == utc("2026-12-07 10:00")
    assert next_slot(now, cron=cron) == utc("2026-12-07 11:00")


def test_slot_run_ids():
    assert slot_run_id("nightly", utc("2026-12-07 10:00")) == "nightly@2026-12-07T10:00Z"
    assert slot_run_id("tick", utc("2026-12-07 10:00:05")) == "tick@2026-12-07T10:00:05Z"


def test_run_field_of_a_workflow_file():
    base = "id: w\nsteps: [{name: s, tool: text.upper}]\n"
    spec = parse_workflow("run: {every: 10m, at_start: true}\n" + base)
    assert spec.run is not None and (spec.run.every, spec.run.at_start) == (600.0, True)
    assert parse_workflow('run: {cron: "*/5  * * * *"}\n' + base).run.cron == "*/5 * * * *"
    assert parse_workflow(base).run is None
    for bad, said in [
        ("run: {}", "'run' needs at least one of"),
        ("run: {every: 0.5s}", "every must be a whole number of seconds, at least 1s"),
        ("run: {every: 1m, cron: '* * * * *'}", "give either 'every' or 'cron', not both"),
        ("run: {cron: '* * *'}", "has 3 fields; expected 5"),
        ("run: {at_strat: true}", "did you mean 'at_start'"),
    ]:
        with pytest.raises(WorkflowDefinitionError) as caught:
            parse_workflow(bad + "\n" + base, source="w.yaml")
        assert str(caught.value).startswith("w.yaml:1: "), str(caught.value)
        assert said in str(caught.value)


def test_the_schema_knows_run_and_workflow_steps():
    jsonschema = pytest.importorskip("jsonschema")
    validator = jsonschema.Draft202012Validator(workflow_json_schema())
    good = {
        "id": "w",
        "run": {"every": "10m", "at_start": True},
        "steps": [{"name": "s", "workflow": "other", "inputs": [{"name": "x", "value": 1}]}],
    }
    assert list(validator.iter_errors(good)) == []
    assert list(validator.iter_errors({**good, "run": {"cron": "* * * * *"}})) == []
    assert list(validator.iter_errors({**good, "run": {"evry": 1}}))
    assert list(validator.iter_errors({**good, "steps": [{"name": "s"}]}))


def test_a_workflow_step():
    spec = parse_workflow(
        "id: parent\nsteps:\n  - name: child\n    workflow: kid\n"
        "    inputs: [{name: text, value: hi}]\n"
        "outputs: [{name: o, value: '{{steps.child.outputs.shouted}}'}]\n"
    )
    step = spec.step("child")
    assert step.workflow == "kid" and step.run_options() == {"workflow": "kid"}
    assert [(s.name, wid) for s, wid in spec.sub_workflows()] == [("child", "kid")]
    with pytest.raises(WorkflowDefinitionError, match="either a 'tool' or a 'workflow'"):
        parse_workflow("id: p\nsteps: [{name: c, workflow: k, tool: text.upper}]\n")
    with pytest.raises(WorkflowDefinitionError, match="invalid workflow id"):
        parse_workflow("id: p\nsteps: [{name: c, workflow: '-k'}]\n")


def test_run_in_words():
    from workflows.dsl import RunSpec

    assert [RunSpec(every=e).describe() for e in (600, 3600, 90, 5400)] == [
        "every 10m",
        "every 1h",
        "every 90s",
        "every 90m",
    ]
    assert RunSpec(at_start=True, cron="0 2 * * *").describe() == "at start, cron '0 2 * * *' (UTC)"
