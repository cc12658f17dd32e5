"""The shared store: PostgreSQL via psycopg 3, for many processes and machines at once.

Same semantics as the SQLite store (and the same contract tests):

- voiceprints are AES-256-GCM ciphertext bound by AAD to the store id, namespace, subject,
  model, enrolment state and the row's version (a counter in ``voiceprint_versions`` that
  moves on at every write and erasure, so an old row restored from a backup fails)
  (:mod:`voiceauth.store.common`); keys come from :mod:`voiceauth.store.crypto`;
- every write commits in one transaction together with its hash-chained audit event;
- the schema is versioned in ``voiceauth_schema`` and migrated on open under an advisory
  lock, so several workers starting together migrate once.

Concurrency: each thread gets its own connection. ``upsert`` serialises writers of one
subject with a transaction-scoped advisory lock plus ``SELECT ... FOR UPDATE``; every
audit append takes one chain-wide advisory lock, held until its transaction commits, so
concurrent writers on any number of machines keep one linear chain. Key rotation locks
the current-key row exclusively and writers take it shared, so no voiceprint is written
under a replaced key.

Tables live in the connection's ``search_path`` (``public`` by default); to keep them in
their own schema, add ``?options=-csearch_path%3Dvoiceauth`` to the URL.

TLS: libpq options pass through the URL (``sslmode``, ``sslrootcert``, ``sslcert``,
``sslkey``...) or its ``PG*`` environment variables. libpq's default, ``sslmode=prefer``,
encrypts only if the server offers it and verifies no certificate, so an attacker on the
path can strip it. A connection to any host other than a Unix socket or a loopback address
is therefore refused unless its sslmode is ``require``, ``verify-ca`` or ``verify-full``
(use ``verify-full`` with ``sslrootcert``), and refused again if it ends up unencrypted;
``require_tls=False`` or ``VOICEAUTH_PG_REQUIRE_TLS=0`` lifts this on a network you trust.

Erasure: ``delete``, ``opt_out`` and ``purge_unused`` DELETE the row in the same transaction
as the audit event. PostgreSQL has no ``secure_delete``: the dead tuple's bytes stay in the
table file until VACUUM reclaims and later writes overwrite the page, and copies live on
in WAL, WAL archives, replicas and backups. What a bank must do: run (auto)VACUUM on
``voiceprints`` (:meth:`PostgresStore.vacuum`; ``VACUUM FULL`` rewrites the table but locks
it), keep the data directory, WAL archive and backups on encrypted storage with bounded
retention. What limits the damage meanwhile: any leftover copy is only AES-GCM ciphertext,
and :meth:`PostgresStore.rotate_key` re-encrypts everything under a new key; once the old
key is retired (:meth:`voiceauth.store.crypto.KeyRing.retire_unused`), every older copy is
unreadable (crypto-shredding). A URL's password never appears in errors or reprs.
"""

from __future__ import annotations

import ipaddress
import os
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

from voiceauth.errors import StoreCorruptError, StoreError
from voiceauth.store.base import Namespace
from voiceauth.store.common import redact
from voiceauth.store.crypto import KeyRing, load_keyring
from voiceauth.store.sql import SQLStore
from voiceauth.store.trials import POSTGRES_MIGRATION, POSTGRES_TRAJECTORY_MIGRATION

if TYPE_CHECKING:
    import psycopg

MIGRATION_LOCK = 0x5641555401  # pg_advisory_xact_lock keys: "VAUT" + 1, + 2
AUDIT_LOCK = 0x5641555402

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
    # 2: ciphertexts bound to the store id and a per-voiceprint version counter that outlives the row
    """
    ALTER TABLE voiceprints ADD COLUMN version BIGINT NOT NULL DEFAULT 0;
    CREATE TABLE voiceprint_versions (
        namespace TEXT NOT NULL, subject_id TEXT NOT NULL, version BIGINT NOT NULL,
        PRIMARY KEY (namespace, subject_id)
    )
    """,
    # 3: in-domain trials and calibration versions (voiceauth.store.trials)
    POSTGRES_MIGRATION,
    # 4: live call trajectories on call trials (the accept margin's in-domain evidence)
    POSTGRES_TRAJECTORY_MIGRATION,
]
OLDEST_READABLE = 2
"""Stores of schema 1 (no store id or row version in the associated data) are refused."""


def _redact(url: str) -> str:
    """The URL without its password, for error messages, reprs and logs."""
    try:
        from psycopg.conninfo import conninfo_to_dict

        parts = conninfo_to_dict(url)
    except Exception:  # noqa: BLE001 - a malformed URL: show it masked
        return redact(url, url)
    user, host, port, db = (parts.get(k, "") for k in ("user", "host", "port", "dbname"))
    return f"postgresql://{user}@{host}:{port or 5432}/{db}"


