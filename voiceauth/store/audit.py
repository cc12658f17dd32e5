"""The audit trail: hash-chained events under a keyed seal.

Each event's hash covers its content and its predecessor's hash, so editing, removing or
reordering any event breaks the chain from there on. The last (seq, hash), the "head", is
kept in the store's meta table with a seal: an HMAC under a key derived (HKDF, own label)
from the store's encryption key, which is never in the database. Every write of the store
appends an event and re-seals the head in the same transaction, so the sequence number is a
counter no one can move back without the key: cutting the tail, rewriting events and
recomputing the chain, or wiping the trail of a store that holds data is reported, and a
later legitimate write never re-seals a head that was already broken. A new store's head is
sealed at creation (sequence 0). Details are limited to a few short scalars so that no
biometric data (embeddings, audio) can end up in the trail.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from voiceauth.errors import StoreError
from voiceauth.store.base import AuditCheck, AuditEvent, AuditRecord

if TYPE_CHECKING:
    from voiceauth.store.crypto import KeyRing

GENESIS = "0" * 64
SEAL_LABEL = "voiceauth/audit-seal/v1"
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


@dataclass(frozen=True)
class Head:
    """The trail's last (seq, hash) and its seal under store key ``kid`` (``tag`` empty: not sealed)."""

    seq: int
    hash: str
    kid: str = ""
    tag: str = ""

    def encode(self) -> str:
        """``seq:hash:kid:tag`` (``seq:hash`` when not sealed), as kept in the meta table."""
        return ":".join((str(self.seq), self.hash, self.kid, self.tag) if self.tag else (str(self.seq), self.hash))

    @classmethod
    def parse(cls, value: str | None) -> Head | None:
        """None for a missing, empty or malformed head."""
        parts = (value or "").split(":")
        if len(parts) not in (2, 4) or not parts[0].isdigit() or len(parts[1]) != len(GENESIS):
            return None
        return cls(int(parts[0]), *parts[1:])


@dataclass(frozen=True)
class Sealer:
    """Seals the head with a key derived from the store's key; ``scope`` names the store."""

    ring: KeyRing
    scope: str = ""

    def _tag(self, kid: str, seq: int, digest: str) -> str:
        key = self.ring.derive(kid, f"{SEAL_LABEL}|{self.scope}")  # the one place the trail touches keys
        return hmac.new(key, f"{SEAL_LABEL}|{kid}|{seq}|{digest}".encode(), hashlib.sha256).hexdigest()

    def seal(self, kid: str, seq: int, digest: str) -> Head:
        return Head(seq, digest, kid, self._tag(kid, seq, digest))

    def problem(self, head: Head | None, kid: str | None) -> str | None:
        """Why ``head`` is not sealed under the store's key ``kid`` (None: it is)."""
        if head is None:
            return "the head of the trail is missing or malformed: the trail was cut or wiped"
        if not head.tag:
            return ("the head of the trail is not sealed: it was rewritten without the key (later writes keep it "
                    "unsealed), or the store was written by voiceauth 0.1")
        if head.kid != kid or kid is None:
            return (f"the head of the trail is sealed under key {head.kid}, not the store's key {kid}: it was "
                    "restored from a copy made before a key rotation")
        if not hmac.compare_digest(head.tag, self._tag(kid, head.seq, head.hash)):
            return "the seal of the trail's head does not match: the head was rewritten without the key"
        return None

    def next_head(self, previous: Head | None, kid: str, record: AuditRecord, seq: int, digest: str) -> Head:
        """The head after appending ``record`` as event ``seq``: sealed under ``kid`` only if
        ``previous`` was sealed under ``kid`` (or, for a key rotation, the key it replaces), so a
        broken, old or missing head stays visible after later writes."""
        sealed = self.seal(kid, seq, digest)  # first: a missing current key raises, it does not break the seal
        expected = kid
        if record.action == "key_rotation":
            expected = str(record.details.get("old_key_id", kid))
        return sealed if self.problem(previous, expected) is None else Head(seq, digest)


def verify_chain(events: Sequence[AuditEvent]) -> AuditCheck:
    """Recompute the chain in order; ``first_bad_seq`` is the first sequence number that is
    missing, out of place or altered."""
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
    return AuditCheck(True, len(events))


def verify_trail(events: Sequence[AuditEvent], head: Head | None, sealer: Sealer, kid: str | None,
                 holds_data: bool) -> AuditCheck:
    """The chain holds, ends exactly at the head, the head is sealed under the store's key
    ``kid``, and the trail is not empty while the store ``holds_data``."""
    check = verify_chain(events)
    if not check.ok:
        return check
    count = len(events)
    last, last_hash = (events[-1].seq, events[-1].hash) if events else (0, GENESIS)
    problem = sealer.problem(head, kid)
    if problem is not None or head is None:
        return AuditCheck(False, count, None, problem)
    if head.seq > last:
        problem = f"events {last + 1}..{head.seq} were removed from the end of the trail"
        return AuditCheck(False, count, last + 1, problem)
    if head.seq < last:
        return AuditCheck(False, count, head.seq + 1, f"events {head.seq + 1}..{last} were added without the key")
    if head.hash != last_hash:
        return AuditCheck(False, count, None, "the trail does not end at its sealed head: events were rewritten and "
                                              "the chain recomputed")
    if count == 0 and holds_data:
        return AuditCheck(False, 0, 1, "the trail is empty but the store holds voiceprints, consent records or "
                                       "opt-outs: the trail was wiped")
    return AuditCheck(True, count)
