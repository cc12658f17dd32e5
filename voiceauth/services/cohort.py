"""The AS-norm cohort: a bounded sample of the customers' voiceprints, blended with public speech.

Verification compares each side of a trial with a cohort of impostor voiceprints. Its cost is
O(cohort), never O(customers):

- **Bounded**: at most ``COHORT_SIZE`` (2000) voiceprints per model. While a store holds fewer
  complete voiceprints of the model, the cohort is all of them (as before). Beyond that it is a
  deterministic sample: the ``COHORT_SIZE`` customers whose keyed hash of the id (keyed with the
  store id and model) is smallest, a "bottom-k" sample: a new draw changes only the members that
  came or went. The draw is recorded in the store (ids only, setting ``cohort:<model>``, with a
  version and its time; audited as ``cohort_refresh``), so a fresh process loads its members by
  id (one query) instead of scanning the store. It is re-drawn when older than ``REFRESH_S``
  (a day) by whichever process needs it, or on a schedule with :meth:`CohortCache.refresh`
  (``VoiceAuth.refresh_cohort()``), which a bank runs off-peak so that no verification waits for it.
- **Public speech first**: a new deployment has no customers to compare with. For models shipped
  with a public cohort (embeddings of 125 LibriSpeech speakers, clean and through the telephone
  channel: the cohort the shipped calibration was fitted with; :data:`PUBLIC_COHORTS`), it is
  added to the store's voiceprints while the store holds fewer than ``PUBLIC_UNTIL`` (50) of the
  model, so AS-norm applies from the first customer; from then on the bank's own voiceprints
  (its channel, its population) replace it.
- **Cached, and kept current**: the cohort matrix (unit rows, precomputed) is kept in the process.
  Every change of a customer voiceprint is audited, and the cache follows those audit events
  (the store's change feed) at most every ``POLL_S`` second: an erased member leaves the
  cohort, a re-enrolled one is reloaded, and while the cohort is the whole store new customers
  join it. ``invalidate()`` (after a write in this process) makes the next use follow at once.
  A new draw by another process is picked up within ``ttl_s``.

Stores without the streaming operations (:class:`~voiceauth.store.base.StreamingStore`) get the
old behaviour: every complete voiceprint of the model, reloaded after ``ttl_s``.
"""

from __future__ import annotations

import functools
import hashlib
import heapq
import io
import json
import threading
import time
from dataclasses import dataclass, field
from importlib import resources
from typing import TYPE_CHECKING

import numpy as np

from voiceauth.errors import TamperedError
from voiceauth.store.base import AuditRecord, Namespace, StreamingStore

if TYPE_CHECKING:
    from voiceauth.store.base import Store

COHORT_TTL_S = 60.0
"""How often a process checks whether another one re-drew the cohort (stores without a change
feed: how long the whole cohort is reused before it is reloaded)."""
COHORT_SIZE = 2000
"""The most store voiceprints in a cohort (AS-norm uses the 100 closest of them per side)."""
PUBLIC_UNTIL = 50
"""Below this many complete voiceprints of a model in the store, the public cohort is added."""
REFRESH_S = 86_400.0
"""A recorded draw older than this is re-drawn when next needed."""
POLL_S = 1.0
"""How often a cached cohort follows the store's change feed (an erased member leaves it)."""
DEFAULT_CHANNEL = "phone"
"""The public cohort's channel when the caller names none (call centres: telephone speech)."""
PUBLIC_COHORTS: dict[str, tuple[str, str]] = {
    "speechbrain/spkrec-ecapa-voxceleb@0575cb64": (
        "cohort_ecapa.npz", "971160d00c71f466f8b95b1ef54b37d483bcdb1e04f8a858a5d168d7c1d63232"),
    "3d-speaker/campplus-cn-en-common@92f29b94": (
        "cohort_campplus.npz", "d090b239f5fc8d8054c6cc201c4b273ddb93c9b2a746796f2d523bf2b2fd97d4"),
}
"""Model id -> (file in ``voiceauth/data``, its sha256): written by ``benchmarks/public_cohort.py``."""


def public_channel(channel: str | None) -> str:
    """The public cohort's channel (``clean`` or ``phone``) for a channel tag (None: the default)."""
    if channel is None:
        return DEFAULT_CHANNEL
    tag = channel.lower()
    return "phone" if any(t in tag for t in ("phone", "8k", "ivr", "pstn", "tel")) else "clean"


@functools.lru_cache(maxsize=8)
def _public_file(model_id: str) -> dict[str, np.ndarray] | None:
    spec = PUBLIC_COHORTS.get(model_id)
    if spec is None:
        return None
    name, pin = spec
    payload = resources.files("voiceauth.data").joinpath(name).read_bytes()
    if hashlib.sha256(payload).hexdigest() != pin:
        raise TamperedError(f"the public cohort {name} shipped with voiceauth does not match its checksum; "
                            "reinstall voiceauth")
    with np.load(io.BytesIO(payload)) as data:
        return {k: np.ascontiguousarray(data[k], dtype=np.float32) for k in data.files}


