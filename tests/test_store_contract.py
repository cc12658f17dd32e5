"""The Store contract: every backend (``store_factory`` params) must pass these tests.

To add a backend, add its name to ``BACKENDS`` and a ``_<name>_factory`` generator that
yields a :class:`Backend` (how to open a store, and raw SQL for tampering).
"""

from __future__ import annotations

import base64
import os
import sqlite3
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from pg_server import fresh_database, pg_url  # noqa: F401 - pg_url is the session fixture "postgres" needs

from voiceauth.errors import KeyMissingError, NotEnrolledError, StoreError, TamperedError
from voiceauth.store import AuditRecord, Consent, Namespace, Store, Voiceprint, open_store
from voiceauth.store.crypto import KeyRing, load_keyring

CUSTOMER = Namespace.CUSTOMER
WATCHLIST = Namespace.WATCHLIST
SHADOW = Namespace.SHADOW
DIM = 192


@dataclass
class Backend:
    """How a test opens stores on one database and reaches into it with raw SQL (``?`` placeholders)."""

    name: str
    open: Callable[..., Store]
    execute: Callable[[str, tuple[Any, ...]], None]
    fetch: Callable[[str, tuple[Any, ...]], list[tuple[Any, ...]]]
    opened: list[Store] = field(default_factory=list)

    def store(self, keyring: KeyRing | None = None) -> Store:
        store = self.open(keyring=keyring)
        self.opened.append(store)
        return store


def _sqlite_factory(tmp_path: Path) -> Iterator[Backend]:
    path = tmp_path / "voiceprints.db"

    def execute(sql: str, params: tuple[Any, ...]) -> None:
        con = sqlite3.connect(path)
        try:
            con.execute(sql, params)
            con.commit()
        finally:
            con.close()

    def fetch(sql: str, params: tuple[Any, ...]) -> list[tuple[Any, ...]]:
        con = sqlite3.connect(path)
        try:
            return con.execute(sql, params).fetchall()
        finally:
            con.close()

    yield Backend("sqlite", lambda **kw: open_store(path, **kw), execute, fetch)


def _postgres_factory(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Backend]:
    import psycopg

    url = fresh_database(request.getfixturevalue("pg_url"))  # an empty database per test

    def execute(sql: str, params: tuple[Any, ...]) -> None:
        with psycopg.connect(url, autocommit=True) as con:
            con.execute(sql.replace("?", "%s"), params)

    def fetch(sql: str, params: tuple[Any, ...]) -> list[tuple[Any, ...]]:
        with psycopg.connect(url, autocommit=True) as con:
            return con.execute(sql.replace("?", "%s"), params).fetchall()

    yield Backend("postgres", lambda **kw: open_store(url, **kw), execute, fetch)


BACKENDS: dict[str, Callable[..., Iterator[Backend]]] = {"sqlite": _sqlite_factory, "postgres": _postgres_factory}


