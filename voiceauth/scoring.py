"""From two embeddings to a calibrated confidence and a decision.

    cosine  ->  AS-norm (when a cohort is large enough)  ->  duration-aware
    logistic calibration (log-likelihood ratio)  ->  Policy thresholds

The thresholds come from the bank's risk appetite: ``Policy(target_far=0.01)``
puts the accept threshold where the calibration trials' false-accept rate is at
most 1 % (and never below LLR 0, where the evidence would favour an impostor),
and states the expected false-accept / false-reject rates with exact binomial
confidence intervals.
"""

from __future__ import annotations

import enum
import json
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cache
from importlib import resources
from pathlib import Path

import numpy as np

from voiceauth.errors import CalibrationError
from voiceauth.evaluation import Interval, clopper_pearson, threshold_for_far, threshold_for_frr

MIN_COHORT = 20
"""Fewer cohort voiceprints than this and scores are not normalised (flag SMALL_COHORT)."""
COHORT_TOP_N = 100
"""AS-norm uses the mean and spread of the ``COHORT_TOP_N`` most similar cohort scores."""
DURATION_FLOOR_S = 0.5
DURATION_CEIL_S = 60.0


class Normalisation(str, enum.Enum):
    RAW = "raw"
    AS_NORM = "as-norm"


def cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray | float:
    """Cosine similarity of unit-length vectors (rows of ``a`` against ``b``)."""
    return a @ b


def top_stats(scores: np.ndarray, top_n: int = COHORT_TOP_N) -> tuple[np.ndarray, np.ndarray]:
    """Mean and standard deviation (at least 1e-6) of the ``top_n`` highest scores of each column.

    ``scores`` is (cohort, m): the cohort side of AS-norm for m embeddings at once.
    """
    n = min(top_n, len(scores))
    top = np.partition(scores, len(scores) - n, axis=0)[len(scores) - n :]
    return top.mean(axis=0), np.maximum(top.std(axis=0), 1e-6)


def as_norm(raw: float, enrol: np.ndarray, test: np.ndarray, cohort: np.ndarray, top_n: int = COHORT_TOP_N) -> float:
    """Adaptive symmetric normalisation of one trial score against an impostor cohort.

    Each side is compared with the cohort; the ``top_n`` highest cohort scores of each
    side give a mean and standard deviation, and the score is z-normalised against both.
    """
    (enrol_mean, test_mean), (enrol_std, test_std) = top_stats(cohort @ np.stack([enrol, test], axis=1), top_n)
    return float(0.5 * ((raw - enrol_mean) / enrol_std + (raw - test_mean) / test_std))


def duration_feature(speech_s: np.ndarray | float) -> np.ndarray:
    """log of net test speech seconds, clipped to [0.5 s, 60 s]."""
    return np.log(np.clip(np.asarray(speech_s, dtype=np.float64), DURATION_FLOOR_S, DURATION_CEIL_S))


def _features(scores: np.ndarray, speech_s: np.ndarray | float) -> np.ndarray:
    q = duration_feature(speech_s) * np.ones_like(scores)
    return np.stack([scores, scores * q, q, np.ones_like(scores)], axis=-1)


def _fit_logistic(x: np.ndarray, y: np.ndarray, weights: np.ndarray, l2: float = 1e-3) -> np.ndarray:
    """Weighted logistic regression by Newton's method.

    ``weights`` sum to 1; the L2 penalty keeps the weights finite when the trials are
    (nearly) separable, which clean speech with a good model often is.
    """
    w = np.zeros(x.shape[1])
    for _ in range(100):
        p = 1.0 / (1.0 + np.exp(-(x @ w)))
        grad = x.T @ (weights * (p - y)) + l2 * w
        hess = (x * (weights * p * (1 - p))[:, None]).T @ x + l2 * np.eye(len(w))
        step = np.linalg.solve(hess, grad)
        w -= step
        if np.max(np.abs(step)) < 1e-9:
            break
    return w


