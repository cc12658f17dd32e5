"""Live calls fail closed: erasure mid-call, final statuses, spoof failures, audit first, pauses."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import numpy as np
import pytest
from test_session import FRAME, RATE, StandIn, StandInSpoof, frames, make_va, stream, synth

from voiceauth.client import VoiceAuth
from voiceauth.live import CallResult, CallStatus
from voiceauth.live.evidence import Segment as _Segment
from voiceauth.live.spoof_track import SpoofState as _Spoof
from voiceauth.store.base import AuditRecord, Consent


class Blocking(StandIn):
    """Stand-in embedder that, once armed, holds each batch until ``release`` is set."""

    def __init__(self) -> None:
        super().__init__()
        self.armed = False
        self.entered = threading.Event()
        self.release = threading.Event()

    def embed(self, signals: Sequence[np.ndarray]) -> np.ndarray:
        if self.armed:
            self.entered.set()
            assert self.release.wait(30), "test never released the embedder"
        return super().embed(signals)


@pytest.fixture
def consent() -> Consent:
    return Consent.now(channel="test", notice_version="v1", captured_by="tests")


@pytest.fixture
def blocking() -> Blocking:
    return Blocking()


@pytest.fixture
def va(tmp_path: Path, consent: Consent, blocking: Blocking) -> Iterator[VoiceAuth]:
    client = make_va(tmp_path, consent, blocking)
    blocking.armed = True
    blocking.seen.clear()
    yield client
    blocking.release.set()
    client.close()


def wait_for(check: Callable[[], bool], timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not check() and time.monotonic() < deadline:
        time.sleep(0.01)
    assert check(), "timed out"


def decisions_of(va: VoiceAuth, call_id: str) -> list[str]:
    return [e.outcome for e in va.store.audit_events()
            if e.action == "call_decision" and e.details.get("call_id") == call_id]


# -- item 6: erasure during a live call ---------------------------------------------------------


@pytest.mark.parametrize(("erase", "final"), [("opt_out", CallStatus.OPTED_OUT), ("delete", CallStatus.NOT_ENROLLED)])
def test_erasure_ends_the_live_call_at_once(va: VoiceAuth, blocking: Blocking, erase: str, final: CallStatus) -> None:
    decisions: list[CallResult] = []
    call = va.start_call("cust-1", on_decision=decisions.append)
    stream(call, synth(6))  # a segment is being embedded, more wait behind it
    assert blocking.entered.wait(30)
    getattr(va, erase)("cust-1")
    assert call.status is final  # at once, not after the model answers
    assert not call._segments and not call._inbox and not call._check.new and call._voiceprint is None
    blocking.release.set()
    stream(call, synth(4, seed=1))  # the IVR keeps streaming: discarded, never an error
    call.close()
    result = call.result(wait=30)
    assert result.closed and result.status is final
    assert [r.status for r in result.revisions] == [final]
    wait_for(lambda: len(decisions) == 1)
    assert [d.status for d in decisions] == [final] and decisions[0].closed
    assert len(blocking.seen) == 1  # only the segment already in the model (1.5 s of speech and its pauses)
    assert decisions_of(va, call.call_id) == [final.value]
    assert va._sessions is not None and va._sessions.live == 0


def test_voiceprint_purged_elsewhere_never_authenticates(va: VoiceAuth, blocking: Blocking) -> None:
    """Erased by another process (CLI purge): the call checks the store before it authenticates."""
    call = va.start_call("cust-1")
    stream(call, synth(2.0))
    assert blocking.entered.wait(30)
    assert va.store.purge_unused(time.time() + 60, actor="tests") == ["cust-1"]
    blocking.release.set()
    stream(call, synth(5, seed=1))
    call.close()
    result = call.result(wait=30)
    assert result.status is CallStatus.NOT_ENROLLED
    assert CallStatus.AUTHENTICATED not in [r.status for r in result.revisions]


# -- item 7: final statuses stay final; a spoof check that did not pass bars authentication ------


def test_nan_frame_error_is_not_overturned_by_the_segment_in_the_model(
    tmp_path: Path, consent: Consent, blocking: Blocking
) -> None:
    va = make_va(tmp_path, consent, blocking, segment_s=3.0)
    blocking.armed = True
    decisions: list[CallResult] = []
    try:
        call = va.start_call("cust-1", encoding="float32", on_decision=decisions.append)
        x = synth(4.5)
        for i in range(0, len(x) - FRAME + 1, FRAME):
            call.feed(x[i : i + FRAME])
        assert blocking.entered.wait(30)  # 3 s of matching speech is in the model
        call.feed(np.full(FRAME, np.nan, dtype=np.float32))
        wait_for(lambda: call.status is CallStatus.ERROR)
        blocking.release.set()
        call.close()
        result = call.result(wait=30)
        assert result.closed and result.status is CallStatus.ERROR and "NaN" in (result.error or "")
        assert [r.status for r in result.revisions] == [CallStatus.ERROR]
        assert [d.status for d in decisions] == [CallStatus.ERROR]
    finally:
        blocking.release.set()
        va.close()


def strong_segment() -> tuple[_Segment, np.ndarray]:
    """3 s of speech whose stand-in embedding matches cust-1's voiceprint exactly."""
    voice = np.zeros(192, dtype=np.float32)
    voice[0] = 1.0
    return _Segment(np.zeros(3 * 16000, dtype=np.float32), 3.0, time.monotonic()), voice


