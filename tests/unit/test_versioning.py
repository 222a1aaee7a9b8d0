"""The protocol version rule: a member added in a minor version is left out for older peers."""

from __future__ import annotations

import pytest

from protocols import control, discovery, handoff
from protocols.versioning import dump_for, parse_version, version_of


def test_versions_parse() -> None:
    assert parse_version("0.2.0") == (0, 2, 0)
    assert version_of("/hivemesh/discovery/0.2.0") == "0.2.0"
    for bad in ("0.2", "v1.0.0", "1.x.0"):
        with pytest.raises(ValueError):
            parse_version(bad)


def test_a_hello_for_a_0_1_peer_has_no_addr_records_at_any_level() -> None:
    hello = discovery.Hello(
        card=discovery.NodeCard(peer_id="p", version="0.1.0", addr_record="QUJD"),
        peers=[discovery.PeerRef(peer_id="q", addrs=["/ip4/1.1.1.1/tcp/1"], addr_record="REVG")],
    )
    old = dump_for(hello, "0.1.0")
    assert "addr_record" not in old["card"]
    assert old["peers"] == [{"peer_id": "q", "addrs": ["/ip4/1.1.1.1/tcp/1"]}]
    assert dump_for(hello, "0.3.0") == hello.model_dump(mode="json")
    assert "installs" not in dump_for(hello, "0.2.0")["card"]


def test_a_peers_reply_for_a_0_1_client_has_only_the_0_1_members() -> None:
    entry = control.PeerEntry(
        peer_id="p",
        addrs=[],
        tools=[],
        connected=True,
        load="0/1",
        evidence=control.PeerEvidence(
            done=1, failed=0, recent_failures=0, outstanding=0, sustained=1
        ),
    )
    old = dump_for(control.Peers(peers=[entry]), "0.1.0")
    assert set(old["peers"][0]) == {
        "peer_id",
        "addrs",
        "tools",
        "connected",
        "version",
        "last_seen",
    }


def test_every_member_added_after_0_1_0_is_marked() -> None:
    """Each new member carries since(...) — else an old peer would get (and reject) it."""
    card = discovery.NodeCard.model_fields
    assert card["addr_record"].json_schema_extra == {"since": "0.2.0"}
    ref = discovery.PeerRef.model_fields
    assert ref["addr_record"].json_schema_extra == {"since": "0.2.0"}
    assert card["installs"].json_schema_extra == {"since": "0.3.0"}
    tool = discovery.ToolCard.model_fields
    for name in ("idempotent", "tags", "resources"):
        assert tool[name].json_schema_extra == {"since": "0.3.0"}, name
    offer = handoff.Offer.model_fields
    for name in ("package", "parameters"):
        assert offer[name].json_schema_extra == {"since": "1.1.0"}, name
    entry = control.PeerEntry.model_fields
    for name in ("load", "learned_from", "evidence", "excluded"):
        assert entry[name].json_schema_extra == {"since": "0.2.0"}, name


def test_an_offer_for_a_1_0_peer_has_no_package_or_parameters() -> None:
    plain = handoff.Offer(handoff_id="h", workflow_id="w", step="s", tool="a.b", deadline_ms=1)
    full = handoff.Offer(**{**plain.model_dump(), "package": "p==1", "parameters": {"A": "1"}})
    assert set(dump_for(full, "1.0.0")) == set(plain.model_dump()) - {"package", "parameters"}
    assert dump_for(full, "1.1.0") == full.model_dump(mode="json")
