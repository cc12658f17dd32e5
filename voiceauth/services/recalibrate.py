"""Calibration on the bank's own trials: refit, held-out check, versions, drift.

``voiceauth calibrate --from-store`` refits the duration-aware calibration (and so the policy's
thresholds) on the labelled trials the harvest collected (:mod:`voiceauth.services.harvest`),
once there are enough:

* at least :func:`min_impostor_trials` impostor trials: ``10 / target_far`` in the part the
  calibration is fitted on (1 429 in all at ``target_far=0.01``). Ten expected false accepts at
  the target is where the exact 95 % interval of the stated FAR narrows to about 0.5-1.8 times
  the target; with fewer, "1 % (0.03-5.6 %)" says little. The held-out 30 % then holds about
  four expected false accepts, enough to tell a threefold miscalibration (the shipped
  LibriSpeech calibration on meeting speech: 3.1 % measured for 0.9 % stated) from chance;
* at least :data:`MIN_GENUINE_TRIALS` genuine trials: the calibration's own floor of 100
  (``MIN_TRIALS_PER_CLASS``) in the fit part, 43 held out.

The trials are split 70/30 at random (seeded); the calibration fitted on the 70 % states its
FAR and FRR with intervals, and the 30 % checks them. Reported impostor calls (``fraud_case``
outcomes of verifications and calls) are split apart and, from :data:`MIN_CLAIMED_HELD` held out,
checked on their own: the enrolment pairs that make up most impostor trials are random other
customers, easier than a caller who claims an identity, and could hide a FAR above the stated one.
The calibrations mark those claims (``Calibration.claimed``), so that once the fit holds at least
``1 / target_far`` of them the policy's accept threshold meets the target on them too.
The report says whether each held-out rate lies inside the stated interval; the check fails
when the held-out rate's own exact interval does not even meet the stated one (the held-out
part is small: a rate just outside by chance is no evidence), and a failed check is stored but
not activated unless forced. The version activated is refitted on all trials. Versions are kept
in the store, audited, and any older one can be activated again (rollback); deactivating all returns to the shipped one.

A refit decides alone only on as much net speech as its trials had (``Refit.speech_ranges``): on
shorter or longer speech its LLR counts only as far as the base calibration (the one the client
was given, else the shipped one) agrees (:meth:`voiceauth.scoring.scorer.Scorer.score`). A bank
whose refit saw only short calls would otherwise state its FAR for long calls too, where it does
not hold (``benchmarks/bank_simulation.py``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import numpy as np

from voiceauth.errors import CalibrationError
from voiceauth.scoring.calibration import MIN_TRIALS_PER_CLASS, Calibration, CalibrationSet
from voiceauth.scoring.drift import drift
from voiceauth.scoring.margin import MarginFit, derive_margin
from voiceauth.scoring.normalisation import Normalisation
from voiceauth.scoring.policy import Policy
from voiceauth.scoring.statistics import clopper_pearson
from voiceauth.store.trials import DAY_S, Trial, TrialKind, TrialStore

HOLD_OUT = 0.3
MIN_GENUINE_TRIALS = math.ceil(MIN_TRIALS_PER_CLASS / (1 - HOLD_OUT))
SEED = 20240516


def min_impostor_trials(target_far: float) -> int:
    """Impostor trials a refit needs: ``10 / target_far`` of them in the fit part (see module docs)."""
    return math.ceil(max(MIN_TRIALS_PER_CLASS, 10.0 / target_far) / (1 - HOLD_OUT))


CLAIMS = (TrialKind.VERIFY, TrialKind.CALL)
"""Trial kinds of real claims (a verification, a call) whose outcome the bank reported."""
MIN_CLAIMED_HELD = 30
"""Held-out reported impostor claims below which their own check is not made (it could not fail)."""


def _column(trials: Sequence[Trial], kind: Normalisation) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Scores, labels, net speech and which rows are reported impostor claims (not enrolment pairs)."""
    rows = [t for t in trials if t.label is not None and (kind is Normalisation.RAW or t.as_norm is not None)]
    scores = np.array([t.raw if kind is Normalisation.RAW else t.as_norm for t in rows], dtype=np.float64)
    labels = np.array([bool(t.label) for t in rows], dtype=bool)
    speech = np.array([t.speech_s for t in rows], dtype=np.float64)
    claimed = np.array([t.kind in CLAIMS and t.label is False for t in rows], dtype=bool)
    return scores, labels, speech, claimed


