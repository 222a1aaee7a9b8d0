"""``watch`` on real nodes (libp2p + journal + Ray in one trio run): every event of a routed
workflow in order, ending with its final state; a watch resumed with ``since``; heartbeats
on an idle watch and during a ``result`` wait; the waiting reason in ``status``; and the
bounds: watches per client, a watcher that falls behind (``lagged``) or never reads (cut
off), a watch of an unknown workflow."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import trio

from node.client import ask, watch
from node.errors import RequestFailedError
from node.home import Home
from node.p2p import P2PHost
from protocols import control
from protocols.errors import PeerErrorResponse
from protocols.stream import MessageStream
from tests.integration.harness import launch, make_node, swarm_key, wait_until

pytestmark = pytest.mark.usefixtures("ray_cluster")

ROUTED = """
id: routed
steps:
  - name: first
    tool: util.echo
    inputs: [{name: value, value: 0.6}]
  - name: nap
    tool: util.sleep
    inputs: [{name: seconds, value: "{{steps.first.outputs.result}}"}]
outputs: [{name: slept, value: "{{steps.nap.outputs.result}}"}]
"""
NOBODY = """
id: nobody
steps:
  - name: up
    tool: text.upper
    inputs: [{name: text, value: hi}]
"""
LONG = """
id: long
steps:
  - name: nap
    tool: util.sleep
    inputs: [{name: seconds, value: 30}]
