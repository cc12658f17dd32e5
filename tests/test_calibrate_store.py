"""Calibrating on the store's own trials: minimums, held-out check, versions and rollback, drift, the reject
rule, the spoof reference, and the commands (outcome, calibrate --from-store, health)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from pg_server import pg_url  # noqa: F401 - a fixture

from voiceauth.cli import cli
from voiceauth.decision import CallMargins as Margins
from voiceauth.decision import CallStatus, Decision, decide, decide_call
from voiceauth.errors import CalibrationError
from voiceauth.fraud.reference import FALSE_ALARM, FAR_OUTSIDE_LOG_ODDS, MIN_REFERENCE, ChannelReference
from voiceauth.models import ECAPA
from voiceauth.scoring.calibration import Calibration, CalibrationSet, default_calibration
from voiceauth.scoring.drift import drift
from voiceauth.scoring.normalisation import Normalisation
from voiceauth.scoring.policy import REJECT_LLR, Policy
from voiceauth.services.recalibrate import min_impostor_trials, needed, payload, refit, store_calibrations
from voiceauth.store.sqlite import SQLiteStore
from voiceauth.store.trials import Trial, TrialKind

MODEL = ECAPA.model_id


def in_domain(n_genuine: int, n_impostor: int, seed: int = 0, shift: float = 0.0) -> list[Trial]:
    """Labelled raw-score trials of a 'phone channel' where impostors score higher than on clean speech."""
    rng = np.random.default_rng(seed)
    speech = rng.uniform(2.0, 12.0, n_genuine + n_impostor)
    genuine = rng.normal(0.72 + shift, 0.1, n_genuine)
    impostor = rng.normal(0.40 + shift, 0.08, n_impostor)
    out = []
    for i, (score, label) in enumerate([(s, True) for s in genuine] + [(s, False) for s in impostor]):
        out.append(Trial(f"t-{seed:04x}{i:020x}", TrialKind.ENROL_GENUINE if label else TrialKind.ENROL_IMPOSTOR,
                         MODEL, "ivr-8k", "raw", float(score), None, float(speech[i]), label=label, source="enrolment"))
    return out


def test_refit_needs_enough_trials_and_says_how_many() -> None:
    policy = Policy(target_far=0.01)
    assert needed(policy) == {"genuine": 143, "impostor": 1429} and min_impostor_trials(0.05) == 286
    with pytest.raises(CalibrationError, match=r"has 100 genuine and 1000 impostor .* needs 143 and 1429"):
        refit(in_domain(100, 1000), policy, MODEL, default_calibration(), channel="ivr-8k")


def test_shipped_calibration_misstates_far_in_domain_and_the_refit_holds_on_held_out_trials() -> None:
    policy = Policy(target_far=0.01)
    train, test = in_domain(400, 3000, seed=1), in_domain(400, 3000, seed=2)
    scores = np.array([t.raw for t in test])
    labels = np.array([bool(t.label) for t in test])
    speech = np.array([t.speech_s for t in test])
    shipped = default_calibration().get(Normalisation.RAW)
    before = policy.thresholds(shipped)
    far_before = float((np.asarray(shipped.llr(scores[~labels], speech[~labels])) >= before.accept_llr).mean())
    assert far_before > before.expected_far_interval.high  # stated on LibriSpeech, wrong on this channel

    fit = refit(train, policy, MODEL, default_calibration(), channel="ivr-8k")
    assert fit.passed and fit.kept_from_base == ["as-norm"]
    check = fit.checks["raw"]
    assert check["fit_impostor"] == 2100 and check["held_impostor"] == 900
    assert fit.calibrations is not None
    cal = fit.calibrations.get(Normalisation.RAW)
    after = policy.thresholds(cal)
    far_after = float((np.asarray(cal.llr(scores[~labels], speech[~labels])) >= after.accept_llr).mean())
    assert after.expected_far_interval.low <= far_after <= after.expected_far_interval.high
    # where it decides alone: the speech of the trials it was fitted on (the kept base one is not the refit's)
    assert fit.speech_ranges == {"raw": cal.durations_s} and fit.report()["speech_s_ranges"] == {
        "raw": list(cal.durations_s)}
    assert f"raw: decides alone on {cal.durations_s[0]:g}-{cal.durations_s[1]:g} s" in fit.describe()


def claimed(n: int, mean: float, seed: int) -> list[Trial]:
    """Impostor calls the bank reported (``fraud_case``): real claims of a customer's identity."""
    rng = np.random.default_rng(seed)
    return [Trial(f"t-c{seed:03x}{i:020x}", TrialKind.VERIFY, MODEL, "ivr-8k", "raw", float(s), None,
                  float(rng.uniform(4.0, 12.0)), label=False, source="fraud_case")
            for i, s in enumerate(rng.normal(mean, 0.08, n))]


