"""What every Store implementation shares: AAD, (de)serialising voiceprints, audit rows."""

from __future__ import annotations

import json
import time
from collections.abc import Mapping
from typing import Any

import numpy as np

from voiceauth.audit import GENESIS, chain_hash, clean_details
from voiceauth.crypto import KeyRing
from voiceauth.store.base import AuditEvent, AuditRecord, Namespace, Voiceprint, VoiceprintInfo

KEYCHECK_PLAINTEXT = b"voiceauth-keycheck-v1"
VOICEPRINT_COLUMNS = ("namespace, subject_id, model_id, key_id, blob, speech_s, recordings, complete, "
                      "created_at, updated_at, last_used_at, meta")
INFO_COLUMNS = ("namespace, subject_id, model_id, speech_s, recordings, complete, created_at, updated_at, "
                "last_used_at, meta")


def aad(namespace: str, subject_id: str, model_id: str, complete: bool, recordings: int, speech_s: float) -> bytes:
    """Binds a ciphertext to its row: moving it to another customer or model, or editing
    the enrolment state beside it, makes decryption fail."""
    fields = [namespace, subject_id, model_id, str(int(complete)), str(int(recordings)), repr(float(speech_s))]
    return "|".join(["voiceauth/v1", *fields]).encode()


def keycheck_aad(kid: str) -> bytes:
    return f"voiceauth/keycheck|{kid}".encode()


def encrypt_voiceprint(ring: KeyRing, vp: Voiceprint, kid: str) -> tuple[str, bytes]:
    plaintext = np.asarray(vp.embedding, dtype="<f4").tobytes()
    return ring.encrypt(plaintext, aad(vp.namespace.value, vp.subject_id, vp.model_id, vp.complete, vp.recordings,
                                       vp.speech_s), kid)


def row_to_voiceprint(ring: KeyRing, row: tuple[Any, ...]) -> Voiceprint:
    ns, subject, model, kid, blob, speech_s, recordings, complete, created, updated, used, meta = row
    plaintext = ring.decrypt(kid, bytes(blob), aad(ns, subject, model, bool(complete), recordings, speech_s),
                             what=f"voiceprint for {subject}")
    return Voiceprint(
        subject_id=subject, namespace=Namespace(ns), model_id=model,
        embedding=np.frombuffer(plaintext, dtype="<f4").astype(np.float32),
        speech_s=float(speech_s), recordings=int(recordings), complete=bool(complete),
        created_at=float(created), updated_at=float(updated),
        last_used_at=None if used is None else float(used), meta=json.loads(meta or "{}"),
    )


def voiceprint_params(ring: KeyRing, vp: Voiceprint, kid: str) -> tuple[Any, ...]:
    kid, blob = encrypt_voiceprint(ring, vp, kid)
    return (vp.namespace.value, vp.subject_id, vp.model_id, kid, blob, float(vp.speech_s), int(vp.recordings),
            int(vp.complete), vp.created_at, vp.updated_at, vp.last_used_at, json.dumps(dict(vp.meta)))


def row_to_info(row: tuple[Any, ...]) -> VoiceprintInfo:
    ns, subject, model, speech_s, recordings, complete, created, updated, used, meta = row
    return VoiceprintInfo(subject, Namespace(ns), model, float(speech_s), int(recordings), bool(complete),
                          float(created), float(updated), None if used is None else float(used),
                          json.loads(meta or "{}"))


def next_audit_row(last: tuple[int, str] | None, record: AuditRecord) -> tuple[Any, ...]:
    """(seq, time, action, subject, outcome, actor, details_json, prev_hash, hash) for the next event."""
    seq, prev = (last[0] + 1, last[1]) if last else (1, GENESIS)
    now = time.time()
    details = clean_details(record.details)
    digest = chain_hash(prev, seq, now, record.action, record.subject_id, record.outcome, record.actor, details)
    return (seq, now, record.action, record.subject_id, record.outcome, record.actor,
            json.dumps(details, sort_keys=True), prev, digest)


def row_to_event(row: tuple[Any, ...]) -> AuditEvent:
    seq, when, action, subject, outcome, actor, details, prev, digest = row
    parsed: Mapping[str, Any] = json.loads(details or "{}")
    return AuditEvent(int(seq), float(when), action, subject, outcome, actor, parsed, prev, digest)


def rows_to_matrix(
    ring: KeyRing, rows: list[tuple[Any, ...]], model_id: str, where: str
) -> tuple[list[str], np.ndarray]:
    """Decrypt voiceprint rows into (ids, (n, dim) float32 matrix); tampering raises."""
    prints = [row_to_voiceprint(ring, r) for r in rows]
    if not prints:
        return [], np.zeros((0, 0), dtype=np.float32)
    if len({p.embedding.shape for p in prints}) > 1:
        from voiceauth.errors import TamperedError

        raise TamperedError(f"voiceprints of model {model_id} in {where} differ in size; re-enrol them")
    return [p.subject_id for p in prints], np.stack([p.embedding for p in prints]).astype(np.float32)
