"""What every Store implementation shares: AAD, (de)serialising voiceprints, audit rows."""

from __future__ import annotations

import json
import math
import os
import re
import time
from collections.abc import Mapping
from dataclasses import replace
from typing import Any
from urllib.parse import unquote

import numpy as np

from voiceauth.errors import StoreError, TamperedError
from voiceauth.store.audit import GENESIS, chain_hash, clean_details
from voiceauth.store.base import AuditEvent, AuditRecord, Consent, Namespace, OptOutResult, Voiceprint, VoiceprintInfo
from voiceauth.store.crypto import KeyRing

KEYCHECK_PLAINTEXT = b"voiceauth-keycheck-v1"
VOICEPRINT_COLUMNS = ("namespace, subject_id, model_id, key_id, blob, speech_s, recordings, complete, "
                      "created_at, updated_at, last_used_at, meta, version")
VOICEPRINT_SELECT = (f"{VOICEPRINT_COLUMNS}, (SELECT c.version FROM voiceprint_versions c WHERE c.namespace = "
                     "voiceprints.namespace AND c.subject_id = voiceprints.subject_id)")
"""The voiceprint columns, then the version the store expects the row to have (None: no record)."""
BUMP_VERSION = ("INSERT INTO voiceprint_versions (namespace, subject_id, version) VALUES ({p}, {p}, 1) "
                "ON CONFLICT (namespace, subject_id) DO UPDATE SET version = voiceprint_versions.version + 1 "
                "RETURNING version")
"""Counts every write and erasure of one voiceprint (``{p}``: the driver's placeholder); the
counter outlives the row, so no older copy of the row can match it again."""
INFO_COLUMNS = ("namespace, subject_id, model_id, speech_s, recordings, complete, created_at, updated_at, "
                "last_used_at, meta")
CONSENT_COLUMNS = "captured_at, channel, purpose, notice_version, captured_by, withdrawn_at"
AUDIT_COLUMNS = "seq, time, action, subject_id, outcome, actor, details, prev_hash, hash"
HOLDS_DATA = ("SELECT EXISTS (SELECT 1 FROM voiceprints) OR EXISTS (SELECT 1 FROM consent) "
              "OR EXISTS (SELECT 1 FROM opt_outs)")
"""True when the store holds anything its audit trail must account for."""
HOLDS_ANYTHING = f"{HOLDS_DATA} OR EXISTS (SELECT 1 FROM audit)"


def purge_cutoff(older_than: float) -> float:
    """The cutoff of a purge as a float; StoreError, nothing purged, when it is NaN or infinite."""
    cutoff = float(older_than)
    if not math.isfinite(cutoff):
        raise StoreError(f"purge cutoff {older_than!r} is not a finite time; pass a Unix time (e.g. now - 365 days)")
    return cutoff


def aad(store_id: str, version: int, namespace: str, subject_id: str, model_id: str, complete: bool,
        recordings: int, speech_s: float) -> bytes:
    """Binds a ciphertext to its store, its row and that row's version: moving it to another
    store, customer or model, editing the enrolment state beside it, or restoring an older
    copy of the row makes decryption fail."""
    fields = [store_id, str(int(version)), namespace, subject_id, model_id, str(int(complete)), str(int(recordings)),
              repr(float(speech_s))]
    return "|".join(["voiceauth/v2", *fields]).encode()


def keycheck_aad(store_id: str, kid: str) -> bytes:
    return f"voiceauth/keycheck/v2|{store_id}|{kid}".encode()


def new_store_id() -> str:
    """A random store id (kept in the store, bound into every ciphertext and listed in the key file)."""
    return os.urandom(16).hex()


def row_to_voiceprint(ring: KeyRing, store_id: str, row: tuple[Any, ...]) -> Voiceprint:
    """Decrypt a row selected with :data:`VOICEPRINT_SELECT`; TamperedError if it is not the
    row's current version in this store."""
    ns, subject, model, kid, blob, speech_s, recordings, complete, created, updated, used, meta, version, expected = row
    if expected is None or int(version) != int(expected):
        raise TamperedError(
            f"voiceprint for {subject} is version {version}, but this store last wrote version {expected}: an old "
            "copy restored from a backup or another store; delete it and re-enrol the customer"
        )
    plaintext = ring.decrypt(kid, bytes(blob), aad(store_id, int(expected), ns, subject, model, bool(complete),
                                                   recordings, speech_s), what=f"voiceprint for {subject}")
    return Voiceprint(
        subject_id=subject, namespace=Namespace(ns), model_id=model,
        embedding=np.frombuffer(plaintext, dtype="<f4").astype(np.float32),
        speech_s=float(speech_s), recordings=int(recordings), complete=bool(complete),
        created_at=float(created), updated_at=float(updated),
        last_used_at=None if used is None else float(used), meta=json.loads(meta or "{}"),
    )


