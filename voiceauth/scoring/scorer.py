"""From two embeddings to a calibrated score:

    cosine  ->  AS-norm (when a cohort is large enough)  ->  duration-aware
    logistic calibration (log-likelihood ratio; outside the speech durations a store
    calibration was fitted on, capped by the base one's)  ->  confidence under the Policy's prior

Thresholds and the decision itself live in :mod:`voiceauth.decision`.
"""

from __future__ import annotations

import math
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
        self, calibrations: CalibrationSet | None, policy: Policy, *, missing: CalibrationError | None = None,
        beyond: CalibrationSet | None = None,
    ) -> None:
        """Places every calibration's thresholds now: a policy the trials cannot support fails here.

        Without ``calibrations`` (a model nobody calibrated yet) every score, threshold and decision
        raises ``missing``, the error that says how to measure one: scores are never decisions
        without a calibration (fail closed).

        ``beyond``: the calibration that also speaks for net speech shorter or longer than any trial
        ``calibrations`` was fitted on (a store's refit on the bank's calls: the base one; see
        :meth:`score`).
        """
        self._calibrations = calibrations
        self._missing = missing or CalibrationError(f"no calibration for this speaker model; {_REFIT}")
        self.policy = policy
        measured = calibrations.by_normalisation if calibrations is not None else {}
        self._thresholds: dict[Normalisation, Thresholds] = {kind: policy.thresholds(c) for kind, c in measured.items()}
        self._beyond = beyond
        self._beyond_accept: dict[Normalisation, float] = {}

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
        llr = self._corroborated(kind, float(value), speech_s, float(self.calibrations.get(kind).llr(value, speech_s)))
        return Score(raw, kind, llr, self.policy.confidence(llr), float(value))

    def _corroborated(self, kind: Normalisation, value: float, speech_s: float, llr: float) -> float:
        """The LLR, capped outside the speech durations its calibration was fitted on.

        A calibration fitted on short calls takes longer speech at its longest trial's duration,
        and that can be wrong: on one channel impostors' cosines rise with more speech
        (``benchmarks/bank_simulation.py``: a refit on 3-4 s calls stated 0.93 % FAR, 4.5 % of
        impostors passed on 6-20 s calls). There, the LLR counts only as far as the ``beyond``
        calibration agrees: it is at most that calibration's LLR moved onto this one's accept
        threshold (accepted only when both would accept), and never pushed under the reject
        threshold by it (a reject stays evidence against the claim in this calibration's terms).
        """
        if self._beyond is None or kind not in self._beyond.by_normalisation:
            return llr
        low, high = self.calibrations.get(kind).durations_s
        if low <= speech_s <= high:
            return llr
        th = self.thresholds(kind)
        if llr < th.reject_llr:
            return llr
        other = self._beyond.get(kind)
        if kind not in self._beyond_accept:
            try:
                self._beyond_accept[kind] = self.policy.thresholds(other).accept_llr
            except CalibrationError:  # it cannot place the policy's threshold: it agrees to no accept
                self._beyond_accept[kind] = math.inf
        moved = float(other.llr(value, speech_s)) - self._beyond_accept[kind] + th.accept_llr
        return min(llr, max(moved, th.reject_llr))

    def thresholds(self, normalisation: Normalisation) -> Thresholds:
        if normalisation not in self._thresholds:
            self._thresholds[normalisation] = self.policy.thresholds(self.calibrations.get(normalisation))
        return self._thresholds[normalisation]
