"""The logic both SQL stores share, written once; a dialect supplies connections and locking.

SQL here uses ``?`` placeholders (:meth:`SQLStore._sql` turns them into the driver's) and no
literal ``%``. A dialect (:mod:`~voiceauth.store.sqlite`, :mod:`~voiceauth.store.postgres`)
provides :meth:`~SQLStore._connect`, :meth:`~SQLStore._write`, :meth:`~SQLStore._snapshot`
and :meth:`~SQLStore._query`, the row-lock clauses, the upsert syntax, and the hooks that lock
one subject or the audit chain, check storage pages and scrub erased rows.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from contextlib import AbstractContextManager, suppress
from typing import Any, ClassVar, TypeVar

import numpy as np

from voiceauth.errors import KeyMissingError, NotEnrolledError, StoreError, TamperedError
from voiceauth.store.audit import GENESIS, Head, Sealer, verify_trail
from voiceauth.store.base import (
    AuditCheck,
    AuditEvent,
    AuditRecord,
    Builder,
    Consent,
    Namespace,
    OptOutResult,
    Voiceprint,
    VoiceprintInfo,
)
from voiceauth.store.common import (
    AUDIT_COLUMNS,
    BUMP_VERSION,
    CONSENT_COLUMNS,
    HOLDS_ANYTHING,
    HOLDS_DATA,
    INFO_COLUMNS,
    KEYCHECK_PLAINTEXT,
    VOICEPRINT_COLUMNS,
    VOICEPRINT_SELECT,
    check_built,
    keycheck_aad,
    new_store_id,
    next_audit_row,
    opt_in_gate,
    opt_out_event,
    purge_cutoff,
    row_to_event,
    row_to_info,
    row_to_voiceprint,
    rows_to_matrix,
    voiceprint_params,
)
from voiceauth.store.crypto import KeyRing
from voiceauth.store.streaming import StreamingOps
from voiceauth.store.trials import TrialTables

Connection = Any
"""A DB-API connection of the dialect's driver (``sqlite3`` or ``psycopg``)."""
S = TypeVar("S", bound="SQLStore")


