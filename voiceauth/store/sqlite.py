"""The embedded store: one SQLite file, voiceprints encrypted with AES-256-GCM.

- WAL journal and ``BEGIN IMMEDIATE`` write transactions with a 30 s busy timeout, so
  threads (a connection each) and several processes can share one file; each write
  commits together with its audit event, or neither is written.
- The file (and so its -wal and -shm files) is created with mode 0600.
- ``secure_delete`` overwrites erased rows with zeros. Erasing operations then fold the WAL
  into the file and truncate it, waiting up to 2 s for readers; if a reader still holds the
  WAL, they raise :class:`ErasureIncompleteError` (the erasure itself is committed) rather
  than claim the ciphertext is gone. :meth:`SQLiteStore.checkpoint` finishes the job later.
- Each ciphertext is bound to its store (a random store id), its row (namespace, subject,
  model and enrolment state) and the row's version as AES-GCM associated data. The version
  counter lives in its own table and moves on at every write and erasure of the row, so a
  ciphertext copied elsewhere, an edited row, or an old row restored from a backup fails.
- A key check value (the current key id and a constant encrypted under it) makes opening
  with the wrong key a :class:`KeyMissingError`, not a flood of :class:`TamperedError`.
- The schema is versioned (``schema_version`` in the meta table) and migrated on open.
"""

from __future__ import annotations

import os
import sqlite3
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any

from voiceauth.errors import ErasureIncompleteError, StoreCorruptError, StoreError
from voiceauth.store.crypto import KeyRing, load_keyring
from voiceauth.store.sql import SQLStore
from voiceauth.store.trials import SQLITE_MIGRATION, SQLITE_TRAJECTORY_MIGRATION

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
    # 2: ciphertexts bound to the store id and a per-voiceprint version counter that outlives the row
    (
        "ALTER TABLE voiceprints ADD COLUMN version INTEGER NOT NULL DEFAULT 0",
        """CREATE TABLE voiceprint_versions (
            namespace TEXT NOT NULL, subject_id TEXT NOT NULL, version INTEGER NOT NULL,
            PRIMARY KEY (namespace, subject_id))""",
    ),
    # 3: in-domain trials and calibration versions (voiceauth.store.trials)
    SQLITE_MIGRATION,
    # 4: live call trajectories on call trials (the accept margin's in-domain evidence)
    SQLITE_TRAJECTORY_MIGRATION,
]
SCHEMA_VERSION = len(MIGRATIONS)
OLDEST_READABLE = 2
"""Stores of schema 1 (no store id or row version in the associated data) are refused."""
ERASE_WAIT_MS = 2_000
"""How long an erasure waits for readers to let go of the WAL before reporting a leftover copy."""


class SQLiteStore(SQLStore):
    """Voiceprints, consent, opt-outs and the audit trail in one SQLite file.

    Safe to share between threads (one connection per thread) and processes (SQLite locks).
    """

    DRIVER_ERROR = sqlite3.Error

    def __init__(self, path: str | os.PathLike[str], *, keyring: KeyRing | None = None, create: bool = True) -> None:
        self.path = Path(path)
        if not create and (not self.path.is_file() or self.path.stat().st_size == 0):
            raise StoreError(f"no store at {self.path}; check --store (or VOICEAUTH_STORE)")
        if not self.path.parent.is_dir():
            raise StoreError(
                f"cannot create the store {self.path}: directory {self.path.parent} does not exist; "
                "create it or choose another --store path"
            )
        if self.path.is_dir():
            raise StoreError(f"the store path {self.path} is a directory; pass a file path with --store")
        self._check_header()
        super().__init__(str(self.path))
        if self.path.exists():
            self._identify()
        self.keyring = keyring if keyring is not None else load_keyring(create=create)
        try:
            self._create_private()
            self._enable_wal(self._conn())
            self._migrate()
            with self._write() as con:  # under the write lock, so no rotation is half-way
                self._check_key(con)
            with self._write() as con:
                self._seal_new_trail(con)
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

    def _create_private(self) -> None:
        """A new store file is created 0600 (SQLite gives its -wal and -shm files the same mode)."""
        with suppress(FileExistsError):
            os.close(os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))

    def _connect(self) -> sqlite3.Connection:
        try:
            con = sqlite3.connect(self.path, timeout=BUSY_TIMEOUT_MS / 1000, isolation_level=None,
                                  check_same_thread=False)
            con.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
            con.execute("PRAGMA secure_delete = ON")
            con.execute("PRAGMA synchronous = FULL")
            con.execute("PRAGMA journal_size_limit = 0")
        except sqlite3.DatabaseError as exc:
            raise self._corrupt(exc) from exc
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
                # one statement, so one snapshot: a first open by another process may commit
                # between two reads, leaving its tables without (yet, as seen) its application id
                app, tables = con.execute(
                    "SELECT (SELECT application_id FROM pragma_application_id),"
                    " (SELECT count(*) FROM sqlite_master)"
                ).fetchone()
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

    def _upsert(self, table: str, columns: str, key: str) -> str:
        return f"INSERT OR REPLACE INTO {table} ({columns}) VALUES ({', '.join('?' * len(columns.split(',')))})"

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
            if 0 < version < OLDEST_READABLE:
                raise StoreError(
                    f"{self.path} was written by an older voiceauth (schema {version}) whose voiceprints are not "
                    "bound to their store; it cannot be upgraded: move it away and enrol into a new store"
                )
            for number in range(version + 1, SCHEMA_VERSION + 1):
                for statement in MIGRATIONS[number - 1]:
                    con.execute(statement)
                self._set_meta(con, "schema_version", str(number))
                con.execute(f"PRAGMA user_version = {number}")
            con.execute(f"PRAGMA application_id = {APPLICATION_ID}")

    # -- maintenance -------------------------------------------------------------------------------
    def _storage_ok(self, con: sqlite3.Connection) -> bool:
        return bool(con.execute("PRAGMA integrity_check").fetchone()[0] == "ok")

    def _scrub(self, erased: tuple[str, ...] = ()) -> None:
        """After an erasure: fold the WAL (zeroed pages included) into the file and truncate it,
        waiting briefly for readers; if it cannot, :class:`ErasureIncompleteError` for ``erased``."""
        if self._checkpoint(ERASE_WAIT_MS) or not erased:
            return
        raise ErasureIncompleteError(
            f"the voiceprint(s) of {', '.join(erased)} are deleted from the database, but a copy of their ciphertext "
            f"remains in {self.path} or its -wal file while another connection (a reader) holds a read "
            "transaction on the store; once it closes, run a checkpoint (SQLiteStore.checkpoint()) or repeat the "
            "erasure to remove it",
            erased,
        )

    def _checkpoint(self, wait_ms: int) -> bool:
        con = self._conn()
        try:
            con.execute(f"PRAGMA busy_timeout = {int(wait_ms)}")
            busy, _, _ = con.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
        except sqlite3.OperationalError as exc:
            if "locked" in str(exc) or "busy" in str(exc):
                return False
            raise self._corrupt(exc) from exc
        finally:
            con.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
        return not busy

    def checkpoint(self) -> bool:
        """Fold the WAL into the database file and truncate it, waiting for readers (up to the busy
        timeout); True when it completed, so no erased voiceprint survives in either file."""
        return self._checkpoint(BUSY_TIMEOUT_MS)
