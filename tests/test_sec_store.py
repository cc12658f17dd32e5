"""Security review of the stores (issue 12): per-store keys, rows bound to their store and version,
truthful erasure, private files, and PostgreSQL URLs that never show their password."""

from __future__ import annotations

import json
import os
import sqlite3
import stat
import threading
import time
import traceback
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from pg_server import pg_url  # noqa: F401 - the session fixture the "postgres" backend needs
from test_store_contract import Backend, embedding, put, store_factory, voiceprint  # noqa: F401 - fixture

from voiceauth.errors import StoreError, TamperedError
from voiceauth.store import AuditRecord, ErasureIncompleteError, Namespace, open_store
from voiceauth.store.crypto import load_keyring
from voiceauth.store.sqlite import SQLiteStore

CUSTOMER = Namespace.CUSTOMER


@pytest.fixture(autouse=True)
def _no_staged_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("VOICEAUTH_NEW_KEY", raising=False)


def _key_file() -> dict[str, Any]:
    return json.loads(Path(os.environ["VOICEAUTH_KEY_FILE"]).read_text())


# -- item 3: rotating one store never touches another store's key -------------------------------------


def test_rotating_one_store_keeps_another_store_on_the_same_key_file(tmp_path: Path) -> None:
    a, b = SQLiteStore(tmp_path / "a.db"), SQLiteStore(tmp_path / "b.db")
    put(a, voiceprint("alice", seed=1))
    put(b, voiceprint("bob", seed=2))
    old_a = a.keyring.ids
    new_a = a.rotate_key()
    a.close()
    b.close()
    with SQLiteStore(tmp_path / "b.db") as reopened:
        got = reopened.get(CUSTOMER, "bob")
        assert got is not None and (got.embedding == embedding(2)).all()
        assert reopened.integrity_check()
    assert set(old_a) <= set(load_keyring().ids)  # retiring the old key is a separate, explicit step
    retired = load_keyring().retire_unused()
    assert len(retired) == 1 and retired[0] != new_a  # only A's replaced key: no store uses it any more
    for name, subject in (("a.db", "alice"), ("b.db", "bob")):
        with SQLiteStore(tmp_path / name) as reopened:
            assert reopened.get(CUSTOMER, subject) is not None and reopened.integrity_check()