def _split(labels: np.ndarray, seed: int, claimed: np.ndarray) -> np.ndarray:
    """A boolean mask of the held-out part: HOLD_OUT of each class (impostor enrolment pairs and
    reported impostor claims apart), at random."""
    rng = np.random.default_rng(seed)
    held = np.zeros(len(labels), dtype=bool)
    group = labels.astype(np.int8) + 2 * claimed.astype(np.int8)  # 1 genuine, 0 enrolment pair, 2 reported claim
    for cls in (1, 0, 2):
        idx = np.flatnonzero(group == cls)
        if not len(idx):
            continue
        held[rng.choice(idx, size=int(round(HOLD_OUT * len(idx))), replace=False)] = True
    return held


@dataclass
class Refit:
    """What a refit found, per normalisation, and the calibration set it made."""

    channel: str
    counts: dict[str, dict[str, int]]
    checks: dict[str, dict[str, Any]] = field(default_factory=dict)
    calibrations: CalibrationSet | None = None
    kept_from_base: list[str] = field(default_factory=list)
    margins: dict[str, MarginFit] = field(default_factory=dict)
    """The live accept margin derived with each refitted calibration (:mod:`voiceauth.scoring.margin`)."""

    @property
    def call_margins(self) -> dict[str, float]:
        return {kind: m.margin for kind, m in self.margins.items() if m.margin is not None}

    @property
    def passed(self) -> bool:
        return bool(self.checks) and all(
            c["far_consistent"] and c["frr_consistent"] and c.get("claimed_consistent") is not False
            for c in self.checks.values())

    @property
    def speech_ranges(self) -> dict[str, tuple[float, float]]:
        """Net speech (s) of the bank's trials each refitted calibration was fitted on: where it decides alone
        (:meth:`voiceauth.scoring.scorer.Scorer.score`)."""
        if self.calibrations is None:
            return {}
        return {kind.value: cal.durations_s for kind, cal in self.calibrations.by_normalisation.items()
                if kind.value not in self.kept_from_base}

    def report(self) -> dict[str, Any]:
        raw = self.checks.get(Normalisation.RAW.value, {})
        return {"channel": self.channel, "counts": self.counts, "held_out_checks": self.checks,
                "speech_s_ranges": {k: list(v) for k, v in self.speech_ranges.items()},
                "kept_from_base": self.kept_from_base, "call_margins": self.call_margins,
                "margin_fits": {kind: m.as_dict() for kind, m in self.margins.items()},
                "summary": {"passed": self.passed, "genuine": self.counts.get("raw", {}).get("genuine", 0),
                            "impostor": self.counts.get("raw", {}).get("impostor", 0),
                            "held_out_far": raw.get("held_out_far", -1.0), "stated_far": raw.get("stated_far", -1.0)}}

    def describe(self) -> str:
        lines = []
        for kind, c in self.checks.items():
            lines.append(
                f"{kind}: fitted on {c['fit_genuine']} genuine / {c['fit_impostor']} impostor trials, states FAR "
                f"{c['stated_far']:.2%} ({c['stated_far_interval'][0]:.2%}-{c['stated_far_interval'][1]:.2%}) and "
                f"FRR {c['stated_frr']:.2%} ({c['stated_frr_interval'][0]:.2%}-{c['stated_frr_interval'][1]:.2%}); "
                f"held out ({c['held_genuine']} genuine / {c['held_impostor']} impostor): FAR {c['held_out_far']:.2%}"
                f" {_where(c, 'far')}, FRR {c['held_out_frr']:.2%} {_where(c, 'frr')} the stated interval")
            if c.get("claimed_consistent") is not None:
                lines.append(
                    f"{kind}: {c['held_claimed_impostor']} held-out reported impostor calls: FAR {c['claimed_far']:.2%}"
                    f" ({c['claimed_far_interval'][0]:.2%}-{c['claimed_far_interval'][1]:.2%}), "
                    + ("consistent with" if c["claimed_consistent"] else "OUTSIDE (inconsistent with)")
                    + f" the stated {c['stated_claimed_far']:.2%} ({c['stated_claimed_far_interval'][0]:.2%}-"
                    f"{c['stated_claimed_far_interval'][1]:.2%})")
        lines += [m.describe() for m in self.margins.values()]
        for kind, (low, high) in self.speech_ranges.items():
            lines.append(f"{kind}: decides alone on {low:g}-{high:g} s of net speech (its trials); on shorter or "
                         "longer speech it accepts only where the base calibration agrees")
        for kind in self.kept_from_base:
            lines.append(f"{kind}: too few in-domain trials; kept the base calibration")
        return "\n".join(lines)


