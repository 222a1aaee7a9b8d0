"""Message codecs of the three protocols, and MessageStream over an in-memory byte stream."""

from __future__ import annotations

import typing
from typing import Any

import pydantic
import pytest
import trio
from pydantic import BaseModel

from protocols import control, discovery, handoff
from protocols.control.messages import MAX_WORKFLOW_TEXT
from protocols.discovery.messages import MAX_ADDRS, MAX_PEERS, MAX_TOOLS
from protocols.errors import (
    FrameDecodeError,
    FrameTooLargeError,
    LocalProtocolError,
    MessageValidationError,
    NestingTooDeepError,
    PeerErrorResponse,
    ProtocolTimeoutError,
    StreamClosedError,
    UnknownMessageTypeError,
)
from protocols.framing import FrameDecoder, encode_frame, encode_uvarint
from protocols.handoff.messages import MAX_REASON_LEN
from protocols.limits import FrameLimits
from protocols.stream import MessageStream
from protocols.wire import MAX_ID_LEN, ErrorMessage, MessageCodec, WireModel
from tests.unit.memory_stream import MemoryStream, SilentStream

PEER_A = "12D3KooWA1111111111111111111111111111111111111111111"
PEER_B = "12D3KooWB2222222222222222222222222222222222222222222"

CARD = discovery.NodeCard(
    peer_id=PEER_A,
    addrs=[f"/ip4/127.0.0.1/tcp/4001/p2p/{PEER_A}"],
    version="0.1.0",
    tools=[
        discovery.ToolCard(
            name="text.upper",
            version="1.0.0",
            description="Upper-case a string",
            input_schema={"type": "object", "properties": {"text": {"type": "string"}}},
            output_schema={"type": "object"},
        )
    ],
    load=discovery.LoadInfo(running=1, capacity=4),
    ttl_s=30.0,
)
HELLO = discovery.Hello(
    card=CARD,
    peers=[discovery.PeerRef(peer_id=PEER_B, addrs=[f"/ip4/10.0.0.2/tcp/4001/p2p/{PEER_B}"])],
)

OFFER = handoff.Offer(
    handoff_id="wf-1/shout#1a2b3c4d",
    workflow_id="wf-1",
    step="shout",
    tool="text.upper",
    version="1",
    args={"text": "hello 🐝", "n": [1, 2.5, None, True]},
    deadline_ms=3_600_000,
    hops=1,
    epoch=2,
)
RECEIPT = handoff.Receipt(
    tool_version="1.0.0", args_sha256="a" * 64, outputs_sha256="b" * 64, signature="c2ln"
)
HANDOFF_MESSAGES: list[BaseModel] = [
    OFFER,
    handoff.Accept(handoff_id="h1", epoch=0),
    handoff.Reject(handoff_id="h1", code="overloaded", message="64 steps running"),
    handoff.Heartbeat(handoff_id="h1", elapsed_ms=1000),
    handoff.StepResult(
        handoff_id="h1", epoch=0, outputs={"result": "HELLO"}, duration_ms=12, receipt=RECEIPT
    ),
    handoff.StepFailed(handoff_id="h1", epoch=0, code="tool_failed", message="boom"),
    handoff.Cancel(handoff_id="h1", reason="workflow canceled"),
    handoff.Canceled(handoff_id="h1", epoch=0, message="handoff h1 was canceled by its delegator"),
    handoff.NotCanceled(handoff_id="h1", code="unknown_handoff", message="no handoff 'h1'"),
    handoff.Ack(handoff_id="h1", epoch=0),
]

