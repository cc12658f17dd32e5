"""Typed results returned by the public API. Plain values only: no tensors, no audio."""

from __future__ import annotations

import enum
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from voiceauth.decision import Decision
from voiceauth.scoring.normalisation import Normalisation


class Flag(str, enum.Enum):
    """Why a result deserves a second look. Quality flags mirror ``speech.QualityFlag``."""

    TOO_SHORT = "too_short"
    TOO_QUIET = "too_quiet"
    CLIPPED = "clipped"
    NOISY = "noisy"
    TRUNCATED = "truncated"
    NO_SPEECH = "no_speech"
    SMALL_COHORT = "small_cohort"
    FRAUDSTER_MATCH = "fraudster_match"
    SPOOF_SUSPECTED = "spoof_suspected"
    SPEAKER_CHANGE = "speaker_change"
    SPOOF_ADVISORY = "spoof_advisory"
    """The spoof score is unusual for a live caller on this channel, but the channel's bona fide
    reference is not complete yet: advisory, not gated (see :mod:`voiceauth.fraud.reference`)."""


def as_dict(value: Any) -> dict[str, Any]:
    """A JSON-friendly dict of a result dataclass (enums as their values)."""

    def convert(v: Any) -> Any:
        if isinstance(v, enum.Enum):
            return v.value
        if isinstance(v, dict):
            return {k: convert(x) for k, x in v.items()}
        if isinstance(v, (list, tuple)):
            return [convert(x) for x in v]
        return v

    return convert(asdict(value))


@dataclass(frozen=True)
class Probe:
    """A recording reduced to what scoring needs: its embedding and speech measurements.

    Made by ``VoiceAuth.probe()``; pass it to ``verify()`` to score one recording against
    several customers without embedding it again. The embedding is biometric data:
    keep probes in memory only.
    """

    embedding: np.ndarray = field(repr=False)
    model_id: str
    speech_s: float
    flags: tuple[Flag, ...] = ()
    duration_s: float = 0.0
    spoof_probability: float | None = None


@dataclass(frozen=True)
class WatchlistHit:
    label: str
    score: float
    reason: str


@dataclass(frozen=True)
class VerificationResult:
    """The outcome of a 1:1 verification."""

    customer_id: str
    decision: Decision
    confidence: float
    """Posterior probability that the speaker is the customer, under the policy's prior."""
    score: float
    """Raw cosine similarity."""
    llr: float
    """Calibrated log-likelihood ratio."""
    normalisation: Normalisation
    speech_s: float
    """Net speech seconds the decision used."""
    flags: tuple[Flag, ...] = ()
    expected_far: float = 0.0
    """Expected false-accept rate at the accept threshold in force."""
    watchlist_hit: WatchlistHit | None = None
    spoof_probability: float | None = None
    trial_id: str | None = None
    """Random id of the trial this decision was recorded as: report its outcome with
    ``VoiceAuth.report_outcome`` (None when no trial was recorded)."""

    @property
    def accepted(self) -> bool:
        return self.decision is Decision.ACCEPT


@dataclass(frozen=True)
class Candidate:
    """One entry of a 1:N identification."""

    customer_id: str
    score: float
    confidence: float


@dataclass(frozen=True)
class SampleReport:
    """What enrolment made of one sample."""

    name: str
    speech_s: float
    used: bool
    flags: tuple[Flag, ...] = ()


class EnrolmentStatus(str, enum.Enum):
    IN_PROGRESS = "in_progress"
    COMPLETE = "complete"


@dataclass(frozen=True)
class EnrolmentProgress:
    """How far a (possibly multi-call) enrolment has got, and what the caller should do."""

    customer_id: str
    status: EnrolmentStatus
    percent: float
    speech_s: float
    required_s: float
    recordings: int
    feedback: tuple[Flag, ...]
    samples: tuple[SampleReport, ...] = field(default_factory=tuple)

    @property
    def complete(self) -> bool:
        return self.status is EnrolmentStatus.COMPLETE