def test_refit_is_checked_on_reported_impostor_calls_not_only_on_easy_enrolment_pairs() -> None:
    """Enrolment impostor pairs are random other customers; reported fraud calls can be far closer to the
    genuine scores. A refit whose stated FAR those calls contradict must not pass (so it is not activated)."""
    policy = Policy(target_far=0.01)
    # 70 reported claims in the fit part: too few to hold the 1 % target on them (Policy.thresholds)
    close = refit(in_domain(400, 3000, seed=3) + claimed(100, 0.62, seed=4), policy, MODEL,
                  default_calibration(), channel="ivr-8k")
    check = close.checks["raw"]
    assert check["held_claimed_impostor"] == 30
    assert check["claimed_far"] > check["stated_far_interval"][1] and not check["claimed_consistent"]
    assert not close.passed and "reported impostor calls" in close.describe()

    alike = refit(in_domain(400, 3000, seed=3) + claimed(400, 0.40, seed=4), policy, MODEL,
                  default_calibration(), channel="ivr-8k")
    assert alike.checks["raw"]["claimed_consistent"] and alike.passed

    few = refit(in_domain(400, 3000, seed=3) + claimed(20, 0.62, seed=4), policy, MODEL,
                default_calibration(), channel="ivr-8k")
    assert few.checks["raw"]["claimed_consistent"] is None  # 6 held out: too few to say either way


def test_with_enough_reported_claims_the_threshold_holds_the_target_on_them() -> None:
    """Random pairs of customers are easier impostors than callers who claim an identity: once the
    bank has reported enough claims (1 / target_far in the fit), the accept threshold meets the FAR
    target on them as well, and the refit states and checks that rate."""
    policy = Policy(target_far=0.01)
    pairs_only = refit(in_domain(400, 3000, seed=3), policy, MODEL, default_calibration(), channel="ivr-8k")
    fit = refit(in_domain(400, 3000, seed=3) + claimed(400, 0.62, seed=4), policy, MODEL, default_calibration(),
                channel="ivr-8k")
    assert fit.calibrations is not None and pairs_only.calibrations is not None
    cal = fit.calibrations.get(Normalisation.RAW)
    assert cal.claimed is not None and int(cal.claimed.sum()) == 400 and not (cal.claimed & cal.labels).any()
    th = policy.thresholds(cal)
    assert th.claimed_trials == 400 and th.claimed_far is not None and th.claimed_far <= 0.01
    claims = np.asarray(cal.trial_llrs())[cal.claimed]
    assert float((claims >= th.accept_llr).mean()) <= 0.01
    assert th.expected_far < th.claimed_far or th.expected_far == 0.0  # the pairs alone would allow more
    without = policy.thresholds(pairs_only.calibrations.get(Normalisation.RAW))
    assert without.claimed_far is None and th.accept_llr > without.accept_llr
    check = fit.checks["raw"]
    assert check["held_claimed_impostor"] == 120 and check["claimed_consistent"] and fit.passed
    assert "reported impostor claims accepted" in th.describe()
    # the flags survive the calibration file (and so the store's versions)
    again = CalibrationSet.from_payload(payload(fit.calibrations), MODEL).get(Normalisation.RAW)
    assert again.claimed is not None and (again.claimed == cal.claimed).all()
    with pytest.raises(CalibrationError, match="impostor trials only"):
        Calibration(cal.normalisation, cal.weights, cal.scores, cal.labels, cal.speech_s, "x", ~cal.claimed)


