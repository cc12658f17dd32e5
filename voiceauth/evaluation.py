"""Trials and their metrics: FAR / FRR, EER, minDCF, confidence intervals, DET plots.

Conventions: ``scores`` is 1-D float (higher = more likely the same speaker), ``labels``
1-D bool (True = genuine trial). A trial is accepted when ``score >= threshold``.
FAR is the share of impostor trials accepted, FRR the share of genuine trials rejected.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from voiceauth.errors import CalibrationError


@dataclass(frozen=True)
class Interval:
    low: float
    high: float

    def __str__(self) -> str:
        return f"{self.low:.2%}–{self.high:.2%}"


def clopper_pearson(k: int, n: int, confidence: float = 0.95) -> Interval:
    """Exact binomial confidence interval for ``k`` events in ``n`` trials."""
    if n <= 0:
        return Interval(0.0, 1.0)
    from scipy.stats import beta

    alpha = 1.0 - confidence
    low = 0.0 if k == 0 else float(beta.ppf(alpha / 2, k, n - k + 1))
    high = 1.0 if k == n else float(beta.ppf(1 - alpha / 2, k + 1, n - k))
    return Interval(low, high)


def _validate(scores: np.ndarray, labels: np.ndarray, *, both: bool = True) -> tuple[np.ndarray, np.ndarray]:
    s = np.asarray(scores, dtype=np.float64)
    y = np.asarray(labels, dtype=bool)
    if s.ndim != 1 or y.ndim != 1 or len(s) != len(y):
        raise CalibrationError(f"scores and labels must be 1-D and of equal length, got {s.shape} and {y.shape}")
    if not np.all(np.isfinite(s)):
        raise CalibrationError("scores contain NaN or infinite values; drop or fix those trials")
    if both and (not y.any() or y.all()):
        raise CalibrationError(
            f"need both genuine and impostor trials, got {int(y.sum())} genuine and {int((~y).sum())} impostor"
        )
    return s, y


def error_rates(scores: np.ndarray, labels: np.ndarray, threshold: float) -> tuple[float, float]:
    """(FAR, FRR) at ``threshold``."""
    s, y = _validate(scores, labels)
    far = float(np.mean(s[~y] >= threshold))
    frr = float(np.mean(s[y] < threshold))
    return far, frr


def det_points(scores: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(thresholds, FAR, FRR) at every distinct score, thresholds ascending."""
    s, y = _validate(scores, labels)
    order = np.argsort(s, kind="mergesort")
    s, y = s[order], y[order]
    thresholds, first = np.unique(s, return_index=True)
    genuine_below = np.concatenate([[0], np.cumsum(y)])[first]
    impostor_below = np.concatenate([[0], np.cumsum(~y)])[first]
    frr = genuine_below / y.sum()
    far = 1.0 - impostor_below / (~y).sum()
    return thresholds, far, frr


def eer(scores: np.ndarray, labels: np.ndarray) -> tuple[float, float]:
    """Equal error rate and its threshold, by linear interpolation where FAR and FRR cross."""
    thresholds, far, frr = det_points(scores, labels)
    diff = far - frr  # decreasing in the threshold
    i = int(np.argmax(diff <= 0)) if np.any(diff <= 0) else len(diff) - 1
    if i == 0:
        return float((far[0] + frr[0]) / 2), float(thresholds[0])
    d0, d1 = diff[i - 1], diff[i]
    w = d0 / (d0 - d1) if d0 != d1 else 0.5
    rate = (1 - w) * (far[i - 1] + frr[i - 1]) / 2 + w * (far[i] + frr[i]) / 2
    threshold = (1 - w) * thresholds[i - 1] + w * thresholds[i]
    return float(rate), float(threshold)


def min_dcf(
    scores: np.ndarray, labels: np.ndarray, p_target: float, c_miss: float = 1.0, c_fa: float = 1.0
) -> tuple[float, float]:
    """Normalised minimum detection cost (NIST SRE convention) and its threshold."""
    thresholds, far, frr = det_points(scores, labels)
    # also consider rejecting everything (threshold above the top score)
    far = np.append(far, 0.0)
    frr = np.append(frr, 1.0)
    thresholds = np.append(thresholds, np.inf)
    cost = c_miss * p_target * frr + c_fa * (1 - p_target) * far
    best = int(np.argmin(cost))
    norm = min(c_miss * p_target, c_fa * (1 - p_target))
    return float(cost[best] / norm), float(thresholds[best])


def threshold_for_far(impostor_scores: np.ndarray, target_far: float) -> float:
    """Smallest threshold whose empirical FAR is at most ``target_far``."""
    s = np.sort(np.asarray(impostor_scores, dtype=np.float64))
    if not len(s):
        raise CalibrationError("no impostor trials to place a false-accept threshold on")
    allowed = int(np.floor(target_far * len(s) + 1e-9))  # impostors that may score >= threshold
    if allowed >= len(s):
        return float(s[0])
    if allowed == 0:
        return float(np.nextafter(s[-1], np.inf))
    candidate = s[len(s) - allowed]
    # ties: if the score just below equals the candidate, step above it
    if s[len(s) - allowed - 1] == candidate:
        return float(np.nextafter(candidate, np.inf))
    return float(candidate)


