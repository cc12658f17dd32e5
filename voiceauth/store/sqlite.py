"""The embedded store: one SQLite file, voiceprints encrypted with AES-256-GCM.

- WAL journal and ``BEGIN IMMEDIATE`` write transactions with a 30 s busy timeout, so
  several processes can share one file; each write commits together with its audit event.
- ``secure_delete`` overwrites erased rows with zeros, and erasing operations truncate the
  WAL, so a deleted voiceprint's ciphertext does not survive anywhere in the files.
- The schema is versioned (``PRAGMA user_version``) and migrated on open.
"""

from __future__ import annotations

import os
import sqlite3
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
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
    voiceprint_params,
)

APPLICATION_ID = 0x56415554  # "VAUT"
SQLITE_MAGIC = b"SQLite format 3\x00"

MIGRATIONS: list[str] = [
    # 1: initial schema
    """
    CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
    CREATE TABLE voiceprints (
        namespace TEXT NOT NULL, subject_id TEXT NOT NULL, model_id TEXT NOT NULL, key_id TEXT NOT NULL,
        blob BLOB NOT NULL, speech_s REAL NOT NULL, recordings INTEGER NOT NULL, complete INTEGER NOT NULL,
        created_at REAL NOT NULL, updated_at REAL NOT NULL, last_used_at REAL, meta TEXT NOT NULL DEFAULT '{}',
        PRIMARY KEY (namespace, subject_id)
    );
    CREATE TABLE consent (
        subject_id TEXT PRIMARY KEY, captured_at REAL NOT NULL, channel TEXT NOT NULL, purpose TEXT NOT NULL,
        notice_version TEXT NOT NULL, captured_by TEXT NOT NULL, withdrawn_at REAL
    );
    CREATE TABLE opt_outs (subject_id TEXT PRIMARY KEY, at REAL NOT NULL);
    CREATE TABLE audit (
        seq INTEGER PRIMARY KEY, time REAL NOT NULL, action TEXT NOT NULL, subject_id TEXT, outcome TEXT NOT NULL,
        actor TEXT NOT NULL, details TEXT NOT NULL, prev_hash TEXT NOT NULL, hash TEXT NOT NULL
    );
    """,
]


