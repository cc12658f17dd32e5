"""Known-fraudster screening: a separate, encrypted namespace of voiceprints, searched 1:N.

Every verification and call session compares the caller with every watchlist entry. A
hit (calibrated LLR at or above the watchlist threshold) flags ``FRAUDSTER_MATCH`` and
forbids acceptance. The threshold comes from its own false-hit target, split across
the entries (a caller is compared with all of them), so that the chance a genuine
customer hits *any* entry stays near ``false_hit_rate``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np

from voiceauth.audio import MODEL_RATE
from voiceauth.enrolment import EnrolMode, builder, pool
from voiceauth.errors import NoSpeechError, VoiceAuthError
from voiceauth.evaluation import threshold_for_far
from voiceauth.results import WatchlistHit
from voiceauth.scoring import Normalisation
from voiceauth.store.base import AuditRecord, Namespace, VoiceprintInfo

if TYPE_CHECKING:
    from voiceauth.facade import AudioSource, VoiceAuth

DEFAULT_FALSE_HIT_RATE = 0.005
MIN_WATCHLIST_SPEECH_S = 3.0
"""Fraudster recordings are short and few: a watchlist entry is usable from 3 s of speech."""


class Watchlist:
    """``va.watchlist``: add, list, remove and screen known-fraudster voiceprints."""

    def __init__(self, va: VoiceAuth, false_hit_rate: float = DEFAULT_FALSE_HIT_RATE) -> None:
        if not 0.0 < false_hit_rate < 1.0:
            raise VoiceAuthError(f"false_hit_rate must be strictly between 0 and 1, got {false_hit_rate}")
        self._va = va
        self.false_hit_rate = false_hit_rate
        self._thresholds: dict[int, float] = {}

    def add(self, label: str, samples: Sequence[AudioSource] | AudioSource, *, reason: str,
            update: bool = False) -> VoiceprintInfo:
        """Store a fraudster voiceprint under ``label`` (a case number, not a name)."""
        va = self._va
        sources = va._as_sources(samples)
        prepared = va._analyse(sources, None, None)
        if not prepared.speech:
            raise NoSpeechError(f"no usable speech in the recordings for watchlist entry {label}")
        new = pool(va.embedder.embed(prepared.speech), [len(x) / MODEL_RATE for x in prepared.speech])
        vp = va.store.upsert(
            Namespace.WATCHLIST, label,
            builder(label, Namespace.WATCHLIST, va.embedder.model_id, new,
                    mode=EnrolMode.UPDATE if update else EnrolMode.NEW,
                    required_s=MIN_WATCHLIST_SPEECH_S, meta={"reason": reason[:200]}),
            event=AuditRecord("watchlist_add", label, "added", va.actor, {"speech_s": round(new.speech_s, 1)}),
        )
        return next(i for i in va.store.list(Namespace.WATCHLIST) if i.subject_id == vp.subject_id)

    def remove(self, label: str) -> bool:
        va = self._va
        return va.store.delete(Namespace.WATCHLIST, label,
                               event=AuditRecord("watchlist_remove", label, "removed", va.actor))

    def list(self) -> list[VoiceprintInfo]:
        return self._va.store.list(Namespace.WATCHLIST)

    def threshold(self, entries: int) -> float:
        """Per-comparison LLR threshold for ``entries`` watchlist voiceprints."""
        entries = max(entries, 1)
        if entries not in self._thresholds:
            cal = self._va.scorer.calibrations.get(Normalisation.RAW)
            impostor = cal.trial_llrs()[~cal.labels]
            per_entry = max(self.false_hit_rate / entries, 1.0 / len(impostor))
            self._thresholds[entries] = max(threshold_for_far(impostor, per_entry), 0.0)
        return self._thresholds[entries]

    def screen(self, embedding: np.ndarray, speech_s: float, customer_id: str | None = None) -> WatchlistHit | None:
        """The best watchlist match at or above the threshold, audited; None when clean."""
        va = self._va
        ids, matrix = va.store.embeddings(Namespace.WATCHLIST, va.embedder.model_id)
        if not ids:
            return None
        scores = matrix @ embedding
        best = int(np.argmax(scores))
        cal = va.scorer.calibrations.get(Normalisation.RAW)
        llr = float(cal.llr(float(scores[best]), speech_s))
        if llr < self.threshold(len(ids)):
            return None
        info = {i.subject_id: i for i in va.store.list(Namespace.WATCHLIST)}[ids[best]]
        hit = WatchlistHit(ids[best], round(float(scores[best]), 4), info.meta.get("reason", ""))
        va.store.audit(AuditRecord("watchlist_hit", customer_id, ids[best], va.actor,
                                   {"score": hit.score, "speech_s": round(speech_s, 1)}))
        return hit
