"""Issue 16: the live accept margin is re-derived from the bank's own call trajectories (the
(score, net speech) of every update of a reported call), not fixed at a constant."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import numpy as np
import pytest
from test_calibrate_store import in_domain
from test_session import STAND_IN_CALIBRATION, StandIn, make_va, stream, synth

from voiceauth.decision import CallMargins, CallStatus
from voiceauth.scoring.calibration import Calibration
from voiceauth.scoring.margin import MIN_GENUINE_CALLS, derive_margin, min_impostor_calls, peaks
from voiceauth.scoring.normalisation import Normalisation
from voiceauth.scoring.policy import Policy
from voiceauth.services.recalibrate import payload, refit
from voiceauth.store.base import Consent
from voiceauth.store.sqlite import SCHEMA_VERSION, SQLiteStore
from voiceauth.store.trials import Trial, TrialKind

MODEL = "ecapa-voxceleb-v1"


def calibration() -> Calibration:
    """A fitted raw calibration: LLR rises with the score (and with net speech for high scores)."""
    rng = np.random.default_rng(3)
    scores = np.r_[rng.normal(0.72, 0.1, 400), rng.normal(0.40, 0.08, 3000)]
    labels = np.r_[np.ones(400, bool), np.zeros(3000, bool)]
    return Calibration.fit(scores, labels, rng.uniform(2, 12, 3400), Normalisation.RAW, "test")


def walks(n: int, mean: float, seed: int, steps: int = 12) -> list[list[tuple[float, float]]]:
    """Trajectories of n calls: a noisy score settling on ``mean`` over 1.5 s updates from 3 s."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        speech = 3.0 + 1.5 * np.arange(steps)
        score = mean + rng.normal(0, 0.12, steps) / np.sqrt(np.arange(1, steps + 1))
        out.append(list(zip(score.tolist(), speech.tolist(), strict=True)))
    return out


def test_peaks_rescore_every_point_and_can_stop_at_10_s() -> None:
    cal = calibration()
    trajectory = [(0.9, 3.0), (0.3, 4.5), (0.5, 12.0)]
    assert peaks([trajectory], cal)[0] == pytest.approx(max(cal.llr(s, t) for s, t in trajectory))
    assert peaks([trajectory], cal, within_s=10.0)[0] == pytest.approx(max(cal.llr(s, t) for s, t in trajectory[:2]))
    assert peaks([[]], cal)[0] == -np.inf


def test_margin_is_the_smallest_that_holds_reported_impostor_calls_at_the_target() -> None:
    cal, policy = calibration(), Policy(target_far=0.01)
    accept = policy.thresholds(cal).accept_llr
    impostor, genuine = walks(1200, 0.50, seed=1), walks(200, 0.75, seed=2)
    fit = derive_margin("raw", genuine, impostor, cal, accept, 0.01)
    assert fit.margin is not None and fit.margin >= 0
    imp = peaks(impostor, cal)
    assert np.mean(imp >= accept + fit.margin) <= 0.01  # holds the target...
    if fit.margin > 0:  # ...and one step less would not
        assert np.mean(imp >= accept + fit.margin - 0.25) > 0.01
    assert fit.at_zero is not None and fit.at_zero > 0.01  # many looks: the bare threshold lets more through
    assert fit.impostor_interval is not None and fit.impostor_interval[0] <= fit.impostor_authenticated
    assert fit.genuine_within_10s is not None and 0.5 < fit.genuine_within_10s <= fit.genuine_ever
    assert "live accept margin" in fit.describe()


def test_no_margin_from_too_few_calls_or_when_none_holds() -> None:
    cal = calibration()
    accept = Policy().thresholds(cal).accept_llr
    few = derive_margin("raw", walks(MIN_GENUINE_CALLS, 0.75, 2), walks(min_impostor_calls(0.01) - 1, 0.5, 1), cal,
                        accept, 0.01)
    assert few.margin is None and "needs 1000 and 30" in few.reason
    hopeless = derive_margin("raw", walks(50, 0.75, 2), walks(1000, 0.95, 1), cal, accept, 0.01)  # 'impostors' match
    assert hopeless.margin is None and "does not fit these calls" in hopeless.reason


def call_trials(trajectories: list[list[tuple[float, float]]], genuine: bool, seed: int) -> list[Trial]:
    return [Trial(f"t-m{seed:03x}{i:020x}", TrialKind.CALL, MODEL, "ivr-8k", "raw", t[-1][0], None, t[-1][1],
                  label=genuine, source="kba" if genuine else "fraud_case", trajectory=tuple(t))
            for i, t in enumerate(trajectories)]