"""


def client(tmp: Path, name: str) -> P2PHost:
    return P2PHost(Home(tmp / name).load_client_key(), swarm_key=swarm_key(tmp))


async def open_watch(host: P2PHost, peer: str, wid: str, since: int = 0) -> MessageStream[Any]:
    ms = MessageStream(await host.open_stream(peer, control.PROTOCOL_ID), control.RESPONSE_CODEC)
    request: Any = control.WatchRequest(workflow_id=wid, since=since)
    await ms.send(request)
    return ms


async def test_watch_sees_every_event_of_a_routed_workflow_in_order(tmp_path: Path) -> None:
    a = make_node(tmp_path, "a", "util")
    c = make_node(
        tmp_path, "c", "none", control={"heartbeat_s": 0.1}, handoff={"placement_wait_s": 30}
    )
    async with trio.open_nursery() as nursery:
        await launch(nursery, a)
        await launch(nursery, c)
        await c.host.connect(a.peer_id, a.host.addrs())
        await c.discovery.exchange(a.peer_id)
        host = client(tmp_path, "c")
        async with host.run(["/ip4/127.0.0.1/tcp/0"]):
            peer = await host.connect_addr(c.host.addrs()[0])
            with pytest.raises(RequestFailedError) as unknown:
                await watch(host, peer, "routed-1", lambda f: None)
            assert unknown.value.code == "not_found"

            submitted = await ask(
                host, peer, control.SubmitRequest(workflow=ROUTED, workflow_id="routed-1"), 30
            )
            assert submitted.created
            frames: list[Any] = []
            with trio.fail_after(60):
                final = await watch(host, peer, "routed-1", frames.append)
            assert (final.kind, final.status, final.error) == (
                "workflow_finished",
                "SUCCESSFUL",
                None,
            )
            first = frames[0]
            assert isinstance(first, control.Watching) and first.name == "routed"
            assert [s.name for s in first.steps] == ["first", "nap"]
            assert (first.missed, first.reset) == (0, False)
            events = [f for f in frames if isinstance(f, control.ProgressEvent)]
            assert [e.seq for e in events] == list(range(1, len(events) + 1))  # all, in order
            for step, tool in (("first", "util.echo"), ("nap", "util.sleep")):
                mine = [e for e in events if e.step == step]
                kinds = [e.kind for e in mine]
                # ('pending' is recorded once the workflow is created: a step that started
                # at once has none)
                assert kinds in (
                    ["pending", "placed", "running", "finished"],
                    ["placed", "running", "finished"],
                ), kinds
                assert step == "first" or kinds[0] == "pending"
                assert {e.tool for e in mine} == {tool}
                placed = next(e for e in mine if e.kind == "placed")
                assert placed.node == a.peer_id and "util" in (placed.reason or "")
            # a step's events come before the next step's start, the workflow's end last
            order = [(e.step, e.kind) for e in events]
            assert order.index(("first", "finished")) < order.index(("nap", "placed"))
            assert events[-1] is final
            # the nap (0.6 s) with nothing to say: heartbeats, each with the newest seq
            beats = [f for f in frames if isinstance(f, control.Heartbeat)]
            assert beats and all(b.seq is not None and b.seq >= 1 for b in beats)

            # watched again from where a client left off: only what came after
            since = events[2].seq
            again: list[Any] = []
            await watch(host, peer, "routed-1", again.append, since=since)
            assert isinstance(again[0], control.Watching) and again[0].status == "SUCCESSFUL"
            assert again[0].seq == final.seq
            assert [e.seq for e in again if isinstance(e, control.ProgressEvent)] == list(
                range(since + 1, final.seq + 1)
            )
            # a since beyond the log (a node restarted): said so, and everything kept
            reset: list[Any] = []
            await watch(host, peer, "routed-1", reset.append, since=10_000)
            assert reset[0].reset and len(reset) == len(events) + 1

            # a step no node can run: it waits, and status and watch say why
            await ask(host, peer, control.SubmitRequest(workflow=NOBODY, workflow_id="n-1"), 30)
            why = "waiting: no live node offers text.upper (waits up to 300s)"

            async def says_why() -> bool:
                st = await ask(host, peer, control.StatusRequest(workflow_id="n-1"), 30)
                return st.steps[0].waiting == why

            with trio.fail_after(20):
                while not await says_why():
                    await trio.sleep(0.05)
            ms = await open_watch(host, peer, "n-1")
            seen: list[Any] = [await ms.receive_within(10)]
            assert seen[0].steps[0].waiting == why
            while not isinstance(seen[-1], control.Heartbeat):
                seen.append(await ms.receive_within(10))
            said = [(e.kind, e.reason) for e in seen[1:-1] if e.kind != "pending"]
            assert said == [("waiting", why)]  # (once: the same reason is not repeated)
            await ask(host, peer, control.CancelRequest(workflow_id="n-1"), 30)
            end = await ms.receive_within(10)
            while isinstance(end, control.Heartbeat):
                end = await ms.receive_within(10)
            assert (end.kind, end.status) == ("workflow_finished", "CANCELED")
            assert await ms.receive_or_eof() is None  # the node closes after the end
            await ms.close()
        nursery.cancel_scope.cancel()


async def test_watches_are_bounded_and_a_slow_watcher_is_cut_off(tmp_path: Path) -> None:
    c = make_node(
        tmp_path,
        "c",
        "util",
        control={
            "heartbeat_s": 0.2,
            "max_watches_per_peer": 2,
            "watch_queue": 16,
            "watch_write_timeout_s": 1.0,
        },
    )
    async with trio.open_nursery() as nursery:
        await launch(nursery, c)
        host = client(tmp_path, "c")
        async with host.run(["/ip4/127.0.0.1/tcp/0"]):
            peer = await host.connect_addr(c.host.addrs()[0])
            await ask(host, peer, control.SubmitRequest(workflow=LONG, workflow_id="long-1"), 30)

            # a result wait on control 0.3.0 is kept alive by heartbeats
            ms = MessageStream(
                await host.open_stream(peer, control.PROTOCOL_ID), control.RESPONSE_CODEC
            )
            request: Any = control.ResultRequest(workflow_id="long-1", wait=True)
            await ms.send(request)
            assert isinstance(await ms.receive_within(5), control.Heartbeat)
            await ms.reset()

            # control 0.2.0 has no watch (and no heartbeats): its clients never ask
            legacy = MessageStream(
                await host.open_stream(peer, "/hivemesh/control/0.2.0"), control.RESPONSE_CODEC
            )
            request = control.WatchRequest(workflow_id="long-1")
            await legacy.send(request)
            with pytest.raises(PeerErrorResponse) as old:
                await legacy.receive_within(10)
            assert old.value.code == "unknown_type"
            await legacy.close()

            # per client: two watches, not a third
            one = await open_watch(host, peer, "long-1")
            two = await open_watch(host, peer, "long-1")
            for w in (one, two):
                assert isinstance(await w.receive_within(10), control.Watching)
            three = await open_watch(host, peer, "long-1")
            with pytest.raises(PeerErrorResponse) as busy:
                await three.receive_within(10)
            assert busy.value.code == "busy" and "max_watches_per_peer" in busy.value.message
            await three.close()

            # a burst of events while the watchers read nothing: more than a queue holds
            hub = c.progress
            for i in range(100):
                hub.step("long-1", "nap", "retried", reason=f"burst {i}")
            with pytest.raises(PeerErrorResponse) as lagged:
                while True:
                    await one.receive_within(10)
            assert lagged.value.code == "lagged" and "since=" in lagged.value.message
            for w in (one, two):
                await w.close()
            await wait_until(lambda: hub.watches == 0, what="the lagged watches ended")

            # a watcher that never reads: the node's queue for it stays bounded and, its
            # stream full, it is cut off after the write timeout
            mute = await open_watch(host, peer, "long-1", since=hub.last_seq("long-1"))
            assert isinstance(await mute.receive_within(10), control.Watching)
            watcher = next(iter(hub._logs["long-1"].watchers))
            bulk = "x" * 4000
            for i in range(400):
                hub.step("long-1", "nap", "retried", reason=f"{bulk} {i}")
                assert len(watcher) <= 16
                await trio.sleep(0)
            await wait_until(lambda: hub.watches == 0, what="the mute watcher cut off")
            assert watcher.lagged
            await mute.close()
            # and the client may watch again
            four = await open_watch(host, peer, "long-1")
            assert isinstance(await four.receive_within(10), control.Watching)
            await four.close()
            await ask(host, peer, control.CancelRequest(workflow_id="long-1"), 30)
        nursery.cancel_scope.cancel()
