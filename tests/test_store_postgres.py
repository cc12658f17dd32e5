"""What only the PostgreSQL store has to show: URL selection, versioned migrations, and
concurrent writers from several processes keeping one linear audit chain and no lost updates.
(The behaviour it shares with SQLite is checked by the contract suite.)"""

from __future__ import annotations

import multiprocessing
import os
from pathlib import Path

import numpy as np
import pytest
from pg_server import fresh_database, pg_url  # noqa: F401 - pg_url is a fixture

from voiceauth.errors import KeyMissingError, StoreCorruptError, StoreError, TamperedError
from voiceauth.services.enrolment import NewSpeech, builder
from voiceauth.store import open_store
from voiceauth.store.base import AuditRecord, Namespace
from voiceauth.store.crypto import KeyRing

pytestmark = pytest.mark.integration  # real model, processes or external tools

MODEL = "test-model"


def _speech(seed: int) -> NewSpeech:
    vector = np.random.default_rng(seed).standard_normal(192).astype(np.float32)
    return NewSpeech(vector / np.linalg.norm(vector), 4.0, 1)


def _add(store, subject: str, seed: int) -> None:  # noqa: ANN001
    store.upsert(Namespace.CUSTOMER, subject, builder(subject, Namespace.CUSTOMER, MODEL, _speech(seed),
                                                      mode="update", required_s=10.0),
                 event=AuditRecord("enroll", subject, "update"))


def _writer(url: str, key_file: str, worker: int, rounds: int) -> None:
    os.environ["VOICEAUTH_KEY_FILE"] = key_file
    store = open_store(url)
    try:
        for i in range(rounds):
            _add(store, "shared", worker * 1000 + i)
            store.audit(AuditRecord("verify", f"c{worker}", "accept", details={"round": i}))
    finally:
        store.close()


@pytest.fixture
def url(pg_url: str) -> str:  # noqa: F811 - the fixture imported above
    return fresh_database(pg_url)


def test_url_selects_postgres_and_schema_is_versioned(url: str) -> None:
    from voiceauth.store.postgres import MIGRATIONS, PostgresStore

    store = open_store(url)
    try:
        assert isinstance(store, PostgresStore)
        assert "@" in repr(store) and "password" not in repr(store)
        versions = store._query("SELECT version FROM voiceauth_schema ORDER BY version")
        assert [v for (v,) in versions] == list(range(1, len(MIGRATIONS) + 1))
    finally:
        store.close()
    reopened = open_store(url)  # migrating again is a no-op
    assert len(reopened._query("SELECT version FROM voiceauth_schema")) == len(MIGRATIONS)
    reopened.close()


def test_concurrent_processes_keep_one_linear_chain(url: str, isolated_keys: Path) -> None:
    key_file = os.environ["VOICEAUTH_KEY_FILE"]
    open_store(url).close()  # create the schema and the key once
    ctx = multiprocessing.get_context("spawn")
    workers = [ctx.Process(target=_writer, args=(url, key_file, w, 15)) for w in range(3)]
    for p in workers:
        p.start()
    for p in workers:
        p.join(120)
        assert p.exitcode == 0
    store = open_store(url)
    try:
        voiceprint = store.get(Namespace.CUSTOMER, "shared")
        assert voiceprint is not None and voiceprint.recordings == 45  # no lost update
        check = store.verify_audit()
        assert check.ok and check.events == 90, check
        assert [e.seq for e in store.audit_events()] == list(range(1, 91))
    finally:
        store.close()


def test_wrong_key_and_moved_rows_are_refused(url: str) -> None:
    store = open_store(url)
    try:
        _add(store, "alice", 1)
        _add(store, "bob", 2)
        con = store._conn()
        con.execute("UPDATE voiceprints SET blob = (SELECT blob FROM voiceprints WHERE subject_id = 'bob') "
                    "WHERE subject_id = 'alice'")
        with pytest.raises(TamperedError, match="restore it from backup or re-enrol"):
            store.get(Namespace.CUSTOMER, "alice")
        assert not store.integrity_check()
    finally:
        store.close()
    with pytest.raises(KeyMissingError, match="VOICEAUTH_KEY"):
        open_store(url, keyring=KeyRing.ephemeral())


def test_foreign_tables_and_unreachable_servers_are_clear_errors(url: str) -> None:
    import psycopg

    with psycopg.connect(url, autocommit=True) as con:
        con.execute("CREATE TABLE voiceprints (id int)")
    with pytest.raises(StoreCorruptError, match="did not create"):
        open_store(url)
    with pytest.raises(StoreError, match="check the --store URL"):
        open_store("postgresql://nobody:secret@127.0.0.1:1/none")