@pytest.fixture(autouse=True)
def _isolated_keys(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Keys live under tmp_path; nothing touches the real home directory."""
    config = tmp_path / "config"
    monkeypatch.setenv("XDG_CONFIG_HOME", str(config))
    monkeypatch.setenv("VOICEAUTH_KEY_FILE", str(config / "voiceauth" / "keyring.json"))
    monkeypatch.delenv("VOICEAUTH_KEY", raising=False)
    monkeypatch.delenv("VOICEAUTH_NEW_KEY", raising=False)
    return config


@pytest.fixture(params=sorted(BACKENDS))
def store_factory(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Backend]:
    extra = (request,) if request.param == "postgres" else ()
    for backend in BACKENDS[request.param](tmp_path, *extra):
        yield backend
        for store in backend.opened:
            store.close()


@pytest.fixture
def store(store_factory: Backend) -> Store:
    return store_factory.store()


# -- helpers ----------------------------------------------------------------------------------------


def embedding(seed: int, dim: int = DIM) -> np.ndarray:
    vec = np.random.default_rng(seed).standard_normal(dim).astype(np.float32)
    return vec / np.linalg.norm(vec)


def voiceprint(subject: str, *, seed: int = 0, ns: Namespace = CUSTOMER, model: str = "ecapa-v1",
               complete: bool = True, when: float | None = None, **kw: Any) -> Voiceprint:
    when = time.time() if when is None else when
    return Voiceprint(subject, ns, model, embedding(seed), speech_s=kw.pop("speech_s", 12.5),
                      recordings=kw.pop("recordings", 2), complete=complete, created_at=when, updated_at=when, **kw)


def put(store: Store, vp: Voiceprint, consent: Consent | None = None) -> Voiceprint:
    return store.upsert(vp.namespace, vp.subject_id, lambda _cur: vp,
                        event=AuditRecord("enroll", vp.subject_id, "ok", "tests"), consent=consent)


def actions(store: Store) -> list[tuple[str, str | None, str]]:
    return [(e.action, e.subject_id, e.outcome) for e in store.audit_events()]


def fresh_consent() -> Consent:
    return Consent.now(channel="ivr", notice_version="n-3", captured_by="agent-7")


# -- voiceprints --------------------------------------------------------------------------------------


def test_is_a_store(store: Store) -> None:
    assert isinstance(store, Store)


def test_round_trip(store: Store) -> None:
    vp = voiceprint("cust-1", seed=1, meta={"branch": "north"})
    put(store, vp)
    got = store.get(CUSTOMER, "cust-1")
    assert got is not None
    assert got.embedding.dtype == np.float32
    assert np.array_equal(got.embedding, vp.embedding)
    assert replace(got, embedding=vp.embedding) == vp
    assert store.get(WATCHLIST, "cust-1") is None
    assert store.get(CUSTOMER, "nobody") is None


def test_builder_sees_the_current_voiceprint(store: Store) -> None:
    put(store, voiceprint("c", seed=1, recordings=1))
    seen: list[Voiceprint | None] = []

    def build(current: Voiceprint | None) -> Voiceprint:
        seen.append(current)
        assert current is not None
        return replace(current, recordings=current.recordings + 1, embedding=embedding(2))

    out = store.upsert(CUSTOMER, "c", build, event=AuditRecord("enroll", "c", "updated"))
    assert seen[0] is not None and seen[0].recordings == 1
    got = store.get(CUSTOMER, "c")
    assert got is not None and got.recordings == 2 == out.recordings
    assert np.array_equal(got.embedding, embedding(2))


def test_builder_abort_writes_nothing(store: Store) -> None:
    put(store, voiceprint("c", seed=1))
    before = store.audit_events()

    def fail(_current: Voiceprint | None) -> Voiceprint:
        raise RuntimeError("no speech")

    for subject in ("c", "new"):
        with pytest.raises(RuntimeError):
            store.upsert(CUSTOMER, subject, fail, event=AuditRecord("enroll", subject, "ok"), consent=fresh_consent())
    assert store.get(CUSTOMER, "new") is None
    got = store.get(CUSTOMER, "c")
    assert got is not None and np.array_equal(got.embedding, embedding(1))
    assert store.consent("c") is None and store.consent("new") is None
    assert store.audit_events() == before


def test_builder_for_another_row_is_refused(store: Store) -> None:
    with pytest.raises(StoreError, match="nothing was written"):
        store.upsert(CUSTOMER, "a", lambda _c: voiceprint("b"), event=AuditRecord("enroll", "a", "ok"))
    assert store.get(CUSTOMER, "a") is None and store.get(CUSTOMER, "b") is None
    assert store.audit_events() == []


def test_delete(store: Store) -> None:
    put(store, voiceprint("c"))
    assert store.delete(CUSTOMER, "c", event=AuditRecord("delete", "c", "deleted"))
    assert store.get(CUSTOMER, "c") is None
    assert not store.delete(CUSTOMER, "c", event=AuditRecord("delete", "c", "deleted"))
    assert actions(store)[-2:] == [("delete", "c", "deleted"), ("delete", "c", "not_found")]


def test_list_by_namespace(store: Store) -> None:
    put(store, voiceprint("b", seed=1))
    put(store, voiceprint("a", seed=2, complete=False))
    put(store, voiceprint("fraud-1", seed=3, ns=WATCHLIST, meta={"reason": "case 42"}))
    customers = store.list()
    assert [i.subject_id for i in customers] == ["a", "b"]
    assert [i.complete for i in customers] == [False, True]
    assert not hasattr(customers[0], "embedding")
    watch = store.list(WATCHLIST)
    assert [(i.subject_id, dict(i.meta)) for i in watch] == [("fraud-1", {"reason": "case 42"})]


def test_embeddings_filter_by_model_and_complete(store: Store) -> None:
    put(store, voiceprint("b", seed=1))
    put(store, voiceprint("a", seed=2))
    put(store, voiceprint("partial", seed=3, complete=False))
    put(store, voiceprint("other-model", seed=4, model="ecapa-v2"))
    put(store, voiceprint("fraud", seed=5, ns=WATCHLIST))
    ids, matrix = store.embeddings(CUSTOMER, "ecapa-v1")
    assert ids == ["a", "b"]
    assert matrix.shape == (2, DIM) and matrix.dtype == np.float32
    assert np.array_equal(matrix, np.stack([embedding(2), embedding(1)]))
    assert store.embeddings(WATCHLIST, "ecapa-v1")[0] == ["fraud"]
    ids, matrix = store.embeddings(CUSTOMER, "unknown-model")
    assert ids == [] and matrix.shape[0] == 0


def test_touch_sets_last_used(store: Store) -> None:
    put(store, voiceprint("c"))
    events = len(store.audit_events())
    store.touch(CUSTOMER, "c", 1234.5)
    got = store.get(CUSTOMER, "c")
    assert got is not None and got.last_used_at == 1234.5
    store.touch(CUSTOMER, "nobody", 1.0)
    assert len(store.audit_events()) == events


# -- consent and opt-out ------------------------------------------------------------------------------


def test_consent_written_with_enrolment(store: Store) -> None:
    consent = fresh_consent()
    put(store, voiceprint("c"), consent=consent)
    assert store.consent("c") == consent
    assert store.consent("other") is None
    assert ("consent", "c", "recorded") in actions(store)


def test_opt_out(store: Store) -> None:
    put(store, voiceprint("c"), consent=fresh_consent())
    put(store, voiceprint("c", ns=WATCHLIST))
    store.opt_out("c", event=AuditRecord("opt_out", "c", "opted_out", "agent-7"))
    assert store.is_opted_out("c") and not store.is_opted_out("other")
    assert store.get(CUSTOMER, "c") is None
    assert store.get(WATCHLIST, "c") is not None, "opting out does not erase fraud records"
    consent = store.consent("c")
    assert consent is not None and consent.withdrawn_at is not None
    assert actions(store)[-1] == ("opt_out", "c", "opted_out")
    store.clear_opt_out("c", event=AuditRecord("opt_in", "c", "fresh_consent"))  # type: ignore[attr-defined]
    assert not store.is_opted_out("c")


def test_purge_unused(store: Store) -> None:
    now = time.time()
    day = 86400.0
    put(store, voiceprint("old-unused", when=now - 400 * day))
    put(store, voiceprint("old-but-used", when=now - 400 * day))
    store.touch(CUSTOMER, "old-but-used", now - day)
    put(store, voiceprint("used-long-ago", when=now - 400 * day))
    store.touch(CUSTOMER, "used-long-ago", now - 300 * day)
    put(store, voiceprint("recent", when=now - day))
    put(store, voiceprint("old-fraud", ns=WATCHLIST, when=now - 400 * day))
    purged = store.purge_unused(now - 180 * day, actor="retention")
    assert sorted(purged) == ["old-unused", "used-long-ago"]
    assert [i.subject_id for i in store.list()] == ["old-but-used", "recent"]
    assert [i.subject_id for i in store.list(WATCHLIST)] == ["old-fraud"]
    purges = [e for e in store.audit_events() if e.action == "purge"]
    assert sorted(e.subject_id or "" for e in purges) == purged and {e.actor for e in purges} == {"retention"}
    assert store.purge_unused(now - 180 * day) == []


def test_a_shadow_voiceprint_lives_and_dies_with_its_customer(store: Store) -> None:
    """Shadow voiceprints (the next model's, :mod:`voiceauth.services.shadow`) need their customer,
    and every erasure of the customer erases them in the same transaction."""
    with pytest.raises(NotEnrolledError, match="no shadow voiceprint"):
        put(store, voiceprint("ghost", ns=SHADOW, model="next-v2"))
    now, day = time.time(), 86400.0
    for subject in ("deleted", "opted-out", "purged", "kept"):
        put(store, voiceprint(subject, seed=1, when=now - 400 * day if subject == "purged" else now))
        put(store, voiceprint(subject, seed=2, ns=SHADOW, model="next-v2", complete=False))
    assert [i.subject_id for i in store.list(SHADOW)] == ["deleted", "kept", "opted-out", "purged"]
    assert [i.subject_id for i in store.list()] == ["deleted", "kept", "opted-out", "purged"]  # customers apart
    assert store.embeddings(CUSTOMER, "next-v2")[0] == []
    store.delete(CUSTOMER, "deleted", event=AuditRecord("delete", "deleted", "deleted"))
    store.opt_out("opted-out", event=AuditRecord("opt_out", "opted-out", "opted_out"))
    assert store.purge_unused(now - 180 * day) == ["purged"]
    assert [i.subject_id for i in store.list(SHADOW)] == ["kept"]
    with pytest.raises(NotEnrolledError):  # opted out (and erased): no shadow grows again
        put(store, voiceprint("opted-out", ns=SHADOW, model="next-v2"))


# -- audit trail --------------------------------------------------------------------------------------


def _five_events(store: Store) -> None:
    for i in range(5):
        store.audit(AuditRecord("verify", f"c{i}", "accept", "tests", {"score": 0.5 + i, "channel": "ivr"}))


def test_audit_chain_verifies(store: Store) -> None:
    _five_events(store)
    events = store.audit_events()
    assert [e.seq for e in events] == [1, 2, 3, 4, 5]
    assert events[1].prev_hash == events[0].hash
    assert dict(events[0].details) == {"score": 0.5, "channel": "ivr"}
    check = store.verify_audit()
    assert check.ok and check.events == 5 and check.first_bad_seq is None


@pytest.mark.parametrize("details", [{"vec": np.zeros(4, np.float32)}, {"raw": b"\x00\x01"}, {"list": [0.1, 0.2]},
                                     {f"e{i}": 0.1 for i in range(200)}])
def test_audit_refuses_biometric_looking_details(store: Store, details: dict[str, Any]) -> None:
    with pytest.raises(StoreError, match="audit"):
        store.audit(AuditRecord("verify", "c", "accept", details=details))
    with pytest.raises(StoreError, match="audit"):
        store.upsert(CUSTOMER, "c", lambda _c: voiceprint("c"), event=AuditRecord("enroll", "c", "ok", details=details))
    assert store.audit_events() == [] and store.get(CUSTOMER, "c") is None


def test_audit_caps_long_strings(store: Store) -> None:
    store.audit(AuditRecord("verify", "c", "accept", details={"note": "x" * 1000}))
    assert store.audit_events()[0].details["note"] == "x" * 200
    assert store.verify_audit().ok


def test_edited_audit_event_detected(store: Store, store_factory: Backend) -> None:
    _five_events(store)
    store_factory.execute("UPDATE audit SET outcome = ? WHERE seq = ?", ("reject", 3))
    check = store.verify_audit()
    assert not check.ok and check.first_bad_seq == 3 and "edited" in (check.problem or "")


def test_removed_audit_event_detected(store: Store, store_factory: Backend) -> None:
    _five_events(store)
    store_factory.execute("DELETE FROM audit WHERE seq = ?", (2,))
    check = store.verify_audit()
    assert not check.ok and check.first_bad_seq == 2


def test_reordered_audit_events_detected(store: Store, store_factory: Backend) -> None:
    _five_events(store)
    for old, new in ((2, -2), (3, 2), (-2, 3)):
        store_factory.execute("UPDATE audit SET seq = ? WHERE seq = ?", (new, old))
    check = store.verify_audit()
    assert not check.ok and check.first_bad_seq == 2


def test_truncated_audit_tail_detected(store: Store, store_factory: Backend) -> None:
    _five_events(store)
    store_factory.execute("DELETE FROM audit WHERE seq >= ?", (4,))
    check = store.verify_audit()
    assert not check.ok and check.first_bad_seq == 4 and "removed" in (check.problem or "")


def test_appending_after_truncation_keeps_the_gap_visible(store: Store, store_factory: Backend) -> None:
    _five_events(store)
    store_factory.execute("DELETE FROM audit WHERE seq >= ?", (4,))
    store.audit(AuditRecord("verify", "c", "accept"))
    check = store.verify_audit()
    assert not check.ok and check.first_bad_seq == 4


# -- encryption and keys ----------------------------------------------------------------------------------


def _key_file() -> Path:
    return Path(os.environ["VOICEAUTH_KEY_FILE"])


def test_key_rotation_keeps_everything_readable(store: Store, store_factory: Backend) -> None:
    prints = [voiceprint(f"c{i}", seed=i) for i in range(5)] + [voiceprint("f", seed=9, ns=WATCHLIST)]
    for vp in prints:
        put(store, vp)
    (old_id,) = load_keyring().ids
    new_id = store.rotate_key(actor="sec-ops")
    assert new_id != old_id
    assert set(load_keyring().ids) == {old_id, new_id}  # the old key stays until retired explicitly
    assert load_keyring().users(old_id) == set() and len(load_keyring().users(new_id)) == 1
    assert load_keyring().retire_unused() == [old_id] and load_keyring().ids == (new_id,)
    assert {r[0] for r in store_factory.fetch("SELECT key_id FROM voiceprints", ())} == {new_id}
    for reopened in (store, store_factory.store()):
        for vp in prints:
            got = reopened.get(vp.namespace, vp.subject_id)
            assert got is not None and np.array_equal(got.embedding, vp.embedding)
    rotation = store.audit_events()[-1]
    assert (rotation.action, rotation.actor, rotation.details["voiceprints"]) == ("key_rotation", "sec-ops", 6)
    assert store.verify_audit().ok
    assert getattr(store, "integrity_check", lambda: True)()
    put(store, voiceprint("after", seed=20))
    assert store_factory.fetch("SELECT key_id FROM voiceprints WHERE subject_id = ?", ("after",)) == [(new_id,)]


def test_other_instance_follows_a_rotation(store_factory: Backend) -> None:
    first, second = store_factory.store(), store_factory.store()
    put(first, voiceprint("c", seed=1))
    first.rotate_key()
    got = second.get(CUSTOMER, "c")
    assert got is not None and np.array_equal(got.embedding, embedding(1))
    put(second, voiceprint("d", seed=2))
    assert first.get(CUSTOMER, "d") is not None


def test_wrong_key_file_is_key_missing(store: Store, store_factory: Backend, tmp_path: Path,
                                       monkeypatch: pytest.MonkeyPatch) -> None:
    put(store, voiceprint("c"))
    store.close()
    monkeypatch.setenv("VOICEAUTH_KEY_FILE", str(tmp_path / "other" / "keyring.json"))
    with pytest.raises(KeyMissingError, match="does not match"):
        store_factory.store()


def test_wrong_env_key_is_key_missing(store_factory: Backend, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VOICEAUTH_KEY", base64.b64encode(os.urandom(32)).decode())
    put(store_factory.store(), voiceprint("c"))
    monkeypatch.setenv("VOICEAUTH_KEY", base64.b64encode(os.urandom(32)).decode())
    with pytest.raises(KeyMissingError, match="VOICEAUTH_KEY"):
        store_factory.store()


def test_rotation_with_env_keys(store_factory: Backend, monkeypatch: pytest.MonkeyPatch) -> None:
    old, new = (base64.b64encode(os.urandom(32)).decode() for _ in range(2))
    monkeypatch.setenv("VOICEAUTH_KEY", old)
    store = store_factory.store()
    put(store, voiceprint("c", seed=1))
    with pytest.raises(KeyMissingError, match="VOICEAUTH_NEW_KEY"):
        store.rotate_key()
    monkeypatch.setenv("VOICEAUTH_NEW_KEY", new)
    new_id = store.rotate_key()
    assert store.get(CUSTOMER, "c") is not None
    store.close()
    assert store_factory.store().get(CUSTOMER, "c") is not None  # old + new both set: still fine
    monkeypatch.delenv("VOICEAUTH_NEW_KEY")
    with pytest.raises(KeyMissingError, match=new_id):
        store_factory.store()  # operator forgot to switch VOICEAUTH_KEY
    monkeypatch.setenv("VOICEAUTH_KEY", new)
    got = store_factory.store().get(CUSTOMER, "c")
    assert got is not None and np.array_equal(got.embedding, embedding(1))
    assert not _key_file().exists()


def test_ciphertext_moved_to_another_row_is_tampered(store: Store, store_factory: Backend) -> None:
    put(store, voiceprint("victim", seed=1))
    put(store, voiceprint("attacker", seed=2))
    store_factory.execute(
        "UPDATE voiceprints SET blob = (SELECT blob FROM voiceprints WHERE subject_id = ?) WHERE subject_id = ?",
        ("attacker", "victim"))
    with pytest.raises(TamperedError, match="voiceprint for victim failed authentication"):
        store.get(CUSTOMER, "victim")
    with pytest.raises(TamperedError):
        store.embeddings(CUSTOMER, "ecapa-v1")
    assert store.get(CUSTOMER, "attacker") is not None


def test_modified_ciphertext_is_tampered(store: Store, store_factory: Backend) -> None:
    put(store, voiceprint("c", seed=1))
    (blob,) = store_factory.fetch("SELECT blob FROM voiceprints WHERE subject_id = ?", ("c",))[0]
    flipped = bytearray(blob)
    flipped[20] ^= 0x01
    store_factory.execute("UPDATE voiceprints SET blob = ? WHERE subject_id = ?", (bytes(flipped), "c"))
    with pytest.raises(TamperedError, match="restore it from backup or re-enrol"):
        store.get(CUSTOMER, "c")
    assert not getattr(store, "integrity_check", lambda: False)()


@pytest.mark.parametrize(("column", "value"), [("model_id", "ecapa-v2"), ("complete", 0), ("recordings", 9),
                                               ("namespace", "watchlist")])
def test_edited_row_fields_are_tampered(store: Store, store_factory: Backend, column: str, value: Any) -> None:
    put(store, voiceprint("c", seed=1, complete=True))
    store_factory.execute(f"UPDATE voiceprints SET {column} = ? WHERE subject_id = ?", (value, "c"))
    with pytest.raises(TamperedError):
        store.get(CUSTOMER if column != "namespace" else WATCHLIST, "c")


def test_tampered_row_blocks_scoring_but_delete_still_works(store: Store, store_factory: Backend) -> None:
    put(store, voiceprint("c", seed=1))
    store_factory.execute("UPDATE voiceprints SET model_id = ? WHERE subject_id = ?", ("ecapa-v2", "c"))
    with pytest.raises(TamperedError):
        store.embeddings(CUSTOMER, "ecapa-v2")
    assert store.delete(CUSTOMER, "c", event=AuditRecord("delete", "c", "deleted"))
    assert store.embeddings(CUSTOMER, "ecapa-v2")[0] == []


def test_explicit_keyring(store_factory: Backend) -> None:
    ring = KeyRing.ephemeral()
    store = store_factory.store(keyring=ring)
    put(store, voiceprint("c", seed=1))
    assert store.get(CUSTOMER, "c") is not None
    assert not _key_file().exists()
    store.close()
    with pytest.raises(KeyMissingError):
        store_factory.store()