STEP = control.StepStatus(
    name="shout",
    tool="text.upper",
    status="SUCCESSFUL",
    node=PEER_B,
    reason="remote: this node does not offer it",
    attempts=1,
    started_at=1.5,
    ended_at=2.5,
)
CONTROL_REQUESTS: list[BaseModel] = [
    control.InfoRequest(),
    control.SubmitRequest(
        workflow="id: demo\nsteps: []\n", source="demo.yaml", inputs={"x": 1}, workflow_id="w1"
    ),
    control.StatusRequest(workflow_id="w1"),
    control.ResultRequest(workflow_id="w1", wait=True),
    control.CancelRequest(workflow_id="w1"),
    control.ListRequest(),
    control.PeersRequest(),
    control.ToolsRequest(),
    control.WatchRequest(workflow_id="w1", since=7),
    control.WorkflowsRequest(),
    control.RunRequest(workflow="nightly", inputs={"x": 1}, workflow_id="w2"),
]
CONTROL_RESPONSES: list[BaseModel] = [
    control.Workflows(
        workflows=[
            control.RegisteredWorkflow(
                workflow="nightly",
                name="Nightly",
                inputs=[control.RegisteredInput(name="x", required=False, default=1)],
                source="package:my-flows",
                file="/site/my_flows/nightly.yaml",
                schedule="cron '0 2 * * *' (UTC)",
            )
        ],
        problems=[control.RegistryProblem(source="/w/bad.yaml", error="bad.yaml:1: invalid")],
    ),
    control.Info(peer_id=PEER_A, addrs=["/ip4/127.0.0.1/tcp/1"], tools=["text.upper"], version="1"),
    control.Info(
        peer_id=PEER_A,
        addrs=[],
        tools=[],
        version="1",
        ray=control.RayInfo(address="127.0.0.1:6379", joined=True, cpus=2),
    ),
    control.Submitted(workflow_id="w1", status="RUNNING", created=True),
    control.WorkflowStatusReply(
        workflow_id="w1", name="demo", status="RUNNING", created_at=1.0, steps=[STEP]
    ),
    control.WorkflowResult(workflow_id="w1", status="SUCCESSFUL", outputs={"shout": {"r": "A"}}),
    control.WorkflowList(
        workflows=[
            control.WorkflowSummary(workflow_id="w1", name="demo", status="FAILED", created_at=1.0)
        ]
    ),
    control.Peers(
        peers=[
            control.PeerEntry(
                peer_id=PEER_B, addrs=[], tools=["math.add"], connected=True, last_seen=3.0
            )
        ]
    ),
    control.Tools(
        tools=[
            control.ToolEntry(
                name="text.upper", version="1.0.0", description="", providers=[PEER_A]
            )
        ]
    ),
    control.Watching(
        workflow_id="w1",
        name="demo",
        status="RUNNING",
        seq=3,
        missed=0,
        reset=False,
        steps=[
            control.StepProgress(
                name="a", tool="util.echo", status="PENDING", waiting="waiting: all busy"
            )
        ],
    ),
    control.ProgressEvent(
        workflow_id="w1", seq=4, time=5.0, kind="placed", step="a", node=PEER_A, reason="local"
    ),
    control.Heartbeat(time=6.0, seq=4),
]

CASES: list[tuple[MessageCodec[Any], BaseModel]] = (
    [(discovery.CODEC, HELLO), (discovery.CODEC, discovery.Hello(card=CARD))]
    + [(handoff.CODEC, m) for m in HANDOFF_MESSAGES]
    + [(control.REQUEST_CODEC, m) for m in CONTROL_REQUESTS]
    + [(control.RESPONSE_CODEC, m) for m in CONTROL_RESPONSES]
)


def ids(case: tuple[MessageCodec[Any], BaseModel]) -> str:
    codec, message = case
    return f"{codec.protocol}-{type(message).__name__}"


# -- codecs ----------------------------------------------------------------------------------


def test_codecs_know_exactly_their_message_types() -> None:
    assert discovery.CODEC.types == ["hello"]
    assert handoff.CODEC.types == [
        "accept",
        "ack",
        "cancel",
        "canceled",
        "failed",
        "heartbeat",
        "not_canceled",
        "offer",
        "reject",
        "result",
    ]
    expected = ["cancel", "info", "list", "peers", "result", "status", "submit", "tools"]
    assert control.REQUEST_CODEC.types == sorted(
        [*expected, "handoffs", "handoff_cancel", "resume", "delete", "watch", "workflows", "run"]
    )
    # cancel and resume are answered with a status, handoff_cancel with the handoffs it
    # stopped, delete with a list of what it deleted: no new response types; watch (0.3.0)
    # with watching, event and heartbeat frames (heartbeats also during a result wait);
    # workflows (0.5.0) with workflows, run with submitted
    assert control.RESPONSE_CODEC.types == sorted(
        {*expected, "submitted", "handoffs", "watching", "event", "heartbeat", "workflows"}
        - {"submit", "cancel"}
    )
    assert control.CODEC is control.REQUEST_CODEC