def public_cohort(model_id: str, channel: str | None = None) -> np.ndarray | None:
    """The shipped public cohort of ``model_id`` for ``channel`` (unit rows), or None if none is shipped."""
    matrices = _public_file(model_id)
    return None if matrices is None else matrices.get(public_channel(channel))


def member_key(salt: str, subject_id: str) -> bytes:
    """The order of the deterministic sample: a keyed hash of the customer id."""
    return hashlib.blake2b(subject_id.encode(), key=salt.encode()[:64], digest_size=8).digest()


@dataclass(frozen=True)
class CohortInfo:
    """What a cached cohort is made of (for operators; no biometric data)."""

    model_id: str
    channel: str | None
    rows: int
    store_rows: int
    public_rows: int
    whole_store: bool
    """True while the store holds at most COHORT_SIZE voiceprints of the model (all of them are used)."""
    version: int | None
    """The recorded draw (None: the whole store)."""


@dataclass
class _Entry:
    model_id: str
    channel: str | None
    ids: list[str]
    store_matrix: np.ndarray
    public: np.ndarray | None
    whole_store: bool
    version: int | None
    seq: int
    loaded_at: float
    polled_at: float = field(default=0.0)
    checked_at: float = field(default=0.0)
    matrix: np.ndarray = field(init=False)
    position: dict[str, int] = field(init=False)

    def __post_init__(self) -> None:
        self.assemble()

    def assemble(self) -> None:
        """The cohort matrix: public rows first (while the store is small), then the store's."""
        blend = self.public is not None and len(self.ids) < PUBLIC_UNTIL
        offset = len(self.public) if blend and self.public is not None else 0
        parts = ([self.public] if blend and self.public is not None else []) + [self.store_matrix]
        parts = [p for p in parts if p.size]
        self.matrix = np.ascontiguousarray(np.concatenate(parts).astype(np.float32, copy=False)) if parts \
            else np.zeros((0, 0), dtype=np.float32)
        self.position = {cid: offset + i for i, cid in enumerate(self.ids)}