def test_refit_derives_the_margin_with_the_new_calibration_and_reports_it() -> None:
    trials = in_domain(400, 3000) + call_trials(walks(1100, 0.42, 5), False, 5) + call_trials(walks(60, 0.75, 6),
                                                                                              True, 6)
    fit = refit(trials, Policy(target_far=0.01), MODEL, None, channel="ivr-8k")
    m = fit.margins["raw"]
    assert m.impostor_calls == 1100 and m.genuine_calls == 60 and m.margin is not None
    assert fit.call_margins == {"raw": m.margin} and fit.report()["call_margins"] == {"raw": m.margin}
    assert fit.calibrations is not None
    cal = fit.calibrations.get(Normalisation.RAW)  # derived under the calibration the refit made
    accept = Policy(target_far=0.01).thresholds(cal).accept_llr
    assert np.mean(peaks([t.trajectory for t in trials if t.kind == TrialKind.CALL and not t.label], cal)
                   >= accept + m.margin) <= 0.01
    assert "live accept margin" in fit.describe()
    without = refit(in_domain(400, 3000), Policy(target_far=0.01), MODEL, None, channel="ivr-8k")
    assert without.call_margins == {} and "needs 1000" in without.margins["raw"].reason


def test_settings_margins_give_way_to_derived_ones() -> None:
    base = CallMargins(as_norm=0.0, raw=3.0)
    assert base.derived({}) is base
    assert base.derived({"raw": 1.25}) == CallMargins(as_norm=0.0, raw=1.25)
    assert base.derived({"as-norm": 0.5}).for_(Normalisation.AS_NORM) == 0.5


def authenticated(va, seed: int) -> bool:  # noqa: ANN001
    call = va.start_call("cust-1")
    stream(call, synth(8, seed=seed))
    call.close()
    result = call.result(wait=30)
    return CallStatus.AUTHENTICATED in [r.status for r in result.revisions]


def test_a_live_call_uses_the_margin_of_the_active_store_calibration(tmp_path: Path) -> None:
    consent = Consent.now(channel="test", notice_version="v1", captured_by="tests")
    va = make_va(tmp_path, consent, StandIn())
    try:
        assert authenticated(va, 1)  # the settings' raw margin (3)
        version = va.store.save_calibration(StandIn.model_id, "", payload(STAND_IN_CALIBRATION),
                                            {"call_margins": {"raw": 1000.0}}, actor="tests")
        va.reload_calibrations()
        assert va.services.call_margins == {"": {"raw": 1000.0}}
        assert va.services.call_margins_for("ivr-8k") == {"raw": 1000.0}  # no calibration of its own: the default's
        assert not authenticated(va, 2)  # no LLR reaches accept + 1000
        plain = va.store.save_calibration(StandIn.model_id, "", payload(STAND_IN_CALIBRATION), {}, actor="tests")
        va.reload_calibrations()  # a version without a derived margin: the settings' again
        assert va.services.call_margins == {} and authenticated(va, 3)
        va.store.activate_calibration(version, actor="tests")  # rolled back: its margin with it
        va.reload_calibrations()
        assert va.services.call_margins == {"": {"raw": 1000.0}} and plain > version
    finally:
        va.close()


def test_a_schema_3_store_gains_the_trajectory_column(tmp_path: Path) -> None:
    path = tmp_path / "vp.db"
    SQLiteStore(path).close()
    with sqlite3.connect(path) as con:  # as voiceauth before call trajectories left it
        con.execute("ALTER TABLE trials DROP COLUMN trajectory")
        con.execute("UPDATE meta SET value = '3' WHERE key = 'schema_version'")
    assert SCHEMA_VERSION == 4
    store = SQLiteStore(path)
    try:
        trial = call_trials([[(0.5, 3.0), (0.6, 4.5)]], False, 1)[0]
        store.add_trials([trial])
        (back,) = store.trials(kinds=(TrialKind.CALL,))
        assert back.trajectory == ((0.5, 3.0), (0.6, 4.5))
    finally:
        store.close()


def test_a_call_keeps_the_first_points_once_decidable_in_one_normalisation() -> None:
    from voiceauth.live.evidence import CallTrajectory
    from voiceauth.scoring.scorer import Score
    from voiceauth.store.trials import MAX_TRAJECTORY

    def score(value: float, kind: Normalisation = Normalisation.AS_NORM) -> Score:
        return Score(0.5, kind, 1.0, 0.7, value)

    t = CallTrajectory()
    t.add(score(0.1, Normalisation.RAW), 1.5, decidable=False)  # too little speech: not a point
    t.add(score(0.2, Normalisation.RAW), 3.0, decidable=True)
    assert t.points == [(0.2, 3.0)] and t.last is not None and t.last[1] == 3.0
    t.add(score(5.0), 4.5, decidable=True)  # the cohort grew past the bound: the trajectory starts again
    assert t.points == [(5.0, 4.5)] and t.normalisation is Normalisation.AS_NORM
    for i in range(2 * MAX_TRAJECTORY):
        t.add(score(6.0 + i), 6.0 + 1.5 * i, decidable=True)
    assert len(t.points) == MAX_TRAJECTORY and t.points[1] == (6.0, 6.0)  # the first ones, where decisions are made
    assert t.last is not None and t.last[0].value == 6.0 + 2 * MAX_TRAJECTORY - 1  # the trial's score: the latest