def _check_url(url: str, where: str) -> None:
    """A malformed URL is refused before any connection, without repeating the driver's message
    (which quotes the URL, password included)."""
    from psycopg.conninfo import conninfo_to_dict

    try:
        conninfo_to_dict(url)
    except Exception:  # noqa: BLE001 - any parse failure
        raise StoreError(
            f"{where} is not a valid PostgreSQL URL; write it as postgresql://user:password@host:port/dbname, "
            "with special characters in the password percent-encoded"
        ) from None


REQUIRE_TLS_ENV = "VOICEAUTH_PG_REQUIRE_TLS"
TLS_SSLMODES = ("require", "verify-ca", "verify-full")


def _is_local(host: str) -> bool:
    """A Unix-socket directory, ``localhost`` or a loopback address: traffic never leaves the machine."""
    if not host or host.startswith(("/", "@")) or host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def require_tls_default() -> bool:
    """``VOICEAUTH_PG_REQUIRE_TLS``: on unless set to 0, false, no or off."""
    return os.environ.get(REQUIRE_TLS_ENV, "1").strip().lower() not in ("0", "false", "no", "off")


def tls_problem(url: str, require: bool) -> str | None:
    """Why a connection to ``url`` could reach another machine without TLS (None: it cannot, or
    ``require`` is off). The sslmode comes from the URL, else ``PGSSLMODE``, else libpq's ``prefer``."""
    if not require:
        return None
    from psycopg.conninfo import conninfo_to_dict

    params = conninfo_to_dict(url)
    sslmode = str(params.get("sslmode") or os.environ.get("PGSSLMODE") or "prefer")
    hosts = f"{params.get('host') or os.environ.get('PGHOST', '')},{params.get('hostaddr') or ''}"
    remote = [h for h in hosts.split(",") if not _is_local(h.strip())]
    if not remote or sslmode in TLS_SSLMODES:
        return None
    return (f"the connection to {', '.join(remote)} would not require TLS (sslmode={sslmode}): add "
            "sslmode=verify-full&sslrootcert=/path/to/root.crt to the URL's query (or set PGSSLMODE), or set "
            f"{REQUIRE_TLS_ENV}=0 to allow plaintext on a network you trust")



