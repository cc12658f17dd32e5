"""The decision rule (voiceauth.decision): one-shot and sequential, as pure functions of thresholds."""

from __future__ import annotations

import pytest

from voiceauth.decision import CallMargins, CallStatus, Decision, decide, decide_call
from voiceauth.scoring.normalisation import Normalisation
from voiceauth.scoring.policy import Thresholds
from voiceauth.scoring.statistics import Interval

TH = Thresholds(
    accept_llr=2.0, reject_llr=-1.0, expected_far=0.01, expected_far_interval=Interval(0.0, 0.02),
    expected_frr=0.05, expected_frr_interval=Interval(0.03, 0.07), expected_false_reject=0.01, trials=(100, 1000),
)


@pytest.mark.parametrize(
    ("llr", "speech_s", "kwargs", "expected"),
    [
        (2.0, 5.0, {}, Decision.ACCEPT),
        (1.99, 5.0, {}, Decision.INCONCLUSIVE),
        (-1.0, 5.0, {}, Decision.INCONCLUSIVE),
        (-1.01, 5.0, {}, Decision.REJECT),
        (9.0, 0.5, {}, Decision.INCONCLUSIVE),
        (9.0, 5.0, {"watchlist_hit": True}, Decision.REJECT),
        (9.0, 5.0, {"spoof_suspected": True}, Decision.INCONCLUSIVE),
        (-5.0, 5.0, {"spoof_suspected": True}, Decision.REJECT),
    ],
)
def test_one_shot_rule(llr: float, speech_s: float, kwargs: dict, expected: Decision) -> None:
    assert decide(llr, speech_s, TH, min_speech_s=1.0, **kwargs) is expected


def call(current: CallStatus, llr: float, *, speech_s: float = 5.0,
         normalisation: Normalisation = Normalisation.AS_NORM, barred: bool = False, covered: bool = True):
    return decide_call(current, llr, speech_s, normalisation, TH, margins=CallMargins(as_norm=0.5, raw=3.0),
                       min_speech_s=3.0, barred=barred, spoof_covered=covered)


def test_call_accepts_above_threshold_plus_the_margin_of_its_normalisation() -> None:
    assert call(CallStatus.PENDING, 2.4).status is CallStatus.PENDING
    assert call(CallStatus.PENDING, 2.5).status is CallStatus.AUTHENTICATED
    assert call(CallStatus.PENDING, 4.9, normalisation=Normalisation.RAW).status is CallStatus.PENDING
    assert call(CallStatus.PENDING, 5.0, normalisation=Normalisation.RAW).status is CallStatus.AUTHENTICATED


def test_call_keeps_its_status_between_the_thresholds_hysteresis() -> None:
    assert call(CallStatus.AUTHENTICATED, 0.0).status is CallStatus.AUTHENTICATED
    assert call(CallStatus.NOT_AUTHENTICATED, 0.0).status is CallStatus.NOT_AUTHENTICATED
    assert call(CallStatus.AUTHENTICATED, -1.5).status is CallStatus.NOT_AUTHENTICATED


def test_call_waits_for_speech_and_for_the_spoof_check() -> None:
    assert call(CallStatus.PENDING, 9.0, speech_s=2.9).status is CallStatus.PENDING
    waiting = call(CallStatus.PENDING, 9.0, covered=False)
    assert waiting.status is CallStatus.PENDING and waiting.awaits_spoof_check


def test_a_barred_call_is_never_authenticated() -> None:
    verdict = call(CallStatus.AUTHENTICATED, 9.0, barred=True)
    assert verdict.status is CallStatus.NOT_AUTHENTICATED and "withdrawn" in verdict.reason