def _where(check: dict[str, Any], rate: str) -> str:
    if check[f"{rate}_within_interval"]:
        return "inside"
    return "just outside (consistent with)" if check[f"{rate}_consistent"] else "OUTSIDE (inconsistent with)"


def needed(policy: Policy) -> dict[str, int]:
    return {"genuine": MIN_GENUINE_TRIALS, "impostor": min_impostor_trials(policy.target_far)}


def refit(trials: Sequence[Trial], policy: Policy, model_id: str, base: CalibrationSet | None, *,
          channel: str = "", seed: int = SEED) -> Refit:
    """Fit, check on held-out trials and refit on all; CalibrationError when there are too few trials."""
    want = needed(policy)
    counts: dict[str, dict[str, int]] = {}
    out = Refit(channel, counts)
    fitted: dict[Normalisation, Calibration] = {}
    sources = sorted({t.source or "" for t in trials if t.label is not None})
    for kind in (Normalisation.RAW, Normalisation.AS_NORM):
        scores, labels, speech, claimed = _column(trials, kind)
        counts[kind.value] = {"genuine": int(labels.sum()), "impostor": int((~labels).sum())}
        if counts[kind.value]["genuine"] < want["genuine"] or counts[kind.value]["impostor"] < want["impostor"]:
            if kind is Normalisation.RAW:
                raise CalibrationError(
                    f"channel {channel or '(all)'} has {counts['raw']['genuine']} genuine and "
                    f"{counts['raw']['impostor']} impostor labelled trials; a refit at target_far="
                    f"{policy.target_far:g} needs {want['genuine']} and {want['impostor']} (enough for its stated "
                    "error rates and a held-out check); enrol more consenting customers and report outcomes")
            if base is not None and kind in base.by_normalisation:
                fitted[kind] = base.by_normalisation[kind]
                out.kept_from_base.append(kind.value)
            continue
        held = _split(labels, seed, claimed)
        source = f"store: {len(labels)} trials, channel {channel or '(all)'}, labels from {', '.join(sources)}"
        part = Calibration.fit(scores[~held], labels[~held], speech[~held], kind, source + " (70% fit)",
                               claimed=claimed[~held])
        th = policy.thresholds(part)
        llr = np.asarray(part.llr(scores[held], speech[held]))
        g, i = llr[labels[held]], llr[~labels[held]]
        far, frr = float((i >= th.accept_llr).mean()), float((g < th.accept_llr).mean())
        fa_int, fr_int = th.expected_far_interval, th.expected_frr_interval
        out.checks[kind.value] = {
            "fit_genuine": th.trials[0], "fit_impostor": th.trials[1], "held_genuine": len(g), "held_impostor": len(i),
            "accept_llr": round(th.accept_llr, 3), "reject_llr": round(th.reject_llr, 3),
            "stated_far": round(th.expected_far, 5),
            "stated_far_interval": [round(fa_int.low, 5), round(fa_int.high, 5)],
            "held_out_far": round(far, 5), "held_out_far_interval": _interval(int((i >= th.accept_llr).sum()), len(i)),
            "far_within_interval": bool(fa_int.low <= far <= fa_int.high),
            "stated_frr": round(th.expected_frr, 5),
            "stated_frr_interval": [round(fr_int.low, 5), round(fr_int.high, 5)],
            "held_out_frr": round(frr, 5), "frr_within_interval": bool(fr_int.low <= frr <= fr_int.high),
            "held_out_frr_interval": _interval(int((g < th.accept_llr).sum()), len(g)),
        }
        c = out.checks[kind.value]
        # the held-out part is small: it contradicts the stated rate only when the two intervals do not meet
        c["far_consistent"] = _overlap(c["held_out_far_interval"], c["stated_far_interval"])
        c["frr_consistent"] = _overlap(c["held_out_frr_interval"], c["stated_frr_interval"])
        # reported impostor calls on their own: enrolment pairs (random other customers) can be far
        # easier than the callers who really claim an identity, and would hide a FAR the bank never chose
        calls = np.asarray(part.llr(scores[held & claimed], speech[held & claimed]))
        accepted = int((calls >= th.accept_llr).sum())
        c["held_claimed_impostor"] = len(calls)
        c["claimed_far"] = round(accepted / len(calls), 5) if len(calls) else None
        c["claimed_far_interval"] = _interval(accepted, len(calls)) if len(calls) else None
        # the policy holds the target on reported claims too once there are enough (Policy.thresholds)
        claims_int = th.claimed_far_interval or fa_int
        c["stated_claimed_far"] = round(th.claimed_far, 5) if th.claimed_far is not None else c["stated_far"]
        c["stated_claimed_far_interval"] = [round(claims_int.low, 5), round(claims_int.high, 5)]
        c["claimed_consistent"] = (_overlap(c["claimed_far_interval"], c["stated_claimed_far_interval"])
                                   if len(calls) >= MIN_CLAIMED_HELD else None)
        fitted[kind] = Calibration.fit(scores, labels, speech, kind, source, claimed=claimed)
        out.margins[kind.value] = _margin(trials, kind, fitted[kind], policy)
    out.calibrations = CalibrationSet(model_id, fitted)
    return out