@pytest.mark.parametrize("case", CASES, ids=[ids(c) for c in CASES])
def test_round_trip(case: tuple[MessageCodec[Any], BaseModel]) -> None:
    codec, message = case
    obj = codec.encode(message)
    assert isinstance(obj["type"], str)
    assert codec.decode(obj) == message
    # and through the frame codec: the JSON form is what travels
    (decoded,) = FrameDecoder().feed(encode_frame(obj))
    assert codec.decode(decoded) == message


def test_defaults_fill_in_optional_fields() -> None:
    offer = handoff.CODEC.decode(
        {
            "type": "offer",
            "handoff_id": "h",
            "workflow_id": "w",
            "step": "s",
            "tool": "t",
            "deadline_ms": 1,
        }
    )
    assert isinstance(offer, handoff.Offer)
    assert (offer.version, offer.args, offer.hops, offer.epoch) == (None, {}, 0, 0)
    hello = discovery.CODEC.decode({"type": "hello", "card": {"peer_id": "p", "version": "1"}})
    assert hello.peers == []
    assert hello.card.addrs == [] and hello.card.tools == []
    assert hello.card.load == discovery.LoadInfo(running=0, capacity=1)
    assert hello.card.ttl_s == 60.0
    result = control.REQUEST_CODEC.decode({"type": "result", "workflow_id": "w"})
    assert result == control.ResultRequest(workflow_id="w", wait=False)


def test_messages_are_frozen() -> None:
    with pytest.raises(pydantic.ValidationError, match="frozen"):
        handoff.Accept(handoff_id="h", epoch=0).handoff_id = "other"


@pytest.mark.parametrize(
    ("codec", "type_name"),
    [
        (discovery.CODEC, "goodbye"),
        (discovery.CODEC, "offer"),  # a handoff type is unknown to discovery
        (handoff.CODEC, "hello"),
        (control.REQUEST_CODEC, "submitted"),  # a response is not a request
        (control.RESPONSE_CODEC, "submit"),
        (handoff.CODEC, "error"),  # `error` is handled by MessageStream, not the codecs
    ],
)
def test_unknown_type_names_the_type(codec: MessageCodec[Any], type_name: str) -> None:
    with pytest.raises(UnknownMessageTypeError) as info:
        codec.decode({"type": type_name})
    assert repr(type_name) in str(info.value)
    assert codec.protocol in str(info.value)
    assert info.value.code == "unknown_type"


@pytest.mark.parametrize("bad", [{}, {"type": 3}, {"type": None}])
def test_missing_or_non_string_type_is_unknown(bad: dict[str, Any]) -> None:
    with pytest.raises(UnknownMessageTypeError):
        handoff.CODEC.decode(bad)


DROP = object()  # marks a field to remove


def good_offer(**changes: Any) -> dict[str, Any]:
    obj = handoff.CODEC.encode(OFFER)
    obj.update(changes)
    return {k: v for k, v in obj.items() if v is not DROP}


@pytest.mark.parametrize(
    ("obj", "where"),
    [
        (good_offer(extra="field"), "extra"),
        (good_offer(handoff_id=""), "handoff_id"),
        (good_offer(handoff_id="h" * (MAX_ID_LEN + 1)), "handoff_id"),
        (good_offer(tool=""), "tool"),
        (good_offer(deadline_ms=0), "deadline_ms"),
        (good_offer(deadline_ms=7 * 24 * 3600 * 1000 + 1), "deadline_ms"),
        (good_offer(deadline_ms=DROP), "deadline_ms"),
        (good_offer(hops=-1), "hops"),
        (good_offer(epoch=-1), "epoch"),
        # an integer is a JSON integer: not a string of digits (which would come back out as
        # a number longer than any receiver's digit bound), not a float, not a boolean
        (good_offer(hops="9" * 70), "hops"),
        (good_offer(epoch=1.0), "epoch"),
        (good_offer(deadline_ms=True), "deadline_ms"),
        (good_offer(args=[1, 2]), "args"),
        (good_offer(version="v" * 65), "version"),
        (good_offer(workflow_id=DROP), "workflow_id"),
    ],
)
def test_invalid_offer_fields(obj: dict[str, Any], where: str) -> None:
    with pytest.raises(MessageValidationError) as info:
        handoff.CODEC.decode(obj)
    text = str(info.value)
    assert text.startswith("invalid handoff 'offer' message: ")
    assert where in text
    assert "\n" not in text
    assert info.value.code == "invalid_message"


