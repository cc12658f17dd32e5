"""DET curves and score histograms of trials, saved as PNG (needs the ``tools`` extra: matplotlib).

matplotlib is imported lazily (Agg canvas, no pyplot state), so importing this module stays cheap.
Trials follow the conventions of :mod:`voiceauth.scoring.statistics`.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import numpy.typing as npt

from voiceauth.errors import CalibrationError, VoiceAuthError
from voiceauth.scoring.statistics import FloatArray, _check_rate, _det_closed, _eer_on, _pct, _validate

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

__all__ = ["plot_det", "plot_score_histograms"]

_DET_TICKS = (0.0001, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.4)
_DET_LOW_MAX = 0.0005  # the axes start at or below 0.05 %
_DET_LOW_MIN = 0.00005  # ...and never below 0.005 %
_DET_HIGH = 0.5


def _new_figure(width: float, height: float) -> tuple[Figure, Axes]:
    """A Figure on an Agg canvas, outside pyplot's global figure registry."""
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError as exc:
        raise VoiceAuthError(f"plots need matplotlib ({exc}); install it with: pip install 'voiceauth[tools]'") from exc

    fig = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(fig)
    return fig, fig.add_subplot()


def _save(fig: Figure, path: str | os.PathLike[str]) -> Path:
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=150, format="png")
    return out


def _thin(x: FloatArray, y: FloatArray, step: float = 0.004) -> tuple[FloatArray, FloatArray]:
    """Drop points closer than ``step`` (along the path) to the previous kept one; keeps the shape."""
    if len(x) <= 2000:
        return x, y
    path = np.concatenate(([0.0], np.cumsum(np.hypot(np.diff(x), np.diff(y)))))
    bucket = np.floor(path / step)
    keep = np.concatenate(([True], bucket[1:] != bucket[:-1]))
    keep[-1] = True
    return x[keep], y[keep]


def _smallest_visible(far: FloatArray, frr: FloatArray) -> float:
    """The smallest positive rate among points whose other rate is on the axes (<= 50 %)."""
    candidates = np.concatenate((far[(far > 0) & (frr <= _DET_HIGH)], frr[(frr > 0) & (far <= _DET_HIGH)]))
    return float(candidates.min()) if len(candidates) else 1.0


def plot_det(
    systems: Mapping[str, tuple[npt.ArrayLike, npt.ArrayLike]],
    path: str | os.PathLike[str],
    *,
    title: str = "DET curve",
    operating_points: Mapping[str, tuple[float, float]] | None = None,
) -> Path:
    """DET curves of one or more systems on normal-deviate axes, saved as a 150 dpi PNG.

    ``systems`` maps a name to ``(scores, labels)``; each curve's legend shows its EER.
    ``operating_points`` maps a name to ``(far, frr)``; a point named like a system is
    drawn in that system's colour. Rates off the axes are drawn on the edge.
    """
    if not systems:
        raise CalibrationError("plot_det needs at least one system (name -> (scores, labels))")
    from scipy.stats import norm

    curves: dict[str, tuple[FloatArray, FloatArray, float]] = {}
    smallest = _DET_LOW_MAX
    for name, (scores, labels) in systems.items():
        try:
            s, y = _validate(scores, labels)
        except CalibrationError as exc:
            raise CalibrationError(f"system {name!r}: {exc}") from exc
        det = _det_closed(s, y)
        _, far, frr = det
        curves[name] = (far, frr, _eer_on(*det)[0])
        smallest = min(smallest, _smallest_visible(far, frr))
    for far_v, frr_v in (operating_points or {}).values():
        _check_rate(far_v, "an operating point's FAR")
        _check_rate(frr_v, "an operating point's FRR")
        smallest = min(smallest, _smallest_visible(np.array([far_v]), np.array([frr_v])))
    low = max(_DET_LOW_MIN, min(_DET_LOW_MAX, smallest / 1.5))
    lo, hi = float(norm.ppf(low)), float(norm.ppf(_DET_HIGH))
    # clip just beyond the axes so curves leave through the edge instead of jumping to +-inf
    eps = low / 2

    def probit(v: npt.ArrayLike) -> FloatArray:
        return np.asarray(norm.ppf(np.clip(np.asarray(v, dtype=np.float64), eps, 1 - eps)), dtype=np.float64)

    fig, ax = _new_figure(6.0, 6.0)
    from matplotlib.colors import to_hex

    colours: dict[str, str] = {}
    for name, (far, frr, rate) in curves.items():
        x, y = _thin(probit(far), probit(frr))
        (line,) = ax.plot(x, y, linewidth=1.5, label=f"{name} (EER {_pct(rate)})")
        colours[name] = to_hex(line.get_color())
    for name, (far_v, frr_v) in (operating_points or {}).items():
        ax.plot(
            probit([far_v]),
            probit([frr_v]),
            marker="o",
            linestyle="none",
            markersize=7,
            markeredgecolor="black",
            color=colours.get(name),
            label=f"{name}: FAR {_pct(far_v)}, FRR {_pct(frr_v)}",
        )
    ax.plot([lo, hi], [lo, hi], color="grey", linestyle=":", linewidth=0.8)
    ticks = [t for t in _DET_TICKS if low <= t <= _DET_HIGH]
    positions = [float(norm.ppf(t)) for t in ticks]
    texts = [f"{100 * t:g}" for t in ticks]
    ax.set_xticks(positions, texts, fontsize=8)
    ax.set_yticks(positions, texts, fontsize=8)
    ax.set_xlim(lo, hi)
    ax.set_ylim(lo, hi)
    ax.set_aspect("equal")
    ax.set_xlabel("False accept rate (%)")
    ax.set_ylabel("False reject rate (%)")
    ax.set_title(title)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8, loc="upper right")
    return _save(fig, path)


def plot_score_histograms(
    scores: npt.ArrayLike,
    labels: npt.ArrayLike,
    path: str | os.PathLike[str],
    *,
    title: str = "Scores",
    thresholds: Mapping[str, float] | None = None,
) -> Path:
    """Overlaid genuine and impostor score densities, with a dashed line per named threshold.

    Either class may be absent (only the other is drawn); saved as a 150 dpi PNG.
    """
    s, y = _validate(scores, labels, both=False)
    lo, hi = float(s.min()), float(s.max())
    if hi <= lo:
        lo, hi = lo - 0.5, hi + 0.5
    n_bins = int(np.clip(round(math.sqrt(len(s))), 10, 80))
    edges = np.linspace(lo, hi, n_bins + 1)

    fig, ax = _new_figure(7.0, 4.0)
    for mask, name in ((~y, "impostor"), (y, "genuine")):
        count = int(np.count_nonzero(mask))
        if count:
            ax.hist(s[mask], bins=edges, density=True, alpha=0.55, label=f"{name} (n={count})")
    for i, (name, value) in enumerate((thresholds or {}).items()):
        t = float(value)
        if not math.isfinite(t):
            raise CalibrationError(f"threshold {name!r} is {value!r}; only finite thresholds can be drawn")
        ax.axvline(t, color=f"C{i + 2}", linestyle="--", linewidth=1.2, label=f"{name} = {t:.3g}")
    ax.set_title(title)
    ax.set_xlabel("score")
    ax.set_ylabel("density")
    ax.legend(fontsize=8)
    return _save(fig, path)
