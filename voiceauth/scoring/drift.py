"""Score drift: has recent traffic moved away from the scores a calibration was fitted on?

The population stability index (PSI) compares two samples over the bins of the reference:
``sum((p_recent - p_ref) * ln(p_recent / p_ref))``. The conventional reading, used by credit
risk teams for decades: below 0.1 stable, 0.1-0.25 a moderate shift worth watching, above 0.25
a major shift (the stated error rates no longer describe this traffic; recalibrate).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from voiceauth.errors import CalibrationError

PSI_WATCH = 0.1
PSI_ACT = 0.25
MIN_DRIFT_TRIALS = 50
"""Fewer recent trials than this and the PSI is mostly sampling noise: no verdict is given."""
BINS = 10
_FLOOR = 1e-4  # an empty bin's share, so the logarithm stays finite


@dataclass(frozen=True)
class Drift:
    psi: float | None
    """None when there are too few recent trials to say."""
    recent: int
    reference: int
    recent_median: float | None
    reference_median: float

    @property
    def level(self) -> str:
        if self.psi is None:
            return "unknown"
        return "stable" if self.psi < PSI_WATCH else "moderate" if self.psi < PSI_ACT else "major"

    def describe(self, what: str = "scores") -> str:
        if self.psi is None:
            return (f"drift unknown: {self.recent} recent {what}, at least {MIN_DRIFT_TRIALS} are needed to compare "
                    f"them with the calibration's {self.reference}")
        words = {"stable": "stable: recent traffic looks like the calibration's trials",
                 "moderate": "moderate shift: watch it; recalibrate if it grows",
                 "major": "major shift: the stated error rates may not hold; recalibrate "
                          "(`voiceauth calibrate --from-store`)"}[self.level]
        return (f"PSI {self.psi:.3f} ({words}); median recent {what} {self.recent_median:.3f} vs "
                f"{self.reference_median:.3f} in the calibration, from {self.recent} recent / {self.reference} "
                "reference trials")


def population_stability(reference: np.ndarray, recent: np.ndarray, bins: int = BINS) -> float:
    """PSI of ``recent`` against ``reference`` over the reference's deciles (``bins`` quantile bins)."""
    ref = np.asarray(reference, dtype=np.float64)
    new = np.asarray(recent, dtype=np.float64)
    if ref.ndim != 1 or new.ndim != 1 or len(ref) < bins or len(new) == 0:
        raise CalibrationError(f"PSI needs at least {bins} reference scores and one recent score")
    edges = np.unique(np.quantile(ref, np.linspace(0, 1, bins + 1)[1:-1]))
    p = np.bincount(np.searchsorted(edges, ref, side="right"), minlength=len(edges) + 1) / len(ref)
    q = np.bincount(np.searchsorted(edges, new, side="right"), minlength=len(edges) + 1) / len(new)
    p, q = np.maximum(p, _FLOOR), np.maximum(q, _FLOOR)
    return float(np.sum((q - p) * np.log(q / p)))


def drift(reference: np.ndarray, recent: np.ndarray) -> Drift:
    ref = np.asarray(reference, dtype=np.float64)
    new = np.asarray(recent, dtype=np.float64)
    psi = population_stability(ref, new) if len(new) >= MIN_DRIFT_TRIALS else None
    return Drift(None if psi is None else round(psi, 4), len(new), len(ref),
                 round(float(np.median(new)), 4) if len(new) else None, round(float(np.median(ref)), 4))