def test_cli_keys_retire_removes_only_unused_keys(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from voiceauth.cli import main

    a, b = SQLiteStore(tmp_path / "a.db"), SQLiteStore(tmp_path / "b.db")
    put(a, voiceprint("alice", seed=1))
    put(b, voiceprint("bob", seed=2))
    a.close()
    b.close()
    assert main(["keys", "retire", "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == {"retired": []}
    assert main(["keys", "rotate", "--store", str(tmp_path / "a.db")]) == 0
    capsys.readouterr()
    assert main(["keys", "retire", "--json"]) == 0
    assert len(json.loads(capsys.readouterr().out)["retired"]) == 1
    for name, subject in (("a.db", "alice"), ("b.db", "bob")):
        with SQLiteStore(tmp_path / name) as reopened:
            assert reopened.get(CUSTOMER, subject) is not None


def test_each_store_has_its_own_key_record(tmp_path: Path) -> None:
    with SQLiteStore(tmp_path / "a.db") as a, SQLiteStore(tmp_path / "b.db") as b:
        put(a, voiceprint("alice"))
        put(b, voiceprint("bob"))
    records = _key_file()["keys"]
    assert len(records) == 2
    assert sorted(len(r["stores"]) for r in records.values()) == [1, 1]
    assert len({s for r in records.values() for s in r["stores"]}) == 2
    assert load_keyring().retire_unused() == []  # both keys are in use


# -- item 11: an old row restored from a backup is refused ---------------------------------------------


def _restore(backend: Backend, row: tuple[Any, ...], subject: str) -> None:
    backend.execute("DELETE FROM voiceprints WHERE subject_id = ?", (subject,))
    backend.execute(f"INSERT INTO voiceprints VALUES ({', '.join('?' * len(row))})", row)


@pytest.mark.parametrize("then", ["re-enrolled", "deleted"])
def test_old_row_restored_from_backup_is_tampered(store_factory: Backend, then: str) -> None:  # noqa: F811
    store = store_factory.store()
    put(store, voiceprint("c", seed=1))
    put(store, voiceprint("other", seed=3))
    backup = store_factory.fetch("SELECT * FROM voiceprints WHERE subject_id = ?", ("c",))[0]
    if then == "re-enrolled":
        put(store, voiceprint("c", seed=2))
    else:
        assert store.delete(CUSTOMER, "c", event=AuditRecord("delete", "c", "deleted"))
    assert store.integrity_check()
    _restore(store_factory, backup, "c")
    with pytest.raises(TamperedError, match="backup"):
        store.get(CUSTOMER, "c")
    with pytest.raises(TamperedError):
        store.embeddings(CUSTOMER, "ecapa-v1")
    assert not store.integrity_check()


def test_restored_row_relabelled_with_the_current_version_is_tampered(store_factory: Backend) -> None:  # noqa: F811
    store = store_factory.store()
    put(store, voiceprint("c", seed=1))
    backup = store_factory.fetch("SELECT * FROM voiceprints WHERE subject_id = ?", ("c",))[0]
    put(store, voiceprint("c", seed=2))
    _restore(store_factory, backup, "c")
    store_factory.execute("UPDATE voiceprints SET version = (SELECT version FROM voiceprint_versions "
                          "WHERE subject_id = ?) WHERE subject_id = ?", ("c", "c"))
    with pytest.raises(TamperedError, match="failed authentication"):
        store.get(CUSTOMER, "c")
    assert not store.integrity_check()


def test_row_copied_from_another_store_is_tampered(tmp_path: Path) -> None:
    with SQLiteStore(tmp_path / "a.db") as a, SQLiteStore(tmp_path / "b.db") as b:
        put(a, voiceprint("c", seed=1))
        put(b, voiceprint("c", seed=2))
    con = sqlite3.connect(tmp_path / "b.db")
    con.execute("ATTACH DATABASE ? AS a", (str(tmp_path / "a.db"),))
    con.execute("UPDATE voiceprints SET blob = (SELECT blob FROM a.voiceprints), "
                "key_id = (SELECT key_id FROM a.voiceprints)")
    con.commit()
    con.close()
    with SQLiteStore(tmp_path / "b.db") as b, pytest.raises(TamperedError):
        b.get(CUSTOMER, "c")


# -- item 14: erasure never claims the WAL is clean when it is not --------------------------------------


def _files(db: Path) -> bytes:
    return b"".join(p.read_bytes() for p in (db, Path(f"{db}-wal")) if p.exists())


@pytest.fixture
def reader(tmp_path: Path) -> Iterator[sqlite3.Connection]:
    con = sqlite3.connect(tmp_path / "s.db", isolation_level=None, check_same_thread=False)
    yield con
    con.close()


def _erase(store: SQLiteStore, how: str) -> object:
    if how == "delete":
        return store.delete(CUSTOMER, "c", event=AuditRecord("delete", "c", "deleted"))
    if how == "opt_out":
        return store.opt_out("c", event=AuditRecord("opt_out", "c", "opted_out"))
    return store.purge_unused(time.time() + 1)


@pytest.mark.parametrize("how", ["delete", "opt_out", "purge"])
def test_erasure_with_a_reader_holding_a_snapshot_reports_the_leftover_copy(
    tmp_path: Path, reader: sqlite3.Connection, how: str
) -> None:
    store = SQLiteStore(tmp_path / "s.db")
    put(store, voiceprint("c", seed=1))
    tail = bytes(_blob(tmp_path / "s.db"))[-24:]
    reader.execute("BEGIN")
    reader.execute("SELECT count(*) FROM voiceprints").fetchall()  # holds a read snapshot
    started = time.monotonic()
    with pytest.raises(ErasureIncompleteError, match="reader") as raised:
        _erase(store, how)
    assert time.monotonic() - started < 10
    assert raised.value.subjects == ("c",)
    assert tail in _files(tmp_path / "s.db")  # the report is true: a copy is still there
    assert store.get(CUSTOMER, "c") is None  # but the row is gone from the database
    reader.execute("COMMIT")
    assert store.checkpoint()
    assert tail not in _files(tmp_path / "s.db")
    store.close()


def test_erasure_waits_briefly_for_a_reader_to_finish(tmp_path: Path, reader: sqlite3.Connection) -> None:
    store = SQLiteStore(tmp_path / "s.db")
    put(store, voiceprint("c", seed=1))
    tail = bytes(_blob(tmp_path / "s.db"))[-24:]
    reader.execute("BEGIN")
    reader.execute("SELECT count(*) FROM voiceprints").fetchall()
    timer = threading.Timer(0.2, lambda: reader.execute("COMMIT"))
    timer.start()
    try:
        assert store.delete(CUSTOMER, "c", event=AuditRecord("delete", "c", "deleted")) is True
    finally:
        timer.join()
    assert tail not in _files(tmp_path / "s.db")
    store.close()


def _blob(db: Path) -> bytes:
    con = sqlite3.connect(db)
    try:
        return bytes(con.execute("SELECT blob FROM voiceprints WHERE subject_id = 'c'").fetchone()[0])
    finally:
        con.close()


# -- low: private store files, passwords never shown ------------------------------------------------------


def test_store_files_are_created_private(tmp_path: Path) -> None:
    old = os.umask(0o022)
    try:
        with SQLiteStore(tmp_path / "s.db") as store:
            put(store, voiceprint("c"))
            modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in tmp_path.glob("s.db*")}
    finally:
        os.umask(old)
    assert set(modes) == {"s.db", "s.db-wal", "s.db-shm"}
    assert set(modes.values()) == {0o600}, modes


SECRET = "Sup3r-s3cret"
BAD_URLS = [
    f"postgresql://bob:{SECRET}@127.0.0.1:1/db",  # well-formed, nothing listening
    f"postgresql://bob:{SECRET} x@127.0.0.1:1/db",  # a space in the password
    f"postgresql://bob:{SECRET}@[::1/db",  # unbalanced bracket
    f"postgresql://bob:{SECRET}@127.0.0.1:notaport/db",
    f"postgresql://bob@127.0.0.1:1/db?password={SECRET}&broken",
    f"postgresql:/bob:{SECRET}@127.0.0.1/db",  # one slash short
    f"postgres+psycopg://bob:{SECRET}@127.0.0.1:1/db",
]


@pytest.mark.parametrize("url", BAD_URLS)
def test_postgres_url_password_is_never_shown(url: str) -> None:
    with pytest.raises(StoreError) as raised:
        open_store(url)
    shown = "".join(traceback.format_exception(raised.value)) + repr(raised.value)
    assert SECRET not in shown and SECRET.replace("-", "%2D") not in shown, shown
    assert "postgresql://" in str(raised.value) or "PostgreSQL" in str(raised.value)