def threshold_for_frr(genuine_scores: np.ndarray, target_frr: float) -> float:
    """Largest threshold whose empirical FRR (share of genuine scores below it) is at most ``target_frr``."""
    s = np.sort(np.asarray(genuine_scores, dtype=np.float64))
    if not len(s):
        raise CalibrationError("no genuine trials to place a false-reject threshold on")
    allowed = int(np.floor(target_frr * len(s) + 1e-9))
    return float(s[min(allowed, len(s) - 1)])


@dataclass(frozen=True)
class OperatingPoint:
    threshold: float
    far: float
    frr: float
    far_interval: Interval
    frr_interval: Interval
    n_genuine: int
    n_impostor: int


def operating_point(scores: np.ndarray, labels: np.ndarray, threshold: float, confidence: float = 0.95) -> OperatingPoint:
    s, y = _validate(scores, labels)
    n_fa = int(np.sum(s[~y] >= threshold))
    n_fr = int(np.sum(s[y] < threshold))
    n_imp, n_gen = int((~y).sum()), int(y.sum())
    return OperatingPoint(threshold, n_fa / n_imp, n_fr / n_gen, clopper_pearson(n_fa, n_imp, confidence),
                          clopper_pearson(n_fr, n_gen, confidence), n_gen, n_imp)


@dataclass(frozen=True)
class Metrics:
    eer: float
    eer_threshold: float
    min_dcf_01: float
    min_dcf_001: float
    n_genuine: int
    n_impostor: int

    def to_dict(self) -> dict[str, float | int]:
        return asdict(self)


def compute_metrics(scores: np.ndarray, labels: np.ndarray) -> Metrics:
    s, y = _validate(scores, labels)
    rate, threshold = eer(s, y)
    return Metrics(rate, threshold, min_dcf(s, y, 0.01)[0], min_dcf(s, y, 0.001)[0], int(y.sum()), int((~y).sum()))


_DET_TICKS = [0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.4]


def plot_det(
    systems: Mapping[str, tuple[np.ndarray, np.ndarray]],
    path: str | os.PathLike[str],
    *,
    title: str = "DET curve",
    operating_points: Mapping[str, tuple[float, float]] | None = None,
) -> Path:
    """DET curves (probit axes) of several systems, one PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from scipy.stats import norm

    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig, ax = plt.subplots(figsize=(6, 6))
    lo, hi = norm.ppf(0.0005), norm.ppf(0.5)
    for name, (scores, labels) in systems.items():
        _, far, frr = det_points(scores, labels)
        rate = eer(scores, labels)[0]
        ax.plot(norm.ppf(np.clip(far, 1e-4, 1 - 1e-4)), norm.ppf(np.clip(frr, 1e-4, 1 - 1e-4)),
                label=f"{name} (EER {rate:.2%})")
    for name, (far_v, frr_v) in (operating_points or {}).items():
        ax.plot(norm.ppf(np.clip(far_v, 1e-4, 1)), norm.ppf(np.clip(frr_v, 1e-4, 1)), "o", label=name)
    ticks = norm.ppf(_DET_TICKS)
    labels_txt = [f"{t * 100:g}" for t in _DET_TICKS]
    ax.set_xticks(ticks, labels_txt)
    ax.set_yticks(ticks, labels_txt)
    ax.set_xlim(lo, hi)
    ax.set_ylim(lo, hi)
    ax.set_xlabel("False accept rate (%)")
    ax.set_ylabel("False reject rate (%)")
    ax.set_title(title)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=7, loc="upper right")
    fig.tight_layout()
    fig.savefig(out, dpi=150)
    plt.close(fig)
    return out


def plot_score_histograms(
    scores: np.ndarray,
    labels: np.ndarray,
    path: str | os.PathLike[str],
    *,
    title: str = "Scores",
    thresholds: Mapping[str, float] | None = None,
) -> Path:
    """Overlaid genuine / impostor score densities with threshold lines, one PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    s, y = _validate(scores, labels)
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig, ax = plt.subplots(figsize=(7, 4))
    bins = np.linspace(s.min(), s.max(), 60) if s.max() > s.min() else 10
    ax.hist(s[~y], bins=bins, density=True, alpha=0.55, label=f"impostor ({int((~y).sum())})")
    ax.hist(s[y], bins=bins, density=True, alpha=0.55, label=f"genuine ({int(y.sum())})")
    for name, value in (thresholds or {}).items():
        ax.axvline(value, color="k", linestyle="--", linewidth=1)
        ax.text(value, ax.get_ylim()[1] * 0.9, f" {name}", fontsize=8)
    ax.set_title(title)
    ax.set_xlabel("score")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out, dpi=150)
    plt.close(fig)
    return out
