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


def test_a_spoof_check_waiting_beside_the_slot_kept_for_segments_does_not_press_the_model(tmp_path: Path) -> None:
    """With two slots a check waits for the one spoof slot; thinning decided calls' watch would not
    start it sooner (it may not take the slot kept for segments), so the model is not pressed."""
    consent = Consent.now(channel="test", notice_version="v1", captured_by="tests")
    va = make_va(tmp_path, consent, StandIn(), pressed_wait_s=0.5, model_slots=2)
    try:
        pool = va._sessions
        pool._spoof.append((time.monotonic() - 0.6, object()))  # type: ignore[arg-type]
        assert not pool.pressed()
        pool._embed.append((time.monotonic() - 0.6, object()))  # type: ignore[arg-type]
        assert pool.pressed()  # segments that waited still do
        pool._embed.clear()
        pool._spoof.clear()
    finally:
        va.close()


def test_pressed_settings_are_checked() -> None:
    with pytest.raises(SessionError, match="pressed_stride"):
        SessionSettings(pressed_stride=0)
    with pytest.raises(SessionError, match="pressed_wait_s"):
        SessionSettings(pressed_wait_s=0)


def wait_for(check: object, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():  # type: ignore[operator]
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


def test_a_call_still_deciding_is_embedded_before_settled_calls_waiting_longer(tmp_path: Path) -> None:
    """The model serves calls whose decision may depend on it first; the watch over settled calls
    waits (it used to take turns with them, so a new caller waited for every live call's segment)."""
    embedder = StandIn(delay=0.1)
    consent = Consent.now(channel="test", notice_version="v1", captured_by="tests")
    va = make_va(tmp_path, consent, embedder, model_slots=1, batch_size=1, pressed_stride=1, **ROOMY)
    try:
        settled = [va.start_call("cust-1") for _ in range(6)]
        for call in settled:
            stream(call, synth(8, seed=1))
        wait_for(lambda: all(c.status is CallStatus.AUTHENTICATED for c in settled))
        wait_for(lambda: not va._sessions._embed and not getattr(va._sessions, "_watch", ()) and not any(
            c._segments or c._in_flight or c._inbox for c in settled))
        start = embedder.calls
        at_decision: list[int] = []
        for call in settled:  # the watch over six calls: about 50 segments for the model
            stream(call, synth(12, seed=2), every=10**6)
        new = va.start_call("cust-1", on_decision=lambda r: at_decision.append(embedder.calls - start))
        stream(new, synth(6, seed=3), every=10**6)
        wait_for(lambda: new.status is not CallStatus.PENDING)
        assert new.status is CallStatus.AUTHENTICATED
        for call in [*settled, new]:
            call.close()
        results = [call.result(wait=30) for call in settled]
        assert at_decision[0] <= 9, at_decision  # 4-5; taking turns with the six settled calls: 14
        assert embedder.calls - start > 40  # and the settled calls' watch was still served in full
        assert all(r.thinned_under_load_s == 0 and r.dropped_audio_s == 0 for r in results)
        pool = va._sessions  # latencies apart: the watch's updates, and the deciding calls' (all of the new call's)
        watch, deciding = pool.decision_latencies(watch=True), pool.decision_latencies(watch=False)
        assert len(watch) > 40 and len(deciding) >= 2 and len(pool.decision_latencies()) == len(watch) + len(deciding)
    finally:
        va.close()


def test_a_settled_call_the_model_cannot_keep_up_with_is_thinned_not_dropped(tmp_path: Path) -> None:
    """Segments of an AUTHENTICATED call that pile up past ``max_pending_segments`` are left out of its
    watch and counted as thinned under load; its speech still counts as heard and nothing is dropped."""
    embedder = StandIn(delay=0.3)
    consent = Consent.now(channel="test", notice_version="v1", captured_by="tests")
    va = make_va(tmp_path, consent, embedder, model_slots=1, pressed_stride=1, max_queued_s=120.0,
                 max_pending_segments=2)
    try:
        call = va.start_call("cust-1")
        stream(call, synth(6, seed=1))
        wait_for(lambda: call.status is CallStatus.AUTHENTICATED)
        before = call.result()
        stream(call, synth(24, seed=2), every=10**6)
        call.close()
        result = call.result(wait=30)
        assert result.status is CallStatus.AUTHENTICATED
        assert result.dropped_audio_s == before.dropped_audio_s  # nothing dropped once settled
        assert result.thinned_under_load_s > 10
        assert result.speech_s > 25  # what was left out still counts as heard
    finally:
        va.close()


def test_a_settled_call_waits_behind_deciding_work_but_not_for_ever(tmp_path: Path) -> None:
    consent = Consent.now(channel="test", notice_version="v1", captured_by="tests")
    va = make_va(tmp_path, consent, StandIn(), max_queued_s=10.0)
    try:
        pool = va._sessions
        settled, deciding, check = object(), object(), object()
        now = time.monotonic()
        with pool._cond:
            pool._watch.append((now - 5.0, settled))  # type: ignore[arg-type]
            pool._spoof.append((now - 1.0, check))  # type: ignore[arg-type]
            pool._embed.append((now, deciding))  # type: ignore[arg-type]
        assert pool._next_job() == ("spoof", check)  # deciding work first, oldest first
        pool._model_running = 0
        assert pool._next_job() == ("embed", [deciding])
        pool._model_running = 0
        with pool._cond:
            pool._embed.append((now, deciding))  # type: ignore[arg-type]
            pool._watch[0] = (now - 10.5, settled)  # type: ignore[assignment]
        assert pool._next_job() == ("embed", [settled])  # waited max_queued_s: it goes first
        pool._model_running = 0
        assert pool._next_job() == ("embed", [deciding])
        pool._model_running = 0
    finally:
        va.close()
