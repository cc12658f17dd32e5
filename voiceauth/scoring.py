"""From two embeddings to a calibrated confidence and a decision.

    cosine  ->  AS-norm (when a cohort is large enough)  ->  duration-aware
    logistic calibration (log-likelihood ratio)  ->  Policy thresholds

The thresholds come from the bank's risk appetite: ``Policy(target_far=0.01)``
puts the accept threshold where the calibration trials' false-accept rate is at
most 1 % (and never below LLR 0, where the evidence would favour an impostor),
and states the expected false-accept / false-reject rates with exact binomial
confidence intervals. A target finer than one calibration impostor trial is refused.

Calibration files are untrusted input: loading checks the format version, the model
they were measured on, the number of trials per class and the weights (see
``CalibrationSet.load``).
"""

from __future__ import annotations

import enum
import json
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cache, cached_property
from importlib import resources
from pathlib import Path

import numpy as np

from voiceauth.errors import CalibrationError
from voiceauth.evaluation import Interval, clopper_pearson, threshold_for_far, threshold_for_frr
from voiceauth.models import ECAPA

MIN_COHORT = 20
"""Fewer cohort voiceprints than this and scores are not normalised (flag SMALL_COHORT)."""
COHORT_TOP_N = 100
"""AS-norm uses the mean and spread of the ``COHORT_TOP_N`` most similar cohort scores."""
DURATION_FLOOR_S = 0.5
DURATION_CEIL_S = 60.0
MIN_TRIALS_PER_CLASS = 100
"""Fewest genuine and fewest impostor trials a calibration is fitted on or loaded with.

Every error rate voiceauth states is an exact 95 % Clopper-Pearson interval over these
trials. With 100 trials and no errors that interval is [0 %, 3.6 %]; with 10 it is
[0 %, 31 %] and with 2, [0 %, 84 %]: a "0.00 %" that says nothing. 100 per class is the
least for which even a flawless calibration can state a rate within a few percent. Finer
false-accept targets need more impostor trials still, which the Policy checks (one
impostor trial at least per ``1 / target_far``).
"""
SCHEMA_VERSION = 1
"""Version of the calibration file format; files without a version are version 1."""
_REFIT = "refit it with `voiceauth calibrate`"


class Normalisation(str, enum.Enum):
    RAW = "raw"
    AS_NORM = "as-norm"


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


def _check_trials(scores: np.ndarray, labels: np.ndarray, speech_s: np.ndarray) -> None:
    """Same-length 1-D finite trials with at least MIN_TRIALS_PER_CLASS of each class."""
    if not (scores.ndim == labels.ndim == speech_s.ndim == 1 and len(scores) == len(labels) == len(speech_s)):
        raise CalibrationError(f"scores, labels and speech_s must be 1-D and of the same length; {_REFIT}")
    if labels.dtype != np.bool_:
        raise CalibrationError(f"trial labels must be true or false; {_REFIT}")
    if not (np.all(np.isfinite(scores)) and np.all(np.isfinite(speech_s)) and np.all(speech_s >= 0)):
        raise CalibrationError(
            f"calibration trials contain NaN, infinite or negative values; remove those rows and {_REFIT}"
        )
    n_target, n_non = int(labels.sum()), int((~labels).sum())
    if min(n_target, n_non) < MIN_TRIALS_PER_CLASS:
        raise CalibrationError(
            f"calibration needs at least {MIN_TRIALS_PER_CLASS} genuine and {MIN_TRIALS_PER_CLASS} impostor trials, "
            f"got {n_target} and {n_non}, too few for the error rates it states; add labelled trials and {_REFIT}"
        )


