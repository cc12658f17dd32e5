"""The AS-norm cohort: bounded, deterministic, recorded and versioned; the same decisions as the
whole-store cohort while the store is smaller than the bound; erasures leave it; the public cohort
is pinned and blended in only while the store is small."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from voiceauth.client import VoiceAuth
from voiceauth.errors import TamperedError
from voiceauth.results import Probe
from voiceauth.scoring.calibration import default_calibration
from voiceauth.scoring.normalisation import Normalisation
from voiceauth.services import cohort
from voiceauth.services.cohort import PUBLIC_COHORTS, PUBLIC_UNTIL, CohortCache, public_cohort
from voiceauth.store.base import AuditRecord, Namespace, Voiceprint
from voiceauth.store.sqlite import SQLiteStore

MODEL = "cohort-test-model"
ECAPA = "speechbrain/spkrec-ecapa-voxceleb@0575cb64"
DATA = Path(cohort.__file__).resolve().parents[1] / "data"


class CountingStore:
    """A store without the streaming operations: the whole-store behaviour of old."""

    def __init__(self) -> None:
        self.loads: list[str] = []

    def embeddings(self, namespace: Namespace, model_id: str) -> tuple[list[str], np.ndarray]:
        assert namespace is Namespace.CUSTOMER
        self.loads.append(model_id)
        return ["a", "b", "c"], np.eye(3, dtype=np.float32)


def unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=-1, keepdims=True)).astype(np.float32)


def population(n: int, *, dim: int = 16, seed: int = 0, model: str = MODEL, prefix: str = "c") -> list[Voiceprint]:
    vectors = unit(np.random.default_rng(seed).standard_normal((n, dim)))
    now = time.time()
    return [Voiceprint(f"{prefix}{i:04d}", Namespace.CUSTOMER, model, v, 20.0, 2, True, now, now)
            for i, v in enumerate(vectors)]


class WholeStore:
    """The old cohort: every complete voiceprint of the model but the claimed customer's."""

    def matrix(self, store: SQLiteStore, model_id: str, exclude: str = "", channel: str | None = None) -> np.ndarray:
        ids, matrix = store.embeddings(Namespace.CUSTOMER, model_id)
        return matrix[[i for i, cid in enumerate(ids) if cid != exclude]]

    def invalidate(self) -> None:
        pass


@pytest.fixture
def store(tmp_path: Path) -> Iterator[SQLiteStore]:
    opened = SQLiteStore(tmp_path / "vp.db")
    try:
        yield opened
    finally:
        opened.close()


def rows(matrix: np.ndarray) -> list[tuple[float, ...]]:
    return sorted(tuple(np.round(r, 6)) for r in matrix)


# -- stores without a change feed: as before --------------------------------------------------------
def test_cohort_is_cached_per_model_and_excludes_the_claimed_customer() -> None:
    store, cache = CountingStore(), CohortCache(ttl_s=60.0)
    assert cache.matrix(store, "m1", exclude="b").tolist() == [[1, 0, 0], [0, 0, 1]]  # type: ignore[arg-type]
    assert len(cache.matrix(store, "m1")) == 3  # type: ignore[arg-type]
    assert store.loads == ["m1"]
    cache.matrix(store, "m2")  # type: ignore[arg-type]
    assert store.loads == ["m1", "m2"]
    cache.invalidate()
    cache.matrix(store, "m2")  # type: ignore[arg-type]
    assert store.loads == ["m1", "m2", "m2"]


def test_cohort_reloads_after_its_ttl(monkeypatch: pytest.MonkeyPatch) -> None:
    now = [100.0]
    monkeypatch.setattr(cohort.time, "monotonic", lambda: now[0])
    store, cache = CountingStore(), CohortCache(ttl_s=60.0)
    cache.matrix(store, "m1")  # type: ignore[arg-type]
    now[0] += 60.0
    cache.matrix(store, "m1")  # type: ignore[arg-type]
    assert store.loads == ["m1"]
    now[0] += 0.5
    cache.matrix(store, "m1")  # type: ignore[arg-type]
    assert store.loads == ["m1", "m1"]


