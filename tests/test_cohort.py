"""CohortCache: the AS-norm cohort is reused for its TTL, per model, and dropped on invalidate()."""

from __future__ import annotations

import numpy as np
import pytest

from voiceauth import cohort
from voiceauth.cohort import CohortCache
from voiceauth.store.base import Namespace


class CountingStore:
    def __init__(self) -> None:
        self.loads: list[str] = []

    def embeddings(self, namespace: Namespace, model_id: str) -> tuple[list[str], np.ndarray]:
        assert namespace is Namespace.CUSTOMER
        self.loads.append(model_id)
        return ["a", "b", "c"], np.eye(3, dtype=np.float32)


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
