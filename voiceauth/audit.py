"""Hash-chained audit events: each event's hash covers its content and its predecessor's hash,
so editing, removing or reordering any event breaks the chain from there on."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence

from voiceauth.errors import StoreError
from voiceauth.store.base import AuditCheck, AuditEvent

GENESIS = "0" * 64
MAX_DETAIL_CHARS = 200


def clean_details(details: Mapping[str, object]) -> dict[str, str | int | float | bool]:
    """Only short scalars go into the audit trail: never arrays, bytes or audio."""
    out: dict[str, str | int | float | bool] = {}
    for key, value in details.items():
        if isinstance(value, bool | int | float):
            out[str(key)] = value
        elif isinstance(value, str):
            out[str(key)] = value[:MAX_DETAIL_CHARS]
        else:
            raise StoreError(
                f"audit detail {key!r} is a {type(value).__name__}; only short str/int/float/bool values are "
                "allowed (no biometric data or audio in the audit trail)"
            )
    return out


def chain_hash(prev_hash: str, seq: int, time: float, action: str, subject_id: str | None, outcome: str,
               actor: str, details: Mapping[str, object]) -> str:
    body = json.dumps(
        [prev_hash, seq, repr(float(time)), action, subject_id, outcome, actor, dict(details)],
        sort_keys=True, separators=(",", ":"),
    )
    return hashlib.sha256(body.encode()).hexdigest()


def verify_chain(events: Sequence[AuditEvent], head: tuple[int, str] | None = None) -> AuditCheck:
    """Recompute the chain; ``head`` (last seq, last hash) kept elsewhere detects a cut tail."""
    prev, expected_seq = GENESIS, 1
    for event in events:
        if event.seq != expected_seq:
            return AuditCheck(False, len(events), expected_seq, f"event {expected_seq} is missing or out of order")
        if event.prev_hash != prev:
            return AuditCheck(False, len(events), event.seq, "chain broken: an earlier event was changed or removed")
        recomputed = chain_hash(prev, event.seq, event.time, event.action, event.subject_id, event.outcome,
                                event.actor, event.details)
        if recomputed != event.hash:
            return AuditCheck(False, len(events), event.seq, "event content was edited")
        prev, expected_seq = event.hash, expected_seq + 1
    if head is not None and (head[0] != expected_seq - 1 or head[1] != prev):
        return AuditCheck(False, len(events), expected_seq, f"events after {expected_seq - 1} were removed")
    return AuditCheck(True, len(events))
