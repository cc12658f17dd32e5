"""Issue 18: a live call's speech is spoof-checked ahead of a decision only while the call is
within reach of one (its LLR not under the reject threshold). The speech of a call whose voice
does not match is kept unchecked (bounded), checked in full if the voice comes to match, and
forgotten past the bound, after which the call can never be AUTHENTICATED (fail closed)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
from test_session import LOUD, StandIn, StandInSpoof, make_va, stream, synth

from voiceauth.client import VoiceAuth
from voiceauth.decision import CallStatus, within_reach
from voiceauth.fraud.spoof import SpoofResult
from voiceauth.live.spoof_track import SpoofState, SpoofTrack
from voiceauth.scoring.normalisation import Normalisation
from voiceauth.scoring.policy import Thresholds
from voiceauth.store.base import Consent

ROOMY = {"max_queued_s": 120.0, "max_pending_segments": 256}
"""Nothing dropped when the machine is busy: these calls stream faster than real time."""


@contextmanager
def checked_store(tmp_path: Path, **settings: object) -> Iterator[tuple[VoiceAuth, StandInSpoof]]:
    """A store of one customer, a stand-in spoof check that records what it scores (not the enrolment)."""
    spoof = StandInSpoof()
    va = make_va(tmp_path, consent(), StandIn(), spoof=spoof, **ROOMY, **settings)
    spoof.seen.clear()  # the enrolment's check
    try:
        yield va, spoof
    finally:
        va.close()


def consent() -> Consent:
    return Consent.now(channel="test", notice_version="v1", captured_by="tests")


def test_within_reach_is_the_reject_threshold() -> None:
    thresholds = Thresholds(2.0, -2.0, 0.01, (0.005, 0.02), 0.05, (0.03, 0.08), 0.0, (100, 1000))
    assert within_reach(-2.0, thresholds) and within_reach(1.0, thresholds)
    assert not within_reach(-2.01, thresholds)


def test_track_checks_ahead_only_within_reach() -> None:
    track = SpoofTrack(SpoofState.WAITING, 100, 8000, backlog=1000)
    track.hear(np.zeros(500, dtype=np.float32), decided=False)
    assert not track.due(200, blocked=False)  # five windows, first decision due, but out of reach
    track.in_reach = True
    assert track.due(200, blocked=False)
    track.queue()
    assert len(track.take()) == 500  # all the speech kept while out of reach
    track.passed(1.0)
    track.in_reach = False
    track.hear(np.zeros(150, dtype=np.float32), decided=False)
    assert not track.due(200, blocked=False)  # a window of new speech, out of reach
    track.wanted = True
    assert track.due(200, blocked=False)  # a matching voice waits: checked whatever the reach


def test_past_the_backlog_the_speech_is_forgotten_and_never_covered() -> None:
    for follows in (False, True):
        track = SpoofTrack(SpoofState.WAITING, 100, 8000, backlog=1000, follows=follows)
        track.hear(np.zeros(1000, dtype=np.float32), decided=False)
        assert track.new_len == 1000 and not track.forgot  # at the bound: kept
        track.hear(np.zeros(1, dtype=np.float32), decided=False)
        assert track.forgot and track.new_len == 0 and not track.listening
        track.in_reach = track.wanted = True
        assert not track.due(0, blocked=False)
        assert not track.covers(0.0, 0.0)  # following or not: nothing can be AUTHENTICATED


def test_in_reach_the_backlog_does_not_apply() -> None:
    track = SpoofTrack(SpoofState.WAITING, 100, 8000, backlog=1000, in_reach=True)
    track.hear(np.zeros(5000, dtype=np.float32), decided=False)  # e.g. while a slow check runs
    assert not track.forgot and track.new_len == 5000


def _checked_track(seconds: float, **kw: object) -> SpoofTrack:
    """A track (100 Hz, so 100 samples a second) whose first ``seconds`` of speech passed; in reach."""
    track = SpoofTrack(SpoofState.WAITING, 1000, 100, backlog=10_000, in_reach=True, **kw)  # type: ignore[arg-type]
    track.hear(np.zeros(int(seconds * 100), dtype=np.float32), decided=False)
    track.queue()
    track.take()
    track.passed(1.0)
    return track


def test_a_pass_covers_the_latest_waiting_accept_within_its_speech() -> None:
    track = _checked_track(4.0)
    for seconds in (3.0, 3.0, 4.0, 5.5):  # updates that matched before their speech was checked
        track.want(seconds)
    assert track.accepts == [3.0, 4.0, 5.5]
    assert track.covered_accept() == 4.0  # the latest the 4 s checked cover
    assert track.accepts == [5.5] and track.covered_accept() is None  # used once; 5.5 s is not covered


def test_no_accept_on_a_checked_prefix_out_of_reach_or_once_the_check_stopped() -> None:
    out_of_reach = _checked_track(4.0)
    out_of_reach.want(3.0)
    out_of_reach.in_reach = False  # the voice no longer matches
    assert out_of_reach.covered_accept() is None
    for end in ("suspected", "fail"):
        track = _checked_track(4.0)
        track.want(3.0)
        track.suspected(-1.0) if end == "suspected" else track.fail()
        assert track.covered_accept() is None
    forgot = _checked_track(4.0)
    forgot.want(3.0)
    forgot.forgot = True
    assert forgot.covered_accept() is None
    following = _checked_track(4.0, follows=True)  # authenticated without waiting: nothing to cover
    following.want(3.0)
    assert following.covered_accept() is None


@pytest.mark.parametrize("barred", [False, True])
def test_a_barred_call_is_never_authenticated_on_a_checked_prefix(tmp_path: Path, barred: bool) -> None:
    """An update matched on speech a check then passes; if a screen barred the call meanwhile (a
    hand-over, a watchlist hit), the pass must not authenticate it. Unbarred, the same pass does."""
    with checked_store(tmp_path) as (va, _):
        call = va.start_call("cust-1")
        with call._lock:
            call._check.hear(np.zeros(4 * 8000, dtype=np.float32), decided=False)
            call._check.in_reach = True
            call._check.queue()
            call._check.take()
            call._check.want(3.0)  # an update that matched at 3 s waits for its check
            call._last_score = (10.0, Normalisation.RAW)
            call._barred = barred
        call._apply_spoof(SpoofResult(1.0, 0.27, False, 1))
        expected = CallStatus.NOT_AUTHENTICATED if barred else CallStatus.AUTHENTICATED
        assert call.status is expected
        call.close()


def test_an_impostor_call_costs_no_spoof_check(tmp_path: Path) -> None:
    with checked_store(tmp_path) as (va, spoof):
        call = va.start_call("cust-1")
        stream(call, synth(14, amp=LOUD, seed=7))  # the other voice: three check windows and more
        call.close()
        result = call.result(wait=30)
        assert result.status is CallStatus.NOT_AUTHENTICATED, result
        assert result.llr < va.thresholds().reject_llr
        assert spoof.seen == []  # nothing it said could have been decided on
        assert result.spoof_score is None


def test_a_genuine_call_is_still_checked_before_it_is_authenticated(tmp_path: Path) -> None:
    with checked_store(tmp_path) as (va, spoof):
        call = va.start_call("cust-1")
        stream(call, synth(6))
        call.close()
        result = call.result(wait=30)
        assert result.status is CallStatus.AUTHENTICATED
        assert spoof.seen and call._check.checked >= (result.decided_at_speech_s - 0.01) * call.sample_rate


def test_a_call_that_comes_to_match_has_its_earlier_speech_checked(tmp_path: Path) -> None:
    """The other voice first (out of reach, unchecked), then the customer's: before the call can be
    AUTHENTICATED every second of its speech is checked, the opening included."""
    with checked_store(tmp_path, change_threshold=-2.0) as (va, spoof):  # no speaker-change screen
        call = va.start_call("cust-1")
        stream(call, synth(5, amp=LOUD, seed=8))
        deadline = time.monotonic() + 10
        while call.result().speech_s < 4.0 and time.monotonic() < deadline:
            time.sleep(0.02)
        assert spoof.seen == [] and not call._check.in_reach
        stream(call, synth(30, seed=9))
        call.close()
        result = call.result(wait=30)
        assert result.status is CallStatus.AUTHENTICATED, result
        assert call._check.checked >= (result.decided_at_speech_s - 0.01) * call.sample_rate
        assert sum(seconds for seconds, _ in spoof.seen) >= 4.0  # the opening was checked with the rest


def test_a_call_out_of_reach_past_the_backlog_is_never_authenticated(tmp_path: Path) -> None:
    with checked_store(tmp_path, change_threshold=-2.0, spoof_backlog_s=3.0) as (va, spoof):
        call = va.start_call("cust-1")
        stream(call, synth(8, amp=LOUD, seed=10))
        deadline = time.monotonic() + 10
        while not call._check.forgot and time.monotonic() < deadline:
            time.sleep(0.02)
        assert call._check.forgot
        stream(call, synth(20, seed=11))  # the customer's voice: it matches, but too late
        call.close()
        result = call.result(wait=30)
        assert CallStatus.AUTHENTICATED not in [r.status for r in result.revisions], result
        assert spoof.seen == []
