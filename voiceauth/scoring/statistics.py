"""Trials and their metrics: FAR / FRR, EER, minDCF, confidence intervals.

Conventions used throughout:

* ``scores`` is a 1-D float array; higher means "more likely the same speaker".
* ``labels`` is a 1-D bool array (``0``/``1`` also accepted); ``True`` marks a genuine
  (target) trial, ``False`` an impostor (non-target) trial.
* A trial is accepted when ``score >= threshold``.
* FAR is the fraction of impostor trials accepted, FRR the fraction of genuine trials rejected.

Everything that takes trials validates them and raises
:class:`~voiceauth.errors.CalibrationError` with a message saying what is wrong.
DET curves and score histograms are drawn by :mod:`voiceauth.tools.plots` (matplotlib is
an optional extra, ``voiceauth[tools]``); this module needs only numpy and scipy.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np
import numpy.typing as npt

from voiceauth.errors import CalibrationError

__all__ = [
    "Interval",
    "Metrics",
    "OperatingPoint",
    "clopper_pearson",
    "compute_metrics",
    "det_points",
    "eer",
    "error_rates",
    "min_dcf",
    "operating_point",
    "threshold_for_far",
    "threshold_for_frr",
]

FloatArray = npt.NDArray[np.float64]
BoolArray = npt.NDArray[np.bool_]


# --------------------------------------------------------------------------- intervals


def _pct(x: float) -> str:
    """A rate as a short percentage: one decimal, or two significant digits below 0.1 %."""
    p = 100.0 * x
    if p == 0.0 or p >= 0.1:
        return f"{p:.1f}%"
    return f"{p:.2g}%"


@dataclass(frozen=True)
class Interval:
    """A confidence interval for a rate, both ends in [0, 1]."""

    low: float
    high: float

    def __str__(self) -> str:
        return f"{_pct(self.low)}–{_pct(self.high)}"


def clopper_pearson(k: int, n: int, confidence: float = 0.95) -> Interval:
    """Exact (Clopper-Pearson) two-sided binomial interval for ``k`` events in ``n`` trials.

    With no trials (``n == 0``) nothing is known and ``Interval(0.0, 1.0)`` is returned.
    """
    if not 0.0 < confidence < 1.0:
        raise CalibrationError(f"confidence must lie strictly between 0 and 1, got {confidence!r}")
    if n < 0 or not 0 <= k <= max(n, 0):
        raise CalibrationError(f"need 0 <= k <= n for a binomial interval, got k={k}, n={n}")
    if n == 0:
        return Interval(0.0, 1.0)
    from scipy.special import betaincinv  # the beta quantile; scipy.stats takes seconds to import

    alpha = 1.0 - confidence
    low = 0.0 if k == 0 else float(betaincinv(k, n - k + 1, alpha / 2))
    high = 1.0 if k == n else float(betaincinv(k + 1, n - k, 1 - alpha / 2))
    return Interval(low, high)


# --------------------------------------------------------------------------- validation


def _as_scores(scores: npt.ArrayLike, what: str = "scores") -> FloatArray:
    try:
        s = np.asarray(scores, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise CalibrationError(f"{what} must be numbers ({exc}); pass a 1-D float array") from exc
    if s.ndim != 1:
        raise CalibrationError(f"{what} must be a 1-D array, got shape {s.shape}; flatten or select one column")
    if s.size == 0:
        raise CalibrationError(f"{what} is empty; evaluation needs at least one trial")
    bad = ~np.isfinite(s)
    if bad.any():
        first = int(np.flatnonzero(bad)[0])
        raise CalibrationError(
            f"{what} contain {int(bad.sum())} NaN or infinite value(s) (first at index {first}); "
            "drop or re-score those trials before evaluating"
        )
    return s


def _as_labels(labels: npt.ArrayLike) -> BoolArray:
    y = np.asarray(labels)
    if y.ndim != 1:
        raise CalibrationError(f"labels must be a 1-D array, got shape {y.shape}")
    if y.dtype == np.bool_:
        return y
    if y.dtype.kind in "iuf" and np.all((y == 0) | (y == 1)):
        return y.astype(bool)
    raise CalibrationError(
        f"labels must be booleans (True = genuine, False = impostor) or 0/1, got dtype {y.dtype}; "
        "convert them with labels == 'genuine' or similar"
    )


def _validate(scores: npt.ArrayLike, labels: npt.ArrayLike, *, both: bool = True) -> tuple[FloatArray, BoolArray]:
    s = _as_scores(scores)
    y = _as_labels(labels)
    if len(s) != len(y):
        raise CalibrationError(f"scores and labels differ in length ({len(s)} vs {len(y)}); pass one label per trial")
    if both:
        n_gen = int(y.sum())
        if n_gen == 0 or n_gen == len(y):
            raise CalibrationError(
                f"need both genuine and impostor trials, got {n_gen} genuine and {len(y) - n_gen} impostor; "
                "add trials of the missing kind"
            )
    return s, y


def _check_rate(value: float, name: str) -> float:
    v = float(value)
    if not 0.0 <= v <= 1.0:
        raise CalibrationError(f"{name} must be a rate in [0, 1], got {value!r}")
    return v


def _check_threshold(threshold: float) -> float:
    t = float(threshold)
    if math.isnan(t):
        raise CalibrationError("threshold is NaN; pass a real number")
    return t


# --------------------------------------------------------------------------- error rates


def error_rates(scores: npt.ArrayLike, labels: npt.ArrayLike, threshold: float) -> tuple[float, float]:
    """(FAR, FRR) when accepting every trial with ``score >= threshold``."""
    s, y = _validate(scores, labels)
    t = _check_threshold(threshold)
    n_gen = int(y.sum())
    n_imp = len(y) - n_gen
    n_fa = int(np.count_nonzero(s[~y] >= t))
    n_fr = int(np.count_nonzero(s[y] < t))
    return n_fa / n_imp, n_fr / n_gen


def _det(s: FloatArray, y: BoolArray) -> tuple[FloatArray, FloatArray, FloatArray]:
    """det_points on already validated trials."""
    order = np.argsort(s, kind="stable")
    s_sorted = s[order]
    y_sorted = y[order]
    # index of the first trial of each run of equal scores
    starts = np.flatnonzero(np.concatenate(([True], s_sorted[1:] != s_sorted[:-1])))
    genuine_cum = np.concatenate(([0], np.cumsum(y_sorted, dtype=np.int64)))
    genuine_below = genuine_cum[starts]  # genuine trials with score < threshold: rejected
    impostor_below = starts - genuine_below
    n_gen = int(genuine_cum[-1])
    n_imp = len(s) - n_gen
    far = (n_imp - impostor_below) / n_imp
    frr = genuine_below / n_gen
    return s_sorted[starts], far.astype(np.float64), frr.astype(np.float64)


def det_points(scores: npt.ArrayLike, labels: npt.ArrayLike) -> tuple[FloatArray, FloatArray, FloatArray]:
    """(thresholds, FAR, FRR) at every distinct score, thresholds ascending.

    ``far[i]`` and ``frr[i]`` are the error rates when accepting ``score >= thresholds[i]``;
    the first point accepts everything (FAR 1, FRR 0). The reject-everything point
    (FAR 0, FRR 1, any threshold above the top score) is not included. O(n log n).
    """
    return _det(*_validate(scores, labels))


def _det_closed(s: FloatArray, y: BoolArray) -> tuple[FloatArray, FloatArray, FloatArray]:
    """det_points plus the reject-everything point, at the float just above the top score."""
    thresholds, far, frr = _det(s, y)
    top = np.nextafter(thresholds[-1], np.inf)
    return np.append(thresholds, top), np.append(far, 0.0), np.append(frr, 1.0)


def _eer(s: FloatArray, y: BoolArray) -> tuple[float, float]:
    return _eer_on(*_det_closed(s, y))


def _eer_on(thresholds: FloatArray, far: FloatArray, frr: FloatArray) -> tuple[float, float]:
    diff = far - frr  # non-increasing; +1 at the first point, -1 at the last
    i = int(np.argmax(diff <= 0))  # first point where FRR has caught up with FAR; always >= 1
    d0, d1 = float(diff[i - 1]), float(diff[i])
    w = d0 / (d0 - d1)  # d0 > 0 >= d1, so 0 < w <= 1
    rate = float(far[i - 1] + w * (far[i] - far[i - 1]))
    threshold = float(thresholds[i - 1] + w * (thresholds[i] - thresholds[i - 1]))
    return rate, threshold


def eer(scores: npt.ArrayLike, labels: npt.ArrayLike) -> tuple[float, float]:
    """Equal error rate and the threshold where it occurs.

    Uses linear interpolation on the empirical DET staircase: between the last
    threshold where FAR > FRR and the first where FAR <= FRR, the segment joining the
    two (FAR, FRR) points is intersected with FAR = FRR. The threshold is interpolated
    with the same weight (so it usually lies between two observed scores). Perfectly
    separated trials give EER 0 at the lowest genuine score.
    """
    return _eer(*_validate(scores, labels))


def _min_dcf_on(
    det: tuple[FloatArray, FloatArray, FloatArray], p_target: float, c_miss: float, c_fa: float
) -> tuple[float, float]:
    thresholds, far, frr = det
    cost = c_miss * p_target * frr + c_fa * (1.0 - p_target) * far
    best = int(np.argmin(cost))
    norm = min(c_miss * p_target, c_fa * (1.0 - p_target))
    return float(cost[best] / norm), float(thresholds[best])


def _check_dcf_params(p_target: float, c_miss: float, c_fa: float) -> None:
    if not 0.0 < p_target < 1.0:
        raise CalibrationError(f"p_target must lie strictly between 0 and 1, got {p_target!r}")
    if not (c_miss > 0 and c_fa > 0 and math.isfinite(c_miss) and math.isfinite(c_fa)):
        raise CalibrationError(f"c_miss and c_fa must be positive finite costs, got {c_miss!r} and {c_fa!r}")


def min_dcf(
    scores: npt.ArrayLike,
    labels: npt.ArrayLike,
    p_target: float,
    c_miss: float = 1.0,
    c_fa: float = 1.0,
) -> tuple[float, float]:
    """Normalised minimum detection cost and the threshold attaining it.

    DCF(t) = c_miss * p_target * FRR(t) + c_fa * (1 - p_target) * FAR(t), minimised over
    every empirical threshold (including accept-all and reject-all) and divided by
    min(c_miss * p_target, c_fa * (1 - p_target)), the cost of the better trivial system
    (NIST SRE convention). So 1.0 means "no better than always accepting or always rejecting".
    """
    _check_dcf_params(p_target, c_miss, c_fa)
    return _min_dcf_on(_det_closed(*_validate(scores, labels)), p_target, c_miss, c_fa)


# --------------------------------------------------------------------------- thresholds


def _allowed(target: float, n: int) -> int:
    """The largest k with k / n <= target, computed so that k / n really is <= target in floats."""
    k = min(int(math.floor(target * n)), n)
    while k < n and (k + 1) / n <= target:
        k += 1
    while k > 0 and k / n > target:
        k -= 1
    return k


def threshold_for_far(impostor_scores: npt.ArrayLike, target_far: float) -> float:
    """The smallest threshold whose empirical FAR is at most ``target_far``.

    With ``k`` the most impostors allowed through (``k / n <= target_far``), the result is
    the float just above the (k+1)-th highest impostor score: every threshold below it
    accepts at least k+1 impostors. Ties are handled (tied scores are accepted or rejected
    together). When every impostor may be accepted (``target_far >= 1``) the lowest
    impostor score is returned; lower thresholds behave identically on these trials.
    """
    s = np.sort(_as_scores(impostor_scores, "impostor scores"))
    target = _check_rate(target_far, "target_far")
    n = len(s)
    k = _allowed(target, n)
    if k >= n:
        return float(s[0])
    return float(np.nextafter(s[n - k - 1], np.inf))


def threshold_for_frr(genuine_scores: npt.ArrayLike, target_frr: float) -> float:
    """The largest threshold whose empirical FRR is at most ``target_frr``.

    With ``k`` the most genuine trials allowed to be rejected (``k / n <= target_frr``),
    the result is the (k+1)-th lowest genuine score: only scores strictly below it are
    rejected, and any higher threshold rejects at least k+1. When every genuine trial may
    be rejected (``target_frr >= 1``) the float just above the top score is returned.
    """
    s = np.sort(_as_scores(genuine_scores, "genuine scores"))
    target = _check_rate(target_frr, "target_frr")
    n = len(s)
    k = _allowed(target, n)
    if k >= n:
        return float(np.nextafter(s[-1], np.inf))
    return float(s[k])


# --------------------------------------------------------------------------- summaries


@dataclass(frozen=True)
class OperatingPoint:
    """Error rates at one threshold, with exact binomial confidence intervals."""

    threshold: float
    far: float
    frr: float
    far_interval: Interval
    frr_interval: Interval
    n_genuine: int
    n_impostor: int

    def __str__(self) -> str:
        return (
            f"threshold {self.threshold:.4g}: FAR {_pct(self.far)} ({self.far_interval}, n={self.n_impostor}), "
            f"FRR {_pct(self.frr)} ({self.frr_interval}, n={self.n_genuine})"
        )


def operating_point(
    scores: npt.ArrayLike, labels: npt.ArrayLike, threshold: float, confidence: float = 0.95
) -> OperatingPoint:
    """FAR and FRR at ``threshold`` with Clopper-Pearson intervals at ``confidence``."""
    s, y = _validate(scores, labels)
    t = _check_threshold(threshold)
    genuine, impostor = s[y], s[~y]
    n_fa = int(np.count_nonzero(impostor >= t))
    n_fr = int(np.count_nonzero(genuine < t))
    n_gen, n_imp = len(genuine), len(impostor)
    return OperatingPoint(
        threshold=t,
        far=n_fa / n_imp,
        frr=n_fr / n_gen,
        far_interval=clopper_pearson(n_fa, n_imp, confidence),
        frr_interval=clopper_pearson(n_fr, n_gen, confidence),
        n_genuine=n_gen,
        n_impostor=n_imp,
    )


@dataclass(frozen=True)
class Metrics:
    """Threshold-free summary of a set of trials."""

    eer: float
    eer_threshold: float
    min_dcf_01: float  # p_target = 0.01, c_miss = c_fa = 1
    min_dcf_001: float  # p_target = 0.001, c_miss = c_fa = 1
    n_genuine: int
    n_impostor: int

    def to_dict(self) -> dict[str, float | int]:
        """Plain dict, ready for JSON."""
        return asdict(self)


def compute_metrics(scores: npt.ArrayLike, labels: npt.ArrayLike) -> Metrics:
    """EER (with threshold), minDCF at p_target 0.01 and 0.001, and trial counts."""
    s, y = _validate(scores, labels)
    det = _det_closed(s, y)
    rate, threshold = _eer_on(*det)
    n_gen = int(y.sum())
    return Metrics(
        eer=rate,
        eer_threshold=threshold,
        min_dcf_01=_min_dcf_on(det, 0.01, 1.0, 1.0)[0],
        min_dcf_001=_min_dcf_on(det, 0.001, 1.0, 1.0)[0],
        n_genuine=n_gen,
        n_impostor=len(y) - n_gen,
    )
