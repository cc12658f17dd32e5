"""The embedded store: one SQLite file, voiceprints encrypted with AES-256-GCM.

- WAL journal and ``BEGIN IMMEDIATE`` write transactions with a 30 s busy timeout, so
  threads (a connection each) and several processes can share one file; each write
  commits together with its audit event, or neither is written.
- ``secure_delete`` overwrites erased rows with zeros. Erasing operations then try to fold
  the WAL into the file and truncate it without waiting; :meth:`SQLiteStore.checkpoint`
  does so waiting for readers, so a deleted voiceprint's ciphertext survives nowhere.
- Each ciphertext is bound to its row (namespace, subject, model and enrolment state) as
  AES-GCM associated data: a ciphertext copied elsewhere or an edited row fails to decrypt.
- A key check value (the current key id and a constant encrypted under it) makes opening
  with the wrong key a :class:`KeyMissingError`, not a flood of :class:`TamperedError`.
- The schema is versioned (``schema_version`` in the meta table) and migrated on open.
"""

from __future__ import annotations

import os
import sqlite3
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any

import numpy as np

from voiceauth.audit import verify_chain
from voiceauth.crypto import KeyRing, load_keyring
from voiceauth.errors import KeyMissingError, StoreCorruptError, StoreError, TamperedError
from voiceauth.store.base import (
    AuditCheck,
    AuditEvent,
    AuditRecord,
    Builder,
    Consent,
    Namespace,
    Voiceprint,
    VoiceprintInfo,
)
from voiceauth.store.common import (
    INFO_COLUMNS,
    KEYCHECK_PLAINTEXT,
    VOICEPRINT_COLUMNS,
    keycheck_aad,
    next_audit_row,
    row_to_event,
    row_to_info,
    row_to_voiceprint,
    rows_to_matrix,
    voiceprint_params,
)

APPLICATION_ID = 0x56415554  # "VAUT" in the SQLite header
SQLITE_MAGIC = b"SQLite format 3\x00"
BUSY_TIMEOUT_MS = 30_000

MIGRATIONS: list[tuple[str, ...]] = [
    # 1: initial schema
    (
        "CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)",
        """CREATE TABLE voiceprints (
            namespace TEXT NOT NULL, subject_id TEXT NOT NULL, model_id TEXT NOT NULL, key_id TEXT NOT NULL,
            blob BLOB NOT NULL, speech_s REAL NOT NULL, recordings INTEGER NOT NULL, complete INTEGER NOT NULL,
            created_at REAL NOT NULL, updated_at REAL NOT NULL, last_used_at REAL, meta TEXT NOT NULL DEFAULT '{}',
            PRIMARY KEY (namespace, subject_id))""",
        "CREATE INDEX voiceprints_by_model ON voiceprints (namespace, model_id, complete)",
        """CREATE TABLE consent (
            subject_id TEXT PRIMARY KEY, captured_at REAL NOT NULL, channel TEXT NOT NULL, purpose TEXT NOT NULL,
            notice_version TEXT NOT NULL, captured_by TEXT NOT NULL, withdrawn_at REAL)""",
        "CREATE TABLE opt_outs (subject_id TEXT PRIMARY KEY, at REAL NOT NULL)",
        """CREATE TABLE audit (
            seq INTEGER PRIMARY KEY, time REAL NOT NULL, action TEXT NOT NULL, subject_id TEXT,
            outcome TEXT NOT NULL, actor TEXT NOT NULL, details TEXT NOT NULL, prev_hash TEXT NOT NULL,
            hash TEXT NOT NULL)""",
    ),
]
SCHEMA_VERSION = len(MIGRATIONS)

_UPSERT = f"INSERT OR REPLACE INTO voiceprints ({VOICEPRINT_COLUMNS}) VALUES ({', '.join('?' * 12)})"
_CONSENT_COLUMNS = "captured_at, channel, purpose, notice_version, captured_by, withdrawn_at"


def _parse_head(value: str | None) -> tuple[int, str] | None:
    if not value:
        return None
    seq, digest = value.split(":", 1)
    return int(seq), digest


