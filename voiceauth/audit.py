"""Hash-chained audit events.

Each event's hash covers its content and its predecessor's hash, so editing, removing or
reordering any event breaks the chain from there on; a copy of the last (seq, hash) kept
beside the trail (the "head") also exposes a cut-off tail. Details are limited to a few
short scalars so that no biometric data (embeddings, audio) can end up in the trail.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Mapping, Sequence

from voiceauth.errors import StoreError
from voiceauth.store.base import AuditCheck, AuditEvent

GENESIS = "0" * 64
MAX_DETAIL_CHARS = 200
MAX_DETAIL_KEYS = 32
MAX_KEY_CHARS = 64

Detail = str | int | float | bool


def _clean_value(key: str, value: object) -> Detail:
    if isinstance(value, bool | int):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else repr(value)  # NaN/inf are not portable JSON
    if isinstance(value, str):
        return value[:MAX_DETAIL_CHARS]
    raise StoreError(
        f"audit detail {key!r} is a {type(value).__name__}; only short str/int/float/bool values are allowed "
        "(never embeddings, arrays, bytes or audio): pass a scalar summary instead"
    )


def clean_details(details: Mapping[str, object]) -> dict[str, Detail]:
    """Only a few short scalars go into the audit trail; strings are cut to 200 characters."""
    if len(details) > MAX_DETAIL_KEYS:
        raise StoreError(
            f"audit details have {len(details)} entries (at most {MAX_DETAIL_KEYS}); record a summary, "
            "not raw data"
        )
    out: dict[str, Detail] = {}
    for key, value in details.items():
        if not isinstance(key, str) or len(key) > MAX_KEY_CHARS:
            raise StoreError(f"audit detail name {key!r} must be a string of at most {MAX_KEY_CHARS} characters")
        out[key] = _clean_value(key, value)
    return out


def canonical(prev_hash: str, seq: int, time: float, action: str, subject_id: str | None, outcome: str,
              actor: str, details: Mapping[str, object]) -> bytes:
    """The bytes an event's hash covers: sorted-key compact JSON (time as its exact float repr)."""
    body = {
        "prev_hash": prev_hash, "seq": int(seq), "time": repr(float(time)), "action": action,
        "subject_id": subject_id, "outcome": outcome, "actor": actor, "details": dict(details),
    }
    return json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode()


def chain_hash(prev_hash: str, seq: int, time: float, action: str, subject_id: str | None, outcome: str,
               actor: str, details: Mapping[str, object]) -> str:
    """sha256 hex of :func:`canonical`."""
    return hashlib.sha256(canonical(prev_hash, seq, time, action, subject_id, outcome, actor, details)).hexdigest()


def _event_hash(event: AuditEvent, prev: str) -> str:
    return chain_hash(prev, event.seq, event.time, event.action, event.subject_id, event.outcome, event.actor,
                      event.details)


def verify_chain(events: Sequence[AuditEvent], head: tuple[int, str] | None = None) -> AuditCheck:
    """Recompute the chain in order; ``head`` (last seq, last hash) kept elsewhere detects a cut tail.

    ``first_bad_seq`` is the first sequence number that is missing, out of place or altered.
    """
    prev, expected = GENESIS, 1
    for event in events:
        if event.seq != expected:
            problem = f"event {expected} is missing or out of order (found {event.seq} in its place)"
            return AuditCheck(False, len(events), expected, problem)
        if event.prev_hash != prev:
            return AuditCheck(False, len(events), event.seq, "chain broken: an earlier event was changed or removed")
        if _event_hash(event, prev) != event.hash:
            return AuditCheck(False, len(events), event.seq, "event content was edited")
        prev, expected = event.hash, expected + 1
    if head is not None and (head[0] != expected - 1 or head[1] != prev):
        if head[0] >= expected:
            problem = f"events {expected}..{head[0]} were removed from the end of the trail"
        else:
            problem = "the recorded head of the trail does not match its last event"
        return AuditCheck(False, len(events), expected, problem)
    return AuditCheck(True, len(events))
