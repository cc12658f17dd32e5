"""Issue 18: once a live call is settled, only every n-th segment is embedded: a NOT_AUTHENTICATED call
out of reach of an accept every ``unmatched_stride``-th (2 by default), an AUTHENTICATED one every
``watch_stride``-th (1 by default: the bank chooses to thin the watch). The decision itself always
sees every segment; the speech left out still counts as heard; a thinned watch still withdraws an
authentication when another voice takes over."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest
from test_session import LOUD, StandIn, make_va, stream, synth

from voiceauth.decision import CallStatus
from voiceauth.errors import SessionError
from voiceauth.live import CallResult, SessionPool, SessionSettings
from voiceauth.results import Flag
from voiceauth.store.base import Consent

ROOMY = {"max_queued_s": 120.0, "max_pending_segments": 256}
"""Nothing dropped when the machine is busy: these calls stream faster than real time."""


def run_call(tmp_path: Path, audio: np.ndarray, **strides: int) -> tuple[CallResult, list[float]]:
    """One call through a store of one customer; (final result, seconds of every call segment embedded)."""
    embedder = StandIn()
    consent = Consent.now(channel="test", notice_version="v1", captured_by="tests")
    folder = tmp_path / ("-".join(f"{k}{v}" for k, v in strides.items()) or "defaults")
    folder.mkdir()
    va = make_va(folder, consent, embedder, **strides, **ROOMY)
    embedder.seen.clear()  # the enrolment's embeddings
    try:
        call = va.start_call("cust-1")
        stream(call, audio)
        call.close()
        result = call.result(wait=30)
    finally:
        va.close()
    return result, [seconds for seconds, _ in embedder.seen]


@pytest.mark.parametrize(("voice", "setting"), [("customer", "watch_stride"), ("other", "unmatched_stride")])
def test_a_settled_call_embeds_half_its_speech_and_counts_all_of_it(tmp_path: Path, voice: str, setting: str) -> None:
    audio = synth(40, seed=3) if voice == "customer" else synth(40, amp=LOUD, seed=4)
    every, _ = run_call(tmp_path, audio, watch_stride=1, unmatched_stride=1)
    thinned, embedded = run_call(tmp_path, audio, **{setting: 2})
    expected = CallStatus.AUTHENTICATED if voice == "customer" else CallStatus.NOT_AUTHENTICATED
    assert every.status is thinned.status is expected
    assert thinned.decided_at_speech_s == every.decided_at_speech_s  # the decision saw every segment
    assert abs(thinned.speech_s - every.speech_s) < 0.05  # what was left out still counts as heard
    decided = thinned.decided_at_speech_s
    assert decided is not None and thinned.speech_s > decided + 20
    # every segment up to the decision, then one in two
    assert sum(embedded) < decided + 0.6 * (thinned.speech_s - decided)
    assert sum(embedded) > decided + 0.3 * (thinned.speech_s - decided)


def test_by_default_an_authenticated_call_embeds_every_segment(tmp_path: Path) -> None:
    result, embedded = run_call(tmp_path, synth(30, seed=3))
    assert result.status is CallStatus.AUTHENTICATED
    assert sum(embedded) >= result.speech_s - 0.05  # segments hold their short pauses too


def test_a_voice_taking_over_after_the_accept_still_withdraws_a_thinned_watch(tmp_path: Path) -> None:
    audio = np.concatenate([synth(12, seed=5), synth(15, amp=LOUD, seed=6)])
    result, _ = run_call(tmp_path, audio, watch_stride=2)
    assert CallStatus.AUTHENTICATED in [r.status for r in result.revisions]
    assert result.status is CallStatus.NOT_AUTHENTICATED, result
    assert Flag.SPEAKER_CHANGE in result.flags


def test_stride_must_be_at_least_one() -> None:
    for name in ("watch_stride", "unmatched_stride"):
        with pytest.raises(SessionError, match=name):
            SessionSettings(**{name: 0})


def test_calls_whose_last_segments_are_left_out_still_finish(tmp_path: Path) -> None:
    """A call whose last segments are all left out, taken in a batch with other calls' segments, is
    finished like any other (it used to wait for ever: only the calls embedded in a batch were finished)."""
    consent = Consent.now(channel="test", notice_version="v1", captured_by="tests")
    va = make_va(tmp_path, consent, StandIn(), workers=1, batch_size=16, **ROOMY)
    try:
        calls = [va.start_call("cust-1") for _ in range(12)]
        for i, call in enumerate(calls):
            # impostors (out of reach, thinned) of different lengths, beside genuine callers
            stream(call, synth(12 + 1.5 * i, amp=LOUD, seed=i) if i % 2 else synth(12, seed=i))
        for call in calls:
            call.close()
        results = [call.result(wait=20) for call in calls]
        assert all(result.closed for result in results), [r.status for r in results if not r.closed]
    finally:
        va.close()


def test_a_pressed_model_thins_decided_calls_but_never_the_decision(tmp_path: Path, monkeypatch: pytest.MonkeyPatch
                                                                     ) -> None:
    """While model work waits for a slot (the service is pressed), a settled call embeds only every
    ``pressed_stride``-th segment, and says how much it left out; a call still deciding embeds all."""
    audio = synth(40, seed=3)
    calm, _ = run_call(tmp_path, audio)
    monkeypatch.setattr(SessionPool, "pressed", lambda self: True)
    pressed, embedded = run_call(tmp_path, audio, pressed_stride=3)
    assert calm.status is pressed.status is CallStatus.AUTHENTICATED
    assert calm.thinned_under_load_s == 0
    assert pressed.decided_at_speech_s == calm.decided_at_speech_s  # the decision saw every segment
    assert abs(pressed.speech_s - calm.speech_s) < 0.05  # what was left out still counts as heard
    decided = pressed.decided_at_speech_s
    assert decided is not None
    after = pressed.speech_s - decided
    assert 0.25 * after < sum(embedded) - decided < 0.45 * after  # one segment in three after the accept
    assert 0.55 * after < pressed.thinned_under_load_s < 0.75 * after


def test_pressed_stride_one_turns_the_thinning_off(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(SessionPool, "pressed", lambda self: True)
    result, embedded = run_call(tmp_path, synth(30, seed=3), pressed_stride=1)
    assert result.status is CallStatus.AUTHENTICATED
    assert result.thinned_under_load_s == 0
    assert sum(embedded) >= result.speech_s - 0.05


def test_the_model_is_pressed_once_work_has_waited_for_a_slot(tmp_path: Path) -> None:
    consent = Consent.now(channel="test", notice_version="v1", captured_by="tests")
    va = make_va(tmp_path, consent, StandIn(), pressed_wait_s=0.5)
    try:
        pool = va._sessions
        assert not pool.pressed()  # nothing waits
        pool._embed.append((time.monotonic(), object()))  # type: ignore[arg-type]
        assert not pool.pressed()  # waiting, not for long
        pool._spoof.append((time.monotonic() - 0.6, object()))  # type: ignore[arg-type]
        assert pool.pressed()  # a spoof check has waited longer than pressed_wait_s
        pool._embed.clear()
        pool._spoof.clear()
    finally:
        va.close()


def test_pressed_settings_are_checked() -> None:
    with pytest.raises(SessionError, match="pressed_stride"):
        SessionSettings(pressed_stride=0)
    with pytest.raises(SessionError, match="pressed_wait_s"):
        SessionSettings(pressed_wait_s=0)