class SQLiteStore:
    """Voiceprints, consent, opt-outs and the audit trail in one SQLite file.

    Safe to share between threads (one connection per thread) and processes (SQLite locks).
    """

    def __init__(self, path: str | os.PathLike[str], *, keyring: KeyRing | None = None) -> None:
        self.path = Path(path)
        if not self.path.parent.is_dir():
            raise StoreError(
                f"cannot create the store {self.path}: directory {self.path.parent} does not exist; "
                "create it or choose another --store path"
            )
        if self.path.is_dir():
            raise StoreError(f"the store path {self.path} is a directory; pass a file path with --store")
        self._check_header()
        self._local = threading.local()
        self._connections: list[sqlite3.Connection] = []
        self._lock = threading.Lock()
        self._closed = False
        if self.path.exists():
            self._identify()
        self.keyring = keyring if keyring is not None else load_keyring()
        try:
            self._enable_wal(self._conn())
            self._migrate()
            self._check_key()
            self._finish_retirement()
        except BaseException:
            self.close()
            raise

    # -- connections -------------------------------------------------------------------------
    def _check_header(self) -> None:
        """Refuse, without touching it, a non-empty file that is not SQLite."""
        if not self.path.is_file() or self.path.stat().st_size == 0:
            return
        with open(self.path, "rb") as fh:
            header = fh.read(len(SQLITE_MAGIC))
        if header != SQLITE_MAGIC:
            raise StoreCorruptError(
                f"{self.path} is not a voiceauth database (not a SQLite file); check the --store path"
            )

    def _conn(self) -> sqlite3.Connection:
        """This thread's connection, opened on first use."""
        if self._closed:
            raise StoreError(f"the store {self.path} is closed; open it again")
        con: sqlite3.Connection | None = getattr(self._local, "con", None)
        if con is None:
            try:
                con = sqlite3.connect(self.path, timeout=BUSY_TIMEOUT_MS / 1000, isolation_level=None,
                                      check_same_thread=False)
                con.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
                con.execute("PRAGMA secure_delete = ON")
                con.execute("PRAGMA synchronous = FULL")
                con.execute("PRAGMA journal_size_limit = 0")
            except sqlite3.DatabaseError as exc:
                raise self._corrupt(exc) from exc
            self._local.con = con
            with self._lock:
                self._connections.append(con)
        return con

    def _corrupt(self, exc: Exception) -> StoreError:
        if isinstance(exc, sqlite3.OperationalError) and "locked" in str(exc):
            return StoreError(
                f"the store {self.path} stayed locked by another process for {BUSY_TIMEOUT_MS // 1000} s; "
                "retry, or find the process holding it"
            )
        if isinstance(exc, sqlite3.OperationalError) and "unable to open" in str(exc):
            return StoreError(f"cannot open the store {self.path} ({exc}); check the path and its permissions")
        return StoreCorruptError(f"{self.path} is not a usable voiceauth database ({exc}); check the --store path")

    def _identify(self) -> None:
        """Refuse, through a read-only connection, a file that is not a voiceauth store."""
        try:
            con = sqlite3.connect(f"{self.path.resolve().as_uri()}?mode=ro", uri=True, timeout=BUSY_TIMEOUT_MS / 1000)
            try:
                app = con.execute("PRAGMA application_id").fetchone()[0]
                tables = con.execute("SELECT count(*) FROM sqlite_master").fetchone()[0]
            finally:
                con.close()
        except sqlite3.DatabaseError as exc:
            raise self._corrupt(exc) from exc
        if app != APPLICATION_ID and tables:
            raise StoreCorruptError(
                f"{self.path} is a SQLite database of another application, not a voiceauth store; "
                "check the --store path"
            )

    def _enable_wal(self, con: sqlite3.Connection) -> None:
        for attempt in range(100):  # switching a new file to WAL can race with other processes
            try:
                if con.execute("PRAGMA journal_mode = WAL").fetchone()[0].lower() == "wal":
                    return
            except sqlite3.OperationalError as exc:
                if "locked" not in str(exc) or attempt == 99:
                    raise self._corrupt(exc) from exc
            time.sleep(0.05)
        raise StoreError(f"cannot switch {self.path} to WAL mode; is it on a network file system?")

    @contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        """A ``BEGIN IMMEDIATE`` transaction: committed on success, rolled back on any exception."""
        con = self._conn()
        try:
            con.execute("BEGIN IMMEDIATE")
        except sqlite3.DatabaseError as exc:
            raise self._corrupt(exc) from exc
        try:
            yield con
            con.execute("COMMIT")
        except BaseException as exc:
            if con.in_transaction:
                with suppress(sqlite3.Error):
                    con.execute("ROLLBACK")
            if isinstance(exc, sqlite3.DatabaseError):
                raise self._corrupt(exc) from exc
            raise

    @contextmanager
    def _snapshot(self) -> Iterator[sqlite3.Connection]:
        """A read transaction: several queries see one consistent state."""
        con = self._conn()
        try:
            con.execute("BEGIN")
            try:
                yield con
            finally:
                con.execute("COMMIT")
        except sqlite3.DatabaseError as exc:
            raise self._corrupt(exc) from exc

    def _query(self, sql: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        try:
            return self._conn().execute(sql, params).fetchall()
        except sqlite3.DatabaseError as exc:
            raise self._corrupt(exc) from exc

    # -- schema ----------------------------------------------------------------------------------
    def _schema_version(self, con: sqlite3.Connection) -> int:
        if con.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'meta'").fetchone() is None:
            return 0
        return int(self._meta(con, "schema_version") or 0)

    def _migrate(self) -> None:
        with self._write() as con:
            version = self._schema_version(con)
            if version > SCHEMA_VERSION:
                raise StoreError(
                    f"{self.path} has schema version {version}, newer than this voiceauth understands "
                    f"({SCHEMA_VERSION}); upgrade voiceauth"
                )
            for number in range(version + 1, SCHEMA_VERSION + 1):
                for statement in MIGRATIONS[number - 1]:
                    con.execute(statement)
                self._set_meta(con, "schema_version", str(number))
                con.execute(f"PRAGMA user_version = {number}")
            con.execute(f"PRAGMA application_id = {APPLICATION_ID}")

    # -- meta and keys -------------------------------------------------------------------------
    @staticmethod
    def _meta(con: sqlite3.Connection, key: str) -> str | None:
        row = con.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return None if row is None else row[0]

    @staticmethod
    def _set_meta(con: sqlite3.Connection, key: str, value: str) -> None:
        con.execute("INSERT INTO meta (key, value) VALUES (?, ?) ON CONFLICT(key) DO UPDATE SET value = excluded.value",
                    (key, value))

    def _check_key(self) -> None:
        """First open: record the key check value. Later: the loaded keys must include the store's key."""
        with self._write() as con:
            current = self._meta(con, "current_key_id")
            if current is None:
                self._write_keycheck(con, self.keyring.current)
                return
            check = self._meta(con, f"keycheck:{current}")
        if not self.keyring.has(current):
            raise KeyMissingError(
                f"the encryption key does not match the one this store was written with (key id {current}; "
                f"loaded: {', '.join(self.keyring.ids)}); set VOICEAUTH_KEY / VOICEAUTH_KEY_FILE to the right key"
            )
        if check is None:
            raise TamperedError(f"the key check value of {self.path} is missing; restore the store from backup")
        self.keyring.decrypt(current, bytes.fromhex(check), keycheck_aad(current),
                             what=f"the key check value of {self.path}")

    def _write_keycheck(self, con: sqlite3.Connection, kid: str) -> None:
        _, blob = self.keyring.encrypt(KEYCHECK_PLAINTEXT, keycheck_aad(kid), kid)
        con.execute("DELETE FROM meta WHERE key LIKE 'keycheck:%'")
        self._set_meta(con, f"keycheck:{kid}", blob.hex())
        self._set_meta(con, "current_key_id", kid)

    def _current_key(self, con: sqlite3.Connection) -> str:
        """The key new ciphertexts use: the store's, read inside the write transaction."""
        kid = self._meta(con, "current_key_id") or self.keyring.current
        if not self.keyring.has(kid):
            raise KeyMissingError(
                f"this store now uses key {kid} (rotated by another process?), which is not loaded; "
                "set VOICEAUTH_KEY / VOICEAUTH_KEY_FILE to the new key"
            )
        return kid

    # -- audit -----------------------------------------------------------------------------------
    def _append_audit(self, con: sqlite3.Connection, record: AuditRecord) -> None:
        """Append one event after the recorded head, and move the head, in the caller's transaction."""
        last = _parse_head(self._meta(con, "audit_head"))
        if last is None:
            last = con.execute("SELECT seq, hash FROM audit ORDER BY seq DESC LIMIT 1").fetchone()
        row = next_audit_row(last, record)
        con.execute("INSERT INTO audit VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)", row)
        self._set_meta(con, "audit_head", f"{row[0]}:{row[-1]}")

    def audit(self, event: AuditRecord) -> None:
        with self._write() as con:
            self._append_audit(con, event)

    @staticmethod
    def _events(con: sqlite3.Connection) -> list[AuditEvent]:
        rows = con.execute("SELECT seq, time, action, subject_id, outcome, actor, details, prev_hash, hash "
                           "FROM audit ORDER BY seq").fetchall()
        return [row_to_event(r) for r in rows]

    def audit_events(self) -> list[AuditEvent]:
        with self._snapshot() as con:
            return self._events(con)

    def verify_audit(self) -> AuditCheck:
        """The chain holds, and its last event is the head recorded in the meta table."""
        with self._snapshot() as con:
            return self._verify_audit(con)

    def _verify_audit(self, con: sqlite3.Connection) -> AuditCheck:
        events = self._events(con)
        head = _parse_head(self._meta(con, "audit_head"))
        if head is None and events:
            return AuditCheck(False, len(events), events[-1].seq, "the recorded head of the trail is missing")
        return verify_chain(events, head)

    # -- voiceprints -----------------------------------------------------------------------------
    def _get(self, con: sqlite3.Connection, namespace: Namespace, subject_id: str) -> Voiceprint | None:
        row = con.execute(f"SELECT {VOICEPRINT_COLUMNS} FROM voiceprints WHERE namespace = ? AND subject_id = ?",
                          (Namespace(namespace).value, subject_id)).fetchone()
        return None if row is None else row_to_voiceprint(self.keyring, row)

    def get(self, namespace: Namespace, subject_id: str) -> Voiceprint | None:
        try:
            return self._get(self._conn(), namespace, subject_id)
        except sqlite3.DatabaseError as exc:
            raise self._corrupt(exc) from exc

    def upsert(self, namespace: Namespace, subject_id: str, build: Builder, *, event: AuditRecord,
               consent: Consent | None = None) -> Voiceprint:
        """Read, ``build``, encrypt and write under one write lock, with the audit event (and consent)."""
        namespace = Namespace(namespace)
        with self._write() as con:
            vp = build(self._get(con, namespace, subject_id))
            _check_built(vp, namespace, subject_id)
            con.execute(_UPSERT, voiceprint_params(self.keyring, vp, self._current_key(con)))
            if consent is not None:
                self._record_consent(con, subject_id, consent)
            self._append_audit(con, event)
        return vp

    def _record_consent(self, con: sqlite3.Connection, subject_id: str, consent: Consent) -> None:
        con.execute(f"INSERT OR REPLACE INTO consent (subject_id, {_CONSENT_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?)",
                    (subject_id, consent.captured_at, consent.channel, consent.purpose, consent.notice_version,
                     consent.captured_by, consent.withdrawn_at))
        self._append_audit(con, AuditRecord("consent", subject_id, "recorded", consent.captured_by,
                                            {"channel": consent.channel, "notice": consent.notice_version}))

    @staticmethod
    def _erase(con: sqlite3.Connection, namespace: Namespace, subject_id: str) -> bool:
        cur = con.execute("DELETE FROM voiceprints WHERE namespace = ? AND subject_id = ?",
                          (Namespace(namespace).value, subject_id))
        return cur.rowcount > 0

    def delete(self, namespace: Namespace, subject_id: str, *, event: AuditRecord) -> bool:
        """Erase (overwriting with zeros) one voiceprint; False, audited as ``not_found``, if none."""
        with self._write() as con:
            removed = self._erase(con, namespace, subject_id)
            if not removed:
                event = AuditRecord(event.action, event.subject_id, "not_found", event.actor, event.details)
            self._append_audit(con, event)
        if removed:
            self._scrub()
        return removed

    def embeddings(self, namespace: Namespace, model_id: str) -> tuple[list[str], np.ndarray]:
        """Ids and (n, dim) float32 matrix of complete voiceprints of ``model_id``; tampering raises."""
        rows = self._query(f"SELECT {VOICEPRINT_COLUMNS} FROM voiceprints WHERE namespace = ? AND model_id = ? "
                           "AND complete = 1 ORDER BY subject_id", (Namespace(namespace).value, model_id))
        return rows_to_matrix(self.keyring, rows, model_id, str(self.path))

    def list(self, namespace: Namespace = Namespace.CUSTOMER) -> list[VoiceprintInfo]:
        rows = self._query(f"SELECT {INFO_COLUMNS} FROM voiceprints WHERE namespace = ? ORDER BY subject_id",
                           (Namespace(namespace).value,))
        return [row_to_info(r) for r in rows]

    def touch(self, namespace: Namespace, subject_id: str, when: float) -> None:
        """Record when a voiceprint was last used (for retention); not audited."""
        with self._write() as con:
            con.execute("UPDATE voiceprints SET last_used_at = ? WHERE namespace = ? AND subject_id = ?",
                        (float(when), Namespace(namespace).value, subject_id))

    # -- consent and opt-out -----------------------------------------------------------------------
    def consent(self, subject_id: str) -> Consent | None:
        rows = self._query(f"SELECT {_CONSENT_COLUMNS} FROM consent WHERE subject_id = ?", (subject_id,))
        return Consent(*rows[0]) if rows else None

    def opt_out(self, subject_id: str, *, event: AuditRecord) -> None:
        """Erase the customer's voiceprint, mark consent withdrawn and remember the opt-out, atomically."""
        now = time.time()
        with self._write() as con:
            self._erase(con, Namespace.CUSTOMER, subject_id)
            con.execute("UPDATE consent SET withdrawn_at = ? WHERE subject_id = ? AND withdrawn_at IS NULL",
                        (now, subject_id))
            con.execute("INSERT OR REPLACE INTO opt_outs (subject_id, at) VALUES (?, ?)", (subject_id, now))
            self._append_audit(con, event)
        self._scrub()

    def clear_opt_out(self, subject_id: str, *, event: AuditRecord) -> None:
        """Lift an opt-out (the customer opted back in with fresh consent)."""
        with self._write() as con:
            con.execute("DELETE FROM opt_outs WHERE subject_id = ?", (subject_id,))
            self._append_audit(con, event)

    def is_opted_out(self, subject_id: str) -> bool:
        return bool(self._query("SELECT 1 FROM opt_outs WHERE subject_id = ?", (subject_id,)))

    # -- retention and keys ----------------------------------------------------------------------
    def purge_unused(self, older_than: float, *, actor: str = "system") -> list[str]:
        """Erase customer voiceprints last used (or, never used, last updated) before ``older_than``."""
        with self._write() as con:
            ids = [r[0] for r in con.execute(
                "SELECT subject_id FROM voiceprints WHERE namespace = ? AND COALESCE(last_used_at, updated_at) < ? "
                "ORDER BY subject_id", (Namespace.CUSTOMER.value, float(older_than)))]
            for subject_id in ids:
                self._erase(con, Namespace.CUSTOMER, subject_id)
                self._append_audit(con, AuditRecord("purge", subject_id, "purged", actor,
                                                    {"older_than": round(float(older_than))}))
        if ids:
            self._scrub()
        return ids

    def rotate_key(self, *, actor: str = "system") -> str:
        """Re-encrypt every voiceprint under a new key; return its id.

        The new key is saved beside the old one before any row changes; all rows, the key
        check value and the audit event change in one transaction; only after it commits is
        the old key dropped from the key file. A crash at any point leaves every voiceprint
        readable under one key that is still in the key file. With ``VOICEAUTH_KEY``, set
        ``VOICEAUTH_NEW_KEY`` first and switch ``VOICEAUTH_KEY`` to it afterwards; other
        processes sharing the store need the new key before their next write.
        """
        new_kid = self.keyring.stage_new_key()
        with self._write() as con:
            old = self._current_key(con)
            if new_kid == old:
                raise StoreError(f"the new key is the key this store already uses ({old}); pass a different key")
            old_ids = {old} | {r[0] for r in con.execute("SELECT DISTINCT key_id FROM voiceprints")}
            count = self._reencrypt_all(con, new_kid)
            self._write_keycheck(con, new_kid)
            self._set_meta(con, "retired_key_ids", ",".join(sorted(old_ids - {new_kid})))
            self._append_audit(con, AuditRecord("key_rotation", None, "rotated", actor,
                                                {"voiceprints": count, "key_id": new_kid, "old_key_id": old}))
        self._scrub()
        self._finish_retirement()
        return new_kid

    def _finish_retirement(self) -> None:
        """Drop the keys the last committed rotation replaced, if they are still loaded (after a crash)."""
        with self._snapshot() as con:
            current = self._meta(con, "current_key_id")
            retired = set(filter(None, (self._meta(con, "retired_key_ids") or "").split(",")))
        if current and retired & set(self.keyring.ids) - {current}:
            self.keyring.retire(current, retired)

    def _reencrypt_all(self, con: sqlite3.Connection, kid: str) -> int:
        rows = con.execute(f"SELECT {VOICEPRINT_COLUMNS} FROM voiceprints").fetchall()
        for row in rows:
            con.execute(_UPSERT, voiceprint_params(self.keyring, row_to_voiceprint(self.keyring, row), kid))
        return len(rows)

    # -- maintenance -------------------------------------------------------------------------------
    def _scrub(self) -> None:
        """Best effort, without waiting: copy the WAL (zeroed pages included) into the file and truncate it."""
        con = self._conn()
        try:
            con.execute("PRAGMA busy_timeout = 0")
            con.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchall()
        except sqlite3.OperationalError:
            pass  # readers or writers are busy: a later checkpoint finishes the job
        finally:
            con.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")

    def checkpoint(self) -> bool:
        """Fold the WAL into the database file and truncate it, waiting for readers (up to the busy
        timeout); True when it completed, so no erased voiceprint survives in either file."""
        try:
            busy, _, _ = self._conn().execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
        except sqlite3.OperationalError as exc:
            raise self._corrupt(exc) from exc
        return not busy

    def integrity_check(self) -> bool:
        """SQLite's own check, every voiceprint decrypts, the key check value and the audit chain hold."""
        with self._snapshot() as con:
            if con.execute("PRAGMA integrity_check").fetchone()[0] != "ok":
                return False
            kid = self._meta(con, "current_key_id")
            check = self._meta(con, f"keycheck:{kid}")
            try:
                if kid is None or check is None:
                    return False
                self.keyring.decrypt(kid, bytes.fromhex(check), keycheck_aad(kid), what="the key check value")
                for row in con.execute(f"SELECT {VOICEPRINT_COLUMNS} FROM voiceprints"):
                    row_to_voiceprint(self.keyring, row)
            except (TamperedError, KeyMissingError, ValueError):
                return False
            return self._verify_audit(con).ok

    def close(self) -> None:
        """Close every thread's connection; the store cannot be used afterwards."""
        with self._lock:
            self._closed = True
            for con in self._connections:
                with suppress(sqlite3.Error):
                    con.close()
            self._connections.clear()
        self._local = threading.local()

    def __enter__(self) -> SQLiteStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"SQLiteStore({str(self.path)!r})"


def _check_built(vp: Voiceprint, namespace: Namespace, subject_id: str) -> None:
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
