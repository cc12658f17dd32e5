"""Known-fraudster screening: a separate, encrypted namespace of voiceprints, searched 1:N.

Every verification and call session compares the caller with every watchlist entry. A
hit flags ``FRAUDSTER_MATCH`` and forbids acceptance. The thresholds come from their own
false-hit target, split across the entries (a caller is compared with all of them), so
that the chance a genuine customer hits *any* entry stays near ``false_hit_rate``.

Two tests per entry. Each comparison is scored twice, each with its own calibration:

* raw: the cosine score through the RAW calibration;
* AS-norm: once the store holds at least ``MIN_COHORT`` customers (and the calibration set
  has an AS-norm calibration), the same score normalised against the customer cohort, as
  verification does, through the AS-NORM calibration.

A comparison is a hit when either calibrated LLR reaches its threshold. Each test gets
half of the per-entry false-hit budget, so by the union bound the per-entry rate stays
within it (on the shipped calibration's impostor trials, with 10 entries at the default
rate, the two tests together let through 0.049 % of comparisons for a budget of 0.05 %).
The two tests miss different calls (``benchmarks/fraud.py``): the RAW calibration is
shared by clean and telephone speech, so a short clean call (under about 3 s of speech)
needs a cosine score that only telephone-channel impostors reach, and is missed; AS-norm
measures the score against the cohort scores of the entry and of the caller and catches
those calls, but the telephone channel compresses its scores, where the raw test does
better. With too few customers for a cohort only the raw test runs, with the whole budget.

Caching. ``screen`` runs on every verification and every scored segment of a live call,
so the watchlist (decrypted from the store) and each entry's cohort statistics are kept in
memory for ``WATCHLIST_TTL_S`` (10 s): ``add`` and ``remove`` in this process take effect at
once; entries added or removed by another process take effect within 10 s.
``clear_cache()`` forces a reload.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from voiceauth.errors import NoSpeechError, VoiceAuthError
from voiceauth.ids import canonical_id
from voiceauth.matmul import matmul
from voiceauth.results import WatchlistHit
from voiceauth.scoring.normalisation import MIN_COHORT, Normalisation, symmetric_z, top_stats
from voiceauth.scoring.statistics import threshold_for_far
from voiceauth.services.core import AudioSource, Services, as_sources, prepare
from voiceauth.services.enrolment import EnrolMode, pool, write
from voiceauth.store.base import AuditRecord, Builder, Namespace, Voiceprint, VoiceprintInfo

DEFAULT_FALSE_HIT_RATE = 0.005
MIN_WATCHLIST_SPEECH_S = 3.0
"""Fraudster recordings are short and few: a watchlist entry is usable from 3 s of speech.
``add`` refuses an entry with less: it would be listed but never screened."""
WATCHLIST_TTL_S = 10.0
"""How long a process screens against its in-memory copy of the watchlist before reloading it."""
_clock = time.monotonic


def _screenable(build: Builder) -> Builder:
    """``build``, refusing (NoSpeechError) an entry too short to be screened instead of storing it.

    Screening compares callers with complete entries only; an incomplete one would be listed
    and never screened, so it is not stored at all.
    """

    def checked(current: Voiceprint | None) -> Voiceprint:
        vp = build(current)
        if not vp.complete:
            raise NoSpeechError(
                f"watchlist entry {vp.subject_id} has {vp.speech_s:.1f} s of net speech; screening needs at least "
                f"{MIN_WATCHLIST_SPEECH_S:g} s: pass more recordings of this speaker in one add"
            )
        return vp

    return checked


@dataclass(frozen=True)
class _Snapshot:
    """The watchlist as loaded at ``loaded_at``: entries, reasons, cohort statistics."""

    loaded_at: float
    ids: list[str]
    matrix: np.ndarray
    reasons: dict[str, str]
    entry_stats: tuple[np.ndarray, np.ndarray] | None
    """Per-entry (mean, std) of the top cohort scores; None when AS-norm is not possible."""


class Watchlist:
    """``va.watchlist``: add, list, remove and screen known-fraudster voiceprints.

    ``services``: the store, model, scorer and cohort to use (``va.services``).
    """

    def __init__(self, services: Services, false_hit_rate: float = DEFAULT_FALSE_HIT_RATE, *,
                 normalise: bool = True, ttl_s: float = WATCHLIST_TTL_S) -> None:
        if not 0.0 < false_hit_rate < 1.0:
            raise VoiceAuthError(f"false_hit_rate must be strictly between 0 and 1, got {false_hit_rate}")
        if ttl_s < 0:
            raise VoiceAuthError(f"ttl_s must be >= 0, got {ttl_s}")
        self._services = services
        self.false_hit_rate = false_hit_rate
        self.normalise = normalise
        self.ttl_s = ttl_s
        self._thresholds: dict[tuple[int, bool], dict[Normalisation, float]] = {}
        self._snapshot: _Snapshot | None = None
        self._lock = threading.Lock()

    # -- management ---------------------------------------------------------------------------
    def add(self, label: str, samples: Sequence[AudioSource] | AudioSource, *, reason: str,
            update: bool = False) -> VoiceprintInfo:
        """Store a fraudster voiceprint under ``label`` (a case number, not a name).

        Raises NoSpeechError when the entry would hold under ``MIN_WATCHLIST_SPEECH_S`` of speech.
        """
        label = canonical_id(label, "watchlist label")
        sv = self._services
        prepared = prepare(as_sources(samples))
        if not prepared.speech:
            raise NoSpeechError(f"no usable speech in the recordings for watchlist entry {label}")
        new = pool(sv.embedder.embed(prepared.speech), prepared.seconds)
        try:
            vp = write(sv, Namespace.WATCHLIST, label, new, model_id=sv.embedder.model_id,
                       mode=EnrolMode.UPDATE if update else EnrolMode.NEW, required_s=MIN_WATCHLIST_SPEECH_S,
                       action="watchlist_add", meta={"reason": reason[:200]}, check=_screenable)
        finally:
            self.clear_cache()
        return next(i for i in sv.store.list(Namespace.WATCHLIST) if i.subject_id == vp.subject_id)

    def remove(self, label: str) -> bool:
        label = canonical_id(label, "watchlist label")
        sv = self._services
        try:
            return sv.store.delete(Namespace.WATCHLIST, label,
                                   event=AuditRecord("watchlist_remove", label, "removed", sv.actor))
        finally:
            self.clear_cache()

    def list(self) -> list[VoiceprintInfo]:
        return self._services.store.list(Namespace.WATCHLIST)

    def clear_cache(self) -> None:
        """Drop the in-memory watchlist; the next screen reloads it from the store."""
        with self._lock:
            self._snapshot = None

    # -- thresholds ---------------------------------------------------------------------------
    def thresholds(self, entries: int, normalised: bool = False) -> dict[Normalisation, float]:
        """Per-comparison LLR threshold of each test for ``entries`` watchlist voiceprints.

        ``normalised``: the AS-norm test runs too, and each test gets half the per-entry budget.
        Each threshold is at least LLR 0; a budget finer than one calibration impostor trial
        is rounded up to one trial.
        """
        entries = max(entries, 1)
        key = (entries, normalised)
        if key not in self._thresholds:
            tests = (Normalisation.RAW, Normalisation.AS_NORM) if normalised else (Normalisation.RAW,)
            per_test = self.false_hit_rate / entries / len(tests)
            out: dict[Normalisation, float] = {}
            for kind in tests:
                cal = self._services.scorer.calibrations.get(kind)
                impostor = cal.trial_llrs()[~cal.labels]
                out[kind] = max(threshold_for_far(impostor, max(per_test, 1.0 / len(impostor))), 0.0)
            self._thresholds[key] = out
        return self._thresholds[key]

    def threshold(self, entries: int) -> float:
        """The raw test's per-comparison LLR threshold when it runs alone (no cohort)."""
        return self.thresholds(entries)[Normalisation.RAW]

    # -- screening ----------------------------------------------------------------------------
    def _can_normalise(self) -> bool:
        return self.normalise and Normalisation.AS_NORM in self._services.scorer.calibrations.by_normalisation

    def _load(self) -> _Snapshot:
        """The cached watchlist, reloaded from the store when older than ``ttl_s``."""
        with self._lock:
            now = _clock()
            snap = self._snapshot
            if snap is None or now - snap.loaded_at > self.ttl_s:
                sv = self._services
                ids, matrix = sv.store.embeddings(Namespace.WATCHLIST, sv.embedder.model_id)
                reasons = {i.subject_id: i.meta.get("reason", "") for i in sv.store.list(Namespace.WATCHLIST)} \
                    if ids else {}
                entry_stats = None
                if ids and self._can_normalise():
                    cohort = sv.cohort_matrix(exclude="")
                    if len(cohort) >= MIN_COHORT:
                        # the entries' side of AS-norm: every customer is an impostor for an entry
                        entry_stats = top_stats(matmul(cohort, matrix.T))
                snap = _Snapshot(now, ids, matrix, reasons, entry_stats)
                self._snapshot = snap
        return snap

    def _margins(self, snap: _Snapshot, embedding: np.ndarray, speech_s: float,
                 customer_id: str | None) -> np.ndarray:
        """Per entry, the largest (LLR - threshold) over the tests: a hit where >= 0."""
        scorer = self._services.scorer
        scores = matmul(snap.matrix, embedding)
        cohort = None
        if snap.entry_stats is not None:
            # the caller's side, without the claimed customer's own voiceprint (as verification)
            cohort = self._services.cohort_matrix(exclude=customer_id or "")
            if len(cohort) < MIN_COHORT:
                cohort = None
        th = self.thresholds(len(snap.ids), normalised=cohort is not None)
        raw_llr = np.asarray(scorer.calibrations.get(Normalisation.RAW).llr(scores, speech_s))
        margins = raw_llr - th[Normalisation.RAW]
        if cohort is not None:
            assert snap.entry_stats is not None
            entry_mean, entry_std = snap.entry_stats
            test_mean, test_std = top_stats(matmul(cohort, embedding)[:, None])
            z = symmetric_z(scores, (entry_mean, entry_std), (test_mean[0], test_std[0]))
            norm_llr = np.asarray(scorer.calibrations.get(Normalisation.AS_NORM).llr(z, speech_s))
            margins = np.maximum(margins, norm_llr - th[Normalisation.AS_NORM])
        return margins

    def screen(self, embedding: np.ndarray, speech_s: float, customer_id: str | None = None) -> WatchlistHit | None:
        """The best watchlist match at or above a threshold, audited; None when clean.

        ``customer_id`` is the identity the caller claims (None when unknown): their own
        voiceprint is left out of the cohort, as in verification.
        """
        snap = self._load()
        if not snap.ids:
            return None
        margins = self._margins(snap, embedding, speech_s, customer_id)
        best = int(np.argmax(margins))
        if margins[best] < 0:
            return None
        label = snap.ids[best]
        sv = self._services
        hit = WatchlistHit(label, round(float(snap.matrix[best] @ embedding), 4), snap.reasons.get(label, ""))
        sv.store.audit(AuditRecord("watchlist_hit", customer_id, label, sv.actor,
                                   {"score": hit.score, "speech_s": round(speech_s, 1)}))
        return hit
