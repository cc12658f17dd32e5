"""The live accept margin, derived from the bank's own call trajectories.

A live call is scored after every segment and AUTHENTICATED the first time its LLR reaches the
accept threshold plus a margin (:func:`voiceauth.decision.decide_call`). Looking many times lets
an impostor's LLR touch the threshold by chance more often than one trial's FAR says; the
margin pays for that. The shipped margins were chosen on replayed LibriSpeech calls
(:mod:`voiceauth.live`). Here they are chosen on the bank's calls: every call records the
(score, net speech) of each update once it had enough speech for a decision
(:attr:`voiceauth.store.trials.Trial.trajectory`), and the outcomes the bank reports label them.

Rule (:func:`derive_margin`): under a calibration, each reported call's *peak* is the highest LLR
it reached. The margin is the smallest value on a grid of :data:`STEP` from 0 to
:data:`MAX_MARGIN` at which the share of reported impostor calls whose peak reached
``accept + margin`` is at most the policy's target FAR. It is derived only from at least
:func:`min_impostor_calls` reported impostor calls (ten expected authentications at the target,
the same floor as the refit's trials: with fewer, a share of 0 says little) and
:data:`MIN_GENUINE_CALLS` genuine ones; what it costs genuine callers is reported with it (the
share authenticated within 10 s of net speech, and at all). Never below 0: a margin never lowers
the policy's threshold.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np

from voiceauth.scoring.calibration import Calibration
from voiceauth.scoring.statistics import clopper_pearson

STEP = 0.25
MAX_MARGIN = 6.0
MIN_GENUINE_CALLS = 30
"""Reported genuine calls needed: enough to state what the margin costs them (±18 % at worst)."""
WITHIN_S = 10.0
"""Net speech by which a genuine caller should be authenticated (the issue's measure)."""


def min_impostor_calls(target_far: float) -> int:
    """Reported impostor calls a derived margin needs: ten expected authentications at the target."""
    return math.ceil(10.0 / target_far)


@dataclass(frozen=True)
class MarginFit:
    """A margin derived (or not) for one normalisation, and the evidence behind it."""

    normalisation: str
    margin: float | None
    """None: not derived (too few calls, or no margin on the grid holds the target)."""
    reason: str
    impostor_calls: int
    genuine_calls: int
    impostor_authenticated: float | None = None
    """Share of reported impostor calls that would have been AUTHENTICATED at the margin..."""
    impostor_interval: tuple[float, float] | None = None
    """...and its exact 95 % interval."""
    genuine_within_10s: float | None = None
    genuine_ever: float | None = None
    at_zero: float | None = None
    """Share of impostor calls the bare threshold would have let through."""

    def describe(self) -> str:
        if self.margin is None or self.impostor_interval is None:
            return f"{self.normalisation}: live accept margin not derived: {self.reason}"
        low, high = self.impostor_interval
        return (f"{self.normalisation}: live accept margin {self.margin:g} from call trajectories: {self.reason} "
                f"({self.impostor_authenticated:.2%}, 95% CI {low:.2%}-{high:.2%}; {self.at_zero:.2%} at margin 0); "
                f"genuine calls authenticated within 10 s of speech: {self.genuine_within_10s:.1%}")

    def as_dict(self) -> dict[str, object]:
        out = asdict(self)
        if self.impostor_interval is not None:
            out["impostor_interval"] = [round(v, 5) for v in self.impostor_interval]
        return out


def peaks(trajectories: Sequence[Sequence[tuple[float, float]]], calibration: Calibration,
          within_s: float | None = None) -> np.ndarray:
    """Each trajectory's highest LLR under ``calibration`` (``-inf`` when it has no point, or
    none within ``within_s`` of net speech)."""
    out = np.full(len(trajectories), -np.inf)
    for i, points in enumerate(trajectories):
        arr = np.asarray(points, dtype=np.float64).reshape(-1, 2)
        if within_s is not None:
            arr = arr[arr[:, 1] <= within_s + 1e-9]
        if len(arr):
            out[i] = float(np.max(calibration.llr(arr[:, 0], arr[:, 1])))
    return out


def derive_margin(normalisation: str, genuine: Sequence[Sequence[tuple[float, float]]],
                  impostor: Sequence[Sequence[tuple[float, float]]], calibration: Calibration, accept_llr: float,
                  target_far: float) -> MarginFit:
    """The smallest margin that holds reported impostor calls at ``target_far`` (see module docs)."""
    n_imp, n_gen = len(impostor), len(genuine)
    need = min_impostor_calls(target_far)
    if n_imp < need or n_gen < MIN_GENUINE_CALLS:
        return MarginFit(normalisation, None, f"{n_imp} reported impostor and {n_gen} genuine calls with "
                         f"trajectories; a margin needs {need} and {MIN_GENUINE_CALLS}: the settings' margin stays",
                         n_imp, n_gen)
    imp = peaks(impostor, calibration)
    gen_ever, gen_soon = peaks(genuine, calibration), peaks(genuine, calibration, WITHIN_S)
    at_zero = float(np.mean(imp >= accept_llr))
    for margin in np.arange(0.0, MAX_MARGIN + STEP / 2, STEP):
        through = int(np.sum(imp >= accept_llr + margin))
        if through <= target_far * n_imp:
            ci = clopper_pearson(through, n_imp)
            line = accept_llr + margin
            return MarginFit(
                normalisation, float(margin), f"{through} of {n_imp} reported impostor calls reach accept + "
                f"{margin:g}; target FAR {target_far:g}", n_imp, n_gen, round(through / n_imp, 5),
                (ci.low, ci.high), round(float(np.mean(gen_soon >= line)), 4),
                round(float(np.mean(gen_ever >= line)), 4), round(at_zero, 5))
    worst = float(np.mean(imp >= accept_llr + MAX_MARGIN))
    return MarginFit(normalisation, None, f"even accept + {MAX_MARGIN:g} lets {worst:.1%} of {n_imp} reported "
                     f"impostor calls through (target {target_far:g}): the calibration does not fit these calls; the "
                     "settings' margin stays", n_imp, n_gen, at_zero=round(at_zero, 5))
