"""From two embeddings to a calibrated score:

    cosine  ->  AS-norm (when a cohort is large enough)  ->  duration-aware
    logistic calibration (log-likelihood ratio)  ->  confidence under the Policy's prior

Thresholds and the decision itself live in :mod:`voiceauth.decision`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from voiceauth.errors import CalibrationError
from voiceauth.scoring.calibration import _REFIT, CalibrationSet
from voiceauth.scoring.normalisation import MIN_COHORT, Normalisation, as_norm
from voiceauth.scoring.policy import Policy, Thresholds


@dataclass(frozen=True)
class Score:
    """One trial's score at every stage."""

    raw: float
    normalisation: Normalisation
    llr: float
    confidence: float
    value: float = float("nan")
    """The score the calibration read: ``raw``, or its AS-norm value."""


class Scorer:
    """Scores trials against enrolled voiceprints with optional AS-norm and calibration."""

    def __init__(
        self, calibrations: CalibrationSet | None, policy: Policy, *, missing: CalibrationError | None = None
    ) -> None:
        """Places every calibration's thresholds now: a policy the trials cannot support fails here.

        Without ``calibrations`` (a model nobody calibrated yet) every score, threshold and decision
        raises ``missing``, the error that says how to measure one: scores are never decisions
        without a calibration (fail closed).
        """
        self._calibrations = calibrations
        self._missing = missing or CalibrationError(f"no calibration for this speaker model; {_REFIT}")
        self.policy = policy
        measured = calibrations.by_normalisation if calibrations is not None else {}
        self._thresholds: dict[Normalisation, Thresholds] = {kind: policy.thresholds(c) for kind, c in measured.items()}

    @property
    def calibrations(self) -> CalibrationSet:
        if self._calibrations is None:
            raise self._missing
        return self._calibrations

    def score(self, enrol: np.ndarray, test: np.ndarray, speech_s: float, cohort: np.ndarray | None) -> Score:
        raw = float(enrol @ test)
        use_norm = (
            cohort is not None
            and len(cohort) >= MIN_COHORT
            and Normalisation.AS_NORM in self.calibrations.by_normalisation
        )
        if use_norm:
            assert cohort is not None
            value, kind = as_norm(raw, enrol, test, cohort), Normalisation.AS_NORM
        else:
            value, kind = raw, Normalisation.RAW
        llr = float(self.calibrations.get(kind).llr(value, speech_s))
        return Score(raw, kind, llr, self.policy.confidence(llr), float(value))

    def thresholds(self, normalisation: Normalisation) -> Thresholds:
        if normalisation not in self._thresholds:
            self._thresholds[normalisation] = self.policy.thresholds(self.calibrations.get(normalisation))
        return self._thresholds[normalisation]
