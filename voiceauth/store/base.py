"""The Store protocol and the plain values it stores.

A store keeps voiceprints (encrypted), consent records, opt-out markers and the
hash-chained audit trail. It never sees audio. Implementations: ``sqlite`` (the
embedded default) and ``postgres`` (shared, for scale-out); both pass the same
contract tests.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

import numpy as np


class Namespace(str, enum.Enum):
    """Voiceprints of customers and of known fraudsters never mix.

    ``SHADOW`` holds a customer's voiceprint for the *next* speaker model, grown from speech of
    authenticated calls while the current model still decides (:mod:`voiceauth.services.shadow`).
    A shadow row exists only beside its customer's voiceprint: erasing the customer (delete,
    opt-out, purge) erases the shadow in the same transaction.
    """

    CUSTOMER = "customer"
    WATCHLIST = "watchlist"
    SHADOW = "shadow"


@dataclass(frozen=True)
class Voiceprint:
    """A decrypted voiceprint. ``embedding`` never leaves the process in the clear."""

    subject_id: str
    namespace: Namespace
    model_id: str
    embedding: np.ndarray = field(repr=False)
    """float32, shape (dim,), L2-normalised speech-weighted mean of the recordings."""
    speech_s: float
    """Net speech seconds behind the voiceprint."""
    recordings: int
    complete: bool
    """False while an enrolment spread over several calls still lacks speech."""
    created_at: float
    updated_at: float
    last_used_at: float | None = None
    meta: Mapping[str, str] = field(default_factory=dict)
    """Non-biometric labels (e.g. a watchlist entry's reason)."""


@dataclass(frozen=True)
class VoiceprintInfo:
    """What listing shows: everything but the embedding."""

    subject_id: str
    namespace: Namespace
    model_id: str
    speech_s: float
    recordings: int
    complete: bool
    created_at: float
    updated_at: float
    last_used_at: float | None
    meta: Mapping[str, str]


@dataclass(frozen=True)
class Consent:
    """The record of a customer's consent to voice biometrics."""

    captured_at: float
    channel: str
    """How it was captured: ``ivr``, ``agent``, ``web``, ``migration``..."""
    purpose: str
    notice_version: str
    captured_by: str
    withdrawn_at: float | None = None

    @classmethod
    def now(
        cls,
        *,
        channel: str,
        notice_version: str,
        captured_by: str,
        purpose: str = "voice authentication",
    ) -> Consent:
        """A consent record captured at this moment."""
        import time

        return cls(time.time(), channel, purpose, notice_version, captured_by)


@dataclass(frozen=True)
class AuditRecord:
    """An event to append to the audit trail. Never holds audio or embeddings."""

    action: str
    """``enroll``, ``verify``, ``decision``, ``delete``, ``opt_out``, ``consent``,
    ``key_rotation``, ``watchlist_add``, ``watchlist_hit``, ``purge``..."""
    subject_id: str | None
    outcome: str
    actor: str = "system"
    details: Mapping[str, str | int | float | bool] = field(default_factory=dict)


@dataclass(frozen=True)
class AuditEvent:
    """A stored audit event, chained to its predecessor by ``prev_hash``."""

    seq: int
    time: float
    action: str
    subject_id: str | None
    outcome: str
    actor: str
    details: Mapping[str, str | int | float | bool]
    prev_hash: str
    hash: str


@dataclass(frozen=True)
class AuditCheck:
    """Result of verifying the audit chain."""

    ok: bool
    events: int
    first_bad_seq: int | None = None
    problem: str | None = None


@dataclass(frozen=True)
class OptOutResult:
    """What an opt-out did: the opt-out is always recorded; the rest says what there was to erase."""

    customer_id: str
    voiceprint_deleted: bool
    consent_withdrawn: bool
    """A consent record was marked withdrawn now (False: none, or already withdrawn)."""
    already_opted_out: bool
    opt_out_recorded: bool = True


Builder = Callable[["Voiceprint | None"], Voiceprint]


class VoiceprintStore(Protocol):
    """Encrypted voiceprints: read, write under a lock, erase, list."""

    def get(self, namespace: Namespace, subject_id: str) -> Voiceprint | None: ...

    def upsert(
        self,
        namespace: Namespace,
        subject_id: str,
        build: Builder,
        *,
        event: AuditRecord,
        consent: Consent | None = None,
        opt_in: AuditRecord | None = None,
    ) -> Voiceprint:
        """Read the current voiceprint (or None) under a write lock, call ``build`` on it,
        and store what it returns. An exception from ``build`` aborts with nothing written.

        A customer who opted out raises :class:`OptedOutError` unless both ``consent`` (fresh)
        and ``opt_in`` are given: then the opt-out is lifted, and ``opt_in`` audited, in the
        same transaction as the voiceprint and the consent."""
        ...

    def delete(self, namespace: Namespace, subject_id: str, *, event: AuditRecord) -> bool: ...

    def embeddings(self, namespace: Namespace, model_id: str) -> tuple[list[str], np.ndarray]:
        """Ids and (n, dim) matrix of every *complete* voiceprint made by ``model_id``."""
        ...

    def list(self, namespace: Namespace = Namespace.CUSTOMER) -> list[VoiceprintInfo]: ...

    def touch(self, namespace: Namespace, subject_id: str, when: float) -> None: ...


class ConsentStore(Protocol):
    """Consent records and opt-outs."""

    def consent(self, subject_id: str) -> Consent | None: ...

    def opt_out(self, subject_id: str, *, event: AuditRecord) -> OptOutResult:
        """Erase the voiceprint, withdraw consent and record the opt-out in one transaction;
        ``event`` is audited with what was erased in its details."""
        ...

    def is_opted_out(self, subject_id: str) -> bool: ...

    def clear_opt_out(self, subject_id: str, *, event: AuditRecord) -> None:
        """The customer opted back in with fresh consent."""
        ...


class AuditLog(Protocol):
    """The hash-chained audit trail with its sealed head."""

    def audit(self, event: AuditRecord) -> None: ...

    def audit_events(self) -> list[AuditEvent]: ...

    def verify_audit(self) -> AuditCheck: ...


class StoreAdmin(Protocol):
    """Keys, retention and maintenance."""

    def integrity_check(self) -> bool:
        """Storage-level check, every voiceprint decrypts, and the audit chain holds."""
        ...

    def purge_unused(self, older_than: float, *, actor: str = "system") -> list[str]: ...

    def rotate_key(self, *, actor: str = "system") -> str: ...

    def close(self) -> None: ...


@runtime_checkable
class Store(VoiceprintStore, ConsentStore, AuditLog, StoreAdmin, Protocol):
    """What the facade needs from a voiceprint store: all of the above.

    Every write happens in one transaction together with its audit event, so a
    crash leaves either both or neither.
    """


@runtime_checkable
class StreamingStore(Protocol):
    """What a store offers for a million customers (both SQL stores; see :mod:`voiceauth.store.streaming`).

    The cohort and the 1:N index use it when a store has it, and fall back to
    :meth:`VoiceprintStore.embeddings` (the whole store at once) when it does not.
    """

    def count(self, namespace: Namespace = Namespace.CUSTOMER, model_id: str | None = None) -> int: ...

    def iter_ids(self, namespace: Namespace = Namespace.CUSTOMER, model_id: str | None = None, *,
                 batch_size: int = 20_000) -> Iterator[str]: ...

    def iter_embeddings(self, namespace: Namespace, model_id: str, *,
                        batch_size: int = 10_000) -> Iterator[tuple[list[str], np.ndarray]]: ...

    def get_many(self, namespace: Namespace, subject_ids: Sequence[str]) -> dict[str, Voiceprint]: ...

    def change_seq(self) -> int: ...

    def voiceprint_changes(self, after_seq: int, *, limit: int = 50_000) -> tuple[int, list[Any]]: ...

    def setting(self, key: str) -> str | None: ...

    def put_setting(self, key: str, value: str, *, event: AuditRecord) -> None: ...