class CohortCache:
    """The cohort of each (model, channel), shared by verification, live calls and the watchlist."""

    def __init__(self, ttl_s: float = COHORT_TTL_S, *, size: int = COHORT_SIZE, refresh_s: float = REFRESH_S,
                 poll_s: float = POLL_S, actor: str = "system") -> None:
        self.ttl_s = ttl_s
        self.size = size
        self.refresh_s = refresh_s
        self.poll_s = poll_s
        self.actor = actor
        self._entries: dict[tuple[str, str | None], _Entry] = {}
        self._lock = threading.Lock()

    # -- reading --------------------------------------------------------------------------------
    def matrix(self, store: Store, model_id: str, exclude: str = "", channel: str | None = None) -> np.ndarray:
        """The cohort of ``model_id`` (unit rows), without customer ``exclude``'s voiceprint."""
        with self._lock:
            entry = self._current(store, model_id, channel)
        row = entry.position.get(exclude) if exclude else None
        return entry.matrix if row is None else np.delete(entry.matrix, row, axis=0)

    def info(self, store: Store, model_id: str, channel: str | None = None) -> CohortInfo:
        with self._lock:
            e = self._current(store, model_id, channel)
        public = len(e.matrix) - len(e.ids)
        return CohortInfo(model_id, channel, len(e.matrix), len(e.ids), public, e.whole_store, e.version)

    def invalidate(self) -> None:
        """A customer voiceprint changed in this process: follow the store's changes at next use
        (stores without a change feed: reload)."""
        with self._lock:
            for key, entry in list(self._entries.items()):
                entry.polled_at = float("-inf")
                if entry.seq < 0:
                    del self._entries[key]

    def refresh(self, store: Store, model_id: str) -> int | None:
        """Re-draw ``model_id``'s cohort sample now (a scheduled job); its version, or None while
        the whole store is the cohort."""
        if not isinstance(store, StreamingStore):
            self.invalidate()
            return None
        with self._lock:
            whole = store.count(Namespace.CUSTOMER, model_id) <= self.size
            record = self._draw(store, model_id, whole=whole)
            for key in [k for k in self._entries if k[0] == model_id]:
                del self._entries[key]
        return None if whole else int(record["version"])  # type: ignore[call-overload]

    # -- loading and following --------------------------------------------------------------------
    def _current(self, store: Store, model_id: str, channel: str | None) -> _Entry:
        key = (model_id, channel)
        entry, now = self._entries.get(key), time.monotonic()
        if not isinstance(store, StreamingStore):
            if entry is None or now - entry.loaded_at > self.ttl_s:
                ids, matrix = store.embeddings(Namespace.CUSTOMER, model_id)
                entry = _Entry(model_id, channel, ids, matrix, public_cohort(model_id, channel), True, None, -1, now)
        elif entry is None:
            entry = self._load(store, model_id, channel, now)
        else:
            if now - entry.checked_at >= self.ttl_s and not entry.whole_store:
                entry.checked_at = now
                if self._version(store, model_id) != entry.version:
                    entry = self._load(store, model_id, channel, now)
            if now - entry.polled_at >= self.poll_s:
                entry = self._follow(store, entry, now)
        self._entries[key] = entry
        return entry

    def _record(self, store: StreamingStore, model_id: str) -> dict[str, object] | None:
        text = store.setting(f"cohort:{model_id}")
        try:
            record = json.loads(text) if text else None
        except ValueError:
            return None
        return record if isinstance(record, dict) and isinstance(record.get("members"), list) else None

    def _version(self, store: StreamingStore, model_id: str) -> int | None:
        record = self._record(store, model_id)
        return None if record is None else int(record.get("version", 0))  # type: ignore[call-overload]

    def _draw(self, store: StreamingStore, model_id: str, whole: bool = False) -> dict[str, object]:
        """A new bottom-k sample of the model's complete voiceprints, recorded in the store
        (``whole``: the store is small enough to be the cohort; recorded as such, no members)."""
        salt = f"{getattr(store, 'store_id', '')}|{model_id}"
        members = [] if whole else [cid for _, cid in heapq.nsmallest(
            self.size, ((member_key(salt, cid), cid) for cid in store.iter_ids(Namespace.CUSTOMER, model_id)))]
        version = (self._version(store, model_id) or 0) + 1
        record: dict[str, object] = {"version": version, "drawn_at": time.time(), "size": len(members),
                                     "whole": whole, "members": members}
        store.put_setting(f"cohort:{model_id}", json.dumps(record), event=AuditRecord(
            "cohort_refresh", None, "drawn", self.actor, {"model": model_id, "version": version,
                                                           "size": len(members)}))
        return record

    def _load(self, store: StreamingStore, model_id: str, channel: str | None, now: float) -> _Entry:
        seq = store.change_seq()  # first: a change racing the load is followed again, harmlessly
        public = public_cohort(model_id, channel)
        record = self._record(store, model_id)
        drawn_at = float(record.get("drawn_at", 0.0)) if record else 0.0  # type: ignore[arg-type]
        fresh = record is not None and not record.get("whole") and time.time() - drawn_at <= self.refresh_s
        if not fresh:  # no recorded sample in force: count (an index scan) and draw if the store is large
            if store.count(Namespace.CUSTOMER, model_id) <= self.size:
                ids, matrix = store.embeddings(Namespace.CUSTOMER, model_id)
                return _Entry(model_id, channel, ids, matrix, public, True, None, seq, now, now, now)
            record = self._draw(store, model_id)
        assert record is not None
        members = [str(m) for m in record["members"]]  # type: ignore[attr-defined]
        found = store.get_many(Namespace.CUSTOMER, members)
        ids = [m for m in members if m in found and found[m].complete and found[m].model_id == model_id]
        matrix = np.stack([found[m].embedding for m in ids]) if ids else np.zeros((0, 0), dtype=np.float32)
        version = int(record.get("version", 0))  # type: ignore[call-overload]
        return _Entry(model_id, channel, ids, matrix, public, False, version, seq, now, now, now)

    def _follow(self, store: StreamingStore, entry: _Entry, now: float) -> _Entry:
        """Apply the voiceprint changes audited since the entry was loaded."""
        last, changes = store.voiceprint_changes(entry.seq)
        entry.polled_at = now
        if not changes:
            entry.seq = last
            return entry
        touched = {c.subject_id for c in changes}
        if not entry.whole_store:
            touched &= set(entry.position)  # a sample: only its members matter until the next draw
        if not touched:
            entry.seq = last
            return entry
        current = store.get_many(Namespace.CUSTOMER, sorted(touched))
        keep = {cid: vp.embedding for cid, vp in current.items()
                if vp.complete and vp.model_id == entry.model_id}
        rows = {cid: entry.store_matrix[i] for i, cid in enumerate(entry.ids) if cid not in touched}
        rows.update(keep)
        if entry.whole_store and len(rows) > self.size:
            return self._load(store, entry.model_id, entry.channel, now)
        ids = sorted(rows) if entry.whole_store else [cid for cid in entry.ids if cid in rows]
        matrix = np.stack([rows[cid] for cid in ids]).astype(np.float32) if ids \
            else np.zeros((0, 0), dtype=np.float32)
        return _Entry(entry.model_id, entry.channel, ids, matrix, entry.public, entry.whole_store, entry.version,
                      last, entry.loaded_at, now, entry.checked_at)