def test_versions_activate_roll_back_and_reach_the_client(tmp_path: Path) -> None:
    from standin_voices import STANDIN_CALIBRATION, ToneEmbedder

    from voiceauth.client import VoiceAuth

    store = SQLiteStore(tmp_path / "vp.db")
    trials = [Trial(**{**t.__dict__, "model_id": ToneEmbedder.model_id, "channel": ""}) for t in in_domain(300, 2000)]
    store.add_trials(trials)
    fit = refit(store.trials(model_id=ToneEmbedder.model_id, labelled=True), Policy(), ToneEmbedder.model_id,
                STANDIN_CALIBRATION)
    assert fit.calibrations is not None
    v1 = store.save_calibration(ToneEmbedder.model_id, "", payload(fit.calibrations), fit.report(), actor="t")
    v2 = store.save_calibration(ToneEmbedder.model_id, "", payload(fit.calibrations), fit.report(), actor="t")
    assert [v.active for v in store.calibration_versions()] == [False, True]
    store.close()

    va = VoiceAuth(tmp_path / "vp.db", embedder=ToneEmbedder(), spoof=False)  # type: ignore[arg-type]
    assert va.services.calibration_versions == {"": v2}
    assert va.scorer.calibrations.get(Normalisation.RAW).source.startswith("store:")
    va.store.activate_calibration(v1, actor="ops")
    va.reload_calibrations()
    assert va.services.calibration_versions == {"": v1}
    va.store.deactivate_calibrations(ToneEmbedder.model_id, "", actor="ops")
    assert store_calibrations(va.store, ToneEmbedder.model_id) == {}
    actions = [(e.action, e.outcome) for e in va.store.audit_events() if e.action.startswith("calibration")]
    assert actions == [("calibration_fit", "activated"), ("calibration_fit", "activated"),
                       ("calibration_activate", "rollback"), ("calibration_activate", "shipped")]
    va.close()


def test_commands_outcome_calibrate_from_store_rollback_and_health(tmp_path: Path) -> None:
    db = str(tmp_path / "vp.db")
    store = SQLiteStore(db)
    store.add_trials(in_domain(300, 2000))
    store.add_trials([Trial("t-" + "a" * 24, TrialKind.VERIFY, MODEL, "ivr-8k", "raw", 0.6, None, 6.0, llr=3.0)])
    store.close()
    runner = CliRunner()

    def run(*args: str) -> tuple[int, str]:
        result = runner.invoke(cli, [*args, "--store", db], catch_exceptions=False)
        return result.exit_code, result.output

    code, out = run("outcome", "t-" + "a" * 24, "--genuine", "--source", "kba")
    assert code == 0 and "genuine" in out
    code, out = run("calibrate", "--from-store", "--per-channel", "--json")
    assert code == 0, out
    fits = json.loads(out)["fits"]
    assert fits["(all)"]["active"] and fits["ivr-8k"]["active"]
    assert fits["(all)"]["held_out_checks"]["raw"]["far_consistent"]
    code, out = run("calibrate", "--list", "--json")
    assert [(v["version"], v["channel"], v["active"]) for v in json.loads(out)] == [(1, "", True), (2, "ivr-8k", True)]
    code, out = run("calibrate", "--rollback", "--channel", "ivr-8k")
    assert code == 0 and "shipped" in out
    code, out = run("health", "--channel", "ivr-8k", "--json")
    assert code == 0, out
    report = json.loads(out)
    # the channel's own version is rolled back: the default one (v1), fitted on these very trials, is in force
    assert report["labelled"]["genuine"] == 301 and report["calibration_version"] == 1
    assert report["by"]["raw"]["impostor"]["level"] == "stable"
    # no reported calls: the settings' live margins stay
    assert report["live_accept_margin"] == {"as-norm": 0.0, "raw": 3.0, "derived": False}
    code, out = run("calibrate", "--rollback")
    assert code == 0 and "shipped" in out
    code, out = run("health", "--json")
    assert json.loads(out)["by"]["raw"]["impostor"]["level"] == "major"  # the shipped one never saw this channel
    code, out = run("health")
    assert code == 0 and "PSI" in out and "calibration in force: shipped" in out
    assert "live accept margin: AS-norm 0, raw 3 (the settings' defaults)" in out


