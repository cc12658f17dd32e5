"""Calibration, policy thresholds, AS-norm and trial files."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from voiceauth.decision import Decision, decide
from voiceauth.errors import CalibrationError
from voiceauth.scoring.calibration import MIN_TRIALS_PER_CLASS, Calibration, CalibrationSet, default_calibration
from voiceauth.scoring.normalisation import Normalisation, as_norm
from voiceauth.scoring.policy import Policy
from voiceauth.scoring.scorer import Scorer
from voiceauth.tools.bench import fit_calibrations, read_trials


def synthetic_trials(n: int = 4000, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Genuine scores separate further from impostors as speech gets longer."""
    rng = np.random.default_rng(seed)
    speech = rng.uniform(1.0, 30.0, n)
    labels = rng.random(n) < 0.3
    spread = 0.12 / np.sqrt(speech / 3.0)
    scores = np.where(labels, 0.6, 0.05) + rng.normal(0, 1, n) * np.maximum(spread, 0.04)
    return scores, labels, speech


def test_llr_increases_with_score_and_longer_speech_is_more_decisive() -> None:
    cal = Calibration.fit(*synthetic_trials())
    assert cal.llr(0.2, 10.0) < cal.llr(0.4, 10.0) < cal.llr(0.7, 10.0)
    assert cal.llr(0.7, 30.0) > cal.llr(0.7, 1.0)  # long genuine-looking speech: more evidence
    assert cal.llr(0.0, 30.0) < cal.llr(0.0, 1.0)  # long impostor-looking speech: more evidence against


def test_policy_threshold_meets_target_far_and_states_intervals() -> None:
    cal = Calibration.fit(*synthetic_trials())
    for target in (0.01, 0.05):
        th = Policy(target_far=target).thresholds(cal)
        assert th.expected_far <= target
        assert th.expected_far_interval.low <= th.expected_far <= th.expected_far_interval.high
        assert th.reject_llr <= th.accept_llr
        assert th.trials[0] + th.trials[1] == 4000
    strict, loose = Policy(target_far=0.001).thresholds(cal), Policy(target_far=0.05).thresholds(cal)
    assert strict.accept_llr > loose.accept_llr
    assert strict.expected_frr >= loose.expected_frr


@pytest.mark.parametrize("bad", [0.0, 1.0, -0.1, 2.0])
def test_policy_rejects_impossible_targets(bad: float) -> None:
    with pytest.raises(CalibrationError, match="target_far"):
        Policy(target_far=bad)


def test_confidence_is_posterior_under_prior() -> None:
    assert Policy(prior=0.5).confidence(0.0) == pytest.approx(0.5)
    assert Policy(prior=0.9).confidence(0.0) == pytest.approx(0.9)
    assert Policy().confidence(np.log(99.0)) == pytest.approx(0.99)
    assert Policy().confidence(1e6) == pytest.approx(1.0)


def test_fit_refuses_one_class_and_nan() -> None:
    s, y, d = synthetic_trials(200)
    with pytest.raises(CalibrationError, match=f"at least {MIN_TRIALS_PER_CLASS} genuine"):
        Calibration.fit(s, np.ones_like(y), d)
    s[3] = np.nan
    with pytest.raises(CalibrationError, match="NaN"):
        Calibration.fit(s, y, d)


def test_calibration_set_round_trips_through_a_file(tmp_path: Path) -> None:
    s, y, d = synthetic_trials(500)
    cals = CalibrationSet("m", {Normalisation.RAW: Calibration.fit(s, y, d)})
    loaded = CalibrationSet.load(cals.save(tmp_path / "c.json"), model_id="m")
    expected = cals.get(Normalisation.RAW).llr(0.5, 5.0)
    assert loaded.get(Normalisation.RAW).llr(0.5, 5.0) == pytest.approx(expected, abs=1e-3)
    # asking for a normalisation that was not fitted falls back to raw
    assert loaded.get(Normalisation.AS_NORM) is loaded.get(Normalisation.RAW)


