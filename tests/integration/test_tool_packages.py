"""Tools installed per step, on real nodes: a step names a package (``tool: PACKAGE@VERSION``
or ``package:``) that no node has installed; a node with ``tools.install`` runs it in a Ray
runtime env that pip-installs the package from a local folder of wheels (written by the test,
no network), with the step's ``parameters`` as environment variables. Runtime env installs
take seconds each on 2 cores: these tests are few and share their workflows."""

from __future__ import annotations

from pathlib import Path

import pytest
import trio

from node.handoff.delegator import delegate
from node.handoff.errors import HandoffRejectedError
from protocols import handoff
from protocols.framing import encode_frame
from protocols.stream import MessageStream
from tests.integration.harness import launch, make_node, wait_until
from tests.tool_wheels import write_tool_wheel
from workflows.dsl import parse_workflow
from workflows.status import WorkflowStatus

pytestmark = pytest.mark.usefixtures("ray_cluster")

TWO_VERSIONS = """
id: versions
steps:
  - name: one
    tool: hm-probe@1.0.0
    inputs: [{name: value, value: first}, {name: env, value: HM_GREETING}]
    parameters: [{name: HM_GREETING, value: hello-1}]
  - name: two
    tool: hm_probe.probe
    package: "hm-probe==2.0.0"
    inputs: [{name: value, value: second}, {name: env, value: HM_GREETING}]
    parameters: [{name: HM_GREETING, value: 42}]
  - name: installed
    tool: util.parameters
    parameters: [{name: HM_MODE, value: fast}, {name: HM_LIMIT, value: 2.5}]
outputs:
  - {name: one, value: "{{steps.one.outputs.result}}"}
  - {name: two, value: "{{steps.two.outputs.result}}"}
  - {name: installed, value: "{{steps.installed.outputs.result}}"}
"""

FAILING = """
id: failing
steps:
  - name: boom
    tool: hm-probe@2.0.0
    inputs: [{name: value, value: boom}]
"""


def _installer_config(wheels: Path) -> dict[str, object]:
    return {"install": True, "no_index": True, "find_links": [str(wheels)]}


async def test_package_steps_run_on_an_installing_node_each_with_its_own_version(
    tmp_path: Path,
) -> None:
    """c (no installs, no tools) hands its steps to a (tools.install): one runs hm-probe
    1.0.0, the other 2.0.0, at the same time, each seeing its own parameters, and an
    installed tool's step gets its parameters too; a's card then lists both packages. A
    package tool's exception comes back through the handoff with its type, message and
    traceback. On a itself the same steps run locally, and fail alike."""
    wheels = tmp_path / "wheels"
    write_tool_wheel(wheels, "hm-probe", "1.0.0")
    write_tool_wheel(wheels, "hm-probe", "2.0.0")
    a = make_node(tmp_path, "a", "util", tool_packages=_installer_config(wheels))
    async with trio.open_nursery() as nursery:
        await launch(nursery, a)
        c = make_node(tmp_path, "c", "none", bootstrap=a.host.addrs())
        await launch(nursery, c)
        await wait_until(lambda: c.registry.has_fresh_card(a.peer_id), what="c learning a")

        wid, _ = await c.workflows.submit(parse_workflow(TWO_VERSIONS), {}, "versions-c")
        with trio.fail_after(240):  # two fresh runtime env installs on 2 cores
            view = await c.workflows.wait(wid)
        assert view.status is WorkflowStatus.SUCCESSFUL, view.error
        assert view.outputs == {
            "one": {"version": "1.0.0", "value": "first", "env": "hello-1"},
            "two": {"version": "2.0.0", "value": "second", "env": "42"},
            "installed": {"HM_MODE": "fast", "HM_LIMIT": "2.5"},
        }
        assert {s.node for s in view.steps} == {a.peer_id}
        assert set(a.run_local.installed) == {"hm-probe==1.0.0", "hm-probe==2.0.0"}
        await wait_until(
            lambda: (
                (state := c.registry.get(a.peer_id)) is not None
                and state.card is not None
                and state.card.installs is not None
                and set(state.card.installs.packages) == {"hm-probe==1.0.0", "hm-probe==2.0.0"}
            ),
            what="a's card listing its installed packages",
        )

        wid, _ = await c.workflows.submit(parse_workflow(FAILING), {}, "failing-c")
        with trio.fail_after(120):
            view = await c.workflows.wait(wid)
        assert view.status is WorkflowStatus.FAILED
        error = view.error or ""
        assert "ValueError: the probe was asked to fail" in error, error
        assert "Traceback (most recent call last):" in error, error
        assert 'raise ValueError("the probe was asked to fail")' in error, error

        # the same on a, locally (cached runtime envs)
        wid, _ = await a.workflows.submit(parse_workflow(TWO_VERSIONS), {}, "versions-a")
        with trio.fail_after(120):
            view = await a.workflows.wait(wid)
        assert view.status is WorkflowStatus.SUCCESSFUL, view.error
        assert view.outputs["one"]["env"] == "hello-1" and view.outputs["two"]["env"] == "42"
        assert view.outputs["installed"] == {"HM_MODE": "fast", "HM_LIMIT": "2.5"}
        assert {s.node for s in view.steps} == {a.peer_id}
        wid, _ = await a.workflows.submit(parse_workflow(FAILING), {}, "failing-a")
        with trio.fail_after(120):
            view = await a.workflows.wait(wid)
        assert view.status is WorkflowStatus.FAILED
        (step,) = view.steps
        for text in (view.error or "", step.error or ""):
            assert "ValueError: the probe was asked to fail" in text, text
            assert "Traceback (most recent call last):" in text, text
        nursery.cancel_scope.cancel()


