"""1:N identification at scale: an in-memory index of the customers' voiceprints, never on disk.

``VoiceAuth.identify`` asks "which enrolled customers sound most like this caller?". Decrypting
every voiceprint per call is O(customers); instead each process keeps, per model, an index built
once from the decrypted voiceprints (streamed from the store in batches):

- **Search**: an exact scan of compact copies of the voiceprints (FAISS ``IndexScalarQuantizer``
  with one byte per dimension over a fixed range when ``faiss-cpu`` is installed: 192 bytes per
  customer, one million in about 15 ms on one core; else a float32 NumPy matrix), then **exact
  re-scoring** of the best
  ``candidates`` (32) against their current voiceprints, read and decrypted from the store. A
  candidate the store no longer holds (or no longer holds complete, of this model) is never
  returned, whatever the index says.
- **Kept current**: every change of a customer voiceprint is audited in its own transaction, and
  before each search the index applies the changes audited since it last looked (the store's
  change feed, :meth:`~voiceauth.store.streaming.StreamingOps.voiceprint_changes`): enrolments,
  deletions, opt-outs and purges made by any process take effect at once. In this process,
  :meth:`IdentifyIndex.forget` also drops an erased customer's copy from memory immediately.
- **Never written anywhere**: the index lives in process memory only (no FAISS ``write_index``, no
  cache file); a restart rebuilds it from the encrypted store.

Stores without the streaming operations are searched the old way (every voiceprint, per call).
"""

from __future__ import annotations

import threading
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING

import numpy as np

from voiceauth.store.base import Namespace, StreamingStore

if TYPE_CHECKING:
    from voiceauth.store.base import Store

CANDIDATES = 32
"""How many of the index's best matches are re-scored exactly from the store."""
BUILD_BATCH = 10_000
SEARCH_THREADS = 1
"""FAISS (OpenMP) threads per search."""
CODE_RANGE = 0.5
"""The FAISS copies code each dimension of a unit vector in 8 bits over [-CODE_RANGE, CODE_RANGE]
(fixed, so no training on customer data and the same codes in every process); a rarer, larger
component clips, which only affects the pre-selection: the candidates are re-scored exactly."""
REBUILD_AFTER = 100_000
"""More changed customers than this since the last look (a bulk load elsewhere): rebuild instead."""


class _NumpyBackend:
    """Float32 rows with labels; erased rows are zeroed and masked, compacted when half are dead."""

    def __init__(self, dim: int) -> None:
        self._rows = np.zeros((1024, dim), dtype=np.float32)
        self._labels = np.full(1024, -1, dtype=np.int64)
        self._where: dict[int, int] = {}
        self._used = 0

    def add(self, labels: np.ndarray, matrix: np.ndarray) -> None:
        need = self._used + len(labels)
        if need > len(self._rows):
            size = max(need, 2 * len(self._rows))
            self._rows = np.concatenate([self._rows, np.zeros((size - len(self._rows), self._rows.shape[1]),
                                                             dtype=np.float32)])
            self._labels = np.concatenate([self._labels, np.full(size - len(self._labels), -1, dtype=np.int64)])
        self._rows[self._used:need] = matrix
        self._labels[self._used:need] = labels
        self._where.update((int(lab), self._used + i) for i, lab in enumerate(labels))
        self._used = need

    def remove(self, labels: Iterable[int]) -> None:
        for lab in labels:
            row = self._where.pop(int(lab), None)
            if row is not None:
                self._rows[row] = 0.0
                self._labels[row] = -1
        if self._used > 1024 and len(self._where) < self._used // 2:
            alive = np.flatnonzero(self._labels[:self._used] >= 0)
            self._rows[:len(alive)] = self._rows[alive]
            self._labels[:len(alive)] = self._labels[alive]
            self._rows[len(alive):self._used] = 0.0
            self._labels[len(alive):self._used] = -1
            self._used = len(alive)
            self._where = {int(lab): i for i, lab in enumerate(self._labels[:self._used])}

    def search(self, probe: np.ndarray, k: int) -> np.ndarray:
        if not self._where:
            return np.zeros(0, dtype=np.int64)
        scores = self._rows[:self._used] @ probe
        scores[self._labels[:self._used] < 0] = -np.inf
        k = min(k, len(self._where))
        top = np.argpartition(-scores, k - 1)[:k]
        return self._labels[top[np.argsort(-scores[top])]]

    def __len__(self) -> int:
        return len(self._where)


