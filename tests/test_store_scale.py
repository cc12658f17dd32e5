"""The store's operations for a million customers, on SQLite and PostgreSQL: batched inserts that
never overwrite and keep the audit chain sealed, streaming reads, batched purge, the change feed."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from pg_server import fresh_database, pg_url  # noqa: F401 - pg_url is a fixture

from voiceauth.store import open_store
from voiceauth.store.base import AuditRecord, Consent, Namespace, StreamingStore, Voiceprint
from voiceauth.store.sql import SQLStore

MODEL = "scale-model"


def prints(ids: list[str], *, dim: int = 8, seed: int = 0, model: str = MODEL, complete: bool = True,
           when: float | None = None) -> list[Voiceprint]:
    rng = np.random.default_rng(seed)
    now = time.time() if when is None else when
    out = []
    for cid in ids:
        e = rng.standard_normal(dim).astype(np.float32)
        out.append(Voiceprint(cid, Namespace.CUSTOMER, model, e / np.linalg.norm(e), 12.0, 1, complete, now, now))
    return out


@pytest.fixture(params=["sqlite", "postgres"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[SQLStore]:
    where = str(tmp_path / "vp.db") if request.param == "sqlite" else fresh_database(request.getfixturevalue("pg_url"))
    opened = open_store(where)
    assert isinstance(opened, SQLStore) and isinstance(opened, StreamingStore)
    try:
        yield opened
    finally:
        opened.close()


def test_bulk_insert_batches_never_overwrite_skip_opt_outs_and_keep_the_chain(store: SQLStore) -> None:
    ids = [f"c{i:04d}" for i in range(250)]
    batches: list[int] = []
    result = store.bulk_insert(prints(ids), actor="migration", batch_size=100, on_batch=batches.append)
    assert result.inserted == 250 and batches == [100, 200, 250]
    original = store.get(Namespace.CUSTOMER, "c0007")
    assert original is not None and original.complete
    store.opt_out("late", event=AuditRecord("opt_out", "late", "opted_out"))
    again = store.bulk_insert(prints(["c0007", "late", "new"], seed=9), batch_size=2)
    assert (again.inserted, again.existing, again.opted_out) == (1, ["c0007"], ["late"])
    kept = store.get(Namespace.CUSTOMER, "c0007")
    assert kept is not None and np.array_equal(kept.embedding, original.embedding)  # not overwritten
    assert store.get(Namespace.CUSTOMER, "late") is None
    assert store.verify_audit().ok and store.integrity_check()
    enrolled = [e for e in store.audit_events() if e.action == "enroll"]
    assert len(enrolled) == 251 and {e.outcome for e in enrolled} == {"bulk"}
    assert store.consent("c0001") is None  # a migration: consent is held elsewhere
    # an ordinary write after a bulk load still extends a sealed chain
    store.audit(AuditRecord("verify", "c0001", "accept"))
    assert store.verify_audit().ok


def test_streaming_reads_match_the_whole_store_reads(store: SQLStore) -> None:
    ids = [f"c{i:04d}" for i in range(230)]
    store.bulk_insert(prints(ids) + prints(["half"], complete=False) + prints(["other"], model="m2"))
    assert store.count() == 232 and store.count(Namespace.CUSTOMER, MODEL) == 230
    assert list(store.iter_ids(Namespace.CUSTOMER, MODEL, batch_size=7)) == ids
    assert [i.subject_id for i in store.iter_list(batch_size=50)] == [i.subject_id for i in store.list()]
    whole_ids, whole = store.embeddings(Namespace.CUSTOMER, MODEL)
    parts = list(store.iter_embeddings(Namespace.CUSTOMER, MODEL, batch_size=64))
    assert [len(p[0]) for p in parts] == [64, 64, 64, 38]
    assert sum((p[0] for p in parts), []) == whole_ids
    assert np.array_equal(np.concatenate([p[1] for p in parts]), whole)
    found = store.get_many(Namespace.CUSTOMER, ["c0003", "nobody", "c0229", "c0003"])
    assert sorted(found) == ["c0003", "c0229"]


def test_batched_purge_erases_in_batches_and_audits_each(store: SQLStore) -> None:
    old = time.time() - 400 * 86400
    store.bulk_insert(prints([f"old{i:03d}" for i in range(120)], when=old) + prints(["fresh"]))
    seen: list[list[str]] = []
    count = store.purge_unused_batched(time.time() - 365 * 86400, actor="retention", batch_size=50,
                                       on_batch=seen.append)
    assert count == 120 and [len(b) for b in seen] == [50, 50, 20]
    assert list(store.iter_ids()) == ["fresh"]
    purged = [e for e in store.audit_events() if e.action == "purge"]
    assert len(purged) == 120 and {e.actor for e in purged} == {"retention"}
    assert store.verify_audit().ok and store.integrity_check()


def test_change_feed_lists_every_voiceprint_change_in_order(store: SQLStore) -> None:
    start = store.change_seq()
    store.bulk_insert(prints(["a", "b", "c"]))
    store.audit(AuditRecord("verify", "a", "accept"))  # not a voiceprint change
    store.delete(Namespace.CUSTOMER, "b", event=AuditRecord("delete", "b", "deleted"))
    store.opt_out("c", event=AuditRecord("opt_out", "c", "opted_out"))
    store.upsert(Namespace.CUSTOMER, "a", lambda current: prints(["a"], seed=3)[0],
                 event=AuditRecord("enroll", "a", "replace"), consent=Consent.now(channel="t", notice_version="1",
                                                                                 captured_by="t"))
    last, changes = store.voiceprint_changes(start)
    assert [(c.subject_id, c.erased) for c in changes] == [
        ("a", False), ("b", False), ("c", False), ("b", True), ("c", True), ("a", False)]
    assert last == store.change_seq() and store.voiceprint_changes(last) == (last, [])
    assert store.voiceprint_changes(start, limit=2)[1] == changes[:2]


def test_settings_are_audited_and_read_back(store: SQLStore) -> None:
    assert store.setting("cohort:x") is None
    store.put_setting("cohort:x", '{"version": 1}', event=AuditRecord("cohort_refresh", None, "drawn"))
    assert store.setting("cohort:x") == '{"version": 1}'
    assert store.audit_events()[-1].action == "cohort_refresh" and store.verify_audit().ok
