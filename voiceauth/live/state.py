"""What a live call reports: its status, results, revisions and the settings it runs with."""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol, Union

import numpy as np

from voiceauth.audio.decode import Audio
from voiceauth.decision import CallMargins, CallStatus
from voiceauth.errors import SessionError
from voiceauth.results import Flag

if TYPE_CHECKING:
    from voiceauth.services.core import Services

Chunk = Union[bytes, bytearray, memoryview, np.ndarray, Audio]


@dataclass(frozen=True)
class Revision:
    """One status change of a call."""

    at_s: float
    """Seconds since the call started."""
    speech_s: float
    """Net speech seconds at the change."""
    status: CallStatus
    reason: str


@dataclass(frozen=True)
class CallResult:
    """A snapshot of a live call. Plain values only: no audio, no embeddings."""

    call_id: str
    customer_id: str
    status: CallStatus
    confidence: float
    """Posterior probability that the caller is the customer (policy prior); 0 before any score."""
    llr: float
    """Calibrated log-likelihood ratio of the current evidence; 0 before any score."""
    speech_s: float
    """Net speech seconds processed in this call."""
    required_s: float
    """Net speech seconds needed before the first decision."""
    progress: float
    """``speech_s / required_s`` in percent, at most 100."""
    flags: tuple[Flag, ...] = ()
    revisions: tuple[Revision, ...] = ()
    """Status changes, oldest first (the most recent ``history_limit``)."""
    revision_count: int = 0
    """All status changes, including any no longer in ``revisions``."""
    error: str | None = None
    decided_at_speech_s: float | None = None
    """Net speech seconds when the current decided status was reached."""
    closed: bool = False
    """True once the call has ended and every fed segment has been processed."""
    dropped_audio_s: float = 0.0
    """Audio seconds dropped unprocessed because the workers fell behind."""
    spoof_score: float | None = None
    """Bona fide score of the most spoof-like window of the call's speech checked so far
    (higher is more like live speech; see :class:`~voiceauth.fraud.spoof.SpoofResult`); None
    until a check has run, or when it is off."""
    trial_id: str | None = None
    """Random id under which the call's score is recorded when it ends (report its outcome with
    ``VoiceAuth.report_outcome``); None when trials are not recorded."""
    thinned_under_load_s: float = 0.0
    """Speech of the call left out of the speaker model while the service was pressed
    (``SessionSettings.pressed_stride``): heard and counted, not embedded; 0 when never pressed."""

    @property
    def authenticated(self) -> bool:
        return self.status is CallStatus.AUTHENTICATED