@pytest.mark.parametrize(
    "obj",
    [
        {"type": "reject", "handoff_id": "h", "code": "busy", "message": "m"},
        {"type": "reject", "handoff_id": "h", "code": "overloaded", "message": "m" * 4097},
        {"type": "failed", "handoff_id": "h", "code": "no_such_tool", "message": "m"},
        {"type": "failed", "handoff_id": "h", "code": "internal", "message": "m" * 16385},
        {"type": "heartbeat", "handoff_id": "h", "elapsed_ms": -1},
        {"type": "result", "handoff_id": "h", "outputs": {}, "duration_ms": -5},
        {"type": "result", "handoff_id": "h", "duration_ms": 5},
        {"type": "accept", "handoff_id": "h", "note": "extra"},
    ],
)
def test_invalid_handoff_messages(obj: dict[str, Any]) -> None:
    with pytest.raises(MessageValidationError):
        handoff.CODEC.decode(obj)


@pytest.mark.parametrize("value", ["9" * 70, "5", 5.0, 1e18, True])
def test_a_card_load_is_a_json_integer(value: Any) -> None:
    """Found by scripts/fuzz.py: a card whose load was a 70-digit string was accepted as an
    int and sent on as a 70-digit number, which every receiver refuses (max_number_digits)."""
    hello = {
        "type": "hello",
        "card": {"peer_id": "p", "version": "1", "load": {"running": value, "capacity": 1}},
    }
    with pytest.raises(MessageValidationError) as info:
        discovery.CODEC.decode(hello)
    assert "running" in str(info.value)


@pytest.mark.parametrize(
    "code", ["no_such_tool", "overloaded", "not_authorised", "invalid", "hop_limit"]
)
def test_every_reject_code_is_accepted(code: str) -> None:
    obj = {"type": "reject", "handoff_id": "h", "code": code, "message": ""}
    assert handoff.CODEC.decode(obj) == handoff.Reject.model_validate(obj)


@pytest.mark.parametrize("code", typing.get_args(handoff.FailureCode))
def test_every_failure_code_is_accepted(code: str) -> None:
    obj = {"type": "failed", "handoff_id": "h", "epoch": 0, "code": code, "message": ""}
    assert handoff.CODEC.decode(obj) == handoff.StepFailed.model_validate(obj)


def test_cancel_wire_form_and_defaults() -> None:
    obj = handoff.CODEC.encode(handoff.Cancel(handoff_id="wf-1/nap@12D3KooW", reason="stop"))
    assert obj == {"type": "cancel", "handoff_id": "wf-1/nap@12D3KooW", "reason": "stop"}
    # the reason may be omitted (or null-free: it is a plain string)
    cancel = handoff.CODEC.decode({"type": "cancel", "handoff_id": "h"})
    assert cancel == handoff.Cancel(handoff_id="h", reason="")
    reason = "r" * MAX_REASON_LEN  # exactly the limit is fine
    assert handoff.CODEC.decode({"type": "cancel", "handoff_id": "h", "reason": reason})