# -- the bounded cohort -------------------------------------------------------------------------------
def test_below_the_bound_the_cohort_is_the_whole_store(store: SQLiteStore) -> None:
    store.bulk_insert(population(80))
    cache = CohortCache(size=100)
    ids, whole = store.embeddings(Namespace.CUSTOMER, MODEL)
    assert rows(cache.matrix(store, MODEL)) == rows(whole)
    without = cache.matrix(store, MODEL, exclude="c0005")
    assert rows(without) == rows(np.delete(whole, ids.index("c0005"), axis=0))
    info = cache.info(store, MODEL)
    assert info.whole_store and info.version is None and info.rows == 80 and info.public_rows == 0


def test_above_the_bound_a_recorded_deterministic_sample_is_used(store: SQLiteStore, tmp_path: Path) -> None:
    store.bulk_insert(population(500))
    first = CohortCache(size=100)
    m = first.matrix(store, MODEL)
    assert m.shape == (100, 16) and np.allclose(np.linalg.norm(m, axis=1), 1.0, atol=1e-5)
    record = json.loads(store.setting(f"cohort:{MODEL}") or "{}")
    assert record["version"] == 1 and len(record["members"]) == 100
    assert [e.action for e in store.audit_events()].count("cohort_refresh") == 1
    # a fresh process loads the recorded members (no new draw) and gets the same cohort
    other = SQLiteStore(tmp_path / "vp.db")
    try:
        again = CohortCache(size=100)
        assert rows(again.matrix(other, MODEL)) == rows(m)
        assert json.loads(other.setting(f"cohort:{MODEL}") or "{}")["version"] == 1
        # a scheduled re-draw bumps the version; the same store gives the same members (bottom-k)
        assert again.refresh(other, MODEL) == 2
        assert json.loads(other.setting(f"cohort:{MODEL}") or "{}")["members"] == record["members"]
    finally:
        other.close()
    # the claimed customer is left out when a member
    member = record["members"][0]
    assert len(first.matrix(store, MODEL, exclude=member)) == 99
    assert len(first.matrix(store, MODEL, exclude="not-a-member")) == 100


def test_a_stale_draw_is_redrawn_and_new_customers_enter_by_their_hash(store: SQLiteStore) -> None:
    store.bulk_insert(population(300))
    cache = CohortCache(size=50, refresh_s=3600)
    cache.matrix(store, MODEL)
    record = json.loads(store.setting(f"cohort:{MODEL}") or "{}")
    store.bulk_insert(population(300, seed=1, prefix="n"))
    stale = {**record, "drawn_at": time.time() - 7200}
    store.put_setting(f"cohort:{MODEL}", json.dumps(stale), event=AuditRecord("cohort_refresh", None, "test"))
    fresh = CohortCache(size=50, refresh_s=3600)
    fresh.matrix(store, MODEL)
    redrawn = json.loads(store.setting(f"cohort:{MODEL}") or "{}")
    assert redrawn["version"] == 2
    stayed = set(redrawn["members"]) & set(record["members"])
    assert 10 <= len(stayed) < 50 and any(m.startswith("n") for m in redrawn["members"])


def test_erased_members_leave_the_cohort_and_new_customers_join_a_small_one(store: SQLiteStore,
                                                                              tmp_path: Path) -> None:
    store.bulk_insert(population(30))
    cache = CohortCache(size=100, poll_s=0.0)
    assert len(cache.matrix(store, MODEL)) == 30
    other = SQLiteStore(tmp_path / "vp.db")  # another process
    try:
        other.delete(Namespace.CUSTOMER, "c0001", event=AuditRecord("delete", "c0001", "deleted"))
        other.opt_out("c0002", event=AuditRecord("opt_out", "c0002", "opted_out"))
        other.bulk_insert(population(3, seed=5, prefix="new"))
    finally:
        other.close()
    _, whole = store.embeddings(Namespace.CUSTOMER, MODEL)
    assert rows(cache.matrix(store, MODEL)) == rows(whole) and len(whole) == 31