class _FaissBackend:
    """FAISS exact scan over 8-bit copies (:data:`CODE_RANGE`), with our labels (``IndexIDMap2``)."""

    def __init__(self, dim: int) -> None:
        import faiss

        # one thread per search: a service runs searches side by side, and OpenMP workers spinning
        # between searches on a busy machine cost more than they save (measured: 47 ms vs 1.5 ms)
        faiss.omp_set_num_threads(SEARCH_THREADS)
        self._faiss = faiss
        codes = faiss.IndexScalarQuantizer(dim, faiss.ScalarQuantizer.QT_8bit_uniform, faiss.METRIC_INNER_PRODUCT)
        codes.train(np.array([[-CODE_RANGE] * dim, [CODE_RANGE] * dim], dtype=np.float32))  # the range, nothing else
        self._index = faiss.IndexIDMap2(codes)

    def add(self, labels: np.ndarray, matrix: np.ndarray) -> None:
        self._index.add_with_ids(np.ascontiguousarray(matrix, dtype=np.float32), labels.astype(np.int64))

    def remove(self, labels: Iterable[int]) -> None:
        wanted = np.fromiter((int(x) for x in labels), dtype=np.int64)
        if len(wanted):
            self._index.remove_ids(self._faiss.IDSelectorBatch(wanted))

    def search(self, probe: np.ndarray, k: int) -> np.ndarray:
        if self._index.ntotal == 0:
            return np.zeros(0, dtype=np.int64)
        _, labels = self._index.search(np.ascontiguousarray(probe[None], dtype=np.float32),
                                       min(k, self._index.ntotal))
        return labels[0][labels[0] >= 0]

    def __len__(self) -> int:
        return int(self._index.ntotal)


def faiss_available() -> bool:
    try:
        import faiss  # noqa: F401
    except ImportError:
        return False
    return True