@pytest.mark.parametrize(
    ("obj", "where"),
    [
        ({"type": "cancel"}, "handoff_id"),
        ({"type": "cancel", "handoff_id": ""}, "handoff_id"),
        ({"type": "cancel", "handoff_id": "h" * (MAX_ID_LEN + 1)}, "handoff_id"),
        ({"type": "cancel", "handoff_id": 7}, "handoff_id"),
        ({"type": "cancel", "handoff_id": "h", "reason": None}, "reason"),
        ({"type": "cancel", "handoff_id": "h", "reason": "r" * (MAX_REASON_LEN + 1)}, "reason"),
        ({"type": "cancel", "handoff_id": "h", "force": True}, "force"),
    ],
)
def test_invalid_cancel_fields(obj: dict[str, Any], where: str) -> None:
    with pytest.raises(MessageValidationError) as info:
        handoff.CODEC.decode(obj)
    text = str(info.value)
    assert text.startswith("invalid handoff 'cancel' message: ")
    assert where in text and "\n" not in text
    assert info.value.code == "invalid_message"


@pytest.mark.parametrize(
    "obj",
    [
        {"type": "canceled", "handoff_id": "h"},
        {"type": "canceled", "handoff_id": "h", "message": "m" * 4097},
        {"type": "canceled", "handoff_id": "h", "message": "m", "code": "canceled"},
        {"type": "not_canceled", "handoff_id": "h", "code": "running", "message": "m"},
        {"type": "not_canceled", "handoff_id": "h", "message": "m"},
        {"type": "not_canceled", "handoff_id": "h", "code": "finished", "message": "m" * 4097},
        {"type": "failed", "handoff_id": "h", "code": "canceled", "message": "m"},
    ],
)
def test_invalid_cancel_replies(obj: dict[str, Any]) -> None:
    with pytest.raises(MessageValidationError):
        handoff.CODEC.decode(obj)


@pytest.mark.parametrize("code", ["unknown_handoff", "finished"])
def test_every_not_canceled_code_is_accepted(code: str) -> None:
    obj = {"type": "not_canceled", "handoff_id": "h", "code": code, "message": ""}
    assert handoff.CODEC.decode(obj) == handoff.NotCanceled.model_validate(obj)


def hello_obj(**card_changes: Any) -> dict[str, Any]:
    obj = discovery.CODEC.encode(HELLO)
    obj["card"].update(card_changes)
    return obj


def test_too_many_addrs() -> None:
    addrs = [f"/ip4/127.0.0.1/tcp/{i}" for i in range(MAX_ADDRS + 1)]
    with pytest.raises(MessageValidationError, match=r"card\.addrs"):
        discovery.CODEC.decode(hello_obj(addrs=addrs))
    discovery.CODEC.decode(hello_obj(addrs=addrs[:MAX_ADDRS]))  # exactly the limit is fine


def test_too_many_peers() -> None:
    obj = discovery.CODEC.encode(HELLO)
    obj["peers"] = [{"peer_id": f"p{i}"} for i in range(MAX_PEERS + 1)]
    with pytest.raises(MessageValidationError, match="peers"):
        discovery.CODEC.decode(obj)


def test_too_many_addrs_in_a_peer_ref() -> None:
    obj = discovery.CODEC.encode(HELLO)
    obj["peers"] = [{"peer_id": "p", "addrs": ["/a"] * (MAX_ADDRS + 1)}]
    with pytest.raises(MessageValidationError, match=r"peers\.0\.addrs"):
        discovery.CODEC.decode(obj)


def test_too_many_tools() -> None:
    tools = [{"name": f"t{i}", "version": "1"} for i in range(MAX_TOOLS + 1)]
    with pytest.raises(MessageValidationError, match=r"card\.tools"):
        discovery.CODEC.decode(hello_obj(tools=tools))


@pytest.mark.parametrize(
    ("changes", "where"),
    [
        ({"ttl_s": 0}, "card.ttl_s"),
        ({"ttl_s": 86401}, "card.ttl_s"),
        ({"load": {"running": -1, "capacity": 1}}, "card.load.running"),
        ({"load": {"running": 0, "capacity": 1, "queued": 3}}, "card.load.queued"),
        ({"peer_id": "p" * (MAX_ID_LEN + 1)}, "card.peer_id"),
        ({"version": None}, "card.version"),
        ({"tools": [{"name": "t", "version": "1", "description": "d" * 4097}]}, "description"),
        ({"signature": "abc"}, "card.signature"),
    ],
)
def test_invalid_card_fields(changes: dict[str, Any], where: str) -> None:
    with pytest.raises(MessageValidationError) as info:
        discovery.CODEC.decode(hello_obj(**changes))
    assert where in str(info.value)
    assert "\n" not in str(info.value)