def test_shipped_calibration_is_for_ecapa_and_orders_scores() -> None:
    cals = default_calibration()
    assert "ecapa" in cals.model_id
    raw = cals.get(Normalisation.RAW)
    assert raw.llr(0.7, 10.0) > 0 > raw.llr(0.0, 10.0)
    th = Policy(target_far=0.01).thresholds(raw)
    assert th.expected_far <= 0.01 and th.trials[1] >= 1000


def test_scorer_decides_inconclusive_on_too_little_speech() -> None:
    s, y, d = synthetic_trials()
    scorer = Scorer(CalibrationSet("m", {Normalisation.RAW: Calibration.fit(s, y, d)}), Policy(min_speech_s=2.0))
    a = np.zeros(8, dtype=np.float32)
    a[0] = 1.0
    score = scorer.score(a, a, 10.0, None)
    assert score.normalisation is Normalisation.RAW
    th, min_s = scorer.thresholds(Normalisation.RAW), scorer.policy.min_speech_s
    assert decide(score.llr, 10.0, th, min_speech_s=min_s) is Decision.ACCEPT
    assert decide(score.llr, 1.0, th, min_speech_s=min_s) is Decision.INCONCLUSIVE
    b = np.zeros(8, dtype=np.float32)
    b[1] = 1.0
    assert decide(scorer.score(a, b, 10.0, None).llr, 10.0, th, min_speech_s=min_s) is Decision.REJECT


def test_as_norm_centres_scores_on_the_cohort() -> None:
    rng = np.random.default_rng(1)
    cohort = rng.normal(size=(200, 16))
    cohort /= np.linalg.norm(cohort, axis=1, keepdims=True)
    e, t = cohort[0], cohort[1]
    typical = float(np.mean(np.sort(cohort @ e)[-100:]))
    assert abs(as_norm(typical, e, t, cohort)) < 1.5
    assert as_norm(0.95, e, t, cohort) > 3


def test_trials_file_with_unknown_label_is_a_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "t.csv"
    path.write_text("score,label,speech_s\n0.5,genuine,4\n0.1,maybe,4\n")
    with pytest.raises(CalibrationError, match=r"t.csv:3: unknown label 'maybe'"):
        read_trials([path])


def test_trials_file_fits_and_saves(tmp_path: Path) -> None:
    s, y, d = synthetic_trials(600)
    path = tmp_path / "t.csv"
    rows = "".join(f"{a:.4f},{'target' if b else 'nontarget'},{c:.1f}\n" for a, b, c in zip(s, y, d, strict=True))
    path.write_text("score,label,speech_s\n" + rows)
    fitted = fit_calibrations(read_trials([path]), "m", "test")
    assert fitted.get(Normalisation.RAW).llr(0.6, 10) > 0


def test_only_ecapa_ships_a_calibration() -> None:
    """ECAPA's is shipped (the ONNX ECAPA shares its embedding space, hence its calibration). CAM++ ships
    none: its pooled fit failed the held-out check (benchmarks/results/accuracy-campplus.json)."""
    from voiceauth.models import CAMPPLUS, ECAPA
    from voiceauth.services.engines import shipped_calibration

    shipped = shipped_calibration(ECAPA.model_id)
    assert shipped is not None and shipped.model_id == ECAPA.model_id
    assert set(shipped.by_normalisation) == {Normalisation.RAW, Normalisation.AS_NORM}
    assert shipped_calibration(CAMPPLUS.model_id) is None and shipped_calibration("another/model@0") is None


def _probe_with_score(score: float) -> tuple[np.ndarray, np.ndarray]:
    """A unit voiceprint and a unit probe whose cosine is ``score``."""
    enrol, test = np.zeros(8), np.zeros(8)
    enrol[0] = test[0] = 1.0
    test[0], test[1] = score, np.sqrt(1.0 - score**2)
    return enrol, test