class SQLiteStore:
    """Voiceprints, consent, opt-outs and the audit trail in one SQLite file."""

    def __init__(self, path: str | os.PathLike[str], *, keyring: KeyRing | None = None) -> None:
        self.path = Path(path)
        if not self.path.parent.is_dir():
            raise StoreError(f"directory {self.path.parent} does not exist; create it or choose another --store path")
        self._check_header()
        self.keyring = keyring or load_keyring()
        self._local = threading.local()
        self._connections: list[sqlite3.Connection] = []
        self._lock = threading.Lock()
        self._migrate()
        self._check_key()

    # -- connections -------------------------------------------------------------------
    def _check_header(self) -> None:
        if self.path.is_file() and self.path.stat().st_size > 0:
            with open(self.path, "rb") as fh:
                if fh.read(16) != SQLITE_MAGIC:
                    raise StoreCorruptError(
                        f"{self.path} is not a voiceauth database (not SQLite); check the --store path"
                    )

    def _conn(self) -> sqlite3.Connection:
        con = getattr(self._local, "con", None)
        if con is None:
            try:
                con = sqlite3.connect(self.path, timeout=30.0, isolation_level=None, check_same_thread=False)
                con.execute("PRAGMA busy_timeout = 30000")
                con.execute("PRAGMA journal_mode = WAL")
                con.execute("PRAGMA synchronous = FULL")
                con.execute("PRAGMA secure_delete = ON")
            except sqlite3.DatabaseError as exc:
                raise StoreCorruptError(f"{self.path} is not a usable database ({exc}); check the --store path") from exc
            self._local.con = con
            with self._lock:
                self._connections.append(con)
        return con

    @contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        con = self._conn()
        con.execute("BEGIN IMMEDIATE")
        try:
            yield con
        except BaseException:
            con.execute("ROLLBACK")
            raise
        con.execute("COMMIT")

    def _query(self, sql: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        try:
            return self._conn().execute(sql, params).fetchall()
        except sqlite3.DatabaseError as exc:
            raise StoreCorruptError(f"cannot read {self.path}: {exc}") from exc

    def _migrate(self) -> None:
        try:
            with self._write() as con:
                version = con.execute("PRAGMA user_version").fetchone()[0]
                app = con.execute("PRAGMA application_id").fetchone()[0]
                tables = con.execute("SELECT count(*) FROM sqlite_master").fetchone()[0]
                if app != APPLICATION_ID and (tables or version):
                    raise StoreCorruptError(
                        f"{self.path} is a SQLite database of another application; choose another --store path"
                    )
                for number, script in enumerate(MIGRATIONS[version:], start=version + 1):
                    for statement in script.split(";"):
                        if statement.strip():
                            con.execute(statement)
                    con.execute(f"PRAGMA user_version = {number}")
                con.execute(f"PRAGMA application_id = {APPLICATION_ID}")
        except sqlite3.DatabaseError as exc:
            raise StoreCorruptError(f"{self.path} is not a voiceauth database ({exc}); check the --store path") from exc

    # -- keys ------------------------------------------------------------------------------
    def _meta(self, con: sqlite3.Connection, key: str) -> str | None:
        row = con.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return None if row is None else row[0]

    def _set_meta(self, con: sqlite3.Connection, key: str, value: str) -> None:
        con.execute("INSERT INTO meta (key, value) VALUES (?, ?) ON CONFLICT(key) DO UPDATE SET value = excluded.value",
                    (key, value))

    def _check_key(self) -> None:
        with self._write() as con:
            current = self._meta(con, "current_key_id")
            if current is None:
                self._write_keycheck(con, self.keyring.current)
                return
        if not self.keyring.has(current):
            raise KeyMissingError(
                f"the encryption key does not match the one {self.path.name} was written with (key id {current}; "
                f"loaded: {', '.join(self.keyring.ids)}); set VOICEAUTH_KEY / VOICEAUTH_KEY_FILE to the right key"
            )
        blob = self._query("SELECT value FROM meta WHERE key = ?", (f"keycheck:{current}",))
        self.keyring.decrypt(current, bytes.fromhex(blob[0][0]), keycheck_aad(current), what="the key check value")

    def _write_keycheck(self, con: sqlite3.Connection, kid: str) -> None:
        _, blob = self.keyring.encrypt(KEYCHECK_PLAINTEXT, keycheck_aad(kid), kid)
        con.execute("DELETE FROM meta WHERE key LIKE 'keycheck:%'")
        self._set_meta(con, f"keycheck:{kid}", blob.hex())
        self._set_meta(con, "current_key_id", kid)

    def _current_key(self, con: sqlite3.Connection) -> str:
        kid = self._meta(con, "current_key_id") or self.keyring.current
        if not self.keyring.has(kid):
            raise KeyMissingError(f"key {kid} that {self.path.name} uses is not loaded; set VOICEAUTH_KEY_FILE")
        return kid

    # -- audit -------------------------------------------------------------------------------
    def _append_audit(self, con: sqlite3.Connection, record: AuditRecord) -> None:
        head = self._meta(con, "audit_head")
        last = None
        if head:
            seq, digest = head.split(":")
            last = (int(seq), digest)
        row = next_audit_row(last, record)
        con.execute("INSERT INTO audit VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)", row)
        self._set_meta(con, "audit_head", f"{row[0]}:{row[-1]}")

    def audit(self, event: AuditRecord) -> None:
        with self._write() as con:
            self._append_audit(con, event)

    def audit_events(self) -> list[AuditEvent]:
        rows = self._query("SELECT seq, time, action, subject_id, outcome, actor, details, prev_hash, hash "
                           "FROM audit ORDER BY rowid")
        return [row_to_event(r) for r in rows]

    def verify_audit(self) -> AuditCheck:
        head = self._query("SELECT value FROM meta WHERE key = 'audit_head'")
        parsed = None
        if head:
            seq, digest = head[0][0].split(":")
            parsed = (int(seq), digest)
        return verify_chain(self.audit_events(), parsed)

    # -- voiceprints ----------------------------------------------------------------------------
    def _get(self, con: sqlite3.Connection, namespace: Namespace, subject_id: str) -> Voiceprint | None:
        row = con.execute(f"SELECT {VOICEPRINT_COLUMNS} FROM voiceprints WHERE namespace = ? AND subject_id = ?",
                          (namespace.value, subject_id)).fetchone()
        return None if row is None else row_to_voiceprint(self.keyring, row)

    def get(self, namespace: Namespace, subject_id: str) -> Voiceprint | None:
        try:
            return self._get(self._conn(), namespace, subject_id)
        except sqlite3.DatabaseError as exc:
            raise StoreCorruptError(f"cannot read {self.path}: {exc}") from exc

    def upsert(self, namespace: Namespace, subject_id: str, build: Builder, *, event: AuditRecord,
               consent: Consent | None = None) -> Voiceprint:
        with self._write() as con:
            vp = build(self._get(con, namespace, subject_id))
            con.execute(f"INSERT OR REPLACE INTO voiceprints ({VOICEPRINT_COLUMNS}) VALUES (?,?,?,?,?,?,?,?,?,?,?,?)",
                        voiceprint_params(self.keyring, vp, self._current_key(con)))
            if consent is not None:
                con.execute("INSERT OR REPLACE INTO consent VALUES (?, ?, ?, ?, ?, ?, ?)",
                            (subject_id, consent.captured_at, consent.channel, consent.purpose,
                             consent.notice_version, consent.captured_by, consent.withdrawn_at))
                self._append_audit(con, AuditRecord("consent", subject_id, "recorded", consent.captured_by,
                                                    {"channel": consent.channel, "notice": consent.notice_version}))
            self._append_audit(con, event)
        return vp

    def _erase(self, con: sqlite3.Connection, namespace: Namespace, subject_id: str) -> bool:
        cur = con.execute("DELETE FROM voiceprints WHERE namespace = ? AND subject_id = ?",
                          (namespace.value, subject_id))
        return cur.rowcount > 0

    def _truncate_wal(self) -> None:
        """Fold the WAL into the database and truncate it, so erased pages leave no copy behind."""
        for _ in range(50):
            busy = self._conn().execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()[0]
            if not busy:
                return
            time.sleep(0.05)

    def delete(self, namespace: Namespace, subject_id: str, *, event: AuditRecord) -> bool:
        with self._write() as con:
            removed = self._erase(con, namespace, subject_id)
            self._append_audit(con, event if removed else AuditRecord(
                event.action, event.subject_id, "not_found", event.actor, event.details))
        self._truncate_wal()
        return removed

    def embeddings(self, namespace: Namespace, model_id: str) -> tuple[list[str], np.ndarray]:
        rows = self._query(f"SELECT {VOICEPRINT_COLUMNS} FROM voiceprints WHERE namespace = ? AND model_id = ? "
                           "AND complete = 1 ORDER BY subject_id", (namespace.value, model_id))
        prints = [row_to_voiceprint(self.keyring, r) for r in rows]
        if not prints:
            return [], np.zeros((0, 0), dtype=np.float32)
        return [p.subject_id for p in prints], np.stack([p.embedding for p in prints])

    def list(self, namespace: Namespace = Namespace.CUSTOMER) -> list[VoiceprintInfo]:
        rows = self._query(f"SELECT {INFO_COLUMNS} FROM voiceprints WHERE namespace = ? ORDER BY subject_id",
                           (namespace.value,))
        return [row_to_info(r) for r in rows]

    def touch(self, namespace: Namespace, subject_id: str, when: float) -> None:
        with self._write() as con:
            con.execute("UPDATE voiceprints SET last_used_at = ? WHERE namespace = ? AND subject_id = ?",
                        (when, namespace.value, subject_id))

    # -- consent and opt-out --------------------------------------------------------------------
    def consent(self, subject_id: str) -> Consent | None:
        rows = self._query("SELECT captured_at, channel, purpose, notice_version, captured_by, withdrawn_at "
                           "FROM consent WHERE subject_id = ?", (subject_id,))
        return Consent(*rows[0]) if rows else None

    def opt_out(self, subject_id: str, *, event: AuditRecord) -> None:
        now = time.time()
        with self._write() as con:
            self._erase(con, Namespace.CUSTOMER, subject_id)
            con.execute("UPDATE consent SET withdrawn_at = ? WHERE subject_id = ?", (now, subject_id))
            con.execute("INSERT OR REPLACE INTO opt_outs VALUES (?, ?)", (subject_id, now))
            self._append_audit(con, event)
        self._truncate_wal()

    def clear_opt_out(self, subject_id: str, *, event: AuditRecord) -> None:
        with self._write() as con:
            con.execute("DELETE FROM opt_outs WHERE subject_id = ?", (subject_id,))
            self._append_audit(con, event)

    def is_opted_out(self, subject_id: str) -> bool:
        return bool(self._query("SELECT 1 FROM opt_outs WHERE subject_id = ?", (subject_id,)))

    # -- retention and keys ------------------------------------------------------------------------
    def purge_unused(self, older_than: float, *, actor: str = "system") -> list[str]:
        with self._write() as con:
            ids = [r[0] for r in con.execute(
                "SELECT subject_id FROM voiceprints WHERE namespace = ? AND COALESCE(last_used_at, updated_at) < ? "
                "ORDER BY subject_id", (Namespace.CUSTOMER.value, older_than))]
            for subject_id in ids:
                self._erase(con, Namespace.CUSTOMER, subject_id)
                self._append_audit(con, AuditRecord("purge", subject_id, "purged", actor,
                                                    {"older_than": round(older_than)}))
        if ids:
            self._truncate_wal()
        return ids

    def rotate_key(self, *, actor: str = "system") -> str:
        """Re-encrypt everything under a new key in one transaction.

        The new key is saved next to the old one before any row changes; rows move in a
        single transaction; only after it commits is the old key forgotten. A crash at any
        point leaves every voiceprint readable under exactly one key that is still loaded.
        """
        new_kid = self.keyring.stage_new_key()
        with self._write() as con:
            rows = con.execute(f"SELECT {VOICEPRINT_COLUMNS} FROM voiceprints").fetchall()
            for row in rows:
                vp = row_to_voiceprint(self.keyring, row)
                con.execute(f"INSERT OR REPLACE INTO voiceprints ({VOICEPRINT_COLUMNS}) VALUES (?,?,?,?,?,?,?,?,?,?,?,?)",
                            voiceprint_params(self.keyring, vp, new_kid))
            self._write_keycheck(con, new_kid)
            self._append_audit(con, AuditRecord("key_rotation", None, "rotated", actor,
                                                {"voiceprints": len(rows), "key_id": new_kid}))
        self._truncate_wal()
        self.keyring.retire_all_but(new_kid)
        return new_kid

    # -- integrity ----------------------------------------------------------------------------------
    def integrity_check(self) -> bool:
        """SQLite's own check, every voiceprint decrypts, and the audit chain holds."""
        if self._query("PRAGMA integrity_check")[0][0] != "ok":
            return False
        try:
            for row in self._query(f"SELECT {VOICEPRINT_COLUMNS} FROM voiceprints"):
                row_to_voiceprint(self.keyring, row)
        except (TamperedError, KeyMissingError):
            return False
        return self.verify_audit().ok

    def close(self) -> None:
        with self._lock:
            for con in self._connections:
                try:
                    con.close()
                except sqlite3.Error:
                    pass
            self._connections.clear()
        self._local = threading.local()

    def __repr__(self) -> str:
        return f"SQLiteStore({str(self.path)!r})"
