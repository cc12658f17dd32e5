"""The AS-norm cohort: every enrolled customer's voiceprint of one model, cached for a while."""

from __future__ import annotations

import threading
import time
from typing import TYPE_CHECKING

import numpy as np

from voiceauth.store.base import Namespace

if TYPE_CHECKING:
    from voiceauth.store.base import Store

COHORT_TTL_S = 60.0
"""How long the cohort matrix is reused before it is reloaded from the store."""


class CohortCache:
    """The customers' voiceprint matrix of one model, reloaded after ``ttl_s`` or ``invalidate()``.

    Verification, live calls and watchlist screening share it: decrypting every voiceprint
    per request would cost more than the scoring.
    """

    def __init__(self, ttl_s: float = COHORT_TTL_S) -> None:
        self.ttl_s = ttl_s
        self._entry: tuple[str, float, list[str], np.ndarray] | None = None
        self._lock = threading.Lock()

    def matrix(self, store: Store, model_id: str, exclude: str = "") -> np.ndarray:
        """The cohort of ``model_id`` (one unit row per customer), without customer ``exclude``."""
        with self._lock:
            now = time.monotonic()
            entry = self._entry
            if entry is None or entry[0] != model_id or now - entry[1] > self.ttl_s:
                ids, matrix = store.embeddings(Namespace.CUSTOMER, model_id)
                entry = self._entry = (model_id, now, ids, matrix)
        _, _, ids, matrix = entry
        return matrix[[i for i, cid in enumerate(ids) if cid != exclude]]

    def invalidate(self) -> None:
        """Reload on next use (after an enrolment or an erasure in this process)."""
        with self._lock:
            self._entry = None
