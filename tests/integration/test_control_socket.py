"""The local control endpoint (``HOME/control.sock``) of a real node (libp2p + journal + Ray
in one trio run): the requests the CLI makes, answered by the same handler as on libp2p and
for the same client identity; its file mode; garbage and floods answered within bounds while
the node keeps serving; a stale socket file replaced at start; no socket (and the client on
libp2p) when the home's path is too long for one."""

from __future__ import annotations

import contextlib
import os
import socket
import stat
from pathlib import Path
from typing import Any

import pytest
import trio

from node.client import LocalControl, ask, call, local_socket, watch
from node.control_socket import MAX_SOCKET_PATH, LocalStream
from node.errors import RequestFailedError
from node.home import Home
from node.p2p import P2PHost
from protocols import control
from protocols.errors import StreamClosedError
from protocols.framing import encode_frame, encode_uvarint
from protocols.stream import MessageStream
from tests.integration.harness import launch, make_node, swarm_key

pytestmark = pytest.mark.usefixtures("ray_cluster")

SHOUT = (
    "id: shout\nsteps:\n  - name: up\n    tool: text.upper\n"
    "    inputs: [{name: text, value: hello}]\n"
    "outputs: [{name: shouted, value: '{{steps.up.outputs.result}}'}]\n"
)
LONG = (
    "id: long\nsteps:\n  - name: nap\n    tool: util.sleep\n"
    "    inputs: [{name: seconds, value: 30}]\n"
)


async def frames_until_closed(ms: MessageStream[Any]) -> list[Any]:
    """Every frame the node sends on ``ms`` until it closes the connection."""
    frames: list[Any] = []
    with trio.fail_after(10):
        try:
            while (frame := await ms.receive_or_eof()) is not None:
                frames.append(frame)
        except StreamClosedError:  # (closed with our bytes unread: a reset)
            pass
    await ms.close()
    return frames


async def connect(path: Path) -> MessageStream[Any]:
    return MessageStream(
        LocalStream(await trio.open_unix_socket(str(path))), control.RESPONSE_CODEC
    )


async def raw_exchange(path: Path, data: bytes) -> list[Any]:
    """Send ``data`` on a new connection; every frame the node answers, until it closes."""
    ms = await connect(path)
    with contextlib.suppress(StreamClosedError):  # (closed before we wrote)
        await ms.stream.write(data)
    return await frames_until_closed(ms)


async def test_the_cli_requests_over_the_socket_with_the_homes_client_identity(
    tmp_path: Path,
) -> None:
    node = make_node(tmp_path, "a", "text,util", control={"max_watches_per_peer": 1})
    async with trio.open_nursery() as nursery:
        await launch(nursery, node)
        home = Home(tmp_path / "a")
        found = local_socket(home)
        assert found is not None
        path, peer = found
        assert (path, peer) == (home.path / "control.sock", node.peer_id)
        mode = os.lstat(path).st_mode
        assert stat.S_ISSOCK(mode) and stat.S_IMODE(mode) == 0o600

        local = await LocalControl.connect(path)
        with trio.fail_after(60):
            info = await ask(local, peer, control.InfoRequest(), 10)
            assert info.peer_id == node.peer_id
            sub = await ask(
                local, peer, control.SubmitRequest(workflow=SHOUT, workflow_id="s-1"), 30
            )
            assert sub.created
            frames: list[Any] = []
            final = await watch(local, peer, "s-1", frames.append)
            assert final.status == "SUCCESSFUL"
            assert isinstance(frames[0], control.Watching)
            result = await ask(local, peer, control.ResultRequest(workflow_id="s-1", wait=True), 30)
            assert (result.status, result.outputs) == ("SUCCESSFUL", {"shouted": "HELLO"})
            status = await ask(local, peer, control.StatusRequest(workflow_id="s-1"), 10)
            assert [(s.name, s.status) for s in status.steps] == [("up", "SUCCESSFUL")]

            # one identity on both paths: the home's client key over libp2p holds the one
            # watch a client may have, so the socket's client is refused one
            await ask(local, peer, control.SubmitRequest(workflow=LONG, workflow_id="l-1"), 30)
            host = P2PHost(home.load_client_key(), swarm_key=swarm_key(tmp_path))
            async with host.run(["/ip4/127.0.0.1/tcp/0"]):
                await host.connect_addr(node.host.addrs()[0])
                held = MessageStream(
                    await host.open_stream(node.peer_id, control.PROTOCOL_ID),
                    control.RESPONSE_CODEC,
                )
                await held.send(control.WatchRequest(workflow_id="l-1"))
                assert isinstance(await held.receive_within(10), control.Watching)
                with pytest.raises(RequestFailedError) as refused:
                    await watch(local, peer, "l-1", lambda f: None)
                assert refused.value.code == "busy"
                await held.close()
            await ask(local, peer, control.CancelRequest(workflow_id="l-1"), 30)
        await local.aclose()
        nursery.cancel_scope.cancel()
    assert not path.exists()  # removed at stop


