"""1:N identification through the in-memory index: same answers as brute force, and a customer
erased (delete, opt-out, purge; in this process or another) is never returned again."""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import pytest

from voiceauth.client import VoiceAuth
from voiceauth.results import Probe
from voiceauth.scoring.calibration import default_calibration
from voiceauth.services.index import IdentifyIndex, VoiceprintIndex, faiss_available
from voiceauth.store.base import Namespace, Voiceprint
from voiceauth.store.sqlite import SQLiteStore

MODEL = "index-test-model"
DIM = 32
BACKENDS = ["numpy"] + (["faiss"] if faiss_available() else [])


class NoModel:
    """Identification here takes precomputed probes: the embedder is never called."""

    model_id = MODEL
    dim = DIM

    def embed(self, signals: Sequence[np.ndarray]) -> np.ndarray:
        raise AssertionError("no audio in these tests")


def unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=-1, keepdims=True)).astype(np.float32)


def population(n: int, seed: int = 0, when: float | None = None) -> list[Voiceprint]:
    vectors = unit(np.random.default_rng(seed).standard_normal((n, DIM)))
    now = time.time() if when is None else when
    return [Voiceprint(f"c{i:04d}", Namespace.CUSTOMER, MODEL, v, 20.0, 2, True, now, now)
            for i, v in enumerate(vectors)]


def probe_of(vp: Voiceprint, seed: int = 1) -> Probe:
    noise = np.random.default_rng(seed).standard_normal(DIM).astype(np.float32) * 0.02
    return Probe(unit(vp.embedding + noise), MODEL, 8.0)


@pytest.fixture
def va(tmp_path: Path) -> Iterator[VoiceAuth]:
    client = VoiceAuth(tmp_path / "vp.db", embedder=NoModel(), spoof=False,  # type: ignore[arg-type]
                       calibration=dataclasses.replace(default_calibration(), model_id=MODEL))
    try:
        yield client
    finally:
        client.close()


@pytest.mark.parametrize("backend", BACKENDS)
def test_index_search_matches_brute_force_and_follows_removals(tmp_path: Path, backend: str) -> None:
    store = SQLiteStore(tmp_path / "vp.db")
    try:
        prints = population(3000)
        store.bulk_insert(prints)
        index = VoiceprintIndex(MODEL, backend=backend)
        index.build(store, batch_size=700)
        assert len(index) == 3000 and index.backend == backend
        matrix = np.stack([p.embedding for p in prints])
        rng = np.random.default_rng(5)
        hits = 0
        for q in unit(rng.standard_normal((40, DIM))):
            exact = [prints[i].subject_id for i in np.argsort(-(matrix @ q))[:5]]
            found = index.search(store, q, 5)
            hits += len({cid for cid, _ in found} & set(exact))
            assert [s for _, s in found] == sorted((s for _, s in found), reverse=True)
        assert hits / (40 * 5) >= 0.99  # recall@5 against brute force
        index.remove(["c0001", "c0002"])
        assert len(index) == 2998
        assert all(cid not in ("c0001", "c0002") for cid, _ in index.search(store, prints[1].embedding, 10))
    finally:
        store.close()


def test_identify_ranks_the_caller_first_with_exact_scores(va: VoiceAuth) -> None:
    prints = population(500)
    va.store.bulk_insert(prints)  # type: ignore[attr-defined]
    found = va.identify(probe_of(prints[17]), top_k=3)
    assert found[0].customer_id == "c0017"
    assert found[0].score == round(float(prints[17].embedding @ probe_of(prints[17]).embedding), 4)


def test_erased_customers_are_never_identified_in_this_process(va: VoiceAuth) -> None:
    prints = population(300, when=time.time() - 400 * 86400)
    va.store.bulk_insert(prints)  # type: ignore[attr-defined]
    fresh = population(1, seed=9)[0]
    va.store.bulk_insert([dataclasses.replace(fresh, subject_id="fresh")])  # type: ignore[attr-defined]
    targets = {"delete": prints[3], "opt_out": prints[4]}
    for vp in targets.values():
        assert va.identify(probe_of(vp), top_k=1)[0].customer_id == vp.subject_id
    index = va.services.index.index(va.store, MODEL)
    assert index is not None and len(index) == 301
    assert va.delete("c0003")
    assert len(index) == 300  # dropped from memory at once, before any search
    va.opt_out("c0004")
    for vp in targets.values():
        assert vp.subject_id not in [c.customer_id for c in va.identify(probe_of(vp), top_k=100)]
    purged = va.purge_unused(365)
    assert len(purged) == 298 and len(index) == 1
    assert [c.customer_id for c in va.identify(probe_of(prints[10]), top_k=100)] == ["fresh"]


def test_changes_by_another_process_reach_the_index_before_the_next_search(va: VoiceAuth, tmp_path: Path) -> None:
    prints = population(200)
    va.store.bulk_insert(prints)  # type: ignore[attr-defined]
    assert va.identify(probe_of(prints[7]), top_k=1)[0].customer_id == "c0007"  # index built
    other = VoiceAuth(tmp_path / "vp.db", embedder=NoModel(), spoof=False,  # type: ignore[arg-type]
                      calibration=dataclasses.replace(default_calibration(), model_id=MODEL))
    try:
        other.delete("c0007")
        newcomer = dataclasses.replace(population(1, seed=42)[0], subject_id="newcomer")
        other.store.bulk_insert([newcomer])  # type: ignore[attr-defined]
    finally:
        other.close()
    assert "c0007" not in [c.customer_id for c in va.identify(probe_of(prints[7]), top_k=100)]
    assert va.identify(probe_of(newcomer), top_k=1)[0].customer_id == "newcomer"


def test_a_candidate_missing_from_the_store_is_never_returned(va: VoiceAuth) -> None:
    """Even a change the feed cannot see (a row removed behind the store's back) is caught by the
    exact re-scoring, which reads every candidate from the store."""
    prints = population(100)
    va.store.bulk_insert(prints)  # type: ignore[attr-defined]
    assert va.identify(probe_of(prints[5]), top_k=1)[0].customer_id == "c0005"
    with va.store._write() as con:  # type: ignore[attr-defined]
        con.execute("DELETE FROM voiceprints WHERE subject_id = 'c0005'")
    assert "c0005" not in [c.customer_id for c in va.identify(probe_of(prints[5]), top_k=100)]


def test_stores_without_a_change_feed_are_searched_whole() -> None:
    class Plain:
        def embeddings(self, namespace: Namespace, model_id: str) -> tuple[list[str], np.ndarray]:
            return ["a", "b"], np.eye(2, dtype=np.float32)

    found = IdentifyIndex().search(Plain(), MODEL, np.array([0.0, 1.0], dtype=np.float32), 1)  # type: ignore[arg-type]
    assert found == [("b", 1.0)]


def test_the_index_is_never_written_to_disk(va: VoiceAuth, tmp_path: Path) -> None:
    va.store.bulk_insert(population(50))  # type: ignore[attr-defined]
    before = {p: p.stat().st_size for p in tmp_path.rglob("*") if p.is_file()}
    va.identify(probe_of(population(50)[0]), top_k=5)
    after = {p for p in tmp_path.rglob("*") if p.is_file()}
    assert after == set(before)  # no index or cache file appears beside the store
    assert not any(str(p).endswith((".index", ".faiss", ".npy")) for p in after)
