"""Signed receipts: what the node that ran a delegated step vouches for.

The delegatee signs the canonical JSON (RFC 8785, :mod:`protocols.canonical`) of the object
:func:`receipt_payload` builds with its libp2p identity key (Ed25519); the delegator rebuilds
the same object from what it sent and what it received, and checks the signature against the
public key inside the delegatee's peer id. Signing and checking live on the node (they need
its keys); this module is the pure part both sides agree on.
"""

from __future__ import annotations

from typing import Any

from protocols.canonical import canonical_json, json_sha256

RECEIPT_DOMAIN = "hivemesh/handoff-receipt/1"


def receipt_payload(
    *,
    handoff_id: str,
    epoch: int,
    delegator: str,
    delegatee: str,
    tool: str,
    tool_version: str,
    args_sha256: str,
    outputs_sha256: str,
) -> dict[str, Any]:
    """The object whose canonical JSON is signed (every member is required)."""
    return {
        "domain": RECEIPT_DOMAIN,
        "handoff_id": handoff_id,
        "epoch": epoch,
        "delegator": delegator,
        "delegatee": delegatee,
        "tool": tool,
        "tool_version": tool_version,
        "args_sha256": args_sha256,
        "outputs_sha256": outputs_sha256,
    }


def signed_bytes(payload: dict[str, Any]) -> bytes:
    return canonical_json(payload)


__all__ = ["RECEIPT_DOMAIN", "json_sha256", "receipt_payload", "signed_bytes"]