@dataclass(frozen=True)
class Calibration:
    """Maps (score, net test speech) to a log-likelihood ratio, and keeps the trials it was
    fitted on so that a Policy can place thresholds and state expected error rates."""

    normalisation: Normalisation
    weights: tuple[float, float, float, float]
    """llr = w0*s + w1*s*q + w2*q + w3 with q = log(speech seconds)."""
    scores: np.ndarray
    labels: np.ndarray
    speech_s: np.ndarray
    source: str = "custom"

    def llr(self, score: np.ndarray | float, speech_s: np.ndarray | float) -> np.ndarray | float:
        value = _features(np.asarray(score, dtype=np.float64), speech_s) @ np.asarray(self.weights)
        return float(value) if np.ndim(value) == 0 else value

    def trial_llrs(self) -> np.ndarray:
        return np.asarray(self.llr(self.scores, self.speech_s))

    @classmethod
    def fit(
        cls,
        scores: Sequence[float] | np.ndarray,
        labels: Sequence[bool] | np.ndarray,
        speech_s: Sequence[float] | np.ndarray,
        normalisation: Normalisation = Normalisation.RAW,
        source: str = "custom",
    ) -> Calibration:
        """Fit on labelled trials, weighting both classes equally (effective prior 0.5)."""
        s = np.asarray(scores, dtype=np.float64)
        y = np.asarray(labels, dtype=bool)
        d = np.asarray(speech_s, dtype=np.float64)
        if not (s.ndim == y.ndim == d.ndim == 1 and len(s) == len(y) == len(d)):
            raise CalibrationError("scores, labels and speech_s must be 1-D and of the same length")
        if not (np.all(np.isfinite(s)) and np.all(np.isfinite(d))):
            raise CalibrationError("calibration trials contain NaN or infinite values; remove those rows")
        n_target, n_non = int(y.sum()), int((~y).sum())
        if n_target < 10 or n_non < 10:
            raise CalibrationError(
                f"calibration needs at least 10 genuine and 10 impostor trials, got {n_target} and {n_non}; "
                "add labelled trials"
            )
        weights = np.where(y, 0.5 / n_target, 0.5 / n_non)
        w = _fit_logistic(_features(s, d), y.astype(np.float64), weights)
        return cls(normalisation, tuple(float(v) for v in w), s, y, d, source)  # type: ignore[arg-type]

    def to_dict(self) -> dict[str, object]:
        return {
            "normalisation": self.normalisation.value,
            "weights": list(self.weights),
            "source": self.source,
            "trials": {
                "score": [round(float(v), 5) for v in self.scores],
                "genuine": [bool(v) for v in self.labels],
                "speech_s": [round(float(v), 2) for v in self.speech_s],
            },
        }

    @classmethod
    def from_dict(cls, data: dict[str, object]) -> Calibration:
        try:
            trials = data["trials"]
            assert isinstance(trials, dict)
            return cls(
                Normalisation(data["normalisation"]),
                tuple(float(v) for v in data["weights"]),  # type: ignore[arg-type, union-attr]
                np.asarray(trials["score"], dtype=np.float64),
                np.asarray(trials["genuine"], dtype=bool),
                np.asarray(trials["speech_s"], dtype=np.float64),
                str(data.get("source", "file")),
            )
        except (KeyError, TypeError, ValueError, AssertionError) as exc:
            raise CalibrationError(
                f"calibration data is malformed ({exc!r}); refit it with `voiceauth calibrate`"
            ) from exc


@dataclass(frozen=True)
class CalibrationSet:
    """One calibration per normalisation, for the model that produced the trials."""

    model_id: str
    by_normalisation: dict[Normalisation, Calibration]

    def get(self, normalisation: Normalisation) -> Calibration:
        try:
            return self.by_normalisation[normalisation]
        except KeyError:
            return self.by_normalisation[Normalisation.RAW]

    def save(self, path: str | os.PathLike[str]) -> Path:
        out = Path(path)
        payload = {
            "model_id": self.model_id,
            "calibrations": [c.to_dict() for c in self.by_normalisation.values()],
        }
        out.write_text(json.dumps(payload))
        return out

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> CalibrationSet:
        try:
            payload = json.loads(Path(path).read_text())
        except (OSError, ValueError) as exc:
            raise CalibrationError(f"cannot read calibration file {path}: {exc}") from exc
        return cls.from_payload(payload)

    @classmethod
    def from_payload(cls, payload: dict[str, object]) -> CalibrationSet:
        cals = [Calibration.from_dict(c) for c in payload.get("calibrations", [])]  # type: ignore[union-attr]
        if not any(c.normalisation is Normalisation.RAW for c in cals):
            raise CalibrationError("a calibration file must contain a 'raw' calibration")
        return cls(str(payload.get("model_id", "")), {c.normalisation: c for c in cals})


DEFAULT_CALIBRATION = "calibration_ecapa.json"


@cache
def default_calibration() -> CalibrationSet:
    """The calibration shipped for the ECAPA model, measured by benchmarks/accuracy.py."""
    text = resources.files("voiceauth.data").joinpath(DEFAULT_CALIBRATION).read_text()
    return CalibrationSet.from_payload(json.loads(text))


def clear_calibration_cache() -> None:
    default_calibration.cache_clear()