class PostgresStore(SQLStore):
    """Voiceprints, consent, opt-outs and the audit trail in a PostgreSQL database."""

    PLACEHOLDER = "%s"
    LOCK_ROWS = "FOR UPDATE"
    LOCK_KEY_SHARED = "FOR SHARE"

    def __init__(self, url: str, *, keyring: KeyRing | None = None, create: bool = True,
                 require_tls: bool | None = None) -> None:
        try:
            import psycopg
        except ImportError as exc:
            raise StoreError(
                f"PostgreSQL support needs psycopg ({exc}); install it with: pip install 'voiceauth[scale]'"
            ) from exc
        self._psycopg = psycopg
        self.DRIVER_ERROR = psycopg.Error
        self.url = url
        super().__init__(_redact(url))
        _check_url(url, self.where)
        self.require_tls = require_tls_default() if require_tls is None else require_tls
        problem = tls_problem(url, self.require_tls)
        if problem is not None:
            raise StoreError(f"refusing to connect to {self.where}: {problem}")
        self._create = create
        if not create:
            self._require_store()  # before the keys are loaded: a mistyped URL creates no key file
        self.keyring = keyring or load_keyring(create=create)
        try:
            self._open()
        except BaseException:
            self.close()
            raise

    def _require_store(self) -> None:
        """``create=False``: the database must already hold a voiceauth store."""
        try:
            found = self._query("SELECT to_regclass('voiceauth_schema')")[0][0] is not None
        except BaseException:
            self.close()
            raise
        if not found:
            self.close()
            raise StoreError(f"no store at {self.where}; check --store (or VOICEAUTH_STORE)")

    # -- connections -------------------------------------------------------------------
    def _connect(self) -> psycopg.Connection[Any]:
        try:
            con = self._psycopg.connect(self.url, autocommit=True, connect_timeout=10)
        except self._psycopg.Error as exc:
            raise StoreError(
                f"cannot connect to {self.where} ({self._say(exc)}); check the --store URL, that the server "
                "is running and reachable, and the user's credentials"
            ) from None
        if self.require_tls and not con.pgconn.ssl_in_use and not _is_local(con.info.host):
            con.close()  # a service file or the environment chose the host and sslmode
            raise StoreError(f"refusing {self.where}: the connection to {con.info.host} is not encrypted; set "
                             f"sslmode=verify-full in the URL, or {REQUIRE_TLS_ENV}=0 on a network you trust")
        return con

    @contextmanager
    def _errors(self, doing: str) -> Iterator[None]:
        """Driver errors as store errors that name the store (never its password) and say what to do."""
        try:
            yield
        except self._psycopg.errors.UndefinedTable as exc:
            raise StoreCorruptError(f"{self.where} lacks voiceauth tables ({self._say(exc)}); check the --store URL"
                                    ) from exc
        except self._psycopg.OperationalError as exc:
            raise StoreError(f"{doing} {self.where} ({self._say(exc)}); retry, and check the server") from exc

    @contextmanager
    def _write(self) -> Iterator[psycopg.Connection[Any]]:
        """One transaction: committed when the block ends, rolled back on any exception."""
        con = self._conn()
        with self._errors("lost the connection to"), con.transaction():
            yield con

    @contextmanager
    def _snapshot(self) -> Iterator[psycopg.Connection[Any]]:
        """A repeatable-read transaction: several queries see one snapshot."""
        con = self._conn()
        with self._errors("cannot read"), con.transaction():
            con.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
            yield con

    def _query(self, sql: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        with self._errors("cannot read"):
            return self._conn().execute(self._sql(sql), params).fetchall()

    def _say(self, exc: BaseException) -> str:
        """A driver error's message, without the URL's password."""
        return redact(str(exc).strip(), self.url)

    def _upsert(self, table: str, columns: str, key: str) -> str:
        names = [c.strip() for c in columns.split(",")]
        keys = {k.strip() for k in key.split(",")}
        return (f"INSERT INTO {table} ({columns}) VALUES ({', '.join('?' * len(names))}) ON CONFLICT ({key}) "
                f"DO UPDATE SET {', '.join(f'{c} = EXCLUDED.{c}' for c in names if c not in keys)}")

    def _lock_subject(self, con: psycopg.Connection[Any], namespace: Namespace, subject_id: str) -> None:
        """An advisory lock per subject: it also serialises two first enrolments, when there is no row to lock."""
        con.execute("SELECT pg_advisory_xact_lock(hashtextextended(%s, 0))", (f"{namespace.value}|{subject_id}",))

    def _lock_subjects(self, con: psycopg.Connection[Any], namespace: Namespace, subject_ids: Sequence[str]) -> None:
        """The advisory locks of ``_lock_subject`` for many subjects in one statement (in a fixed order)."""
        keys = sorted(f"{namespace.value}|{s}" for s in subject_ids)
        con.execute("SELECT pg_advisory_xact_lock(hashtextextended(k, 0)) FROM unnest(%s::text[]) "
                    "WITH ORDINALITY AS t(k, n) ORDER BY n", (keys,))

    def _lock_audit(self, con: psycopg.Connection[Any]) -> None:
        """The chain-wide advisory lock, held until commit, so writers on any machine keep one chain."""
        con.execute("SELECT pg_advisory_xact_lock(%s)", (AUDIT_LOCK,))

    def _open(self) -> None:
        """Migrate the schema and check the key, serialised against other processes doing the same."""
        with self._write() as con:
            con.execute("SELECT pg_advisory_xact_lock(%s)", (MIGRATION_LOCK,))
            con.execute("CREATE TABLE IF NOT EXISTS voiceauth_schema "
                        "(version INTEGER PRIMARY KEY, applied_at DOUBLE PRECISION NOT NULL)")
            row = con.execute("SELECT COALESCE(MAX(version), 0) FROM voiceauth_schema").fetchone()
            version = int(row[0]) if row else 0
            if version == 0 and not self._create:
                raise StoreError(f"no store at {self.where}; check --store (or VOICEAUTH_STORE)")
            if version > len(MIGRATIONS):
                raise StoreError(
                    f"{self.where} has schema version {version}, newer than this voiceauth understands "
                    f"({len(MIGRATIONS)}); upgrade voiceauth"
                )
            if 0 < version < OLDEST_READABLE:
                raise StoreError(
                    f"{self.where} was written by an older voiceauth (schema {version}) whose voiceprints are not "
                    "bound to their store; it cannot be upgraded: use a new database and enrol again"
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
            self._seal_new_trail(con)

    # -- maintenance ----------------------------------------------------------------------------------
    def vacuum(self, *, full: bool = False) -> None:
        """VACUUM the voiceprint table so erased rows' space is reclaimed (FULL rewrites it, under a lock)."""
        self._conn().execute("VACUUM (FULL) voiceprints" if full else "VACUUM voiceprints")