def voiceprint_params(ring: KeyRing, store_id: str, vp: Voiceprint, kid: str, version: int) -> tuple[Any, ...]:
    """Column values (:data:`VOICEPRINT_COLUMNS`) of ``vp`` encrypted under ``kid`` as ``version``."""
    plaintext = np.asarray(vp.embedding, dtype="<f4").tobytes()
    _, blob = ring.encrypt(plaintext, aad(store_id, version, vp.namespace.value, vp.subject_id, vp.model_id,
                                          vp.complete, vp.recordings, vp.speech_s), kid)
    return (vp.namespace.value, vp.subject_id, vp.model_id, kid, blob, float(vp.speech_s), int(vp.recordings),
            int(vp.complete), vp.created_at, vp.updated_at, vp.last_used_at, json.dumps(dict(vp.meta)), int(version))


def url_secrets(url: str) -> list[str]:
    """The passwords in a (possibly malformed) database URL, as written and percent-decoded."""
    head, _, query = url.partition("?")
    rest = head.partition(":")[2].lstrip("/")
    found = [rest.rsplit("@", 1)[0].partition(":")[2]] if "@" in rest else []
    found += re.findall(r"(?:^|&)password=([^&#]*)", query)
    found += [unquote(s) for s in found]
    return sorted({s for s in found if s}, key=len, reverse=True)


def redact(text: str, url: str) -> str:
    """``text`` with every password of ``url`` replaced by ``***`` (for errors, reprs and logs)."""
    for secret in url_secrets(url):
        text = text.replace(secret, "***")
    return text


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
    ring: KeyRing, store_id: str, rows: list[tuple[Any, ...]], model_id: str, where: str
) -> tuple[list[str], np.ndarray]:
    """Decrypt voiceprint rows into (ids, (n, dim) float32 matrix); tampering raises."""
    prints = [row_to_voiceprint(ring, store_id, r) for r in rows]
    if not prints:
        return [], np.zeros((0, 0), dtype=np.float32)
    if len({p.embedding.shape for p in prints}) > 1:
        raise TamperedError(f"voiceprints of model {model_id} in {where} differ in size; re-enrol them")
    return [p.subject_id for p in prints], np.stack([p.embedding for p in prints]).astype(np.float32)


def opt_in_gate(subject_id: str, opted_out: bool, consent: Consent | None,
                opt_in: AuditRecord | None) -> AuditRecord | None:
    """Inside an enrolment's transaction: the opt-in event to write (None: no opt-out to lift).

    An opted-out customer is enrolled again only with fresh consent and an explicit opt-in;
    otherwise :class:`OptedOutError`, with nothing written (an opt-out that raced the enrolment wins).
    """
    if not opted_out:
        return None
    if consent is None or opt_in is None:
        from voiceauth.errors import OptedOutError

        raise OptedOutError(f"{subject_id} opted out of voice biometrics; enrol again only with fresh consent")
    return opt_in


def opt_out_event(event: AuditRecord, result: OptOutResult) -> AuditRecord:
    """The opt-out's audit event, saying what was actually erased."""
    return replace(event, details={**event.details, "voiceprint_deleted": result.voiceprint_deleted,
                                   "consent_withdrawn": result.consent_withdrawn,
                                   "already_opted_out": result.already_opted_out})


def check_built(vp: Voiceprint, namespace: Namespace, subject_id: str) -> None:
    """A builder must return a voiceprint for the row being written, with a 1-D finite embedding."""
    if not isinstance(vp, Voiceprint):
        raise StoreError(f"the enrolment builder returned {type(vp).__name__}, not a Voiceprint; nothing was written")
    if vp.namespace != namespace or vp.subject_id != subject_id:
        raise StoreError(
            f"the enrolment builder returned a voiceprint for {vp.namespace.value}/{vp.subject_id} while writing "
            f"{namespace.value}/{subject_id}; nothing was written"
        )
    embedding = np.asarray(vp.embedding)
    if embedding.ndim != 1 or embedding.size == 0 or not np.all(np.isfinite(embedding)):
        raise StoreError(f"the voiceprint of {subject_id} is not a finite 1-D embedding; nothing was written")