def _check_weights(weights: tuple[float, ...], durations: tuple[float, float]) -> None:
    """Four finite weights whose LLR rises with the score at every speech duration in ``durations``."""
    if len(weights) != 4 or not all(math.isfinite(w) for w in weights):
        raise CalibrationError(f"calibration needs 4 weights, all finite, got {weights!r}; {_REFIT}")
    # d llr / d score = w0 + w1*q, linear in q: positive at both ends of q's range means positive throughout
    slopes = [weights[0] + weights[1] * float(q) for q in duration_feature(np.array(durations))]
    if not min(slopes) > 0:
        raise CalibrationError(
            f"calibration's score slope is not positive ({min(slopes):.3g} at some speech duration): a higher "
            f"similarity would count as less evidence for the claim; check the trial labels and {_REFIT}"
        )


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
    fitted on so that a Policy can place thresholds and state expected error rates.

    Construction validates (CalibrationError otherwise): at least ``MIN_TRIALS_PER_CLASS``
    finite trials of each class, four finite weights, and an LLR that rises with the score
    at every speech duration the trials cover.
    """

    normalisation: Normalisation
    weights: tuple[float, float, float, float]
    """llr = w0*s + w1*s*q + w2*q + w3 with q = log(speech seconds)."""
    scores: np.ndarray
    labels: np.ndarray
    speech_s: np.ndarray
    source: str = "custom"

    def __post_init__(self) -> None:
        _check_trials(self.scores, self.labels, self.speech_s)
        _check_weights(self.weights, self.durations_s)

    @cached_property
    def durations_s(self) -> tuple[float, float]:
        """Shortest and longest net speech of the trials (within 0.5-60 s). The LLR of shorter
        or longer speech is taken at the nearest of the two, never extrapolated."""
        span = np.clip([self.speech_s.min(), self.speech_s.max()], DURATION_FLOOR_S, DURATION_CEIL_S)
        return float(span[0]), float(span[1])

    def llr(self, score: np.ndarray | float, speech_s: np.ndarray | float) -> np.ndarray | float:
        speech_s = np.clip(np.asarray(speech_s, dtype=np.float64), *self.durations_s)
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
        """Fit on labelled trials, weighting both classes equally (effective prior 0.5).

        Raises CalibrationError for too few trials of a class (``MIN_TRIALS_PER_CLASS``), NaN,
        or trials on which the fitted LLR would not rise with the score.
        """
        s = np.asarray(scores, dtype=np.float64)
        y = np.asarray(labels, dtype=bool)
        d = np.asarray(speech_s, dtype=np.float64)
        _check_trials(s, y, d)
        weights = np.where(y, 0.5 / y.sum(), 0.5 / (~y).sum())
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
        """Parse and validate one calibration of a file; CalibrationError when unsound."""
        try:
            trials = data["trials"]
            assert isinstance(trials, dict)
            labels = trials["genuine"]
            if not (isinstance(labels, list) and all(isinstance(v, bool) for v in labels)):
                raise CalibrationError(f"trial labels ('genuine') must be a list of true or false; {_REFIT}")
            return cls(
                Normalisation(data["normalisation"]),
                tuple(_numbers(data["weights"], "weights")),  # type: ignore[arg-type]
                np.asarray(_numbers(trials["score"], "trial scores"), dtype=np.float64),
                np.asarray(labels, dtype=bool),
                np.asarray(_numbers(trials["speech_s"], "trial speech_s"), dtype=np.float64),
                str(data.get("source", "file")),
            )
        except (KeyError, TypeError, ValueError, AssertionError) as exc:
            raise CalibrationError(f"calibration data is malformed ({exc!r}); {_REFIT}") from exc


def _numbers(values: object, what: str) -> list[float]:
    """A JSON list of numbers (not strings, not booleans) as floats."""
    if not (isinstance(values, list) and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values)):
        raise CalibrationError(f"calibration {what} must be a list of numbers; {_REFIT}")
    return [float(v) for v in values]


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

    def check_model(self, model_id: str) -> CalibrationSet:
        """This set, after checking it was measured on ``model_id``'s scores."""
        if self.model_id != model_id:
            raise CalibrationError(
                f"the calibration is for model {self.model_id!r}, the speaker model is {model_id!r}; its thresholds "
                f"mean nothing for this model: use a calibration made for it, or {_REFIT}"
            )
        return self

    def save(self, path: str | os.PathLike[str]) -> Path:
        out = Path(path)
        payload = {
            "version": SCHEMA_VERSION,
            "model_id": self.model_id,
            "calibrations": [c.to_dict() for c in self.by_normalisation.values()],
        }
        out.write_text(json.dumps(payload))
        return out

    @classmethod
    def load(cls, path: str | os.PathLike[str], model_id: str = ECAPA.model_id) -> CalibrationSet:
        """Read and validate a calibration file for the speaker model ``model_id``.

        Raises CalibrationError when the file is unreadable, of an unknown version, for another
        model, or holds an unsound calibration (see :class:`Calibration`).
        """
        try:
            payload = json.loads(Path(path).read_text())
        except (OSError, ValueError) as exc:
            raise CalibrationError(f"cannot read calibration file {path}: {exc}") from exc
        try:
            return cls.from_payload(payload, model_id)
        except CalibrationError as exc:
            raise CalibrationError(f"calibration file {path}: {exc}") from exc

    @classmethod
    def from_payload(cls, payload: object, model_id: str = ECAPA.model_id) -> CalibrationSet:
        """Validate parsed calibration JSON for the speaker model ``model_id``."""
        if not isinstance(payload, dict):
            raise CalibrationError(f"calibration data must be a JSON object; {_REFIT}")
        version = payload.get("version", 1)
        if version != SCHEMA_VERSION:
            raise CalibrationError(
                f"calibration file version {version!r} is not known to this voiceauth (it reads version "
                f"{SCHEMA_VERSION}); upgrade voiceauth or {_REFIT}"
            )
        entries = payload.get("calibrations")
        if not isinstance(entries, list):
            raise CalibrationError(f"calibration data has no 'calibrations' list; {_REFIT}")
        cals = [Calibration.from_dict(c) for c in entries]
        by_kind = {c.normalisation: c for c in cals}
        if len(by_kind) != len(cals):
            raise CalibrationError(f"a calibration file holds one normalisation twice; {_REFIT}")
        if Normalisation.RAW not in by_kind:
            raise CalibrationError(f"a calibration file must contain a 'raw' calibration; {_REFIT}")
        return cls(str(payload.get("model_id", "")), by_kind).check_model(model_id)


DEFAULT_CALIBRATION = "calibration_ecapa.json"


@cache
def default_calibration() -> CalibrationSet:
    """The calibration shipped for the ECAPA model, measured by benchmarks/accuracy.py."""
    text = resources.files("voiceauth.data").joinpath(DEFAULT_CALIBRATION).read_text()
    return CalibrationSet.from_payload(json.loads(text))


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
    if 1.0 / len(impostor) > target_far:
        # finer than one impostor trial, the threshold sits above every impostor seen and "0.00 %" is a guess
        raise CalibrationError(
            f"target_far={target_far:g} is finer than the calibration's {len(impostor)} impostor trials resolve "
            f"(they need target_far >= {1.0 / len(impostor):.2g}); raise target_far, or add impostor trials and "
            f"{_REFIT}"
        )
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
    normalisation: Normalisation
    llr: float
    confidence: float


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
        return Score(raw, kind, llr, self.policy.confidence(llr))

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