async def test_garbage_and_floods_get_bounded_answers_and_the_node_keeps_serving(
    tmp_path: Path,
) -> None:
    node = make_node(
        tmp_path,
        "a",
        "text",
        network={"max_streams_per_peer": 4, "max_pending_bytes_per_peer": 4096},
    )
    async with trio.open_nursery() as nursery:
        await launch(nursery, node)
        home = Home(tmp_path / "a")
        found = local_socket(home)
        assert found is not None
        path, peer = found

        [bad] = await raw_exchange(path, b"\xff" * 12)  # a varint that never ends
        assert bad.code == "bad_frame"
        [big] = await raw_exchange(path, encode_uvarint(64 * 1024 * 1024) + b"{")
        assert big.code == "frame_too_large"
        [unknown] = await raw_exchange(path, encode_frame({"type": "shutdown"}))
        assert unknown.code == "unknown_type"
        [odd] = await raw_exchange(path, encode_frame({"type": "status", "workflow_id": 7}))
        assert odd.code == "invalid_message"

        # four connections held open (the request timeout is 5 s): a fifth is closed
        # unanswered
        endpoint = node.control_socket
        assert endpoint is not None
        held = [await connect(path) for _ in range(4)]
        with trio.fail_after(4):
            while endpoint.open_connections < 4:
                await trio.sleep(0.01)
            assert await raw_exchange(path, encode_frame({"type": "info"})) == []
            assert endpoint.refused_connections == 1
            # frames half sent on two of them: their unfinished bytes are bounded together
            announced = encode_uvarint(3000) + b'{"type":"info","x":"'
            await held[0].stream.write(announced + b"x" * 2000)
            while endpoint.budget.held < 2000:
                await trio.sleep(0.01)
            await held[1].stream.write(announced + b"x" * 2500)  # over 4096 with the first
            [over] = await frames_until_closed(held[1])
            assert over.code == "over_limit"
            for ms in held:
                await ms.close()
        with trio.fail_after(10):
            while endpoint.open_connections:
                await trio.sleep(0.01)
            assert endpoint.budget.held == 0
            local = await LocalControl.connect(path)
            info = await ask(local, peer, control.InfoRequest(), 10)
            assert info.peer_id == node.peer_id
        nursery.cancel_scope.cancel()


async def test_a_stale_socket_is_replaced_and_anything_else_is_left_alone(
    tmp_path: Path,
) -> None:
    home = Home(tmp_path / "a")
    home.path.mkdir()
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stale.bind(str(home.path / "control.sock"))  # as a node killed with -9 leaves it
    stale.close()
    node = make_node(tmp_path, "a", "text")
    async with trio.open_nursery() as nursery:
        await launch(nursery, node)
        found = local_socket(home)
        assert found is not None
        with trio.fail_after(10):
            local = await LocalControl.connect(found[0])
            assert (await ask(local, found[1], control.InfoRequest(), 10)).peer_id == node.peer_id
        nursery.cancel_scope.cancel()

    (home.path / "control.sock").write_text("not a socket")
    node = make_node(tmp_path, "a", "text")
    async with trio.open_nursery() as nursery:
        await launch(nursery, node)
        assert (home.read_runtime() or {})["control_socket"] is None
        assert local_socket(home) is None
        assert (home.path / "control.sock").read_text() == "not a socket"
        nursery.cancel_scope.cancel()


async def test_a_home_too_long_for_a_socket_has_none_and_the_client_uses_libp2p(
    tmp_path: Path,
) -> None:
    deep = tmp_path / ("d" * max(1, MAX_SOCKET_PATH - len(str(tmp_path))))
    deep.mkdir()
    node = make_node(deep, "a", "text")
    # (the CLI finds the home's node by its lock, as a daemon's)
    with Home(deep / "a").claim_for_node():
        await serve_and_ask_over_libp2p(node, Home(deep / "a"))


async def serve_and_ask_over_libp2p(node: Any, home: Home) -> None:
    async with trio.open_nursery() as nursery:
        await launch(nursery, node)
        assert (home.read_runtime() or {})["control_socket"] is None
        assert local_socket(home) is None
        with trio.fail_after(30):  # (the CLI's own trio run, in a thread)
            info = await trio.to_thread.run_sync(
                lambda: call(home, None, control.InfoRequest(), swarm_key_file=None)
            )
        assert info.peer_id == node.peer_id
        nursery.cancel_scope.cancel()