def test_erased_sample_members_leave_at_once(store: SQLiteStore) -> None:
    store.bulk_insert(population(300))
    cache = CohortCache(size=100, poll_s=3600.0)
    cache.matrix(store, MODEL)
    member = json.loads(store.setting(f"cohort:{MODEL}") or "{}")["members"][3]
    gone = store.get(Namespace.CUSTOMER, member)
    assert gone is not None
    store.delete(Namespace.CUSTOMER, member, event=AuditRecord("delete", member, "deleted"))
    cache.invalidate()  # what VoiceAuth.delete does in this process
    m = cache.matrix(store, MODEL)
    assert len(m) == 99 and not np.any(np.all(np.isclose(m, gone.embedding), axis=1))


def test_bounded_cohort_gives_the_same_decisions_as_the_whole_store(tmp_path: Path) -> None:
    """While the store is smaller than the bound, every verification decides exactly as with
    the old cohort (every complete voiceprint of the model but the claimed customer's)."""

    class NoModel:
        model_id, dim = MODEL, 16

    va = VoiceAuth(tmp_path / "vp.db", embedder=NoModel(), spoof=False,  # type: ignore[arg-type]
                   calibration=dataclasses.replace(default_calibration(), model_id=MODEL))
    try:
        prints = population(150)
        va.store.bulk_insert(prints)  # type: ignore[attr-defined]
        rng = np.random.default_rng(3)
        probes = [(p.subject_id, Probe(unit(p.embedding + rng.normal(0, s, 16).astype(np.float32)), MODEL, d))
                  for p, s, d in zip(prints[:60], np.tile([0.05, 0.3, 0.8], 20), np.tile([2.5, 6.0, 15.0], 20),
                                     strict=True)]
        probes += [(prints[i].subject_id, Probe(prints[i + 1].embedding, MODEL, 8.0)) for i in range(60, 90)]
        va.services.cohort = CohortCache(size=2000)
        bounded = [va.verify(cid, probe) for cid, probe in probes]
        va.services.cohort = WholeStore()  # type: ignore[assignment]
        whole = [va.verify(cid, probe) for cid, probe in probes]
    finally:
        va.close()
    assert [r.decision for r in bounded] == [r.decision for r in whole]
    assert [r.llr for r in bounded] == pytest.approx([r.llr for r in whole], abs=1e-3)
    assert {r.normalisation for r in bounded} == {Normalisation.AS_NORM}
    assert len({r.decision for r in bounded}) >= 2  # the trials span more than one outcome