async def test_with_no_installing_node_a_package_step_fails_naming_the_package(
    tmp_path: Path,
) -> None:
    """b and c do not install: the step waits the provider wait, then fails saying which
    package it needs and which config turns installs on; b refuses an offer of it outright."""
    b = make_node(tmp_path, "b", "util")
    async with trio.open_nursery() as nursery:
        await launch(nursery, b)
        c = make_node(
            tmp_path, "c", "none", bootstrap=b.host.addrs(), routing={"provider_wait_s": 1}
        )
        await launch(nursery, c)
        await wait_until(lambda: c.registry.has_fresh_card(b.peer_id), what="c learning b")
        wid, _ = await c.workflows.submit(parse_workflow(FAILING), {}, "no-installs")
        with trio.fail_after(30):
            view = await c.workflows.wait(wid)
        assert view.status is WorkflowStatus.FAILED
        error = view.error or ""
        assert "'hm-probe==2.0.0'" in error and "tools.install: true" in error, error

        offer = handoff.Offer(
            handoff_id="no-installs/boom@b",
            workflow_id="no-installs",
            step="boom",
            tool="hm-probe",
            args={},
            deadline_ms=10_000,
            package="hm-probe==2.0.0",
        )
        with pytest.raises(HandoffRejectedError) as info:
            await delegate(
                c.host, b.peer_id, offer, network=c.config.network, config=c.config.handoff
            )
        assert info.value.code == "installs_not_allowed"

        # on handoff 1.0.0 (an older delegator's id) an ordinary offer is taken as before, and
        # one with 1.1.0's members is refused
        legacy = "/hivemesh/handoff/1.0.0"
        plain = handoff.Offer(
            handoff_id="old/echo@b",
            workflow_id="old",
            step="echo",
            tool="util.echo",
            args={"value": 1},
            deadline_ms=10_000,
        )
        for sent, expected in ((plain, handoff.Accept), (offer, handoff.Reject)):
            ms = MessageStream(await c.host.open_stream(b.peer_id, legacy), handoff.CODEC)
            payload = sent.model_dump(mode="json", exclude_none=True)
            await ms.stream.write(encode_frame(payload))
            reply = await ms.receive_within(10)
            assert isinstance(reply, expected), reply
            if isinstance(reply, handoff.Reject):
                assert reply.code == "invalid" and "handoff 1.0.0" in reply.message
            await ms.reset()
        nursery.cancel_scope.cancel()


async def test_a_tool_s_declared_resources_are_asked_for_and_an_impossible_one_fails() -> None:
    """A tool's declared resources go into its Ray task's options, the step's own over them;
    more than the cluster has in all fails the step at once instead of waiting forever."""
    from workflows.errors import ToolExecutionError
    from workflows.ray_tools import RayToolRunner
    from workflows.tools import ToolRegistry, tool

    @tool("demo.greedy", resources={"num_cpus": 1000})
    def greedy() -> int:  # pragma: no cover - never runs
        return 0

    runner = RayToolRunner(num_cpus=0.5, tools=ToolRegistry([greedy]))
    with pytest.raises(ToolExecutionError, match=r"needs num_cpus=1000, .* has 2 in all"):
        await runner("demo.greedy", None, {})  # (the session's Ray has 2 CPUs)
    # a registry tool with no resources declared, and the step's own resources: runs
    assert await RayToolRunner(num_cpus=0.5)(
        "util.echo", None, {"value": 3}, resources={"num_cpus": 1}
    ) == {"result": 3}