def test_validation_message_lists_at_most_three_problems() -> None:
    obj = {"type": "offer", "a": 1, "b": 2, "c": 3, "d": 4}
    with pytest.raises(MessageValidationError) as info:
        handoff.CODEC.decode(obj)
    text = str(info.value)
    assert text.count(";") == 3  # three problems, then "and N more"
    assert "more" in text.rsplit(";", 1)[1]


@pytest.mark.parametrize(
    "obj",
    [
        {"type": "submit", "workflow": "x" * (MAX_WORKFLOW_TEXT + 1)},
        {"type": "submit", "workflow": "id: x", "workflow_id": ""},
        {"type": "submit", "workflow": "id: x", "source": "s" * 1025},
        {"type": "submit"},
        {"type": "status"},
        {"type": "result", "workflow_id": "w", "wait": "soon"},
        {"type": "info", "verbose": True},
    ],
)
def test_invalid_control_requests(obj: dict[str, Any]) -> None:
    with pytest.raises(MessageValidationError):
        control.REQUEST_CODEC.decode(obj)


def test_encode_refuses_a_model_that_is_not_a_wire_message() -> None:
    with pytest.raises(LocalProtocolError):
        handoff.CODEC.encode(discovery.LoadInfo())  # type: ignore[arg-type]


def test_codec_needs_models_with_a_default_type() -> None:
    class Untyped(WireModel):
        type: str

    with pytest.raises(TypeError, match="Untyped needs a default string 'type'"):
        MessageCodec("x", [Untyped])


# -- MessageStream over an in-memory stream --------------------------------------------------


def frames(*messages: BaseModel | dict[str, Any]) -> bytes:
    return b"".join(
        encode_frame(m if isinstance(m, dict) else m.model_dump(mode="json")) for m in messages
    )


async def test_receive_decodes_messages_in_order() -> None:
    data = frames(*HANDOFF_MESSAGES[1:])
    ms = MessageStream(MemoryStream(data), handoff.CODEC)
    for expected in HANDOFF_MESSAGES[1:]:
        assert await ms.receive() == expected


async def test_receive_reassembles_frames_split_across_reads() -> None:
    ms = MessageStream(MemoryStream(frames(HELLO, HELLO), chunk=3), discovery.CODEC)
    assert await ms.receive() == HELLO
    assert await ms.receive() == HELLO
    assert await ms.receive_or_eof() is None


async def test_receive_after_eof_raises_stream_closed() -> None:
    ms = MessageStream(MemoryStream(frames(handoff.Accept(handoff_id="h", epoch=0))), handoff.CODEC)
    await ms.receive()
    with pytest.raises(StreamClosedError, match="handoff stream closed"):
        await ms.receive()
    with pytest.raises(StreamClosedError):  # and again: EOF is sticky
        await ms.receive()


async def test_receive_on_an_empty_stream_raises_stream_closed() -> None:
    ms = MessageStream(MemoryStream(), control.RESPONSE_CODEC)
    with pytest.raises(StreamClosedError):
        await ms.receive()


async def test_receive_or_eof_returns_none_at_clean_eof() -> None:
    ms = MessageStream(MemoryStream(frames(control.InfoRequest())), control.REQUEST_CODEC)
    assert await ms.receive_or_eof() == control.InfoRequest()
    assert await ms.receive_or_eof() is None
    assert await ms.receive_or_eof() is None


async def test_error_frame_raises_peer_error_response_with_its_code() -> None:
    error = {"type": "error", "code": "unauthorised", "message": "client key not allowed"}
    ms = MessageStream(MemoryStream(frames(error)), control.RESPONSE_CODEC)
    with pytest.raises(PeerErrorResponse) as info:
        await ms.receive()
    assert info.value.code == "unauthorised"
    assert info.value.message == "client key not allowed"