def test_drift_levels() -> None:
    rng = np.random.default_rng(0)
    ref = rng.normal(0.3, 0.1, 4000)
    assert drift(ref, rng.normal(0.3, 0.1, 500)).level == "stable"
    assert drift(ref, rng.normal(0.36, 0.1, 500)).level in ("moderate", "major")
    assert drift(ref, rng.normal(0.5, 0.1, 500)).level == "major"
    few = drift(ref, rng.normal(0.5, 0.1, 10))
    assert few.psi is None and "unknown" in few.describe()


def test_health_counts_decisions_on_speech_the_calibration_never_saw() -> None:
    """The long-call shift shows in no score histogram: health counts the verifications and calls whose
    net speech lies outside the durations of the calibration's trials."""
    from voiceauth.services.recalibrate import drift_report

    fit = refit(in_domain(400, 3000, seed=1), Policy(target_far=0.01), MODEL, default_calibration(), channel="ivr-8k")
    assert fit.calibrations is not None
    low, high = fit.calibrations.get(Normalisation.RAW).durations_s
    assert (low, high) == pytest.approx((2.0, 12.0), abs=0.05)
    calls = [Trial(f"t-d{i:020x}", TrialKind.CALL, MODEL, "ivr-8k", "raw", 0.7, None, s, day=1_000_000.0)
             for i, s in enumerate([1.0, 3.0, 5.0, 11.0, 20.0, 35.0])]

    class Recent:
        def trials(self, **_: object) -> list[Trial]:
            return calls

    speech = drift_report(Recent(), fit.calibrations, MODEL, now=1_000_000.0)["by"]["raw"]["speech"]  # type: ignore[arg-type]
    assert (speech["decisions"], speech["shorter"], speech["longer"]) == (6, 1, 2)
    assert speech["outside"] == 0.5 and "3 of 6 recent verifications and calls (50%)" in speech["text"]
    assert "refit once the store holds labelled calls of those lengths" in speech["text"]


@pytest.mark.parametrize("target_far", [0.001, 0.01, 0.05])
@pytest.mark.parametrize("max_false_reject", [0.02, 0.2, 0.5])
def test_no_reject_on_evidence_that_favours_the_claim(target_far: float, max_false_reject: float) -> None:
    """A confident 'not the customer' needs LLR below REJECT_LLR < 0, whatever the calibration and policy."""
    cals = [*default_calibration().by_normalisation.values()]
    rng = np.random.default_rng(1)
    scores = np.concatenate([rng.normal(0.5, 0.1, 300), rng.normal(0.35, 0.1, 3000)])
    labels = np.arange(len(scores)) < 300  # overlapping classes: the FRR threshold alone would sit above 0
    cals.append(Calibration.fit(scores, labels, rng.uniform(2, 10, len(scores))))
    for cal in cals:
        th = Policy(target_far=target_far, max_false_reject=max_false_reject).thresholds(cal)
        assert th.reject_llr <= REJECT_LLR < 0 <= th.accept_llr
        for llr in np.linspace(0.0, 5.0, 51):
            assert decide(float(llr), 5.0, th, min_speech_s=1.0) is not Decision.REJECT
            for current in (CallStatus.PENDING, CallStatus.AUTHENTICATED):
                verdict = decide_call(current, float(llr), 5.0, Normalisation.RAW, th, margins=Margins(),
                                      min_speech_s=3.0, barred=False, spoof_covered=True)
                assert verdict.status is not CallStatus.NOT_AUTHENTICATED