def _margin(trials: Sequence[Trial], kind: Normalisation, calibration: Calibration, policy: Policy) -> MarginFit:
    """The live accept margin for ``calibration``, from the reported calls scored in ``kind``."""
    calls = [t for t in trials if t.kind == TrialKind.CALL and t.label is not None and t.trajectory
             and t.normalisation == kind.value]
    return derive_margin(kind.value, [t.trajectory for t in calls if t.label],  # type: ignore[misc]
                         [t.trajectory for t in calls if not t.label], calibration,  # type: ignore[misc]
                         policy.thresholds(calibration).accept_llr, policy.target_far)


def _overlap(a: list[float], b: list[float]) -> bool:
    return bool(a[0] <= b[1] and b[0] <= a[1])


def _interval(k: int, n: int) -> list[float]:
    ci = clopper_pearson(k, n)
    return [round(ci.low, 5), round(ci.high, 5)]


def payload(calibrations: CalibrationSet) -> dict[str, Any]:
    """The calibration file's JSON (what ``CalibrationSet.save`` writes)."""
    from voiceauth.scoring.calibration import SCHEMA_VERSION

    return {"version": SCHEMA_VERSION, "model_id": calibrations.model_id,
            "calibrations": [c.to_dict() for c in calibrations.by_normalisation.values()]}


class StoreCalibration(NamedTuple):
    """One active store calibration version and the live accept margins derived with it."""

    version: int
    calibrations: CalibrationSet
    call_margins: dict[str, float]


def store_calibrations(store: Any, model_id: str) -> dict[str, StoreCalibration]:
    """The active store calibrations of ``model_id`` by channel tag (``""``: the default)."""
    if not isinstance(store, TrialStore):
        return {}
    return {v.channel: StoreCalibration(v.version, CalibrationSet.from_payload(v.payload, model_id),
                                        {str(k): float(m) for k, m in (v.report.get("call_margins") or {}).items()})
            for v in store.calibration_versions(model_id) if v.active}