@pytest.mark.integration  # 500 verifications against a 2,625-customer store: slow for the unit suite
def test_above_the_bound_the_sampled_cohort_decides_as_the_whole_store(tmp_path: Path) -> None:
    """Above ``COHORT_SIZE`` the cohort is a 2,000-voiceprint sample instead of the whole store. On real
    ECAPA embeddings (the shipped public cohort: 125 LibriSpeech speakers, clean and phone channel)
    among 2,500 more voiceprints drawn from their distribution, the sample decides as the whole store
    would: a customer's clean voiceprint claimed by their own phone-channel speech (genuine) and by
    the next speaker's (impostor), 250 trials, spread across every decision. (Measured: 99.6 % of the
    decisions agree; the sample's top-100 impostors are less extreme, so LLRs move up by 0.5 on average.)"""

    class NoModel:
        model_id, dim = ECAPA, 192

    clean, phone = public_cohort(ECAPA, "clean"), public_cohort(ECAPA, "phone")
    assert clean is not None and phone is not None
    real = np.concatenate([clean, phone]).astype(np.float64)
    rng = np.random.default_rng(5)
    others = unit(rng.multivariate_normal(real.mean(axis=0), np.cov(real, rowvar=False), 2500))
    now = time.time()
    prints = [Voiceprint(f"c{i:03d}", Namespace.CUSTOMER, ECAPA, v, 20.0, 2, True, now, now)
              for i, v in enumerate(clean)]
    prints += [Voiceprint(f"o{i:04d}", Namespace.CUSTOMER, ECAPA, v, 20.0, 2, True, now, now)
               for i, v in enumerate(others)]
    va = VoiceAuth(tmp_path / "vp.db", embedder=NoModel(), spoof=False, harvest=False)  # type: ignore[arg-type]
    try:
        va.store.bulk_insert(prints)  # type: ignore[attr-defined]
        probes = [(f"c{i:03d}", Probe(phone[i], ECAPA, 6.0)) for i in range(len(phone))]
        probes += [(f"c{(i + 1) % len(phone):03d}", Probe(phone[i], ECAPA, 6.0)) for i in range(len(phone))]
        va.services.cohort = CohortCache(size=cohort.COHORT_SIZE)
        bounded = [va.verify(cid, probe) for cid, probe in probes]
        assert len(va.services.cohort_matrix()) == cohort.COHORT_SIZE  # a sample, not the 2,625
        va.services.cohort = WholeStore()  # type: ignore[assignment]
        whole = [va.verify(cid, probe) for cid, probe in probes]
    finally:
        va.close()
    agree = np.mean([b.decision is w.decision for b, w in zip(bounded, whole, strict=True)])
    assert agree >= 0.97, agree
    false_accepts = [sum(r.decision.value == "accept" for r in run[len(phone):]) for run in (bounded, whole)]
    assert false_accepts[0] <= false_accepts[1] + 1, false_accepts  # the sample is not more permissive
    genuine = len(phone)
    wrong = [sum((r.decision.value == "accept") != (k < genuine) for k, r in enumerate(run) if r.decision.value
                 != "inconclusive") for run in (bounded, whole)]
    assert wrong[0] <= wrong[1] + 2, wrong  # no more errors than the whole store, within two trials
    assert len({r.decision for r in bounded}) >= 2


# -- the public cohort ------------------------------------------------------------------------------
def test_public_cohorts_are_pinned_described_and_unit_length() -> None:
    for model_id, (name, pin) in PUBLIC_COHORTS.items():
        payload = (DATA / name).read_bytes()
        assert hashlib.sha256(payload).hexdigest() == pin
        manifest = json.loads((DATA / name.replace(".npz", ".json")).read_text())
        assert manifest["npz_sha256"] == pin and manifest["model_id"] == model_id
        assert "CC BY 4.0" in manifest["licence"] and "LibriSpeech" in manifest["source"]
        for channel in ("clean", "phone"):
            m = public_cohort(model_id, channel)
            assert m is not None and m.shape == (manifest["channels"][channel], manifest["dim"])
            assert np.allclose(np.linalg.norm(m, axis=1), 1.0, atol=1e-4)
    assert public_cohort(MODEL) is None
    assert public_cohort(ECAPA, "ivr-8k") is public_cohort(ECAPA, "phone") is public_cohort(ECAPA)


def test_a_tampered_public_cohort_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    cohort._public_file.cache_clear()
    monkeypatch.setitem(PUBLIC_COHORTS, ECAPA, (PUBLIC_COHORTS[ECAPA][0], "0" * 64))
    try:
        with pytest.raises(TamperedError, match="reinstall"):
            public_cohort(ECAPA)
    finally:
        cohort._public_file.cache_clear()


def test_public_cohort_is_blended_in_only_while_the_store_is_small(store: SQLiteStore) -> None:
    public = public_cohort(ECAPA)
    assert public is not None
    cache = CohortCache(poll_s=0.0)
    assert rows(cache.matrix(store, ECAPA)) == rows(public)  # AS-norm from the first customer
    store.bulk_insert(population(10, dim=192, model=ECAPA))
    m = cache.matrix(store, ECAPA, exclude="c0003")
    assert len(m) == len(public) + 9
    store.bulk_insert(population(PUBLIC_UNTIL, dim=192, model=ECAPA, prefix="d"))
    info = cache.info(store, ECAPA)
    assert info.public_rows == 0 and info.store_rows == PUBLIC_UNTIL + 10