class VoiceprintIndex:
    """The complete customer voiceprints of one model, searchable; see the module docstring."""

    def __init__(self, model_id: str, *, backend: str = "auto", candidates: int = CANDIDATES) -> None:
        if backend not in ("auto", "faiss", "numpy"):
            raise ValueError(f"backend must be auto, faiss or numpy, not {backend!r}")
        self.model_id = model_id
        self.candidates = candidates
        self._backend_name = ("faiss" if faiss_available() else "numpy") if backend == "auto" else backend
        self._backend: _NumpyBackend | _FaissBackend | None = None
        self._label: dict[str, int] = {}
        self._ids: list[str | None] = []
        self._seq = 0
        self.built = False

    @property
    def backend(self) -> str:
        return self._backend_name

    def __len__(self) -> int:
        return len(self._label)

    def _add(self, ids: Sequence[str], matrix: np.ndarray) -> None:
        if not len(ids):
            return
        if self._backend is None:
            dim = matrix.shape[1]
            self._backend = _FaissBackend(dim) if self._backend_name == "faiss" else _NumpyBackend(dim)
        self.remove(ids)
        start = len(self._ids)
        labels = np.arange(start, start + len(ids), dtype=np.int64)
        self._ids.extend(ids)
        self._label.update(zip(ids, range(start, start + len(ids)), strict=True))
        self._backend.add(labels, matrix)

    def remove(self, ids: Iterable[str]) -> None:
        """Drop these customers' copies from memory now (no-op for ids not indexed)."""
        labels = [self._label.pop(cid) for cid in ids if cid in self._label]
        for lab in labels:
            self._ids[lab] = None
        if labels and self._backend is not None:
            self._backend.remove(labels)

    def build(self, store: StreamingStore, batch_size: int = BUILD_BATCH) -> None:
        """Load every complete voiceprint of the model, streamed and decrypted batch by batch."""
        self._backend, self._label, self._ids = None, {}, []
        self._seq = store.change_seq()  # first: a change racing the build is applied again, harmlessly
        for ids, matrix in store.iter_embeddings(Namespace.CUSTOMER, self.model_id, batch_size=batch_size):
            self._add(ids, matrix)
        self.built = True

    def sync(self, store: StreamingStore) -> int:
        """Apply the voiceprint changes audited since the last look; how many customers changed."""
        touched: set[str] = set()
        while True:
            last, changes = store.voiceprint_changes(self._seq)
            self._seq = last
            touched.update(c.subject_id for c in changes)
            if not changes:
                break
        if len(touched) > REBUILD_AFTER:
            self.build(store)
            return len(touched)
        if touched:
            current = store.get_many(Namespace.CUSTOMER, sorted(touched))
            self.remove(touched)
            fresh = [vp for vp in current.values() if vp.complete and vp.model_id == self.model_id]
            if fresh:
                self._add([vp.subject_id for vp in fresh], np.stack([vp.embedding for vp in fresh]))
        return len(touched)

    def search(self, store: StreamingStore, probe: np.ndarray, top_k: int) -> list[tuple[str, float]]:
        """The ``top_k`` customers closest to ``probe``, scored exactly on their current voiceprints."""
        if self._backend is None:
            return []
        labels = self._backend.search(probe, max(top_k, self.candidates))
        candidates = [cid for cid in (self._ids[int(lab)] for lab in labels) if cid is not None]
        current = store.get_many(Namespace.CUSTOMER, candidates)
        gone = [cid for cid in candidates if cid not in current or not current[cid].complete
                or current[cid].model_id != self.model_id]
        self.remove(gone)  # erased or changed since the last sync: never returned
        scored = [(cid, float(current[cid].embedding @ probe)) for cid in candidates if cid not in gone]
        scored.sort(key=lambda item: -item[1])
        return scored[:top_k]


class IdentifyIndex:
    """One :class:`VoiceprintIndex` per model, built on first use, shared by a ``VoiceAuth``'s threads."""

    def __init__(self, *, backend: str = "auto", candidates: int = CANDIDATES) -> None:
        self.backend = backend
        self.candidates = candidates
        self._indexes: dict[str, VoiceprintIndex] = {}
        self._lock = threading.Lock()

    def _ready(self, store: StreamingStore, model_id: str) -> VoiceprintIndex:
        index = self._indexes.get(model_id)
        if index is None:
            index = VoiceprintIndex(model_id, backend=self.backend, candidates=self.candidates)
            index.build(store)
            self._indexes[model_id] = index
        else:
            index.sync(store)
        return index

    def index(self, store: Store, model_id: str) -> VoiceprintIndex | None:
        """The model's index, built (or brought up to date) now; None for a store without a change feed."""
        if not isinstance(store, StreamingStore):
            return None
        with self._lock:
            return self._ready(store, model_id)

    def search(self, store: Store, model_id: str, probe: np.ndarray, top_k: int) -> list[tuple[str, float]]:
        """The ``top_k`` enrolled customers of ``model_id`` most similar to ``probe``, best first."""
        if not isinstance(store, StreamingStore):
            ids, matrix = store.embeddings(Namespace.CUSTOMER, model_id)
            if not ids:
                return []
            scores = matrix @ probe
            return [(ids[i], float(scores[i])) for i in np.argsort(-scores)[:top_k]]
        with self._lock:
            return self._ready(store, model_id).search(store, probe, top_k)

    def forget(self, ids: Iterable[str]) -> None:
        """Erased in this process: drop these customers from every index in memory at once."""
        ids = list(ids)
        with self._lock:
            for index in self._indexes.values():
                index.remove(ids)

    def clear(self) -> None:
        with self._lock:
            self._indexes.clear()
