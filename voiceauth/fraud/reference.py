"""The spoof check's bona fide reference per channel, built from consented enrolments.

A consented enrolment is known-live speech on the bank's own channel. Its spoof scores
(scores only: :mod:`voiceauth.services.harvest` records them per channel tag) tell what
genuine callers score on that channel, which the network trained on studio audio cannot know.

* **Calibrated** (at least :data:`MIN_REFERENCE` scores for the channel): suspected below the
  threshold that flags :data:`FALSE_ALARM` of the reference (``threshold_for_false_alarms``),
  stated with the exact 95 % interval of that rate.
* **Advisory** (fewer): where live callers on the channel have scored below the detector's own
  threshold, a score there is only a flag and a risk score, no gate, unless it is far outside
  every bona fide score seen (below the lowest minus :data:`FAR_OUTSIDE_LOG_ODDS`). Where none
  has, or there is no reference yet, the detector's own threshold gates, as before (fail closed).

The risk score is the share of the channel's bona fide scores higher than this score
(1.0: lower than every live caller seen), or the network's own spoof probability while the
channel has no reference.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from voiceauth.scoring.statistics import Interval, clopper_pearson
from voiceauth.store.trials import TrialKind, TrialStore

FALSE_ALARM = 0.02
"""Share of genuine callers the calibrated threshold may flag (issue 15's bound)."""
MIN_REFERENCE = math.ceil(10 / FALSE_ALARM)
"""Bona fide scores a channel needs before its threshold gates: ten expected false alarms at
:data:`FALSE_ALARM` (500 at 2 %), for which the exact 95 % interval of the measured rate is about
1.0-3.6 %; with 100 scores (two false alarms) it would be 0.2-7.0 %, too wide to state."""
FAR_OUTSIDE_LOG_ODDS = 3.0
"""While advisory, a score this far (network log-odds) below every bona fide score seen still gates."""
REFERENCE_TTL_S = 60.0


@dataclass(frozen=True)
class SpoofAssessment:
    gate: bool
    """Suspected: the decision must not accept on this speech."""
    flag: bool
    """Unusual for a live caller on this channel (advisory when ``gate`` is False)."""
    risk: float
    reason: str


@dataclass(frozen=True)
class ChannelReference:
    """What the bona fide reference of one channel says, and the rule it implies."""

    channel: str
    scores: np.ndarray
    detector_threshold: float
    false_alarm: float = FALSE_ALARM

    @property
    def calibrated(self) -> bool:
        return len(self.scores) >= MIN_REFERENCE

    @property
    def threshold(self) -> float:
        """Gate below this score."""
        if self.calibrated:
            from voiceauth.fraud.spoof import threshold_for_false_alarms

            return float(threshold_for_false_alarms(self.scores, self.false_alarm))
        if len(self.scores) == 0 or float(self.scores.min()) >= self.detector_threshold:
            return self.detector_threshold  # no live caller on this channel scored below it: nothing to relax
        return float(self.scores.min()) - FAR_OUTSIDE_LOG_ODDS

    @property
    def false_alarm_interval(self) -> Interval | None:
        """Exact 95 % interval of the reference's share under the threshold (calibrated only)."""
        if not self.calibrated:
            return None
        return clopper_pearson(int((self.scores < self.threshold).sum()), len(self.scores))

    def assess(self, score: float) -> SpoofAssessment:
        threshold = self.threshold
        if len(self.scores):
            risk = float((self.scores > score).sum()) / len(self.scores)
        else:
            risk = 1.0 / (1.0 + math.exp(max(min(score, 700.0), -700.0)))
        gate = score < threshold
        if self.calibrated:
            return SpoofAssessment(gate, gate, round(risk, 4), f"bona fide score {score:.2f} {'<' if gate else '>='} "
                                   f"channel threshold {threshold:.2f} ({self.describe()})")
        unusual = score < self.detector_threshold or (len(self.scores) > 0 and score < float(self.scores.min()))
        why = ("far below every bona fide score seen" if gate and len(self.scores) else
               "below the detector's threshold (no bona fide reference for this channel yet)" if gate else
               "advisory: unusual for this channel, not gated until the reference is complete" if unusual else "")
        return SpoofAssessment(gate, gate or unusual, round(risk, 4), why)

    def describe(self) -> str:
        tag = self.channel or "(untagged)"
        if self.calibrated:
            interval = self.false_alarm_interval
            return (f"channel {tag}: threshold {self.threshold:.2f} flags {self.false_alarm:.0%} of {len(self.scores)} "
                    f"consented enrolment recordings (95% CI {interval})")
        return (f"channel {tag}: advisory, {len(self.scores)} of {MIN_REFERENCE} bona fide scores; gating only below "
                f"{self.threshold:.2f}")

    def to_dict(self) -> dict[str, Any]:
        interval = self.false_alarm_interval
        return {"channel": self.channel, "scores": len(self.scores), "needed": MIN_REFERENCE,
                "mode": "calibrated" if self.calibrated else "advisory", "threshold": round(self.threshold, 3),
                "false_alarm": self.false_alarm if self.calibrated else None,
                "false_alarm_interval": None if interval is None else [round(interval.low, 4), round(interval.high, 4)],
                "lowest_bona_fide": round(float(self.scores.min()), 3) if len(self.scores) else None}


class SpoofReferences:
    """The per-channel references of one store, reloaded after ``ttl_s``."""

    def __init__(self, store: Any, model_id: str, detector_threshold: float, ttl_s: float = REFERENCE_TTL_S) -> None:
        self.store = store if isinstance(store, TrialStore) else None
        self.model_id = model_id
        self.detector_threshold = detector_threshold
        self.ttl_s = ttl_s
        self._cache: dict[str, tuple[float, ChannelReference]] = {}
        self._lock = threading.Lock()

    def for_channel(self, channel: str) -> ChannelReference:
        now = time.monotonic()
        with self._lock:
            hit = self._cache.get(channel)
            if hit is not None and now - hit[0] <= self.ttl_s:
                return hit[1]
        scores: Sequence[float] = []
        if self.store is not None:
            scores = [t.raw for t in self.store.trials(kinds=(TrialKind.SPOOF_BONA_FIDE,), model_id=self.model_id,
                                                       channel=channel)]
        ref = ChannelReference(channel, np.sort(np.asarray(scores, dtype=np.float64)), self.detector_threshold)
        with self._lock:
            self._cache[channel] = (now, ref)
        return ref

    def invalidate(self) -> None:
        with self._lock:
            self._cache.clear()


class ReferencedDetector:
    """A spoof detector whose ``suspected`` follows a channel's bona fide reference (live calls use it)."""

    def __init__(self, detector: Any, reference: ChannelReference) -> None:
        self.detector = detector
        self.reference = reference
        self.threshold = reference.threshold
        self.model_id = getattr(detector, "model_id", "")

    def score_speech(self, speech: np.ndarray, sample_rate: int) -> Any:
        from dataclasses import replace

        verdict = self.detector.score_speech(speech, sample_rate)
        return replace(verdict, suspected=self.reference.assess(verdict.score).gate)