def test_spoof_reference_advisory_until_enough_then_calibrated() -> None:
    empty = ChannelReference("ivr-8k", np.array([]), detector_threshold=-10.0)
    assert empty.assess(-10.5).gate and not empty.assess(-9.0).flag  # no reference: the detector decides
    few = ChannelReference("ivr-8k", np.sort(np.random.default_rng(0).normal(-4, 3, 60)), detector_threshold=-10.0)
    lowest = float(few.scores.min())
    assert not few.calibrated and lowest < -10.0
    seen_low = few.assess(lowest + 0.1)
    assert not seen_low.gate and seen_low.flag and "advisory" in seen_low.reason  # a live caller scored lower
    assert few.assess(lowest - FAR_OUTSIDE_LOG_ODDS - 0.1).gate  # far outside every bona fide score seen
    clean = ChannelReference("app-16k", np.array([-2.0, 1.0, 3.0]), detector_threshold=-10.0)
    assert clean.threshold == -10.0 and clean.assess(-10.5).gate  # nothing seen below the detector: it decides
    full = ChannelReference("ivr-8k", np.sort(np.random.default_rng(1).normal(-4, 3, MIN_REFERENCE)), -10.0)
    assert full.calibrated
    flagged = float((full.scores < full.threshold).mean())
    assert flagged <= FALSE_ALARM and full.false_alarm_interval is not None
    assert full.false_alarm_interval.low <= flagged <= full.false_alarm_interval.high
    assert "flags 2%" in full.describe() and full.to_dict()["mode"] == "calibrated"


def test_trial_and_calibration_tables_on_postgresql(pg_url: str) -> None:  # noqa: F811 - fixture from pg_server
    from pg_server import fresh_database

    from voiceauth.store import open_store

    store = open_store(fresh_database(pg_url))
    try:
        store.add_trials(in_domain(300, 2000))
        store.add_trials([Trial("t-" + "b" * 24, TrialKind.CALL, MODEL, "ivr-8k", "as-norm", 0.6, 4.2, 9.0, llr=2.5,
                                trajectory=((3.1, 3.0), (4.2, 9.0)))])
        labelled = store.label_trial("t-" + "b" * 24, True, "kba", actor="t")
        assert labelled.label is True and labelled.trajectory == ((3.1, 3.0), (4.2, 9.0))
        assert len(store.trials(labelled=True)) == 2301 and store.trial_channels() == ["ivr-8k"]
        fit = refit(store.trials(model_id=MODEL, labelled=True), Policy(), MODEL, default_calibration())
        assert fit.calibrations is not None
        v1 = store.save_calibration(MODEL, "ivr-8k", payload(fit.calibrations), fit.report(), actor="t")
        v2 = store.save_calibration(MODEL, "ivr-8k", payload(fit.calibrations), fit.report(), actor="t")
        assert store.active_calibration(MODEL, "ivr-8k").version == v2  # type: ignore[union-attr]
        store.activate_calibration(v1, actor="t")
        assert set(store_calibrations(store, MODEL)) == {"ivr-8k"} and store.verify_audit().ok
    finally:
        store.close()


def test_rolling_back_every_store_version_returns_to_the_calibration_the_client_was_given(tmp_path: Path) -> None:
    """A client opened with its own calibration file that reloads after `calibrate --rollback` to
    the base goes back to that file, not to the shipped calibration (or to none, for a model
    without one: every decision refused)."""
    from standin_voices import STANDIN_CALIBRATION, ToneEmbedder

    from voiceauth.client import VoiceAuth

    va = VoiceAuth(tmp_path / "vp.db", embedder=ToneEmbedder(), spoof=False,  # type: ignore[arg-type]
                   calibration=STANDIN_CALIBRATION)
    try:
        given = va.scorer.calibrations
        va.store.save_calibration(ToneEmbedder.model_id, "", payload(given), {}, actor="t")
        va.reload_calibrations()
        assert va.services.calibration_versions == {"": 1}
        va.store.deactivate_calibrations(ToneEmbedder.model_id, "", actor="t")
        va.reload_calibrations()
        assert va.services.calibration_versions == {}
        assert va.scorer.calibrations is given  # not the shipped ECAPA one, and not "no calibration"
    finally:
        va.close()