@dataclass(frozen=True)
class SessionSettings:
    """Tuning of live sessions; the defaults are the measured ones (see module docs)."""

    segment_s: float = 1.5
    min_decision_s: float = 3.0
    accept_margin_llr: float = 0.0
    """Added to the policy's accept LLR in a call scored with AS-norm (see module docs)."""
    raw_accept_margin_llr: float = 3.0
    """The same for a call scored without a cohort (SMALL_COHORT)."""
    change_window_s: float = 3.0
    change_min_earlier_s: float = 3.0
    change_threshold: float = 0.35
    max_queued_s: float = 10.0
    max_chunk_s: float = 1.0
    max_pending_segments: int = 4
    min_flush_s: float = 0.5
    """At close, left-over speech at least this long is scored as a last, shorter segment."""
    idle_timeout_s: float = 120.0
    max_sessions: int = 1000
    workers: int = 2
    batch_size: int = 4
    history_limit: int = 32
    reap_interval_s: float = 1.0
    spoof_check: bool = True
    """Check the call's speech with ``VoiceAuth.spoof`` (AASIST); AUTHENTICATED waits until
    all speech in the evidence has passed."""
    spoof_window_s: float = 4.0375
    """Seconds of speech per spoof-check window: the network's 64 600-sample window."""
    spoof_may_follow: bool = True
    """On a channel whose bona fide spoof reference is calibrated (enough consented enrolments,
    :mod:`voiceauth.fraud.reference`), AUTHENTICATED does not wait for the spoof check: the check
    follows on the same speech, and a suspected spoof withdraws the authentication."""
    spoof_backlog_s: float = 30.0
    """Seconds of speech kept unchecked while a call's voice does not match (its LLR under the
    reject threshold: :func:`voiceauth.decision.within_reach`). If it comes to match, that speech is
    checked before the call is AUTHENTICATED; past this much, it is forgotten and the call can no
    longer be AUTHENTICATED. Bounds a call's memory (30 s: about 1 MB at 8 kHz)."""
    unmatched_stride: int = 2
    """Once a call is NOT_AUTHENTICATED with its voice out of reach of an accept (or barred), only
    every ``unmatched_stride``-th segment is embedded; the speech left out still counts as heard and
    the spoof check hears all of it. 1 embeds every segment."""
    model_slots: int | None = None
    """Model calls (embedding batches, spoof checks) run side by side; None: the cores divided by the
    speaker model's threads (1 for torch ECAPA, which uses every core; 2 for an ONNX model on one
    thread on 2 cores), at most ``workers``."""
    watch_stride: int = 1
    """The same for an AUTHENTICATED call, whose later segments feed the watch over it (speaker change,
    a falling score). 2 halves the cost of a decided call; a voice taking over is then caught later
    (median 5.3 s of its speech instead of 3.3 s on LibriSpeech, ``benchmarks/streaming.py --watch-stride 2``)."""

    pressed_stride: int = 3
    """While the model is *pressed* (some model work has waited ``pressed_wait_s`` for a slot), a
    settled call (the two strides above) embeds only every ``pressed_stride``-th segment, when its own
    stride is smaller: a call still deciding keeps every segment, so decisions keep pace and a decided
    call's watch is thinned instead of audio being dropped. Counted per call in
    ``CallResult.thinned_under_load_s``. 1 turns it off."""
    pressed_wait_s: float = 0.5
    """How long the oldest waiting model work may wait before the model counts as pressed."""

    def __post_init__(self) -> None:
        if self.model_slots is not None and self.model_slots < 1:
            raise SessionError(f"SessionSettings.model_slots must be at least 1 (or None), got {self.model_slots!r}")
        positive = ("segment_s", "max_queued_s", "max_chunk_s", "idle_timeout_s", "reap_interval_s", "spoof_window_s",
                    "spoof_backlog_s", "pressed_wait_s")
        for name in positive:
            if not getattr(self, name) > 0:
                raise SessionError(f"SessionSettings.{name} must be positive, got {getattr(self, name)!r}")
        for name in ("max_pending_segments", "max_sessions", "workers", "batch_size", "history_limit",
                     "unmatched_stride", "watch_stride", "pressed_stride"):
            if getattr(self, name) < 1:
                raise SessionError(f"SessionSettings.{name} must be at least 1, got {getattr(self, name)!r}")

    @property
    def margins(self) -> CallMargins:
        """The accept margins :func:`voiceauth.decision.decide_call` applies."""
        return CallMargins(as_norm=self.accept_margin_llr, raw=self.raw_accept_margin_llr)

    @property
    def change_segments(self) -> int:
        return max(1, round(self.change_window_s / self.segment_s))



class Host(Protocol):
    """What a call needs from the pool that runs it (:class:`~voiceauth.live.pool.SessionPool`)."""

    services: Services
    settings: SessionSettings
    dim: int

    def schedule_front(self, session: Any) -> None: ...  # a CallSession (which imports this module)
    def schedule_spoof(self, session: Any) -> None: ...
    def pressed(self) -> bool: ...
    def record(self, event: CallResult, reason: str, error: str | None) -> tuple[CallStatus, str, str | None]: ...


def speech_percent(speech_s: float, required_s: float) -> float:
    """Progress towards the first decision, in percent."""
    return 100.0 if required_s <= 0 else min(100.0, 100.0 * speech_s / required_s)


def error_message(what: str, exc: BaseException) -> str:
    return (
        f"{what} failed ({type(exc).__name__}: {exc}); the call cannot be authenticated by voice, "
        "fall back to the security questions and check the service logs"
    )


def run_callbacks(callbacks: Sequence[Callable[[], None]]) -> None:
    for callback in callbacks:
        try:
            callback()
        except Exception:  # noqa: BLE001 - a user callback must never kill a worker
            logging.getLogger("voiceauth.live").exception("live call callback raised")
