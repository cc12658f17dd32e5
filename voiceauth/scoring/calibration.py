"""Duration-aware logistic calibration: cosine (or AS-norm) score to log-likelihood ratio.

Calibration files are untrusted input: loading checks the format version, the model
they were measured on, the number of trials per class and the weights (see
``CalibrationSet.load``).
"""

from __future__ import annotations

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
from voiceauth.models import ECAPA
from voiceauth.scoring.normalisation import Normalisation

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
    claimed: np.ndarray | None = None
    """Impostor trials that were real claims of an identity the bank reported (``fraud_case``),
    not random pairs of customers: the policy holds its FAR target on them too (see
    :func:`voiceauth.scoring.policy.Policy.thresholds`). None: no such trials."""

    def __post_init__(self) -> None:
        _check_trials(self.scores, self.labels, self.speech_s)
        _check_weights(self.weights, self.durations_s)
        if self.claimed is not None and (len(self.claimed) != len(self.labels) or bool(
                np.any(np.asarray(self.claimed, dtype=bool) & np.asarray(self.labels, dtype=bool)))):
            raise CalibrationError(f"'claimed' must mark impostor trials only, one flag per trial; {_REFIT}")

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
        claimed: Sequence[bool] | np.ndarray | None = None,
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
        flags = None if claimed is None else np.asarray(claimed, dtype=bool)
        return cls(normalisation, tuple(float(v) for v in w), s, y, d, source, flags)  # type: ignore[arg-type]

    def to_dict(self) -> dict[str, object]:
        return {
            "normalisation": self.normalisation.value,
            "weights": list(self.weights),
            "source": self.source,
            "trials": {
                "score": [round(float(v), 5) for v in self.scores],
                "genuine": [bool(v) for v in self.labels],
                "speech_s": [round(float(v), 2) for v in self.speech_s],
                **({"claimed": [bool(v) for v in self.claimed]} if self.claimed is not None else {}),
            },
        }

    @classmethod
    def from_dict(cls, data: dict[str, object]) -> Calibration:
        """Parse and validate one calibration of a file; CalibrationError when unsound."""
        try:
            trials = data["trials"]
            assert isinstance(trials, dict)
            labels, claimed = trials["genuine"], trials.get("claimed")
            for flags in (labels, *([claimed] if claimed is not None else [])):
                if not (isinstance(flags, list) and all(isinstance(v, bool) for v in flags)):
                    raise CalibrationError(f"trial flags ('genuine', 'claimed') must be lists of true or false; "
                                           f"{_REFIT}")
            return cls(
                Normalisation(data["normalisation"]),
                tuple(_numbers(data["weights"], "weights")),  # type: ignore[arg-type]
                np.asarray(_numbers(trials["score"], "trial scores"), dtype=np.float64),
                np.asarray(labels, dtype=bool),
                np.asarray(_numbers(trials["speech_s"], "trial speech_s"), dtype=np.float64),
                str(data.get("source", "file")),
                None if claimed is None else np.asarray(claimed, dtype=bool),
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