async def test_error_frame_is_returned_when_not_raising() -> None:
    error = ErrorMessage(code="not_found", message="no workflow with id 'x'")
    ms = MessageStream(MemoryStream(frames(error)), control.RESPONSE_CODEC)
    assert await ms.receive(raise_errors=False) == error


@pytest.mark.parametrize(
    "bad",
    [
        {"type": "error", "code": "x"},
        {"type": "error", "code": 1, "message": "m"},
        {"type": "error", "code": "x", "message": "m", "detail": "extra"},
    ],
)
async def test_malformed_error_frame_becomes_invalid_message(bad: dict[str, Any]) -> None:
    ms = MessageStream(MemoryStream(frames(bad)), handoff.CODEC)
    with pytest.raises(PeerErrorResponse) as info:
        await ms.receive()
    assert info.value.code == "invalid_message"


async def test_partial_frame_at_eof_is_a_decode_error() -> None:
    data = frames(handoff.Accept(handoff_id="h", epoch=0))
    ms = MessageStream(MemoryStream(data[:-2]), handoff.CODEC)
    with pytest.raises(FrameDecodeError, match="stream ended inside a frame"):
        await ms.receive()


async def test_garbage_and_unknown_types_raise_typed_errors() -> None:
    garbage = encode_uvarint(4) + b"nope"
    with pytest.raises(FrameDecodeError):
        await MessageStream(MemoryStream(garbage), handoff.CODEC).receive()
    unknown = frames({"type": "hello", "card": {}})
    with pytest.raises(UnknownMessageTypeError):
        await MessageStream(MemoryStream(unknown), handoff.CODEC).receive()


async def test_oversized_frame_is_refused_before_its_body() -> None:
    ms = MessageStream(MemoryStream(encode_uvarint(2048)), handoff.CODEC, max_frame_size=1024)
    with pytest.raises(FrameTooLargeError):
        await ms.receive()


async def test_send_writes_frames() -> None:
    stream = MemoryStream()
    ms = MessageStream(stream, handoff.CODEC)
    await ms.send(handoff.Accept(handoff_id="h", epoch=0))
    await ms.send_error("invalid_message", "bad offer")
    assert bytes(stream.written) == frames(
        handoff.Accept(handoff_id="h", epoch=0),
        {"type": "error", "code": "invalid_message", "message": "bad offer"},
    )


async def test_send_refuses_a_message_over_the_limit() -> None:
    stream = MemoryStream()
    ms = MessageStream(stream, handoff.CODEC, max_frame_size=1024)
    big = handoff.StepResult(
        handoff_id="h", epoch=0, outputs={"x": "y" * 2000}, duration_ms=1, receipt=RECEIPT
    )
    with pytest.raises(LocalProtocolError):
        await ms.send(big)
    assert stream.written == b""


async def test_close_and_reset_reach_the_stream() -> None:
    stream = MemoryStream()
    ms = MessageStream(stream, handoff.CODEC)
    await ms.close()
    await ms.reset()
    assert stream.closed and stream.was_reset


async def test_receive_within_times_out_when_the_peer_is_silent(
    autojump_clock: trio.abc.Clock,
) -> None:
    ms = MessageStream(SilentStream(), handoff.CODEC)
    start = trio.current_time()
    with pytest.raises(ProtocolTimeoutError, match=r"no handoff message within 0\.05s") as info:
        await ms.receive_within(0.05)
    assert trio.current_time() - start == pytest.approx(0.05)
    assert "outcome unknown" in str(info.value)
    assert info.value.code == "timeout"


async def test_receive_within_returns_a_message_that_is_there() -> None:
    ms = MessageStream(MemoryStream(frames(handoff.Accept(handoff_id="h", epoch=0))), handoff.CODEC)
    assert await ms.receive_within(0.05) == handoff.Accept(handoff_id="h", epoch=0)


async def test_receive_within_reports_eof_not_timeout() -> None:
    ms = MessageStream(MemoryStream(), handoff.CODEC)
    with pytest.raises(StreamClosedError):
        await ms.receive_within(0.05)


async def test_malformed_cancel_on_a_stream_is_a_typed_error() -> None:
    frame = encode_frame({"type": "cancel", "handoff_id": "h", "reason": 5})
    ms = MessageStream(MemoryStream(frame), handoff.CODEC)
    with pytest.raises(MessageValidationError, match="invalid handoff 'cancel' message: reason"):
        await ms.receive()