@dataclass(frozen=True)
class Thresholds:
    """Where the policy puts its two thresholds (in calibrated LLR), with expected error rates."""

    accept_llr: float
    reject_llr: float
    expected_far: float
    expected_far_interval: Interval
    expected_frr: float
    """Genuine callers not accepted (rejected or inconclusive)."""
    expected_frr_interval: Interval
    expected_false_reject: float
    """Genuine callers confidently rejected (below the reject threshold)."""
    trials: tuple[int, int]
    """(genuine, impostor) calibration trials behind the figures."""

    def describe(self) -> str:
        return (
            f"accept when LLR >= {self.accept_llr:.2f}: expected false accepts {self.expected_far:.2%} "
            f"(95% CI {self.expected_far_interval}), genuine callers not accepted {self.expected_frr:.2%} "
            f"(95% CI {self.expected_frr_interval}); reject below LLR {self.reject_llr:.2f} "
            f"({self.expected_false_reject:.2%} of genuine callers); "
            f"from {self.trials[0]} genuine / {self.trials[1]} impostor trials"
        )


@dataclass(frozen=True)
class Policy:
    """The bank's risk appetite.

    Attributes:
        target_far: the largest acceptable share of impostors accepted.
        max_false_reject: the share of genuine callers the bank accepts to see flatly
            rejected (below the reject threshold); between the thresholds is INCONCLUSIVE.
        min_speech_s: net speech below which a verification is INCONCLUSIVE.
        prior: prior probability that a caller is who they claim, for the confidence.
    """

    target_far: float = 0.01
    max_false_reject: float = 0.02
    min_speech_s: float = 1.0
    prior: float = 0.5

    def __post_init__(self) -> None:
        for name in ("target_far", "max_false_reject", "prior"):
            value = getattr(self, name)
            if not 0.0 < value < 1.0:
                raise CalibrationError(f"Policy.{name} must be strictly between 0 and 1, got {value}")
        if self.min_speech_s < 0:
            raise CalibrationError("Policy.min_speech_s must be >= 0")

    def thresholds(self, calibration: Calibration) -> Thresholds:
        return _thresholds(self.target_far, self.max_false_reject, calibration)

    def confidence(self, llr: float) -> float:
        """Posterior probability of 'same speaker' given the LLR and this policy's prior."""
        logit = llr + math.log(self.prior / (1.0 - self.prior))
        return 1.0 / (1.0 + math.exp(-max(min(logit, 700.0), -700.0)))


def _thresholds(target_far: float, max_false_reject: float, calibration: Calibration) -> Thresholds:
    llrs = calibration.trial_llrs()
    genuine, impostor = llrs[calibration.labels], llrs[~calibration.labels]
    # Accept only where the FAR target is met AND the evidence favours the claim (LLR >= 0).
    accept = max(threshold_for_far(impostor, target_far), 0.0)
    reject = min(threshold_for_frr(genuine, max_false_reject), accept)
    n_fa = int((impostor >= accept).sum())
    n_fr = int((genuine < accept).sum())
    return Thresholds(
        accept_llr=float(accept),
        reject_llr=float(reject),
        expected_far=n_fa / len(impostor),
        expected_far_interval=clopper_pearson(n_fa, len(impostor)),
        expected_frr=n_fr / len(genuine),
        expected_frr_interval=clopper_pearson(n_fr, len(genuine)),
        expected_false_reject=float((genuine < reject).mean()),
        trials=(len(genuine), len(impostor)),
    )


class Decision(str, enum.Enum):
    ACCEPT = "accept"
    REJECT = "reject"
    INCONCLUSIVE = "inconclusive"
    OPTED_OUT = "opted_out"


@dataclass(frozen=True)
class Score:
    """One trial's score at every stage."""

    raw: float
    normalised: float
    normalisation: Normalisation
    llr: float
    confidence: float
    cohort_size: int


class Scorer:
    """Scores trials against enrolled voiceprints with optional AS-norm and calibration."""

    def __init__(self, calibrations: CalibrationSet, policy: Policy) -> None:
        self.calibrations = calibrations
        self.policy = policy
        self._thresholds: dict[Normalisation, Thresholds] = {}

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
        return Score(raw, value, kind, llr, self.policy.confidence(llr), 0 if cohort is None else len(cohort))

    def thresholds(self, normalisation: Normalisation) -> Thresholds:
        if normalisation not in self._thresholds:
            self._thresholds[normalisation] = self.policy.thresholds(self.calibrations.get(normalisation))
        return self._thresholds[normalisation]

    def decide(self, score: Score, speech_s: float) -> Decision:
        if speech_s < self.policy.min_speech_s:
            return Decision.INCONCLUSIVE
        th = self.thresholds(score.normalisation)
        if score.llr >= th.accept_llr:
            return Decision.ACCEPT
        if score.llr < th.reject_llr:
            return Decision.REJECT
        return Decision.INCONCLUSIVE
