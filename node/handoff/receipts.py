"""Checking the signed receipt that comes with a delegated step's result.

The delegatee signs what it ran and what it returned (:mod:`protocols.handoff.receipt`); the
delegator rebuilds the signed object from *its own* offer and the outputs it received, and
checks the signature against the public key in the delegatee's peer id. A result whose
receipt does not check out is a failed attempt (:class:`InvalidReceiptError`).
"""

from __future__ import annotations

from typing import Any

from node import identity
from node.handoff.errors import InvalidReceiptError
from protocols import handoff
from protocols.handoff.receipt import json_sha256, receipt_payload, signed_bytes
from workflows.tools import version_matches


def check_receipt(
    result: handoff.StepResult, offer: handoff.Offer, *, delegator: str, delegatee: str
) -> dict[str, Any]:
    """The receipt of ``result`` as a record to journal (the signed object plus
    ``signature``), if it is ``delegatee``'s signature over this offer and these outputs."""
    receipt = result.receipt
    args_hash = json_sha256(offer.args)
    outputs_hash = json_sha256(result.outputs)
    problems = []
    if receipt.args_sha256 != args_hash:
        problems.append("it is for other arguments than the ones offered")
    if receipt.outputs_sha256 != outputs_hash:
        problems.append("it is for other outputs than the ones received")
    if not version_matches(receipt.tool_version, offer.version):
        problems.append(
            f"it names tool version {receipt.tool_version!r}, which does not match the "
            f"requirement {offer.version!r}"
        )
    payload = receipt_payload(
        handoff_id=offer.handoff_id,
        epoch=offer.epoch,
        delegator=delegator,
        delegatee=delegatee,
        tool=offer.tool,
        tool_version=receipt.tool_version,
        args_sha256=args_hash,
        outputs_sha256=outputs_hash,
    )
    if not problems and not identity.verify(delegatee, signed_bytes(payload), receipt.signature):
        problems.append(f"its signature is not {delegatee}'s")
    if problems:
        raise InvalidReceiptError(
            delegatee,
            f"peer {delegatee} returned a result for {offer.tool!r} with an invalid receipt: "
            + "; ".join(problems),
        )
    return {**payload, "signature": receipt.signature}


def verify_record(record: dict[str, Any]) -> bool:
    """Check a journaled receipt record again (``hivemesh status --explain``)."""
    payload = {k: v for k, v in record.items() if k != "signature"}
    signature = record.get("signature")
    delegatee = payload.get("delegatee")
    if not isinstance(signature, str) or not isinstance(delegatee, str):
        return False
    try:
        data = signed_bytes(payload)
    except Exception:
        return False
    return identity.verify(delegatee, data, signature)