class SQLStore(TrialTables, StreamingOps):
    """Voiceprints, consent, opt-outs and the audit trail in SQL tables; see the dialects."""

    PLACEHOLDER: ClassVar[str] = "?"
    LOCK_ROWS: ClassVar[str] = ""
    """Appended to a SELECT whose rows the transaction will rewrite (``FOR UPDATE``)."""
    LOCK_KEY_SHARED: ClassVar[str] = ""
    """Appended when a writer reads the current key id, so a rotation waits for it (``FOR SHARE``)."""
    DRIVER_ERROR: type[Exception] = Exception
    """What closing a connection may raise (and is ignored)."""

    keyring: KeyRing
    store_id: str
    where: str
    """The store as errors and reprs name it (a path, or a URL without its password)."""

    def __init__(self, where: str) -> None:
        self.where = where
        self.store_id = ""
        self._local = threading.local()
        self._connections: list[Connection] = []
        self._lock = threading.Lock()
        self._closed = False

    # -- what a dialect supplies ---------------------------------------------------------------
    def _connect(self) -> Connection:
        raise NotImplementedError

    def _write(self) -> AbstractContextManager[Connection]:
        """A write transaction: committed when the block ends, rolled back on any exception."""
        raise NotImplementedError

    def _snapshot(self) -> AbstractContextManager[Connection]:
        """A read transaction: several queries see one consistent state."""
        raise NotImplementedError

    def _query(self, sql: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        """Rows of one statement outside a transaction (``?`` placeholders)."""
        raise NotImplementedError

    def _upsert(self, table: str, columns: str, key: str) -> str:
        """An INSERT of ``columns`` into ``table`` that replaces the row with the same ``key``."""
        raise NotImplementedError

    def _lock_subject(self, con: Connection, namespace: Namespace, subject_id: str) -> None:
        """Serialise writers of one subject for the rest of the transaction (none needed by default)."""

    def _lock_audit(self, con: Connection) -> None:
        """Serialise audit appends for the rest of the transaction (none needed by default)."""

    def _storage_ok(self, con: Connection) -> bool:
        """The database's own check of its pages (True where the server checks them itself)."""
        return True

    def _scrub(self, erased: tuple[str, ...] = ()) -> None:
        """After a committed erasure of ``erased``: remove leftover copies, where the dialect can."""

    # -- connections -------------------------------------------------------------------------
    def _sql(self, sql: str) -> str:
        return sql if self.PLACEHOLDER == "?" else sql.replace("?", self.PLACEHOLDER)

    def _exec(self, con: Connection, sql: str, params: Sequence[Any] = ()) -> Any:
        """Run ``sql`` (``?`` placeholders) on ``con``; the driver's cursor."""
        return con.execute(self._sql(sql), tuple(params))

    def _conn(self) -> Connection:
        """This thread's connection, opened on first use (and again once the server closed it)."""
        if self._closed:
            raise StoreError(f"the store {self.where} is closed; open it again")
        con = getattr(self._local, "con", None)
        if con is None or getattr(con, "closed", False):  # psycopg says when the server closed it
            con = self._connect()
            self._local.con = con
            with self._lock:
                self._connections.append(con)
        return con

    def close(self) -> None:
        """Close every thread's connection; the store cannot be used afterwards."""
        with self._lock:
            self._closed = True
            for con in self._connections:
                with suppress(self.DRIVER_ERROR):
                    con.close()
            self._connections.clear()
        self._local = threading.local()

    def __enter__(self: S) -> S:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.where!r})"

    # -- meta and keys ---------------------------------------------------------------------------
    def _meta(self, con: Connection, key: str, lock: str = "") -> str | None:
        row = self._exec(con, f"SELECT value FROM meta WHERE key = ? {lock}", (key,)).fetchone()
        return None if row is None else str(row[0])

    def _set_meta(self, con: Connection, key: str, value: str) -> None:
        self._exec(con, "INSERT INTO meta (key, value) VALUES (?, ?) ON CONFLICT (key) DO UPDATE SET value = "
                   "EXCLUDED.value", (key, value))

    def _check_key(self, con: Connection) -> None:
        """First open: record the store id, its key and the key check value. Later: the loaded
        keys must include the store's key, and the key file records that key as the store's
        (with the key row locked, so no rotation is half-way)."""
        current = self._meta(con, "current_key_id", self.LOCK_ROWS)
        self.store_id = self._meta(con, "store_id") or ""
        if current is None:
            self.store_id = new_store_id()
            self._set_meta(con, "store_id", self.store_id)
            self._write_keycheck(con, self.keyring.key_for_store(self.store_id))
            return
        if not self.store_id:
            raise TamperedError(f"the store id of {self.where} is missing; restore the store from backup")
        if not self.keyring.has(current):
            raise KeyMissingError(
                f"the encryption key does not match the one {self.where} was written with (key id {current}; "
                f"loaded: {', '.join(self.keyring.ids)}); set VOICEAUTH_KEY / VOICEAUTH_KEY_FILE to the right key"
            )
        check = self._meta(con, f"keycheck:{current}")
        if check is None:
            raise TamperedError(f"the key check value of {self.where} is missing; restore the store from backup")
        self.keyring.decrypt(current, bytes.fromhex(check), keycheck_aad(self.store_id, current),
                             what=f"the key check value of {self.where}")
        self.keyring.assign(self.store_id, current)

    def _write_keycheck(self, con: Connection, kid: str) -> None:
        _, blob = self.keyring.encrypt(KEYCHECK_PLAINTEXT, keycheck_aad(self.store_id, kid), kid)
        self._exec(con, "DELETE FROM meta WHERE key LIKE ?", ("keycheck:%",))
        self._set_meta(con, f"keycheck:{kid}", blob.hex())
        self._set_meta(con, "current_key_id", kid)

    def _current_key(self, con: Connection, lock: str | None = None) -> str:
        """The key new ciphertexts use, read inside the write transaction (held shared by default,
        so a rotation waits for this write)."""
        kid = self._meta(con, "current_key_id", self.LOCK_KEY_SHARED if lock is None else lock)
        if kid is None:
            raise TamperedError(f"the key id of {self.where} is missing; restore the store from backup")
        if not self.keyring.has(kid):
            raise KeyMissingError(
                f"{self.where} now uses key {kid} (rotated by another process?), which is not loaded; "
                "set VOICEAUTH_KEY / VOICEAUTH_KEY_FILE to the new key"
            )
        return kid

    # -- audit -----------------------------------------------------------------------------------
    def _seal_new_trail(self, con: Connection) -> None:
        """A new, empty store gets a sealed head (sequence 0): a trail wiped later never passes for new."""
        if Head.parse(self._meta(con, "audit_head")) is None and not self._exec(con, HOLDS_ANYTHING).fetchone()[0]:
            head = Sealer(self.keyring, self.store_id).seal(self._meta(con, "current_key_id") or "", 0, GENESIS)
            self._set_meta(con, "audit_head", head.encode())

    def _append_audit(self, con: Connection, record: AuditRecord) -> None:
        """Append one event after the recorded head, and re-seal the head, in the caller's transaction.

        The store's key id is read without a row lock: a rotation holds the chain until it
        commits, and a row lock here would deadlock with it."""
        self._lock_audit(con)
        previous = Head.parse(self._meta(con, "audit_head"))
        last = (previous.seq, previous.hash) if previous else self._exec(
            con, "SELECT seq, hash FROM audit ORDER BY seq DESC LIMIT 1").fetchone()
        row = next_audit_row(last, record)
        self._exec(con, f"INSERT INTO audit ({AUDIT_COLUMNS}) VALUES ({', '.join('?' * len(row))})", row)
        head = Sealer(self.keyring, self.store_id).next_head(previous, self._meta(con, "current_key_id") or "",
                                                            record, row[0], row[-1])
        self._set_meta(con, "audit_head", head.encode())

    def audit(self, event: AuditRecord) -> None:
        with self._write() as con:
            self._append_audit(con, event)

    def _events(self, con: Connection) -> list[AuditEvent]:
        return [row_to_event(r) for r in self._exec(con, f"SELECT {AUDIT_COLUMNS} FROM audit ORDER BY seq")]

    def audit_events(self) -> list[AuditEvent]:
        with self._snapshot() as con:
            return self._events(con)

    def verify_audit(self) -> AuditCheck:
        """The chain holds and ends at the head sealed under the store's key; see :mod:`voiceauth.store.audit`."""
        with self._snapshot() as con:
            return self._verify_audit(con)

    def _verify_audit(self, con: Connection) -> AuditCheck:
        head, kid = Head.parse(self._meta(con, "audit_head")), self._meta(con, "current_key_id")
        events = self._events(con)
        holds_data = bool(self._exec(con, HOLDS_DATA).fetchone()[0])
        return verify_trail(events, head, Sealer(self.keyring, self.store_id), kid, holds_data)

    # -- voiceprints -----------------------------------------------------------------------------
    def _get(self, con: Connection, namespace: Namespace, subject_id: str, lock: str = "") -> Voiceprint | None:
        row = self._exec(con, f"SELECT {VOICEPRINT_SELECT} FROM voiceprints WHERE namespace = ? AND subject_id = ? "
                         f"{lock}", (Namespace(namespace).value, subject_id)).fetchone()
        return None if row is None else row_to_voiceprint(self.keyring, self.store_id, row)

    def get(self, namespace: Namespace, subject_id: str) -> Voiceprint | None:
        rows = self._query(f"SELECT {VOICEPRINT_SELECT} FROM voiceprints WHERE namespace = ? AND subject_id = ?",
                           (Namespace(namespace).value, subject_id))
        return row_to_voiceprint(self.keyring, self.store_id, rows[0]) if rows else None

    def upsert(self, namespace: Namespace, subject_id: str, build: Builder, *, event: AuditRecord,
               consent: Consent | None = None, opt_in: AuditRecord | None = None) -> Voiceprint:
        """Read, ``build``, encrypt and write under one write lock, with the audit event (and consent,
        and the lifting of an opt-out: see :meth:`Store.upsert`)."""
        namespace = Namespace(namespace)
        with self._write() as con:
            kid = self._current_key(con)  # before the subject's lock: a rotation takes the key first
            self._lock_subject(con, namespace, subject_id)
            if namespace is Namespace.SHADOW:
                self._lock_subject(con, Namespace.CUSTOMER, subject_id)  # erasure takes it too: no orphan
                if self._get(con, Namespace.CUSTOMER, subject_id, self.LOCK_ROWS) is None:
                    raise NotEnrolledError(f"{subject_id} has no voiceprint (erased?), so no shadow voiceprint either")
            opted_out = namespace in (Namespace.CUSTOMER, Namespace.SHADOW) and self._opted_out(con, subject_id)
            lift = opt_in_gate(subject_id, opted_out, consent, opt_in)
            vp = build(self._get(con, namespace, subject_id, self.LOCK_ROWS))
            check_built(vp, namespace, subject_id)
            self._write_voiceprint(con, vp, kid)
            if lift is not None:
                self._exec(con, "DELETE FROM opt_outs WHERE subject_id = ?", (subject_id,))
                self._append_audit(con, lift)
            if consent is not None:
                self._record_consent(con, subject_id, consent)
            self._append_audit(con, event)
        return vp

    def _record_consent(self, con: Connection, subject_id: str, consent: Consent) -> None:
        self._exec(con, self._upsert("consent", f"subject_id, {CONSENT_COLUMNS}", "subject_id"),
                   (subject_id, consent.captured_at, consent.channel, consent.purpose, consent.notice_version,
                    consent.captured_by, consent.withdrawn_at))
        self._append_audit(con, AuditRecord("consent", subject_id, "recorded", consent.captured_by,
                                            {"channel": consent.channel, "notice": consent.notice_version}))

    def _bump_version(self, con: Connection, namespace: Namespace, subject_id: str) -> int:
        """The next version of a voiceprint row (recorded apart from the row, and never reused)."""
        return int(self._exec(con, BUMP_VERSION.format(p="?"), (Namespace(namespace).value, subject_id)).fetchone()[0])

    def _write_voiceprint(self, con: Connection, vp: Voiceprint, kid: str) -> None:
        """Encrypt and write ``vp`` as the next version of its row."""
        version = self._bump_version(con, vp.namespace, vp.subject_id)
        self._exec(con, self._upsert("voiceprints", VOICEPRINT_COLUMNS, "namespace, subject_id"),
                   voiceprint_params(self.keyring, self.store_id, vp, kid, version))

    def _erase(self, con: Connection, namespace: Namespace, subject_id: str) -> bool:
        """Delete the row (a customer's together with their shadow voiceprint); its version moves
        on, so no copy of it can be restored. True if the row of ``namespace`` existed."""
        namespace = Namespace(namespace)
        cur = self._exec(con, "DELETE FROM voiceprints WHERE namespace = ? AND subject_id = ?",
                         (namespace.value, subject_id))
        removed = cur.rowcount > 0
        if removed:
            self._bump_version(con, namespace, subject_id)
        if namespace is Namespace.CUSTOMER:  # after the customer's row: a shadow write holding it has committed
            self._erase(con, Namespace.SHADOW, subject_id)
        return removed

    def delete(self, namespace: Namespace, subject_id: str, *, event: AuditRecord) -> bool:
        """Erase one voiceprint; False, audited as ``not_found``, if none."""
        with self._write() as con:
            removed = self._erase(con, namespace, subject_id)
            self._append_audit(con, event if removed else AuditRecord(
                event.action, event.subject_id, "not_found", event.actor, event.details))
        if removed:
            self._scrub((subject_id,))
        return removed

    def embeddings(self, namespace: Namespace, model_id: str) -> tuple[list[str], np.ndarray]:
        """Ids and (n, dim) float32 matrix of complete voiceprints of ``model_id``; tampering raises."""
        rows = self._query(f"SELECT {VOICEPRINT_SELECT} FROM voiceprints WHERE namespace = ? AND model_id = ? "
                           "AND complete = 1 ORDER BY subject_id", (Namespace(namespace).value, model_id))
        return rows_to_matrix(self.keyring, self.store_id, rows, model_id, self.where)

    def list(self, namespace: Namespace = Namespace.CUSTOMER) -> list[VoiceprintInfo]:
        rows = self._query(f"SELECT {INFO_COLUMNS} FROM voiceprints WHERE namespace = ? ORDER BY subject_id",
                           (Namespace(namespace).value,))
        return [row_to_info(r) for r in rows]

    def touch(self, namespace: Namespace, subject_id: str, when: float) -> None:
        """Record when a voiceprint was last used (for retention); not audited."""
        with self._write() as con:
            self._exec(con, "UPDATE voiceprints SET last_used_at = ? WHERE namespace = ? AND subject_id = ?",
                       (float(when), Namespace(namespace).value, subject_id))

    # -- consent and opt-out -----------------------------------------------------------------------
    def consent(self, subject_id: str) -> Consent | None:
        rows = self._query(f"SELECT {CONSENT_COLUMNS} FROM consent WHERE subject_id = ?", (subject_id,))
        return Consent(*rows[0]) if rows else None

    def opt_out(self, subject_id: str, *, event: AuditRecord) -> OptOutResult:
        """Erase the customer's voiceprint, mark consent withdrawn and remember the opt-out, atomically."""
        now = time.time()
        with self._write() as con:
            self._lock_subject(con, Namespace.CUSTOMER, subject_id)  # an enrolment of this customer waits
            already = self._opted_out(con, subject_id)
            deleted = self._erase(con, Namespace.CUSTOMER, subject_id)
            withdrawn = self._exec(
                con, "UPDATE consent SET withdrawn_at = ? WHERE subject_id = ? AND withdrawn_at IS NULL",
                (now, subject_id)).rowcount > 0
            self._exec(con, self._upsert("opt_outs", "subject_id, at", "subject_id"), (subject_id, now))
            result = OptOutResult(subject_id, deleted, withdrawn, already)
            self._append_audit(con, opt_out_event(event, result))
        self._scrub((subject_id,) if deleted else ())
        return result

    def _opted_out(self, con: Connection, subject_id: str) -> bool:
        return self._exec(con, "SELECT 1 FROM opt_outs WHERE subject_id = ?", (subject_id,)).fetchone() is not None

    def clear_opt_out(self, subject_id: str, *, event: AuditRecord) -> None:
        """Lift an opt-out (the customer opted back in with fresh consent)."""
        with self._write() as con:
            self._exec(con, "DELETE FROM opt_outs WHERE subject_id = ?", (subject_id,))
            self._append_audit(con, event)

    def is_opted_out(self, subject_id: str) -> bool:
        return bool(self._query("SELECT 1 FROM opt_outs WHERE subject_id = ?", (subject_id,)))

    # -- retention and keys ----------------------------------------------------------------------
    def purge_unused(self, older_than: float, *, actor: str = "system") -> list[str]:
        """Erase customer voiceprints last used (or, never used, last updated) before ``older_than``."""
        older_than = purge_cutoff(older_than)
        with self._write() as con:
            ids = [str(r[0]) for r in self._exec(
                con, "SELECT subject_id FROM voiceprints WHERE namespace = ? AND COALESCE(last_used_at, updated_at) "
                f"< ? ORDER BY subject_id {self.LOCK_ROWS}", (Namespace.CUSTOMER.value, older_than)).fetchall()]
            for subject_id in ids:
                self._erase(con, Namespace.CUSTOMER, subject_id)
                self._append_audit(con, AuditRecord("purge", subject_id, "purged", actor,
                                                    {"older_than": round(older_than)}))
        if ids:
            self._scrub(tuple(ids))
        return ids

    def rotate_key(self, *, actor: str = "system") -> str:
        """Re-encrypt every voiceprint under a new key; return its id.

        The new key is saved for this store beside the old one before any row changes; all
        rows (each as a new version), the key check value and the audit event change in one
        transaction, with the key row locked; only after it commits does the key file record
        the new key as this store's instead of the old one. The old key stays in the key file
        until retired explicitly (:meth:`KeyRing.retire_unused`); other stores' keys are never
        touched. A crash at any point leaves every voiceprint readable under a key the key
        file records as this store's. With ``VOICEAUTH_KEY``, set ``VOICEAUTH_NEW_KEY`` first
        and switch ``VOICEAUTH_KEY`` to it afterwards; other processes sharing the store need
        the new key before their next write.
        """
        with self._write() as con:
            old = self._current_key(con, self.LOCK_ROWS)
            new_kid = self.keyring.stage_new_key(self.store_id)  # under the lock: see _check_key
            if new_kid == old:
                raise StoreError(f"the new key is the key this store already uses ({old}); pass a different key")
            rows = self._exec(con, f"SELECT {VOICEPRINT_SELECT} FROM voiceprints {self.LOCK_ROWS}").fetchall()
            for row in rows:
                self._write_voiceprint(con, row_to_voiceprint(self.keyring, self.store_id, row), new_kid)
            self._write_keycheck(con, new_kid)
            self._append_audit(con, AuditRecord("key_rotation", None, "rotated", actor,
                                                {"voiceprints": len(rows), "key_id": new_kid, "old_key_id": old}))
        self._scrub()  # best effort: the old ciphertexts are under the old key, kept until retired
        with self._write() as con:
            self.keyring.assign(self.store_id, self._current_key(con))
        return new_kid

    # -- maintenance -------------------------------------------------------------------------------
    def integrity_check(self) -> bool:
        """Storage-level check, the key check value, every voiceprint and the audit chain hold."""
        with self._snapshot() as con:
            if not self._storage_ok(con):
                return False
            kid = self._meta(con, "current_key_id")
            check = self._meta(con, f"keycheck:{kid}")
            try:
                if kid is None or check is None:
                    return False
                self.keyring.decrypt(kid, bytes.fromhex(check), keycheck_aad(self.store_id, kid),
                                     what="the key check value")
                for row in self._exec(con, f"SELECT {VOICEPRINT_SELECT} FROM voiceprints"):
                    row_to_voiceprint(self.keyring, self.store_id, row)
            except (TamperedError, KeyMissingError, ValueError):
                return False
            return self._verify_audit(con).ok
