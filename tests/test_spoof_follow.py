"""Issue 15 item 4: on a channel whose bona fide reference is calibrated, a live call is
AUTHENTICATED without waiting for the spoof check, the check follows on the same speech and
threshold, and a suspected spoof (or a check that cannot run) withdraws the authentication."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import scipy.signal  # noqa: F401 - imported here, not on the call's first resample (seconds on 2 busy cores)
from test_session import StandIn, StandInSpoof, make_va, stream, synth

from voiceauth.fraud.reference import MIN_REFERENCE, ChannelReference, ReferencedDetector
from voiceauth.fraud.spoof import SpoofResult
from voiceauth.live import CallResult, CallSession, CallStatus
from voiceauth.live.spoof_track import SpoofState, SpoofTrack
from voiceauth.results import Flag
from voiceauth.store.base import Consent


class References:
    """A stand-in for ``SpoofReferences``: one reference per channel, given."""

    def __init__(self, **by_channel: ChannelReference) -> None:
        self.by_channel = by_channel

    def for_channel(self, channel: str) -> ChannelReference:
        return self.by_channel.get(channel) or ChannelReference(channel, np.zeros(0), 0.0)

    def invalidate(self) -> None:
        pass


def calibrated(channel: str = "ivr-8k") -> ChannelReference:
    # genuine callers of this channel score 0.5..2.0: the stand-in's live 1.0 passes, its spoof -1.0 does not
    return ChannelReference(channel, np.linspace(0.5, 2.0, MIN_REFERENCE), 0.0)


def advisory(channel: str = "ivr-8k") -> ChannelReference:
    return ChannelReference(channel, np.linspace(0.5, 2.0, MIN_REFERENCE // 5), 0.0)


def consent() -> Consent:
    return Consent.now(channel="test", notice_version="v1", captured_by="tests")


def test_only_a_calibrated_channel_lets_the_check_follow(tmp_path: Path) -> None:
    va = make_va(tmp_path, consent(), StandIn(), spoof=StandInSpoof())
    try:
        va.services.spoof_reference = References(**{"ivr-8k": calibrated(), "app": advisory("app")})
        assert calibrated().calibrated and not advisory().calibrated
        follows = va.start_call("cust-1", channel_tag="ivr-8k")
        waits = va.start_call("cust-1", channel_tag="app")
        untagged = va.start_call("cust-1")
        assert follows._check.follows and not waits._check.follows and not untagged._check.follows
        assert isinstance(follows._spoof, ReferencedDetector)
        assert follows._spoof.threshold == calibrated().threshold  # the same threshold as verification
        for call in (follows, waits, untagged):
            call.close()
    finally:
        va.close()


def test_setting_can_keep_authentication_waiting(tmp_path: Path) -> None:
    va = make_va(tmp_path, consent(), StandIn(), spoof=StandInSpoof(), spoof_may_follow=False)
    try:
        va.services.spoof_reference = References(**{"ivr-8k": calibrated()})
        call = va.start_call("cust-1", channel_tag="ivr-8k")
        assert not call._check.follows
        call.close()
    finally:
        va.close()


def authenticate_ahead(call: CallSession, spoof: StandInSpoof) -> CallResult:
    """Stream less than one check window of matching speech (so no check is due before the
    decision) and wait for the call to be AUTHENTICATED."""
    checks_before = len(spoof.seen)
    stream(call, synth(3.6))
    deadline = time.monotonic() + 30
    while call.status is not CallStatus.AUTHENTICATED and time.monotonic() < deadline:
        time.sleep(0.01)
    result = call.result()
    assert result.status is CallStatus.AUTHENTICATED and result.spoof_score is None
    assert len(spoof.seen) == checks_before  # no verdict yet: authentication did not wait for one
    return result


def test_authenticated_before_the_verdict_which_then_confirms_it(tmp_path: Path) -> None:
    spoof = StandInSpoof(delay=0.5)
    va = make_va(tmp_path, consent(), StandIn(), spoof=spoof)
    try:
        va.services.spoof_reference = References(**{"ivr-8k": calibrated()})
        call = va.start_call("cust-1", channel_tag="ivr-8k")
        early = authenticate_ahead(call, spoof)
        deadline = time.monotonic() + 30  # the check follows while the call goes on (it is not closed)
        while call.result().spoof_score is None and time.monotonic() < deadline:
            time.sleep(0.01)
        result = call.result()
        assert result.status is CallStatus.AUTHENTICATED and result.spoof_score == 1.0
        # every second of speech behind the decision was checked after all
        assert call._check.checked >= (early.speech_s - 0.01) * call.sample_rate
        assert len(result.revisions) == 1
        call.close()
        assert call.result(wait=30).status is CallStatus.AUTHENTICATED
    finally:
        va.close()


class Cloned(StandInSpoof):
    """A voice good enough to match, which the countermeasure (slowly) recognises as synthetic."""

    def score(self, samples: np.ndarray, sample_rate: int) -> SpoofResult:
        super().score(samples, sample_rate)
        return SpoofResult(-1.0, 1 / (1 + np.exp(-1.0)), True, 1)

    score_speech = score


def test_a_later_spoof_verdict_withdraws_the_authentication(tmp_path: Path) -> None:
    spoof = Cloned(delay=0.5)
    va = make_va(tmp_path, consent(), StandIn(), spoof=spoof)
    decisions: list[CallResult] = []
    try:
        va.services.spoof_reference = References(**{"ivr-8k": calibrated()})
        call = va.start_call("cust-1", channel_tag="ivr-8k", on_decision=decisions.append)
        authenticate_ahead(call, spoof)
        call.close()
        result = call.result(wait=30)
        assert [d.status for d in decisions] == [CallStatus.AUTHENTICATED, CallStatus.NOT_AUTHENTICATED]
        assert result.status is CallStatus.NOT_AUTHENTICATED and Flag.SPOOF_SUSPECTED in result.flags
        assert "spoof suspected" in result.revisions[-1].reason and result.spoof_score == -1.0
        events = [e.outcome for e in va.store.audit_events() if e.action == "call_decision"]
        assert events[-2:] == ["authenticated", "not_authenticated"]  # both on record
    finally:
        va.close()


def test_an_advisory_channel_still_waits_for_the_check(tmp_path: Path) -> None:
    spoof = StandInSpoof(delay=0.5)
    va = make_va(tmp_path, consent(), StandIn(), spoof=spoof)
    decisions: list[CallResult] = []
    try:
        va.services.spoof_reference = References(**{"ivr-8k": advisory()})
        call = va.start_call("cust-1", channel_tag="ivr-8k", on_decision=decisions.append)
        stream(call, synth(6))
        call.close()
        result = call.result(wait=20)
        assert not call._check.follows and result.status is CallStatus.AUTHENTICATED
        assert decisions[0].spoof_score == 1.0  # the verdict was in before the first decision
    finally:
        va.close()


def test_a_following_check_that_cannot_run_withdraws_the_authentication(tmp_path: Path) -> None:
    spoof = StandInSpoof(delay=3.0)
    va = make_va(tmp_path, consent(), StandIn(), spoof=spoof)
    try:
        va.services.spoof_reference = References(**{"ivr-8k": calibrated()})
        call = va.start_call("cust-1", channel_tag="ivr-8k")
        authenticate_ahead(call, spoof)
        for callback in call._spoof_failed():  # as the pool does when a check returns no verdict
            callback()
        result = call.result()
        assert result.status is CallStatus.NOT_AUTHENTICATED and "could not run" in result.revisions[-1].reason
        call.close()
    finally:
        va.close()


def test_track_keeps_the_speech_heard_before_a_following_decision() -> None:
    waiting = SpoofTrack(SpoofState.WAITING, 100, 8000)
    following = SpoofTrack(SpoofState.WAITING, 100, 8000, follows=True)
    for track in (waiting, following):
        track.hear(np.ones(60, dtype=np.float32), decided=False)
        track.hear(np.ones(10, dtype=np.float32), decided=True)  # the call was decided meanwhile
        assert track.gap and track.heard == 60
    assert waiting.new_len == 0 and not waiting.due(0, blocked=False)  # forgotten: never checked
    assert following.new_len == 60 and following.due(1000, blocked=False)  # checked at once, however short
    assert following.covers(60 / 8000, 0.0) and not waiting.covers(60 / 8000, 0.0)
    following.queue()
    assert len(following.take()) == 60
    following.suspected(-1.0)
    assert not following.covers(60 / 8000, 0.0)