async def test_validation_errors_escape_peer_chosen_keys() -> None:
    key = "evil\nINFO forged" + "k" * 500
    frame = encode_frame({"type": "accept", "handoff_id": "h", key: 1})
    ms = MessageStream(MemoryStream(frame), handoff.CODEC)
    with pytest.raises(MessageValidationError) as info:
        await ms.receive()
    assert "\n" not in info.value.message
    assert "evil\\nINFO forged" in info.value.message
    assert len(info.value.message) < 400


async def test_unknown_type_names_are_escaped_and_bounded() -> None:
    frame = encode_frame({"type": "x\n" * 10_000})
    ms = MessageStream(MemoryStream(frame), handoff.CODEC)
    with pytest.raises(UnknownMessageTypeError) as info:
        await ms.receive()
    assert "\n" not in info.value.message and len(info.value.message) < 400


async def test_a_peers_error_message_is_escaped_and_bounded() -> None:
    error = {"type": "error", "code": "x\ny", "message": "line1\nline2" + "z" * 10_000}
    ms = MessageStream(MemoryStream(frames(error)), handoff.CODEC)
    with pytest.raises(PeerErrorResponse) as info:
        await ms.receive()
    assert info.value.code == "x\\ny"
    assert info.value.message.startswith("line1\\nline2")
    assert len(info.value.message) < 2100


async def test_a_frame_breaking_a_limit_is_a_bad_frame_error_on_the_stream() -> None:
    payload = b'{"type":"accept","handoff_id":' + b"[" * 50 + b"]" * 50 + b"}"
    ms = MessageStream(MemoryStream(encode_uvarint(len(payload)) + payload), handoff.CODEC)
    with pytest.raises(NestingTooDeepError) as info:
        await ms.receive()
    assert info.value.code == "bad_frame"


async def test_message_stream_takes_its_limits_and_a_frame_size_over_them() -> None:
    limits = FrameLimits(max_depth=3)
    ms = MessageStream(MemoryStream(), handoff.CODEC, limits=limits, max_frame_size=2048)
    assert (ms.limits.max_depth, ms.limits.max_frame_size, ms.max_frame_size) == (3, 2048, 2048)
    assert MessageStream(MemoryStream(), handoff.CODEC).limits == FrameLimits()


def test_status_explain_and_a_steps_placement_are_optional_and_bounded() -> None:
    """control 0.4.0: ``status`` may ask to ``explain``; a step's ``placement`` lists at most 8
    candidates with bounded notes; an older client gets neither (versioning.dump_for)."""
    from protocols.versioning import dump_for

    request = control.REQUEST_CODEC.decode({"type": "status", "workflow_id": "w"})
    assert isinstance(request, control.StatusRequest) and request.explain is False
    candidate = {"node": "p", "local": False, "running": 1, "capacity": 2, "note": "chosen"}
    step = {"name": "s", "tool": "t", "status": "SUCCESSFUL", "placement": {"candidates": []}}
    reply = {"type": "status", "workflow_id": "w", "name": "n", "status": "S", "created_at": 1.0}
    decoded = control.RESPONSE_CODEC.decode(
        {**reply, "steps": [{**step, "placement": {"candidates": [candidate] * 8}}]}
    )
    assert isinstance(decoded, control.WorkflowStatusReply)
    placement = decoded.steps[0].placement
    assert placement is not None and placement.candidates[0].done == 0
    assert "placement" not in dump_for(decoded, "0.3.0")["steps"][0]
    assert "placement" in dump_for(decoded, "0.4.0")["steps"][0]
    for bad in (
        {"candidates": [candidate] * 9},
        {"candidates": [{**candidate, "note": "x" * 201}]},
        {"candidates": [{**candidate, "running": -1}]},
        {"candidates": [{**candidate, "running": "1"}]},
    ):
        with pytest.raises(MessageValidationError):
            control.RESPONSE_CODEC.decode({**reply, "steps": [{**step, "placement": bad}]})