def test_spoof_check_that_could_not_run_bars_authentication(tmp_path: Path, consent: Consent) -> None:
    va = make_va(tmp_path, consent, StandIn(), spoof=StandInSpoof())
    try:
        call = va.start_call("cust-1")
        call._check.state = _Spoof.FAILED
        call._apply(*strong_segment())
        assert call.status is not CallStatus.AUTHENTICATED
        call.close()
    finally:
        va.close()


def test_spoof_check_raising_keeps_the_call_from_authenticating(tmp_path: Path, consent: Consent) -> None:
    va = make_va(tmp_path, consent, StandIn(), spoof=StandInSpoof(fail=True))
    try:
        call = va.start_call("cust-1")
        stream(call, synth(6))
        wait_for(lambda: call.status is CallStatus.ERROR)
        assert call._check.state is _Spoof.FAILED
        for _ in range(3):  # late segments with a perfect match
            call._apply(*strong_segment())
        call.close()
        result = call.result(wait=30)
        assert result.status is CallStatus.ERROR and "countermeasure crashed" in (result.error or "")
        assert [r.status for r in result.revisions] == [CallStatus.ERROR]
    finally:
        va.close()


# -- item 8: the decision event is written before anyone is told -------------------------------


def test_failed_audit_write_ends_the_call_in_error(
    tmp_path: Path, consent: Consent, monkeypatch: pytest.MonkeyPatch
) -> None:
    va = make_va(tmp_path, consent, StandIn())
    order: list[str] = []
    real_audit = va.store.audit

    def audit(event: AuditRecord) -> None:
        if event.action == "call_decision":
            order.append(f"audit {event.outcome}")
            if event.outcome == CallStatus.AUTHENTICATED.value:
                raise OSError("disk full")
        real_audit(event)

    monkeypatch.setattr(va.store, "audit", audit)
    seen: list[CallStatus] = []
    try:
        call = va.start_call("cust-1", on_decision=lambda r: order.append(f"decision {r.status.value}"),
                             on_update=lambda r: seen.append(r.status))
        stream(call, synth(6))
        call.close()
        result = call.result(wait=30)
        assert result.status is CallStatus.ERROR and "audit" in (result.error or "")
        assert "security questions" in (result.error or "")
        assert order == ["audit authenticated", "audit error", "decision error"]
        assert CallStatus.AUTHENTICATED not in seen
        assert CallStatus.AUTHENTICATED not in [r.status for r in result.revisions]
        assert decisions_of(va, call.call_id) == ["error"]
    finally:
        va.close()


# -- item 9: a paused call is alive while the IVR keeps sending frames --------------------------


def test_paused_call_fed_frames_is_not_expired(tmp_path: Path, consent: Consent) -> None:
    standin = StandIn()
    va = make_va(tmp_path, consent, standin, idle_timeout_s=0.5)
    standin.seen.clear()
    try:
        call = va.start_call("cust-1")
        stream(call, synth(1.5))
        call.pause()
        card = list(frames(synth(2.0, amp=0.6, seed=1)))  # a long card payment, read loudly
        for frame in card:
            call.feed(frame)
            time.sleep(FRAME / RATE)  # real time: four idle timeouts in all
        assert not call.closed and not call.result().closed
        call.resume()
        stream(call, synth(3.0, seed=2))
        call.close()
        result = call.result(wait=30)
        assert result.status is CallStatus.AUTHENTICATED
        assert not any("expired" in r.reason for r in result.revisions)
        assert result.speech_s <= 4.5 + 1e-6
        assert max(rms for _, rms in standin.seen) < 0.2  # no paused audio ever reached the model
    finally:
        va.close()