def install_store_calibrations(services: Any, in_store: dict[str, StoreCalibration] | None = None, *,
                               reload: bool = False) -> None:
    """Per-channel scorers and version numbers of the store's active calibrations; with ``reload``,
    read them again and replace the default scorer too (when none is active: the calibration the
    client was given, else the shipped one)."""
    from voiceauth.scoring.scorer import Scorer
    from voiceauth.services.engines import missing_calibration, shipped_calibration

    model_id = services.embedder.model_id
    if in_store is None:
        in_store = store_calibrations(services.store, model_id)
    base = services.base_calibration if services.base_calibration is not None else shipped_calibration(model_id)
    if reload:
        default = in_store[""].calibrations if "" in in_store else base
        services.scorer = Scorer(default, services.policy, missing=missing_calibration(model_id),
                                 beyond=base if "" in in_store else None)
    # a store calibration speaks alone only for the speech durations of the bank's trials it was fitted on
    services.channel_scorers = {tag: Scorer(s.calibrations, services.policy, beyond=base)
                                for tag, s in in_store.items() if tag}
    services.calibration_versions = {tag: s.version for tag, s in in_store.items()}
    services.call_margins = {tag: s.call_margins for tag, s in in_store.items() if s.call_margins}


# -- drift -----------------------------------------------------------------------------------------
def drift_report(store: TrialStore, calibrations: CalibrationSet, model_id: str, *, channel: str | None = None,
                 days: float = 30.0, now: float | None = None) -> dict[str, Any]:
    """PSI of the last ``days`` of trials against the calibration's trials, per normalisation and class.

    * ``impostor``: enrolment impostor trials vs the calibration's impostor trials;
    * ``genuine``: labelled genuine trials (enrolments, reported outcomes) vs its genuine trials;
    * ``traffic``: verifications and calls (most callers are who they claim) vs its genuine trials;

    and ``speech``: the share of those verifications and calls whose net speech lies outside the
    durations the calibration's trials had (where a store calibration does not decide alone, and
    any calibration takes the speech at its nearest trial's duration): calls longer than a refit
    saw are a shift no score histogram shows.
    """
    import time

    since = (time.time() if now is None else now) - days * DAY_S
    recent = store.trials(model_id=model_id, channel=channel, since=since)
    out: dict[str, Any] = {"days": days, "channel": channel, "trials": len(recent), "by": {}}
    for kind, cal in calibrations.by_normalisation.items():
        ref_g, ref_i = cal.scores[cal.labels], cal.scores[~cal.labels]

        def col(rows: list[Trial], k: Normalisation = kind) -> np.ndarray:
            vals = [t.raw if k is Normalisation.RAW else t.as_norm for t in rows]
            return np.array([v for v in vals if v is not None], dtype=np.float64)

        groups = {
            "impostor": (ref_i, col([t for t in recent if t.label is False])),
            "genuine": (ref_g, col([t for t in recent if t.label is True])),
            "traffic": (ref_g, col([t for t in recent if t.kind in (TrialKind.VERIFY, TrialKind.CALL)])),
        }
        out["by"][kind.value] = {name: _drift_dict(ref, new) for name, (ref, new) in groups.items()}
        out["by"][kind.value]["speech"] = _speech_outside(cal, [t for t in recent if t.kind in CLAIMS
                                                                and t.normalisation == kind.value])
    return out


def _speech_outside(calibration: Calibration, rows: Sequence[Trial]) -> dict[str, Any]:
    """How many of ``rows`` had net speech outside the calibration's trials' durations, in numbers and words."""
    low, high = calibration.durations_s
    speech = np.array([t.speech_s for t in rows], dtype=np.float64)
    shorter, longer = int((speech < low).sum()), int((speech > high).sum())
    share = (shorter + longer) / len(speech) if len(speech) else 0.0
    text = (f"{shorter + longer} of {len(speech)} recent verifications and calls ({share:.0%}) had net speech "
            f"outside the {low:g}-{high:g} s its trials had ({shorter} shorter, {longer} longer)")
    if shorter + longer:
        text += "; refit once the store holds labelled calls of those lengths"
    return {"range_s": [low, high], "decisions": len(speech), "shorter": shorter, "longer": longer,
            "outside": round(share, 4), "text": text}


def _drift_dict(ref: np.ndarray, new: np.ndarray) -> dict[str, Any]:
    d = drift(ref, new)
    return {"psi": d.psi, "level": d.level, "recent": d.recent, "reference": d.reference,
            "recent_median": d.recent_median, "reference_median": d.reference_median, "text": d.describe()}
