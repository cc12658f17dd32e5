"""The shared store: PostgreSQL via psycopg 3, for many processes and machines at once.

Same semantics as the SQLite store (and the same contract tests):

- voiceprints are AES-256-GCM ciphertext bound by AAD to namespace, subject, model and
  enrolment state (:mod:`voiceauth.store.common`); keys come from :mod:`voiceauth.crypto`;
- every write commits in one transaction together with its hash-chained audit event;
- the schema is versioned in ``voiceauth_schema`` and migrated on open under an advisory
  lock, so several workers starting together migrate once.

Concurrency: each thread gets its own connection. ``upsert`` serialises writers of one
subject with a transaction-scoped advisory lock plus ``SELECT ... FOR UPDATE``; every
audit append takes one chain-wide advisory lock, held until its transaction commits, so
concurrent writers on any number of machines keep one linear chain. Key rotation locks
the current-key row exclusively and writers take it shared, so no voiceprint is written
under a retired key.

Tables live in the connection's ``search_path`` (``public`` by default); to keep them in
their own schema, add ``?options=-csearch_path%3Dvoiceauth`` to the URL.

Erasure: ``delete``, ``opt_out`` and ``purge_unused`` DELETE the row in the same transaction
as the audit event. PostgreSQL has no ``secure_delete``: the dead tuple's bytes stay in the
table file until VACUUM reclaims and later writes overwrite the page, and copies live on
in WAL, WAL archives, replicas and backups. What a bank must do: run (auto)VACUUM on
``voiceprints`` (:meth:`PostgresStore.vacuum`; ``VACUUM FULL`` rewrites the table but locks
it), keep the data directory, WAL archive and backups on encrypted storage with bounded
retention. What limits the damage meanwhile: any leftover copy is only AES-GCM ciphertext,
and :meth:`PostgresStore.rotate_key` re-encrypts everything under a new key and forgets
the old one, after which every older copy is unreadable (crypto-shredding).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from typing import TYPE_CHECKING, Any

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
from voiceauth.store.sqlite import _check_built, _parse_head  # shared helpers; candidates for common.py

if TYPE_CHECKING:
    import psycopg

MIGRATION_LOCK = 0x5641555401  # pg_advisory_xact_lock keys: "VAUT" + 1, + 2
AUDIT_LOCK = 0x5641555402
AUDIT_COLUMNS = "seq, time, action, subject_id, outcome, actor, details, prev_hash, hash"
_VP_PLACEHOLDERS = ", ".join(["%s"] * len(VOICEPRINT_COLUMNS.split(",")))
_UPSERT_VOICEPRINT = (
    f"INSERT INTO voiceprints ({VOICEPRINT_COLUMNS}) VALUES ({_VP_PLACEHOLDERS}) "
    "ON CONFLICT (namespace, subject_id) DO UPDATE SET "
    + ", ".join(f"{c.strip()} = EXCLUDED.{c.strip()}" for c in VOICEPRINT_COLUMNS.split(",")[2:])
)

MIGRATIONS: list[str] = [
    # 1: initial schema
    """
    CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
    CREATE TABLE voiceprints (
        namespace TEXT NOT NULL, subject_id TEXT NOT NULL, model_id TEXT NOT NULL, key_id TEXT NOT NULL,
        blob BYTEA NOT NULL, speech_s DOUBLE PRECISION NOT NULL, recordings INTEGER NOT NULL,
        complete INTEGER NOT NULL, created_at DOUBLE PRECISION NOT NULL, updated_at DOUBLE PRECISION NOT NULL,
        last_used_at DOUBLE PRECISION, meta TEXT NOT NULL DEFAULT '{}',
        PRIMARY KEY (namespace, subject_id)
    );
    CREATE INDEX voiceprints_model ON voiceprints (namespace, model_id) WHERE complete = 1;
    CREATE TABLE consent (
        subject_id TEXT PRIMARY KEY, captured_at DOUBLE PRECISION NOT NULL, channel TEXT NOT NULL,
        purpose TEXT NOT NULL, notice_version TEXT NOT NULL, captured_by TEXT NOT NULL,
        withdrawn_at DOUBLE PRECISION
    );
    CREATE TABLE opt_outs (subject_id TEXT PRIMARY KEY, at DOUBLE PRECISION NOT NULL);
    CREATE TABLE audit (
        seq BIGINT PRIMARY KEY, time DOUBLE PRECISION NOT NULL, action TEXT NOT NULL, subject_id TEXT,
        outcome TEXT NOT NULL, actor TEXT NOT NULL, details TEXT NOT NULL, prev_hash TEXT NOT NULL,
        hash TEXT NOT NULL
    );
    INSERT INTO meta (key, value) VALUES ('audit_head', '')
    """,
]


def _redact(url: str) -> str:
    """The URL without its password, for error messages."""
    try:
        from psycopg.conninfo import conninfo_to_dict

        parts = conninfo_to_dict(url)
    except Exception:  # noqa: BLE001 - a malformed URL: say nothing about it
        return "the given postgresql:// URL"
    user, host, port, db = (parts.get(k, "") for k in ("user", "host", "port", "dbname"))
    return f"postgresql://{user}@{host}:{port or 5432}/{db}"


class PostgresStore:
    """Voiceprints, consent, opt-outs and the audit trail in a PostgreSQL database."""

    def __init__(self, url: str, *, keyring: KeyRing | None = None) -> None:
        try:
            import psycopg
        except ImportError as exc:
            raise StoreError(
                f"PostgreSQL support needs psycopg ({exc}); install it with: pip install 'voiceauth[scale]'"
            ) from exc
        self._psycopg = psycopg
        self.url = url
        self.where = _redact(url)
        self.keyring = keyring or load_keyring()
        self._local = threading.local()
        self._connections: list[psycopg.Connection[Any]] = []
        self._lock = threading.Lock()
        self._closed = False
        try:
            self._open()
        except BaseException:
            self.close()
            raise

    # -- connections -------------------------------------------------------------------
    def _conn(self) -> psycopg.Connection[Any]:
        if self._closed:
            raise StoreError(f"the store {self.where} is closed; open it again")
        con = getattr(self._local, "con", None)
        if con is None or con.closed:
            try:
                con = self._psycopg.connect(self.url, autocommit=True, connect_timeout=10)
            except self._psycopg.Error as exc:
                raise StoreError(
                    f"cannot connect to {self.where} ({str(exc).strip()}); check the --store URL, that the server "
                    "is running and reachable, and the user's credentials"
                ) from exc
            self._local.con = con
            with self._lock:
                self._connections.append(con)
        return con

    @contextmanager
    def _write(self) -> Iterator[psycopg.Connection[Any]]:
        """One transaction: committed when the block ends, rolled back on any exception."""
        con = self._conn()
        try:
            with con.transaction():
                yield con
        except self._psycopg.errors.UndefinedTable as exc:
            raise StoreCorruptError(f"{self.where} lacks voiceauth tables ({exc}); check the --store URL") from exc
        except self._psycopg.OperationalError as exc:
            raise StoreError(f"lost the connection to {self.where} ({exc}); retry, and check the server") from exc

    def _query(self, sql: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        try:
            return self._conn().execute(sql, params).fetchall()
        except self._psycopg.errors.UndefinedTable as exc:
            raise StoreCorruptError(f"{self.where} lacks voiceauth tables ({exc}); check the --store URL") from exc
        except self._psycopg.OperationalError as exc:
            raise StoreError(f"cannot read {self.where} ({exc}); retry, and check the server") from exc

    def _open(self) -> None:
        """Migrate the schema and check the key, serialised against other processes doing the same."""
        with self._write() as con:
            con.execute("SELECT pg_advisory_xact_lock(%s)", (MIGRATION_LOCK,))
            con.execute("CREATE TABLE IF NOT EXISTS voiceauth_schema "
                        "(version INTEGER PRIMARY KEY, applied_at DOUBLE PRECISION NOT NULL)")
            row = con.execute("SELECT COALESCE(MAX(version), 0) FROM voiceauth_schema").fetchone()
            version = int(row[0]) if row else 0
            if version > len(MIGRATIONS):
                raise StoreError(
                    f"{self.where} has schema version {version}, newer than this voiceauth understands "
                    f"({len(MIGRATIONS)}); upgrade voiceauth"
                )
            if version == 0 and con.execute("SELECT to_regclass('voiceprints')").fetchone() != (None,):
                raise StoreCorruptError(
                    f"{self.where} already has a 'voiceprints' table that voiceauth did not create; use another "
                    "database or schema (?options=-csearch_path%3Dvoiceauth)"
                )
            for number, script in enumerate(MIGRATIONS[version:], start=version + 1):
                for statement in script.split(";"):
                    if statement.strip():
                        con.execute(statement)
                con.execute("INSERT INTO voiceauth_schema VALUES (%s, %s)", (number, time.time()))
            self._check_key(con)

    # -- keys ------------------------------------------------------------------------------
    def _meta(self, con: psycopg.Connection[Any], key: str, lock: str = "") -> str | None:
        row = con.execute(f"SELECT value FROM meta WHERE key = %s {lock}", (key,)).fetchone()
        return None if row is None else str(row[0])

    def _set_meta(self, con: psycopg.Connection[Any], key: str, value: str) -> None:
        con.execute("INSERT INTO meta (key, value) VALUES (%s, %s) "
                    "ON CONFLICT (key) DO UPDATE SET value = EXCLUDED.value", (key, value))

    def _check_key(self, con: psycopg.Connection[Any]) -> None:
        current = self._meta(con, "current_key_id")
        if current is None:
            self._write_keycheck(con, self.keyring.current)
            return
        if not self.keyring.has(current):
            raise KeyMissingError(
                f"the encryption key does not match the one {self.where} was written with (key id {current}; "
                f"loaded: {', '.join(self.keyring.ids)}); set VOICEAUTH_KEY / VOICEAUTH_KEY_FILE to the right key"
            )
        check = self._meta(con, f"keycheck:{current}")
        if check is None:
            raise TamperedError(f"the key check value of {self.where} is missing; restore the store from backup")
        self.keyring.decrypt(current, bytes.fromhex(check), keycheck_aad(current),
                             what=f"the key check value of {self.where}")

    def _write_keycheck(self, con: psycopg.Connection[Any], kid: str) -> None:
        _, blob = self.keyring.encrypt(KEYCHECK_PLAINTEXT, keycheck_aad(kid), kid)
        con.execute("DELETE FROM meta WHERE key LIKE %s", ("keycheck:%",))
        self._set_meta(con, f"keycheck:{kid}", blob.hex())
        self._set_meta(con, "current_key_id", kid)

    def _current_key(self, con: psycopg.Connection[Any]) -> str:
        """The key new ciphertext goes under, held shared so a rotation waits for this write."""
        kid = self._meta(con, "current_key_id", "FOR SHARE") or self.keyring.current
        if not self.keyring.has(kid):
            raise KeyMissingError(
                f"key {kid} that {self.where} uses is not loaded (it was rotated by another process?); "
                "set VOICEAUTH_KEY / VOICEAUTH_KEY_FILE to the current key and restart"
            )
        return kid

    # -- audit -------------------------------------------------------------------------------
    def _append_audit(self, con: psycopg.Connection[Any], record: AuditRecord) -> None:
        """Append after the recorded head under the chain lock (held to commit), and move the head."""
        con.execute("SELECT pg_advisory_xact_lock(%s)", (AUDIT_LOCK,))
        head = _parse_head(self._meta(con, "audit_head"))
        if head is None:
            head = con.execute("SELECT seq, hash FROM audit ORDER BY seq DESC LIMIT 1").fetchone()
        row = next_audit_row(head, record)
        con.execute(f"INSERT INTO audit ({AUDIT_COLUMNS}) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s)", row)
        self._set_meta(con, "audit_head", f"{row[0]}:{row[-1]}")

    def audit(self, event: AuditRecord) -> None:
        with self._write() as con:
            self._append_audit(con, event)

    def audit_events(self) -> list[AuditEvent]:
        return [row_to_event(r) for r in self._query(f"SELECT {AUDIT_COLUMNS} FROM audit ORDER BY seq")]

    def verify_audit(self) -> AuditCheck:
        con = self._conn()
        with con.transaction():  # one snapshot for head and events
            con.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
            head = _parse_head(self._meta(con, "audit_head"))
            events = [row_to_event(r) for r in con.execute(f"SELECT {AUDIT_COLUMNS} FROM audit ORDER BY seq")]
        if head is None and events:
            return AuditCheck(False, len(events), events[-1].seq, "the recorded head of the trail is missing")
        return verify_chain(events, head)

    # -- voiceprints ----------------------------------------------------------------------------
    def _get(
        self, con: psycopg.Connection[Any], namespace: Namespace, subject_id: str, lock: str = ""
    ) -> Voiceprint | None:
        row = con.execute(
            f"SELECT {VOICEPRINT_COLUMNS} FROM voiceprints WHERE namespace = %s AND subject_id = %s {lock}",
            (Namespace(namespace).value, subject_id),
        ).fetchone()
        return None if row is None else row_to_voiceprint(self.keyring, row)

    def get(self, namespace: Namespace, subject_id: str) -> Voiceprint | None:
        rows = self._query(f"SELECT {VOICEPRINT_COLUMNS} FROM voiceprints WHERE namespace = %s AND subject_id = %s",
                           (Namespace(namespace).value, subject_id))
        return row_to_voiceprint(self.keyring, rows[0]) if rows else None

    def upsert(self, namespace: Namespace, subject_id: str, build: Builder, *, event: AuditRecord,
               consent: Consent | None = None) -> Voiceprint:
        namespace = Namespace(namespace)
        with self._write() as con:
            kid = self._current_key(con)
            # the advisory lock also serialises two first enrolments, when there is no row to lock yet
            con.execute("SELECT pg_advisory_xact_lock(hashtextextended(%s, 0))", (f"{namespace.value}|{subject_id}",))
            vp = build(self._get(con, namespace, subject_id, "FOR UPDATE"))
            _check_built(vp, namespace, subject_id)
            con.execute(_UPSERT_VOICEPRINT, voiceprint_params(self.keyring, vp, kid))
            if consent is not None:
                con.execute(
                    "INSERT INTO consent VALUES (%s, %s, %s, %s, %s, %s, %s) ON CONFLICT (subject_id) DO UPDATE SET "
                    "captured_at = EXCLUDED.captured_at, channel = EXCLUDED.channel, purpose = EXCLUDED.purpose, "
                    "notice_version = EXCLUDED.notice_version, captured_by = EXCLUDED.captured_by, "
                    "withdrawn_at = EXCLUDED.withdrawn_at",
                    (subject_id, consent.captured_at, consent.channel, consent.purpose, consent.notice_version,
                     consent.captured_by, consent.withdrawn_at),
                )
                self._append_audit(con, AuditRecord("consent", subject_id, "recorded", consent.captured_by,
                                                    {"channel": consent.channel, "notice": consent.notice_version}))
            self._append_audit(con, event)
        return vp

    def _erase(self, con: psycopg.Connection[Any], namespace: Namespace, subject_id: str) -> bool:
        cur = con.execute("DELETE FROM voiceprints WHERE namespace = %s AND subject_id = %s",
                          (Namespace(namespace).value, subject_id))
        return cur.rowcount > 0

    def delete(self, namespace: Namespace, subject_id: str, *, event: AuditRecord) -> bool:
        """Erase the voiceprint (see the module docstring on VACUUM, WAL and backups)."""
        with self._write() as con:
            removed = self._erase(con, namespace, subject_id)
            self._append_audit(con, event if removed else AuditRecord(
                event.action, event.subject_id, "not_found", event.actor, event.details))
        return removed

    def embeddings(self, namespace: Namespace, model_id: str) -> tuple[list[str], np.ndarray]:
        rows = self._query(f"SELECT {VOICEPRINT_COLUMNS} FROM voiceprints WHERE namespace = %s AND model_id = %s "
                           "AND complete = 1 ORDER BY subject_id", (Namespace(namespace).value, model_id))
        return rows_to_matrix(self.keyring, rows, model_id, str(self.where))

    def list(self, namespace: Namespace = Namespace.CUSTOMER) -> list[VoiceprintInfo]:
        rows = self._query(f"SELECT {INFO_COLUMNS} FROM voiceprints WHERE namespace = %s ORDER BY subject_id",
                           (Namespace(namespace).value,))
        return [row_to_info(r) for r in rows]

    def touch(self, namespace: Namespace, subject_id: str, when: float) -> None:
        with self._write() as con:
            con.execute("UPDATE voiceprints SET last_used_at = %s WHERE namespace = %s AND subject_id = %s",
                        (float(when), Namespace(namespace).value, subject_id))

    # -- consent and opt-out --------------------------------------------------------------------
    def consent(self, subject_id: str) -> Consent | None:
        rows = self._query("SELECT captured_at, channel, purpose, notice_version, captured_by, withdrawn_at "
                           "FROM consent WHERE subject_id = %s", (subject_id,))
        return Consent(*rows[0]) if rows else None

    def opt_out(self, subject_id: str, *, event: AuditRecord) -> None:
        now = time.time()
        with self._write() as con:
            self._erase(con, Namespace.CUSTOMER, subject_id)
            con.execute("UPDATE consent SET withdrawn_at = %s WHERE subject_id = %s AND withdrawn_at IS NULL",
                        (now, subject_id))
            con.execute("INSERT INTO opt_outs VALUES (%s, %s) ON CONFLICT (subject_id) DO UPDATE SET at = EXCLUDED.at",
                        (subject_id, now))
            self._append_audit(con, event)

    def clear_opt_out(self, subject_id: str, *, event: AuditRecord) -> None:
        with self._write() as con:
            con.execute("DELETE FROM opt_outs WHERE subject_id = %s", (subject_id,))
            self._append_audit(con, event)

    def is_opted_out(self, subject_id: str) -> bool:
        return bool(self._query("SELECT 1 FROM opt_outs WHERE subject_id = %s", (subject_id,)))

    # -- retention and keys ------------------------------------------------------------------------
    def purge_unused(self, older_than: float, *, actor: str = "system") -> list[str]:
        with self._write() as con:
            ids = [str(r[0]) for r in con.execute(
                "SELECT subject_id FROM voiceprints WHERE namespace = %s AND COALESCE(last_used_at, updated_at) < %s "
                "ORDER BY subject_id FOR UPDATE", (Namespace.CUSTOMER.value, float(older_than))).fetchall()]
            for subject_id in ids:
                self._erase(con, Namespace.CUSTOMER, subject_id)
                self._append_audit(con, AuditRecord("purge", subject_id, "purged", actor,
                                                    {"older_than": round(float(older_than))}))
        return ids

    def rotate_key(self, *, actor: str = "system") -> str:
        """Re-encrypt everything under a new key in one transaction, then forget the old key.

        The new key is saved before any row changes and the old one forgotten only after
        the commit, so every voiceprint stays readable under a loaded key. Other processes
        must be given the new key (VOICEAUTH_KEY / the key file) before their next write.
        """
        new_kid = self.keyring.stage_new_key()
        with self._write() as con:
            old = self._meta(con, "current_key_id", "FOR UPDATE") or self.keyring.current
            if new_kid == old:
                raise StoreError(f"the new key is the key this store already uses ({old}); pass a different key")
            rows = con.execute(f"SELECT {VOICEPRINT_COLUMNS} FROM voiceprints FOR UPDATE").fetchall()
            old_ids = {old} | {str(row[3]) for row in rows}
            for row in rows:
                vp = row_to_voiceprint(self.keyring, row)
                con.execute(_UPSERT_VOICEPRINT, voiceprint_params(self.keyring, vp, new_kid))
            self._write_keycheck(con, new_kid)
            self._append_audit(con, AuditRecord("key_rotation", None, "rotated", actor,
                                                {"voiceprints": len(rows), "key_id": new_kid, "old_key_id": old}))
        self.keyring.retire(new_kid, old_ids)
        return new_kid

    # -- maintenance ----------------------------------------------------------------------------------
    def vacuum(self, *, full: bool = False) -> None:
        """VACUUM the voiceprint table so erased rows' space is reclaimed (FULL rewrites it, under a lock)."""
        self._conn().execute("VACUUM (FULL) voiceprints" if full else "VACUUM voiceprints")

    def integrity_check(self) -> bool:
        """The key check value, every voiceprint and the audit chain hold (PostgreSQL checks its own pages)."""
        kid = self._query("SELECT value FROM meta WHERE key = 'current_key_id'")
        try:
            if not kid:
                return False
            check = self._query("SELECT value FROM meta WHERE key = %s", (f"keycheck:{kid[0][0]}",))
            if not check:
                return False
            self.keyring.decrypt(kid[0][0], bytes.fromhex(check[0][0]), keycheck_aad(kid[0][0]),
                                 what="the key check value")
            for row in self._query(f"SELECT {VOICEPRINT_COLUMNS} FROM voiceprints"):
                row_to_voiceprint(self.keyring, row)
        except (TamperedError, KeyMissingError, ValueError):
            return False
        return self.verify_audit().ok

    def close(self) -> None:
        with self._lock:
            self._closed = True
            for con in self._connections:
                with suppress(self._psycopg.Error):
                    con.close()
            self._connections.clear()
        self._local = threading.local()

    def __enter__(self) -> PostgresStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"PostgresStore({self.where!r})"
