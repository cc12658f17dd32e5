"""Security review of the audit trail and retention (issue 12 item 10 and two low items).

An insider with write access to the database but not the key must not be able to cut, wipe or
rewrite the audit trail unnoticed; ``purge`` refuses a nonsensical retention period; the
PostgreSQL store refuses a plaintext connection to a remote host.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Any

import pytest
from pg_server import pg_url  # noqa: F401 - the session fixture the postgres backend needs
from test_store_contract import Backend, put, store_factory, voiceprint  # noqa: F401 - fixture

from voiceauth.cli import EXIT_ERROR, EXIT_OK, EXIT_TAMPERED, main
from voiceauth.errors import StoreError
from voiceauth.store import AuditRecord, Consent, Namespace, Store, open_store
from voiceauth.store.audit import chain_hash

CUSTOMER = Namespace.CUSTOMER


def _consent() -> Consent:
    return Consent.now(channel="ivr", notice_version="v3", captured_by="agent-17")


def _populate(store: Store, customers: int = 4) -> None:
    """Voiceprints with consent, an opt-out and a few plain events: a store with history."""
    for i in range(customers):
        put(store, voiceprint(f"c{i}", seed=i), consent=_consent())
    store.opt_out("c0", event=AuditRecord("opt_out", "c0", "ok", "tests"))
    for i in range(3):
        store.audit(AuditRecord("verify", f"c{i + 1}", "accept", "tests", {"confidence": 0.9}))


def _head(backend: Backend) -> str | None:
    rows = backend.fetch("SELECT value FROM meta WHERE key = ?", ("audit_head",))
    return str(rows[0][0]) if rows else None


def _set_head(backend: Backend, value: str | None) -> None:
    backend.execute("DELETE FROM meta WHERE key = ?", ("audit_head",))
    if value is not None:
        backend.execute("INSERT INTO meta (key, value) VALUES (?, ?)", ("audit_head", value))


def _rewrite_head(backend: Backend, seq: int, digest: str, keep_rest: bool) -> None:
    """Point the head at (seq, digest), keeping whatever else the head holds or not."""
    rest = (_head(backend) or "").split(":")[2:] if keep_rest else []
    _set_head(backend, ":".join([str(seq), digest, *rest]))


def _rows(backend: Backend) -> list[tuple[Any, ...]]:
    return backend.fetch("SELECT seq, time, action, subject_id, outcome, actor, details, prev_hash, hash "
                         "FROM audit ORDER BY seq", ())


def _fails(store: Store) -> str:
    check = store.verify_audit()
    assert not check.ok, check
    return check.problem or ""


# -- item 10: a keyed audit chain ----------------------------------------------------------------------


@pytest.mark.parametrize("keep_rest", [False, True], ids=["plain-head", "head-with-old-seal"])
def test_deleting_the_last_events_and_rewriting_the_head_is_tampering(store_factory: Backend,  # noqa: F811
                                                                      keep_rest: bool) -> None:
    store = store_factory.store()
    _populate(store)
    rows = _rows(store_factory)
    keep = rows[-3]
    store_factory.execute("DELETE FROM audit WHERE seq > ?", (keep[0],))
    _rewrite_head(store_factory, keep[0], keep[-1], keep_rest)
    _fails(store)
    _fails(store_factory.store())  # a fresh process sees it too


def test_a_write_after_tampering_does_not_hide_it(store_factory: Backend) -> None:  # noqa: F811
    store = store_factory.store()
    _populate(store)
    keep = _rows(store_factory)[-2]
    store_factory.execute("DELETE FROM audit WHERE seq > ?", (keep[0],))
    _rewrite_head(store_factory, keep[0], keep[-1], keep_rest=True)
    put(store, voiceprint("later", seed=9), consent=_consent())
    store.audit(AuditRecord("verify", "later", "accept", "tests"))
    _fails(store)


def test_a_head_from_before_a_key_rotation_is_tampering(store_factory: Backend) -> None:  # noqa: F811
    """Cut the trail back to a copy taken before the rotation, old sealed head included."""
    store = store_factory.store()
    _populate(store)
    saved, last = _head(store_factory), _rows(store_factory)[-1][0]
    store.rotate_key(actor="tests")
    store.audit(AuditRecord("verify", "c2", "accept", "tests"))
    store_factory.execute("DELETE FROM audit WHERE seq > ?", (last,))
    _set_head(store_factory, saved)
    assert "rotation" in _fails(store)
    store.audit(AuditRecord("verify", "c3", "accept", "tests"))  # a later write does not re-seal it
    _fails(store)


@pytest.mark.parametrize("head", ["deleted", "emptied", "garbage", "genesis"])
def test_wiping_the_whole_trail_of_a_store_with_data_is_tampering(store_factory: Backend, head: str) -> None:  # noqa: F811
    store = store_factory.store()
    genesis = _head(store_factory)  # what the head of the new, empty store looked like
    _populate(store)
    store_factory.execute("DELETE FROM audit", ())
    _set_head(store_factory, {"deleted": None, "emptied": "", "garbage": "9:x", "genesis": genesis}[head])
    assert store.audit_events() == []
    _fails(store)


def test_wiping_the_trail_of_a_store_with_only_an_opt_out_is_tampering(store_factory: Backend) -> None:  # noqa: F811
    store = store_factory.store()
    genesis = _head(store_factory)
    store.opt_out("never-enrolled", event=AuditRecord("opt_out", "never-enrolled", "ok", "tests"))
    store_factory.execute("DELETE FROM audit", ())
    _set_head(store_factory, genesis)
    _fails(store)


def test_edited_event_is_tampering(store_factory: Backend) -> None:  # noqa: F811
    store = store_factory.store()
    _populate(store)
    store_factory.execute("UPDATE audit SET outcome = ? WHERE seq = ?", ("reject", 3))
    check = store.verify_audit()
    assert not check.ok and check.first_bad_seq == 3


def test_edited_event_with_the_chain_recomputed_is_tampering(store_factory: Backend) -> None:  # noqa: F811
    """The attacker knows the algorithm: edit an event and recompute every later link and the head."""
    store = store_factory.store()
    _populate(store)
    prev = None
    for seq, when, action, subject, outcome, actor, details, prev_hash, digest in _rows(store_factory):
        if seq == 2:
            outcome = "forged"
        prev = prev_hash if prev is None else prev
        digest = chain_hash(prev, seq, when, action, subject, outcome, actor, json.loads(details))
        store_factory.execute("UPDATE audit SET outcome = ?, prev_hash = ?, hash = ? WHERE seq = ?",
                              (outcome, prev, digest, seq))
        prev = digest
    _rewrite_head(store_factory, seq, digest, keep_rest=True)
    assert [e.outcome for e in store.audit_events()][1] == "forged"
    _fails(store)


def test_untouched_trail_is_intact_through_every_kind_of_write(store_factory: Backend) -> None:  # noqa: F811
    store = store_factory.store()
    fresh = store.verify_audit()
    assert fresh.ok and fresh.events == 0
    _populate(store)
    store.delete(CUSTOMER, "c1", event=AuditRecord("delete", "c1", "ok", "tests"))
    store.purge_unused(time.time() + 60, actor="tests")
    store.rotate_key(actor="tests")
    store.clear_opt_out("c0", event=AuditRecord("opt_in", "c0", "ok", "tests"))
    check = store.verify_audit()
    assert check.ok and check.events == len(_rows(store_factory)), check
    again = store_factory.store()
    assert again.verify_audit().ok and again.verify_audit().events == check.events
    assert getattr(again, "integrity_check", lambda: True)()


# -- `voiceauth audit verify` and `voiceauth purge` -------------------------------------------------------


def _cli_store(path: Path) -> None:
    with open_store(path) as store:  # type: ignore[attr-defined]
        _populate(store)


def _run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_cli_audit_verify_exits_5_on_a_cut_trail(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import sqlite3

    db = tmp_path / "cli.db"
    _cli_store(db)
    code, out, _ = _run(capsys, "audit", "verify", "--store", str(db), "--json")
    assert code == EXIT_OK and json.loads(out)["ok"] is True
    con = sqlite3.connect(db)
    with con:
        seq, digest = con.execute("SELECT seq, hash FROM audit ORDER BY seq DESC LIMIT 1 OFFSET 2").fetchone()
        con.execute("DELETE FROM audit WHERE seq > ?", (seq,))
        con.execute("UPDATE meta SET value = ? WHERE key = 'audit_head'", (f"{seq}:{digest}",))
    con.close()
    code, out, err = _run(capsys, "audit", "verify", "--store", str(db))
    assert code == EXIT_TAMPERED, out + err
    assert "TAMPERED" in out and "Traceback" not in out + err


@pytest.mark.parametrize("days", ["-1", "-0.5", "nan", "inf", "-inf"])
def test_cli_purge_refuses_a_nonsensical_period(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                days: str) -> None:
    db = tmp_path / "cli.db"
    _cli_store(db)
    with open_store(db) as store:  # type: ignore[attr-defined]
        before = ([i.subject_id for i in store.list()], len(store.audit_events()))
    code, out, err = _run(capsys, "purge", f"--unused-days={days}", "--store", str(db))
    assert code == EXIT_ERROR, out + err
    assert "--unused-days" in err and "Traceback" not in out + err
    with open_store(db) as store:  # type: ignore[attr-defined]
        assert ([i.subject_id for i in store.list()], len(store.audit_events())) == before


def test_cli_purge_of_zero_days_still_works(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    db = tmp_path / "cli.db"
    _cli_store(db)
    code, out, err = _run(capsys, "purge", "--unused-days", "0", "--store", str(db), "--json")
    assert code == EXIT_OK, out + err
    assert sorted(json.loads(out)["purged"]) == ["c1", "c2", "c3"]


@pytest.mark.parametrize("cutoff", [math.nan, math.inf])
def test_store_purge_refuses_a_non_finite_cutoff(store_factory: Backend, cutoff: float) -> None:  # noqa: F811
    store = store_factory.store()
    _populate(store)
    before = ([i.subject_id for i in store.list()], len(store.audit_events()))
    with pytest.raises(StoreError, match="finite"):
        store.purge_unused(cutoff)
    assert ([i.subject_id for i in store.list()], len(store.audit_events())) == before


# -- low item: TLS for the PostgreSQL store -----------------------------------------------------------------


REMOTE = "postgresql://voiceauth:secret@db.bank.invalid:5432/voiceauth"


@pytest.mark.parametrize("url", [REMOTE, REMOTE + "?sslmode=prefer", REMOTE + "?sslmode=disable",
                                 "postgresql://u@10.1.2.3/db?sslmode=allow", "postgresql://u@localhost,db.bank.invalid/db"])
def test_postgres_refuses_plaintext_to_a_remote_host(url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("psycopg")
    from voiceauth.store.postgres import PostgresStore

    monkeypatch.delenv("PGSSLMODE", raising=False)
    monkeypatch.delenv("VOICEAUTH_PG_REQUIRE_TLS", raising=False)
    with pytest.raises(StoreError, match="sslmode=verify-full") as err:
        PostgresStore(url)
    assert "secret" not in str(err.value)


def test_postgres_tls_requirement_can_be_lifted_explicitly(monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("psycopg")
    from voiceauth.store.postgres import PostgresStore, tls_problem

    monkeypatch.delenv("PGSSLMODE", raising=False)
    assert tls_problem(REMOTE + "?sslmode=verify-full", True) is None
    assert tls_problem(REMOTE + "?sslmode=require", True) is None
    assert tls_problem(REMOTE, False) is None
    assert tls_problem("postgresql://u@127.0.0.1:5433/db", True) is None
    assert tls_problem("postgresql://u@[::1]/db", True) is None
    assert tls_problem("postgresql:///db?host=/var/run/postgresql", True) is None
    monkeypatch.setenv("PGSSLMODE", "verify-full")
    assert tls_problem(REMOTE, True) is None
    monkeypatch.setenv("VOICEAUTH_PG_REQUIRE_TLS", "0")
    monkeypatch.setenv("PGSSLMODE", "disable")
    with pytest.raises(StoreError, match="cannot connect"):  # allowed to try: the name does not resolve
        PostgresStore(REMOTE)