def test_a_store_calibration_accepts_beyond_its_speech_durations_only_with_the_base_agreeing() -> None:
    """Issue 16's long-call shift: a refit on the bank's short calls (3-4 s of speech) stated 0.93 %
    FAR; on 6-20 s calls 4.5 % of impostors passed (their cosine rises with more speech on one
    channel, and the refit never saw it). Beyond the speech it was fitted on, a store calibration's
    evidence now counts only as far as the base calibration, which measured such speech, agrees."""
    from types import SimpleNamespace

    from voiceauth.services.recalibrate import StoreCalibration, install_store_calibrations

    rng = np.random.default_rng(7)
    n = 3000
    short = rng.uniform(3.0, 4.0, n)
    labels = rng.random(n) < 0.3
    refit = Calibration.fit(np.where(labels, 0.65, 0.15) + rng.normal(0, 0.1, n), labels, short)
    long_ = rng.uniform(3.0, 30.0, n)  # the base saw long speech, where impostors score higher
    base = Calibration.fit(np.where(labels, 0.75, 0.15 + 0.015 * long_) + rng.normal(0, 0.08, n), labels, long_)
    policy = Policy(target_far=0.01)
    services = SimpleNamespace(embedder=SimpleNamespace(model_id="m"), policy=policy,
                               base_calibration=CalibrationSet("m", {Normalisation.RAW: base}))
    install_store_calibrations(services, {"phone": StoreCalibration(1, CalibrationSet("m", {Normalisation.RAW: refit}),
                                                                    {})})
    scorer = services.channel_scorers["phone"]
    th, th_base = scorer.thresholds(Normalisation.RAW), policy.thresholds(base)
    grid = np.linspace(0.0, 0.95, 400)
    refit_accepts = np.asarray(refit.llr(grid, 20.0)) >= th.accept_llr
    base_accepts = np.asarray(base.llr(grid, 20.0)) >= th_base.accept_llr
    disputed = grid[refit_accepts & ~base_accepts]
    agreed = grid[refit_accepts & base_accepts]
    assert len(disputed) and len(agreed)  # the two calibrations disagree on some 20 s scores

    def llr(score: float, speech_s: float) -> float:
        return scorer.score(*_probe_with_score(score), speech_s, None).llr

    s = float(disputed[len(disputed) // 2])
    assert llr(s, 20.0) < th.accept_llr  # beyond 4 s of speech: not accepted on the refit alone
    assert llr(s, 3.5) == pytest.approx(float(refit.llr(s, 3.5)))  # within its speech: the refit alone
    assert llr(float(agreed[0]), 20.0) >= th.accept_llr  # both agree: accepted
    low = float(grid[np.asarray(refit.llr(grid, 20.0)) < th.reject_llr][-1])
    assert llr(low, 20.0) == pytest.approx(float(refit.llr(low, 20.0)))  # a reject stays the refit's
    moved = np.asarray(base.llr(grid, 20.0)) - th_base.accept_llr + th.accept_llr
    doubted = grid[(np.asarray(refit.llr(grid, 20.0)) >= th.reject_llr) & (moved < th.reject_llr)]
    assert len(doubted)  # the base alone would reject these; the refit does not
    assert llr(float(doubted[-1]), 20.0) == pytest.approx(th.reject_llr)  # held at the reject line, not under it


def test_beyond_its_speech_a_store_calibration_accepts_nothing_when_the_base_cannot_meet_the_policy() -> None:
    """A bank's refit can support a stricter target than the base (more impostor trials): outside
    the refit's speech the base then agrees to no accept, and scoring does not fail either."""
    rng = np.random.default_rng(3)
    n = 4000
    labels = rng.random(n) < 0.2
    refit = Calibration.fit(np.where(labels, 0.7, 0.1) + rng.normal(0, 0.1, n), labels, rng.uniform(3.0, 4.0, n))
    small = rng.random(400) < 0.5  # 200 impostor trials: no threshold at target_far=0.001
    base = Calibration.fit(np.where(small, 0.7, 0.1) + rng.normal(0, 0.1, 400), small, rng.uniform(3.0, 30.0, 400))
    policy = Policy(target_far=0.001)
    with pytest.raises(CalibrationError):
        policy.thresholds(base)
    scorer = Scorer(CalibrationSet("m", {Normalisation.RAW: refit}), policy,
                    beyond=CalibrationSet("m", {Normalisation.RAW: base}))
    th = scorer.thresholds(Normalisation.RAW)
    enrol, test = _probe_with_score(0.9)
    assert scorer.score(enrol, test, 3.5, None).llr >= th.accept_llr
    beyond = scorer.score(enrol, test, 20.0, None).llr
    assert th.reject_llr <= beyond < th.accept_llr
