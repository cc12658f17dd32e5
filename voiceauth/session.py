"""Live call sessions: authenticate the caller while the IVR streams their audio.

    with va.start_call("cust-42", sample_rate=8000, encoding="mulaw", on_decision=handler) as call:
        for frame in ivr_frames:          # e.g. 20 ms of G.711 bytes
            call.feed(frame)              # O(1): validate, enqueue, return
            if call.status is CallStatus.AUTHENTICATED:
                skip_security_questions()
    print(call.result())

How it works. ``feed()`` only checks the frame's type and size and appends it to the
session's bounded input queue; it never decodes, never touches the model and never
waits on a worker. A :class:`SessionPool` of a few worker threads, shared by all live
calls, does the rest:

1. *front end* (cheap): decode, pass 20 ms frames through a streaming
   :class:`~voiceauth.speech.SpeechGate`, buffer the voiced samples at the input rate
   and cut them into segments of ``segment_s`` seconds of net speech, resampled to
   16 kHz. Audio is dropped as soon as it has been cut into a segment.
2. *embedding*: a worker takes up to ``batch_size`` ready segments from *different*
   calls and embeds them in one ``embedder.embed`` call. Each segment is embedded
   exactly once; the call embedding is the speech-weighted sum of its segment
   embeddings, so the work per update is one segment whatever the call's length.
3. *decision*: after each segment the call embedding is scored against the voiceprint
   (``va.scorer``, AS-norm against ``va``'s cohort when it is large enough, LLR
   calibrated for the net speech so far), the *screens* run (speaker change built in,
   the watchlist when one is set up) and the status is updated. Every status change is
   first written to the audit trail (``call_decision``; if that write fails the call ends
   in ERROR instead), then fires ``on_decision`` once, on a worker thread.
4. *spoof check*: ``va.spoof`` (AASIST) scores the call's *speech*, the voiced frames
   the gate let through, never the pauses, silence, noise or hum around them (the
   network takes those for live speech). The first check runs when the call has enough
   net speech for a decision, on all of it; later checks each take the speech heard
   since the previous one (padded to one ``spoof_window_s`` window with the speech just
   before it), whenever a window's worth has come in and whenever a matching voice
   waits for its speech to be checked. The most spoof-like window decides. Model work,
   embedding batches and spoof checks alike, runs one call at a time, oldest first,
   with all of torch's threads.
   A call is AUTHENTICATED only once every second of speech in its evidence has passed
   (it stays PENDING meanwhile, even when the voice matches). A suspected spoof sets
   SPOOF_SUSPECTED and bars authentication for the rest of the call
   (NOT_AUTHENTICATED), withdrawing it if a check still running finds one; a check
   that fails or cannot run bars it too (fail closed).
   Speech after the call is AUTHENTICATED (or barred) is not checked: it made no
   decision, the speaker-change screen watches for a hand-over, and each extra window
   is another chance of a false alarm on a genuine caller (the most spoof-like window
   decides). So such a call can never be AUTHENTICATED again once it has left that
   status. One window costs about 0.4 s on the 2-core machine;
   ``SessionSettings(spoof_check=False)`` or ``VoiceAuth(spoof=False)`` turns it off.

Sequential decision. A call is AUTHENTICATED once it has ``min_decision_s`` of net
speech and the LLR reaches the policy's accept threshold plus a margin;
NOT_AUTHENTICATED when the LLR is under the policy's reject threshold. Between the two
a decided call keeps its status (hysteresis), so a decision is revised only when the
evidence crosses the other threshold, or when a screen withdraws it. The margin pays
for looking at the evidence many times per call, and is chosen on replayed call
trajectories (``benchmarks/streaming.py``: phone-channel LibriSpeech, 30 genuine and 270
impostor calls, 1.5 s segments, the shipped calibration):

* AS-norm scoring (the store holds at least 20 other voiceprints, as any bank's does):
  no impostor call ever reached the bare accept threshold (0/270; 95 % upper bound
  1.4 %) and every genuine caller was accepted within 10 s, so ``accept_margin_llr`` is
  0. Held out, on the council-meeting calls: 1/288 impostors, 83 % of genuine callers
  within 10 s (the calibration does not transfer to that domain; see the README).
* raw scoring (SMALL_COHORT, a new store): 22/270 impostors reached the bare threshold,
  2/270 with a margin of 3, so ``raw_accept_margin_llr`` is 3.

Re-measure with ``benchmarks/streaming.py`` after recalibrating.

Speaker change. On each update the mean embedding of the last ``change_window_s`` of
speech is compared (cosine) with the call's earlier speech (at least
``change_min_earlier_s``). Measured on the same calls, same-speaker values stayed above
0.40 (min of 125 updates), spliced calls (speaker A, then 3 s of speaker B) had a
median of 0.24, and under 0.35 for 87 % of them at the first look. Under
``change_threshold`` (0.35) the call is flagged SPEAKER_CHANGE, an AUTHENTICATED status
is withdrawn (NOT_AUTHENTICATED) and cannot return for the rest of the call, and the
evidence restarts from the new voice.

Memory per live session (``SessionSettings`` defaults) is bounded by

* input queue: at most ``max_queued_s`` = 10 s of raw audio (older audio is dropped
  and counted in ``dropped_audio_s``): 80 kB for 8 kHz G.711, 320 kB at the worst
  (16 kHz float32), plus one frame of at most ``max_chunk_s`` = 1 s (64 kB);
* speech buffer: under one segment at the input rate (1.5 s: at most 96 kB);
* ready segments: at most ``max_pending_segments`` = 4 at 16 kHz float32
  (4 x 96 kB = 384 kB; under overload the oldest is dropped and counted);
* spoof speech: the voiced speech not yet checked (while a check is running, the front
  end waits once a ``spoof_window_s`` window of it has piled up, so at most 4.04 s + one
  1 s frame) and the last window of checked speech as context: at most 581 kB at 16 kHz
  float32, 290 kB at 8 kHz;
* state: the call embedding, a ring of ``change_window_s / segment_s`` = 2 segment
  embeddings (192 floats each), the voiceprint, at most ``history_limit`` = 32
  revisions and the speech gate (under 2 kB): a few kB.

That is under 1.6 MB per session worst case, about 0.8 MB for 8 kHz G.711, and
``max_sessions`` (1000) live sessions cap the total. The cohort matrix is shared and not
counted. Sessions not fed for ``idle_timeout_s`` (120 s) are closed by the pool as if
``close()`` had been called (a PENDING call ends INCONCLUSIVE) and freed; frames fed while
paused count as activity (a long card payment), though they are discarded unheard.

Final statuses (:data:`FINAL`: ERROR, OPTED_OUT, NOT_ENROLLED) are never revised: a
segment or spoof verdict that comes back from the model afterwards is dropped.
``VoiceAuth.opt_out`` and ``VoiceAuth.delete`` end the customer's live calls at once
(OPTED_OUT, NOT_ENROLLED): their audio, evidence and voiceprint are dropped and
``on_decision`` gets the final result. An erasure this process cannot see (another
process, ``voiceauth purge``) is caught when the call would become AUTHENTICATED: the
store is read again first, and a missing voiceprint or an opt-out ends the call instead.
"""

from __future__ import annotations

import enum
import logging
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any, Union

import numpy as np

from voiceauth.audio import MODEL_RATE, SUPPORTED_RATES, Audio, Encoding, alaw_decode, mulaw_decode, resample
from voiceauth.errors import AudioDecodeError, SessionError
from voiceauth.results import Flag
from voiceauth.scoring import Normalisation
from voiceauth.speech import SpeechGate, frame_length
from voiceauth.store.base import AuditRecord

if TYPE_CHECKING:
    from voiceauth.services import Services
    from voiceauth.watchlist import Watchlist

log = logging.getLogger(__name__)

Chunk = Union[bytes, bytearray, memoryview, np.ndarray, Audio]


class CallStatus(str, enum.Enum):
    """Where a live call stands."""

    PENDING = "pending"
    """Not enough evidence yet; see ``CallResult.progress``."""
    AUTHENTICATED = "authenticated"
    """Confident accept: the agent can skip the security questions."""
    NOT_AUTHENTICATED = "not_authenticated"
    """Confident reject (or a withdrawn accept): ask the questions or step up."""
    INCONCLUSIVE = "inconclusive"
    """The call ended without enough speech for a decision."""
    NOT_ENROLLED = "not_enrolled"
    OPTED_OUT = "opted_out"
    ERROR = "error"
    """Processing failed; ``CallResult.error`` says why. Fall back to the questions."""


DECIDED = frozenset({CallStatus.AUTHENTICATED, CallStatus.NOT_AUTHENTICATED})


class _Spoof(enum.Enum):
    """Where a call's spoof check stands."""

    OFF = "off"
    WAITING = "waiting"
    """No check queued; the speech checked so far passed."""
    QUEUED = "queued"
    """A check is queued or running (it takes the unchecked speech when it runs)."""
    SUSPECTED = "suspected"
    FAILED = "failed"

FINAL = frozenset({CallStatus.NOT_ENROLLED, CallStatus.OPTED_OUT, CallStatus.ERROR})
"""Statuses a call never leaves: no audio is processed and no later result changes them."""
_SPOOF_ACTIVE = frozenset({_Spoof.WAITING, _Spoof.QUEUED})
"""Spoof states in which speech is still checked (nothing suspected, nothing failed)."""
_COVER_TOLERANCE_S = 0.01
"""Rounding slack when comparing checked speech with the evidence (speech_s is rounded to 10 ms)."""


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
    (higher is more like live speech; see :class:`~voiceauth.spoof.SpoofResult`); None
    until a check has run, or when it is off."""

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

    def __post_init__(self) -> None:
        positive = ("segment_s", "max_queued_s", "max_chunk_s", "idle_timeout_s", "reap_interval_s", "spoof_window_s")
        for name in positive:
            if not getattr(self, name) > 0:
                raise SessionError(f"SessionSettings.{name} must be positive, got {getattr(self, name)!r}")
        for name in ("max_pending_segments", "max_sessions", "workers", "batch_size", "history_limit"):
            if getattr(self, name) < 1:
                raise SessionError(f"SessionSettings.{name} must be at least 1, got {getattr(self, name)!r}")

    def margin_llr(self, normalisation: Normalisation) -> float:
        """The accept margin for a call scored with ``normalisation``."""
        return self.raw_accept_margin_llr if normalisation is Normalisation.RAW else self.accept_margin_llr

    @property
    def change_segments(self) -> int:
        return max(1, round(self.change_window_s / self.segment_s))


# -- screens: checks run on every update with the call's embeddings --------------------------


@dataclass(frozen=True)
class ScreenInput:
    """What a screen sees after each segment. Embeddings are unit length (or zero when absent)."""

    customer_id: str
    call_embedding: np.ndarray = field(repr=False)
    """All of the current evidence."""
    speech_s: float
    recent_embedding: np.ndarray = field(repr=False)
    """The last ``change_window_s`` of speech."""
    recent_s: float
    earlier_embedding: np.ndarray = field(repr=False)
    """The evidence before the recent window."""
    earlier_s: float


@dataclass(frozen=True)
class ScreenVerdict:
    """A screen's finding: a flag, and whether it withdraws (and bars) authentication."""

    flag: Flag
    withdraw: bool
    reason: str


Screen = Callable[[ScreenInput], Union[ScreenVerdict, None]]
"""A check run on a worker after every update; returns a verdict, or None when clean."""


def speaker_change_screen(threshold: float, min_earlier_s: float) -> Screen:
    """Flag SPEAKER_CHANGE when the recent speech stops matching the call's earlier speech."""

    def screen(data: ScreenInput) -> ScreenVerdict | None:
        if data.earlier_s < min_earlier_s or data.recent_s <= 0:
            return None
        similarity = float(data.recent_embedding @ data.earlier_embedding)
        if similarity >= threshold:
            return None
        return ScreenVerdict(
            Flag.SPEAKER_CHANGE, True,
            f"speaker change: last {data.recent_s:.1f} s match earlier speech at {similarity:.2f} < {threshold:.2f}",
        )

    return screen


def watchlist_screen(watchlist: Watchlist) -> Screen:
    """Flag FRAUDSTER_MATCH (and bar authentication) when the caller matches a watchlist entry."""

    def screen(data: ScreenInput) -> ScreenVerdict | None:
        hit = watchlist.screen(data.call_embedding, data.speech_s, data.customer_id)
        if hit is None:
            return None
        return ScreenVerdict(Flag.FRAUDSTER_MATCH, True, f"watchlist match {hit.label} (score {hit.score:.2f})")

    return screen


def default_screens(settings: SessionSettings, watchlist: Watchlist | None = None) -> tuple[Screen, ...]:
    screens: tuple[Screen, ...] = (speaker_change_screen(settings.change_threshold, settings.change_min_earlier_s),)
    return screens + ((watchlist_screen(watchlist),) if watchlist is not None else ())


# -- validation and decoding (cheap: feed() runs on the IVR thread) ---------------------------

_DTYPES = {
    Encoding.PCM16: np.dtype(np.int16),
    Encoding.MULAW: np.dtype(np.uint8),
    Encoding.ALAW: np.dtype(np.uint8),
    Encoding.FLOAT32: np.dtype(np.float32),
}


def _check_rate(sample_rate: int) -> int:
    if isinstance(sample_rate, bool) or not isinstance(sample_rate, (int, np.integer)) or (
        sample_rate not in SUPPORTED_RATES
    ):
        raise SessionError(f"unsupported sample rate {sample_rate!r} for a live call; use 8000 or 16000 Hz")
    return int(sample_rate)


def _parse_encoding(encoding: Encoding | str) -> Encoding:
    try:
        return Encoding.parse(encoding)
    except AudioDecodeError as exc:
        raise SessionError(str(exc)) from exc


def _unit(x: np.ndarray) -> np.ndarray:
    norm = float(np.linalg.norm(x))
    return (x / norm).astype(np.float32) if norm > 0 else np.zeros_like(x, dtype=np.float32)


def decode_chunk(payload: bytes | np.ndarray, encoding: Encoding) -> np.ndarray:
    """A validated chunk to float32 samples in [-1, 1]."""
    if isinstance(payload, bytes):
        if encoding is Encoding.MULAW:
            return mulaw_decode(payload)
        if encoding is Encoding.ALAW:
            return alaw_decode(payload)
        dtype = "<i2" if encoding is Encoding.PCM16 else "<f4"
        payload = np.frombuffer(payload, dtype=dtype)
    if payload.dtype == np.uint8:
        return mulaw_decode(payload) if encoding is Encoding.MULAW else alaw_decode(payload)
    if payload.dtype.kind == "i":
        return payload.astype(np.float32) / np.float32(32768.0)
    samples = payload.astype(np.float32, copy=False)
    if not np.isfinite(samples).all():
        raise AudioDecodeError("float32 frame contains NaN or infinite samples; check the IVR's audio path")
    return np.clip(samples, -1.0, 1.0)


@dataclass(frozen=True)
class _Segment:
    samples: np.ndarray = field(repr=False)
    """16 kHz float32 speech."""
    speech_s: float
    fed_at: float
    """Monotonic time the last chunk of this segment was fed (for decision latency)."""


@dataclass
class _Evidence:
    """The running call embedding and the ring of recent segment embeddings."""

    ring_size: int
    total: np.ndarray
    seconds: float = 0.0
    ring: deque[tuple[np.ndarray, float]] = field(default_factory=deque)

    def add(self, embedding: np.ndarray, seconds: float) -> None:
        self.total = self.total + embedding.astype(np.float64) * seconds
        self.seconds += seconds
        self.ring.append((embedding, seconds))
        while len(self.ring) > self.ring_size:
            self.ring.popleft()

    def restart_from_recent(self) -> None:
        self.total = sum((e.astype(np.float64) * s for e, s in self.ring), np.zeros_like(self.total))
        self.seconds = sum(s for _, s in self.ring)

    def screen_input(self, customer_id: str) -> ScreenInput:
        recent = sum((e.astype(np.float64) * s for e, s in self.ring), np.zeros_like(self.total))
        recent_s = sum(s for _, s in self.ring)
        return ScreenInput(
            customer_id, _unit(self.total), self.seconds, _unit(recent), recent_s,
            _unit(self.total - recent), max(self.seconds - recent_s, 0.0),
        )


class CallSession:
    """One live call. Made by ``VoiceAuth.start_call`` (or ``SessionPool.start_call``).

    ``feed``, ``pause``, ``resume``, ``close``, ``status`` and ``result`` are safe to call
    from the IVR thread; ``feed`` returns in microseconds. Feed one call from one thread.
    """

    def __init__(
        self,
        pool: SessionPool,
        customer_id: str,
        *,
        call_id: str,
        sample_rate: int,
        encoding: Encoding,
        voiceprint: np.ndarray | None,
        initial: CallStatus,
        error: str | None,
        on_decision: Callable[[CallResult], None] | None,
        on_update: Callable[[CallResult], None] | None,
        screens: Sequence[Screen],
    ) -> None:
        settings = pool.settings
        self.call_id = call_id
        self.customer_id = customer_id
        self.sample_rate = sample_rate
        self.encoding = encoding
        self._pool = pool
        self._settings = settings
        self._voiceprint = voiceprint
        self._on_decision = on_decision
        self._on_update = on_update
        self._screens = list(screens)
        """Screens still to run: one that has fired is not run again (no repeated audit events)."""
        self._started = time.monotonic()
        self._last_fed = self._started
        self._dtype = _DTYPES[encoding]
        self._width = encoding.sample_width
        self._max_chunk = int(settings.max_chunk_s * sample_rate)
        self._max_queued = int(settings.max_queued_s * sample_rate)
        # IVR side (written only by the feeding thread)
        self._inbox: deque[tuple[bytes | np.ndarray, int, float]] = deque()
        self._fed_samples = 0
        self._dropped_samples = 0
        self._paused = False
        self._closed = False
        self._discard = initial in FINAL
        self._close_reason = "call closed"
        self._scheduled = False
        # worker side
        self._front_lock = threading.Lock()
        self._consumed_samples = 0
        self._gate = SpeechGate(sample_rate)
        self._speech: list[np.ndarray] = []
        self._speech_len = 0
        self._segment_len = max(1, int(round(settings.segment_s * sample_rate)))
        self._lock = threading.Lock()
        self._segments: deque[_Segment] = deque()
        self._in_flight = False
        self._queued_for_embedding = False
        self._flushed = False
        self._dropped_speech_s = 0.0
        self._evidence = _Evidence(settings.change_segments, np.zeros(pool.dim, dtype=np.float64))
        self._decision_s = max(settings.min_decision_s, pool.services.policy.min_speech_s)
        # spoof check: the voiced speech (input rate) not yet checked, in order; under _lock
        self._spoof = pool.services.spoof if settings.spoof_check else None
        self._spoof_state = _Spoof.WAITING if self._spoof is not None and not self._discard else _Spoof.OFF
        frame = frame_length(sample_rate)  # whole gate frames, so the check sees the gate's frame grid
        self._spoof_len = max(1, -(-int(round(settings.spoof_window_s * sample_rate)) // frame)) * frame
        self._spoof_new: list[np.ndarray] = []
        self._spoof_new_len = 0
        self._spoof_tail = np.zeros(0, dtype=np.float32)
        """The last window of speech already taken by a check: context for a short new piece."""
        self._spoof_heard = 0
        """Voiced samples heard so far (the evidence's segments are cut from them, in order)."""
        self._spoof_taken = 0
        """Voiced samples taken by checks so far..."""
        self._spoof_checked = 0
        """...and those that passed: a prefix of the call's speech."""
        self._spoof_wanted = False
        """A matching voice waits for its speech to be checked."""
        self._spoof_gap = False
        """Speech was heard and not kept (after AUTHENTICATED or a bar): no later coverage."""
        self._spoof_queued_at = 0.0
        self._spoof_score: float | None = None
        self._last_score: tuple[float, Normalisation] | None = None
        """LLR and normalisation of the latest update, to decide again when the spoof verdict comes."""
        self._barred = False
        self._flags: dict[Flag, None] = {}
        self._history: deque[Revision] = deque(maxlen=settings.history_limit)
        self._done = threading.Event()
        self._result = CallResult(
            call_id, customer_id, initial, 0.0, 0.0, 0.0, self._decision_s, 0.0, error=error,
            closed=self._discard,
        )
        if initial is not CallStatus.PENDING:
            self._history.append(Revision(0.0, 0.0, initial, error or initial.value))
            self._result = replace(self._result, revisions=tuple(self._history), revision_count=1)
        if self._discard:
            self._done.set()

    # -- IVR-thread API --------------------------------------------------------------------
    @property
    def status(self) -> CallStatus:
        return self._result.status

    @property
    def paused(self) -> bool:
        return self._paused

    @property
    def closed(self) -> bool:
        """True once ``close()`` was called (or the pool expired the call)."""
        return self._closed

    def result(self, wait: float | None = None) -> CallResult:
        """The current state; with ``wait``, first wait up to that many seconds for the call to finish
        processing (after ``close()``)."""
        if wait is not None:
            self._done.wait(wait)
        return self._result

    def feed(self, chunk: Chunk, *, sample_rate: int | None = None) -> None:
        """Queue one IVR frame (bytes in the session's encoding, or a numpy array of its dtype).

        Returns at once; never decodes, never waits for a worker. While paused the frame is
        dropped unseen (it still counts as activity for ``idle_timeout_s``), as is every frame
        once the call has reached a final status. Raises SessionError for a closed call or a
        malformed frame.
        """
        if self._closed:
            raise SessionError(
                f"call {self.call_id} is closed (status {self._result.status.value}); start a new call to feed audio"
            )
        if sample_rate is not None and sample_rate != self.sample_rate:
            raise SessionError(
                f"frame at {sample_rate} Hz fed to call {self.call_id} opened at {self.sample_rate} Hz; "
                "resample it or open the call with the right sample_rate"
            )
        payload, count = self._validated(chunk)
        now = time.monotonic()
        self._last_fed = now  # a paused call fed frames is alive (a long card payment), not idle
        if self._paused or self._discard or self._result.status in FINAL:
            return  # paused: dropped unseen; not enrolled, opted out, erased or failed: never processed
        if count == 0:
            return
        self._make_room(count)
        self._inbox.append((payload, count, now))
        self._fed_samples += count
        if not self._scheduled:
            self._scheduled = True
            self._pool._schedule_front(self)

    def pause(self) -> None:
        """Stop listening (card numbers, PINs): frames fed until ``resume()`` are discarded unseen."""
        self._paused = True

    def resume(self) -> None:
        self._paused = False
        self._last_fed = time.monotonic()

    def close(self) -> None:
        """End the call. Returns at once; queued speech is still processed, then a PENDING call
        becomes INCONCLUSIVE. Use ``result(wait=...)`` for the final state. Idempotent."""
        self._close("call closed")

    def __enter__(self) -> CallSession:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        r = self._result
        return f"CallSession({self.call_id!r}, {self.customer_id!r}, {r.status.value}, speech {r.speech_s:.1f} s)"

    # -- feed helpers (O(1) in the call length) ------------------------------------------------
    def _validated(self, chunk: Chunk) -> tuple[bytes | np.ndarray, int]:
        if isinstance(chunk, (bytes, bytearray, memoryview)):
            data = bytes(chunk)
            if len(data) % self._width:
                raise SessionError(
                    f"{len(data)} bytes is not a whole number of {self.encoding.value} samples "
                    f"({self._width} bytes each); check the declared encoding and that frames are not cut mid-sample"
                )
            payload: bytes | np.ndarray = data
            count = len(data) // self._width
        elif isinstance(chunk, Audio):
            if chunk.sample_rate != self.sample_rate:
                raise SessionError(
                    f"Audio at {chunk.sample_rate} Hz fed to call {self.call_id} opened at {self.sample_rate} Hz; "
                    "resample it or open the call with the right sample_rate"
                )
            payload = np.array(chunk.samples, dtype=np.float32)
            count = len(payload)
        elif isinstance(chunk, np.ndarray):
            if chunk.ndim != 1 or chunk.dtype != self._dtype:
                raise SessionError(
                    f"call {self.call_id} takes 1-D {self._dtype} frames for {self.encoding.value} "
                    f"(got {chunk.ndim}-D {chunk.dtype}); convert the frame or open the call with the right encoding"
                )
            payload = chunk.copy()
            count = len(chunk)
        else:
            raise SessionError(
                f"feed() takes bytes or a numpy array, got {type(chunk).__name__}; pass the raw IVR frame"
            )
        if count > self._max_chunk:
            raise SessionError(
                f"frame of {count} samples is longer than {self._settings.max_chunk_s:g} s; "
                "feed the audio in IVR-sized frames (e.g. 20 ms)"
            )
        return payload, count

    def _make_room(self, count: int) -> None:
        """Drop the oldest queued frames when the workers have fallen ``max_queued_s`` behind."""
        while self._inbox and self._fed_samples - self._consumed_samples - self._dropped_samples + count > (
            self._max_queued
        ):
            try:
                _, old, _ = self._inbox.popleft()
            except IndexError:
                break
            self._dropped_samples += old

    def _close(self, reason: str) -> None:
        if self._closed:
            return
        self._closed = True
        self._close_reason = reason
        if not self._discard:
            self._pool._schedule_front(self)

    # -- worker side -----------------------------------------------------------------------------
    def _drain(self) -> bool:
        """Front end: decode, gate, cut segments. Returns True when segments are ready."""
        with self._front_lock:
            self._scheduled = False
            if self._discard:  # cancelled: a frame fed meanwhile is dropped unheard
                self._inbox.clear()
                return False
            while not self._spoof_backlogged():
                try:
                    payload, count, fed_at = self._inbox.popleft()
                except IndexError:
                    break
                self._consumed_samples += count
                samples = decode_chunk(payload, self.encoding)
                voiced = self._gate.push(samples)
                if len(voiced):
                    self._hear(voiced)  # before _buffer: no segment holds speech the check has not heard
                    self._buffer(voiced, fed_at)
            if self._closed and not self._flushed and not self._inbox:
                self._flushed = True
                self._flush()
            self._queue_spoof_if_due(schedule=True)
        with self._lock:
            ready = bool(self._segments) and not self._in_flight and not self._queued_for_embedding
            if ready:
                self._queued_for_embedding = True
            return ready

    def _hear(self, voiced: np.ndarray) -> None:
        """Keep voiced speech for the spoof check (only speech: the gate has cut the pauses)."""
        if self._spoof_state not in _SPOOF_ACTIVE or self._spoof_gap:
            return
        with self._lock:
            if self._barred or self._result.status is CallStatus.AUTHENTICATED:
                self._spoof_gap = True  # decided: later speech is not checked (see the module docs)
                self._drop_spoof_audio()
                return
            self._spoof_new.append(voiced)
            self._spoof_new_len += len(voiced)
            self._spoof_heard += len(voiced)

    def _spoof_backlogged(self) -> bool:
        """A check is running and a window of new speech is already waiting: the front end
        waits for it (its input queue drops the oldest audio under overload, as always),
        so no speech is ever left unchecked and the memory stays bounded."""
        return self._spoof_state is _Spoof.QUEUED and self._spoof_new_len >= self._spoof_len

    def _spoof_due(self) -> bool:
        """Should a check be queued now? (caller holds ``_lock``)"""
        if (self._spoof_state is not _Spoof.WAITING or self._spoof_gap or self._spoof_new_len == 0
                or self._barred or self._result.status is CallStatus.AUTHENTICATED or self._done.is_set()):
            return False
        if self._spoof_taken == 0:  # the first check: once there is enough speech for a decision
            return self._spoof_heard >= self._decision_s * self.sample_rate
        return self._spoof_wanted or self._spoof_new_len >= self._spoof_len

    def _queue_spoof_if_due(self, schedule: bool = False) -> list[Callable[[], None]]:
        """Queue a check when one is due; returns the scheduling callback (or schedules it now)."""
        with self._lock:
            if not self._spoof_due():
                return []
            self._spoof_state = _Spoof.QUEUED
            self._spoof_queued_at = time.monotonic()
        if schedule:
            self._pool._schedule_spoof(self)
            return []
        return [lambda: self._pool._schedule_spoof(self)]

    def _take_spoof_audio(self) -> tuple[np.ndarray | None, float]:
        """The speech heard since the last check (at least one window of it, with the speech
        just before when it is shorter), when the check runs."""
        with self._lock:
            if self._result.status in FINAL or self._done.is_set() or not self._spoof_new:
                self._spoof_state = _Spoof.FAILED
                return None, 0.0
            new = np.concatenate(self._spoof_new)
            context = self._spoof_tail[len(self._spoof_tail) - max(0, self._spoof_len - len(new)) :]
            self._spoof_tail = np.concatenate((self._spoof_tail, new))[-self._spoof_len :]
            self._spoof_new, self._spoof_new_len = [], 0
            self._spoof_taken = self._spoof_heard
            self._spoof_wanted = False
            return np.concatenate((context, new)), self._spoof_queued_at

    def _spoof_covers(self, speech_s: float) -> bool:
        """Has all the speech behind an evidence of ``speech_s`` passed the spoof check?
        (Segments dropped under overload are counted: the evidence then reaches further.)"""
        if self._spoof_state is _Spoof.OFF:
            return True
        if self._spoof_state not in _SPOOF_ACTIVE or self._spoof_gap:
            return False
        reach = speech_s + self._dropped_speech_s - _COVER_TOLERANCE_S
        return self._spoof_checked >= reach * self.sample_rate

    def _drop_spoof_audio(self) -> None:
        """Forget the call's speech kept for the spoof check (caller holds ``_lock``)."""
        self._spoof_new, self._spoof_new_len = [], 0
        self._spoof_tail = np.zeros(0, dtype=np.float32)

    def _apply_spoof(self, verdict: Any) -> list[Callable[[], None]]:
        """Install the spoof verdict: bar the call, or let a waiting accept through."""
        with self._lock:
            r = self._result
            if self._done.is_set() or r.status is CallStatus.ERROR:
                self._spoof_state = _Spoof.FAILED
                return []
            score = round(float(verdict.score), 3)
            self._spoof_score = score if self._spoof_score is None else min(self._spoof_score, score)
            if verdict.suspected:
                self._spoof_state = _Spoof.SUSPECTED
                self._flags[Flag.SPOOF_SUSPECTED] = None
                self._barred = True
                self._drop_spoof_audio()
                reason = (f"spoof suspected: bona fide score {verdict.score:.2f} < threshold "
                          f"{self._spoof.threshold:.2f}" if self._spoof is not None else "spoof suspected")
                return self._publish(CallStatus.NOT_AUTHENTICATED, reason, r.speech_s, r.llr, r.confidence)
            self._spoof_state = _Spoof.WAITING
            self._spoof_checked = self._spoof_taken
            status, why = r.status, ""
            if self._last_score is not None:
                llr, normalisation = self._last_score
                status, why = self._decide(llr, r.speech_s, normalisation)
            calls = self._publish(status, why and f"{why} (spoof check passed)", r.speech_s, r.llr, r.confidence)
        return calls + self._queue_spoof_if_due()

    def _buffer(self, voiced: np.ndarray, fed_at: float) -> None:
        self._speech.append(voiced)
        self._speech_len += len(voiced)
        if self._speech_len < self._segment_len:
            return
        speech = np.concatenate(self._speech)
        cut = (len(speech) // self._segment_len) * self._segment_len
        for start in range(0, cut, self._segment_len):
            self._push_segment(speech[start : start + self._segment_len], fed_at)
        rest = speech[cut:]
        self._speech = [rest] if len(rest) else []
        self._speech_len = len(rest)

    def _flush(self) -> None:
        if self._speech_len >= self._settings.min_flush_s * self.sample_rate:
            self._push_segment(np.concatenate(self._speech), time.monotonic())
        self._speech, self._speech_len = [], 0

    def _push_segment(self, speech: np.ndarray, fed_at: float) -> None:
        segment = _Segment(resample(speech, self.sample_rate, MODEL_RATE), len(speech) / self.sample_rate, fed_at)
        with self._lock:
            self._segments.append(segment)
            while len(self._segments) > self._settings.max_pending_segments:
                self._dropped_speech_s += self._segments.popleft().speech_s

    def _take_segment(self) -> _Segment | None:
        with self._lock:
            self._queued_for_embedding = False
            if self._in_flight or not self._segments or self._result.status in FINAL:
                return None
            self._in_flight = True
            return self._segments.popleft()

    def _segment_done(self) -> tuple[bool, bool]:
        """After an update: (more segments ready, call ready to finish)."""
        with self._lock:
            self._in_flight = False
            more = bool(self._segments) and self._result.status not in FINAL
            if more:
                self._queued_for_embedding = True
            return more, self._finishable()

    def _finishable(self) -> bool:
        failed = self._result.status in FINAL
        return (
            self._closed and self._flushed and not self._in_flight and not self._inbox
            and (not self._segments or failed)
            and (self._spoof_state is not _Spoof.QUEUED or failed)
            and not self._done.is_set()
        )

    def _ready_to_finish(self) -> bool:
        with self._lock:
            return self._finishable()

    def _apply(self, segment: _Segment, embedding: np.ndarray) -> list[Callable[[], None]]:
        """Fold one segment embedding into the evidence, score, screen and decide.

        Returns the callbacks to run (outside the locks)."""
        sv = self._pool.services
        with self._lock:
            if self._result.status in FINAL or self._done.is_set():
                return []  # failed, erased or finished while the segment was in the model
            evidence = self._evidence
            evidence.add(np.asarray(embedding, dtype=np.float32), segment.speech_s)
            data = evidence.screen_input(self.customer_id)
            verdicts = []
            for screen in tuple(self._screens):
                verdict = screen(data)
                if verdict is not None:
                    verdicts.append(verdict)
                    self._screens.remove(screen)  # it has fired: its flag stays for the rest of the call
            reason = ""
            for verdict in verdicts:
                self._flags[verdict.flag] = None
                if verdict.withdraw and not self._barred:
                    self._barred = True
                    reason = verdict.reason
                    evidence.restart_from_recent()
            speech_s = self._result.speech_s + segment.speech_s
            assert self._voiceprint is not None
            call_embedding = _unit(evidence.total)
            score = sv.scorer.score(
                self._voiceprint, call_embedding, evidence.seconds, sv.cohort_matrix(exclude=self.customer_id)
            )
            if score.normalisation is Normalisation.RAW:
                self._flags[Flag.SMALL_COHORT] = None
            self._last_score = (score.llr, score.normalisation)
            status, why = self._decide(score.llr, speech_s, score.normalisation)
            calls = self._publish(status, reason or why, speech_s, score.llr, score.confidence)
        return calls + self._queue_spoof_if_due()

    def _decide(self, llr: float, speech_s: float, normalisation: Normalisation) -> tuple[CallStatus, str]:
        settings = self._settings
        current = self._result.status
        thresholds = self._pool.services.scorer.thresholds(normalisation)
        accept = thresholds.accept_llr + settings.margin_llr(normalisation)
        if self._barred:
            return CallStatus.NOT_AUTHENTICATED, "authentication withdrawn"
        if speech_s < self._decision_s:
            return current, ""
        if llr >= accept:
            if not self._spoof_covers(speech_s):  # never AUTHENTICATED on speech the check has not passed
                self._spoof_wanted = current is not CallStatus.AUTHENTICATED
                return current, ""
            return CallStatus.AUTHENTICATED, f"LLR {llr:.2f} >= accept {accept:.2f}"
        if llr < thresholds.reject_llr:
            return CallStatus.NOT_AUTHENTICATED, f"LLR {llr:.2f} < reject {thresholds.reject_llr:.2f}"
        return current, ""

    def _publish(
        self, status: CallStatus, reason: str, speech_s: float, llr: float, confidence: float,
        error: str | None = None, closed: bool = False,
    ) -> list[Callable[[], None]]:
        """Install a new snapshot (caller holds ``_lock``); returns the callbacks it triggers.

        A final status never changes, and nothing does once the call has finished. A status
        change is on record before anyone can see it (:meth:`_record`)."""
        old = self._result
        if self._done.is_set() or (old.status in FINAL and status is not old.status):
            return []
        if status is not old.status:
            status, reason, error = self._record(status, reason, speech_s, llr, error)
        if status in FINAL:
            self._segments.clear()
            self._drop_spoof_audio()
        changed = status is not old.status
        decided_at = old.decided_at_speech_s
        if changed:
            self._history.append(Revision(round(time.monotonic() - self._started, 3), round(speech_s, 2), status,
                                          reason or status.value))
            decided_at = round(speech_s, 2) if status in DECIDED else None
        required = old.required_s
        self._result = CallResult(
            self.call_id, self.customer_id, status, round(confidence, 4), round(llr, 3), round(speech_s, 2),
            required, round(speech_percent(speech_s, required), 1),
            tuple(self._flags), tuple(self._history), old.revision_count + int(changed), error or old.error,
            decided_at, closed,
            round((self._dropped_samples / self.sample_rate) + self._dropped_speech_s, 2),
            self._spoof_score,
        )
        result = self._result
        calls: list[Callable[[], None]] = []
        if changed and self._on_decision is not None:
            calls.append(lambda cb=self._on_decision: cb(result))
        if self._on_update is not None:
            calls.append(lambda cb=self._on_update: cb(result))
        return calls

    def _record(
        self, status: CallStatus, reason: str, speech_s: float, llr: float, error: str | None
    ) -> tuple[CallStatus, str, str | None]:
        """Before a status change is published (caller holds ``_lock``): check the store before
        AUTHENTICATED (the voiceprint may have been erased elsewhere, e.g. purged by the CLI),
        then write the call_decision event. Returns the status to publish: ERROR when either
        fails (fail closed: no decision that is not on record)."""
        pool = self._pool
        try:
            if status is CallStatus.AUTHENTICATED and (erased := pool._erased(self.customer_id)) is not None:
                status, reason = erased
            pool._audit(self._event(status, speech_s, llr))
            return status, reason, error
        except Exception as exc:  # noqa: BLE001 - any store failure ends the call in ERROR
            log.exception("live call %s: recording the %s decision failed", self.call_id, status.value)
            if status is CallStatus.ERROR:
                return status, reason, error
            message = _error_message("recording the call's decision in the audit trail", exc)
            try:
                pool._audit(self._event(CallStatus.ERROR, speech_s, llr))
            except Exception:  # noqa: BLE001
                log.exception("live call %s: the audit trail cannot record the error either", self.call_id)
            return CallStatus.ERROR, message, error or message

    def _event(self, status: CallStatus, speech_s: float, llr: float) -> CallResult:
        """What the call_decision event records (caller holds ``_lock``)."""
        return replace(self._result, status=status, speech_s=round(speech_s, 2), llr=round(llr, 3),
                       flags=tuple(self._flags))

    def _spoof_failed(self) -> None:
        """The spoof check failed or could not run: the call can no longer be authenticated."""
        with self._lock:
            if self._spoof_state in (_Spoof.WAITING, _Spoof.QUEUED):
                self._spoof_state = _Spoof.FAILED

    def _fail(self, message: str) -> list[Callable[[], None]]:
        with self._lock:
            self._segments.clear()
            self._inbox.clear()
            self._speech, self._speech_len = [], 0
            self._drop_spoof_audio()
            r = self._result
            return self._publish(CallStatus.ERROR, message, r.speech_s, r.llr, r.confidence, error=message)

    def _finish(self) -> list[Callable[[], None]]:
        """The call ended and everything fed has been processed: settle the final status."""
        with self._lock:
            if self._done.is_set():
                return []
            r = self._result
            status = CallStatus.INCONCLUSIVE if r.status is CallStatus.PENDING else r.status
            calls = self._publish(status, f"{self._close_reason} with {r.speech_s:.1f} s of speech", r.speech_s, r.llr,
                                  r.confidence, closed=True)
            self._release()
            return calls

    def _cancel(self, status: CallStatus, reason: str) -> list[Callable[[], None]]:
        """End the call at once (the customer's voiceprint was erased): drop its audio, evidence
        and voiceprint, and settle on ``status`` (a call that already failed stays ERROR)."""
        with self._front_lock, self._lock:
            if self._done.is_set():
                return []
            self._discard = True
            self._inbox.clear()
            self._speech, self._speech_len = [], 0
            r = self._result
            final = r.status if r.status in FINAL else status
            calls = self._publish(final, reason, r.speech_s, r.llr, r.confidence, closed=True)
            self._release()
            return calls

    def _release(self) -> None:
        """The call is over: drop what it still holds and mark it finished (caller holds ``_lock``)."""
        self._evidence.ring.clear()
        self._voiceprint = None
        self._drop_spoof_audio()
        self._segments.clear()
        self._done.set()


class SessionPool:
    """Worker threads shared by all live calls of one ``VoiceAuth``.

    Work is picked in this order: callbacks for calls decided at start, front ends of
    calls with queued audio, then model work, one call at a time: whichever waited
    longer of a batch of up to ``batch_size`` ready segments from different calls
    (embedded together) and a call's spoof check.
    """

    def __init__(self, services: Services, settings: SessionSettings | None = None, *,
                 watchlist: Watchlist | None = None) -> None:
        self.services = services
        self.settings = settings or SessionSettings()
        self.watchlist = watchlist
        """Screened by every call (unless ``start_call`` is given its own screens)."""
        self.dim = int(getattr(services.embedder, "dim", 192))
        self._cond = threading.Condition()
        self._front: deque[CallSession] = deque()
        self._embed: deque[tuple[float, CallSession]] = deque()
        self._spoof: deque[tuple[float, CallSession]] = deque()
        self._model_busy = False
        """One model call (a batch of embeddings or a spoof check) runs at a time, with all of
        torch's threads: two side by side would oversubscribe the cores. Segments that wait
        meanwhile join a larger batch."""
        self._tasks: deque[Callable[[], None]] = deque()
        self._sessions: dict[str, CallSession] = {}
        self._threads: list[threading.Thread] = []
        self._stopping = False
        self._next_reap = 0.0
        self._latencies: deque[tuple[float, float]] = deque(maxlen=10000)
        self._batches: deque[int] = deque(maxlen=10000)
        self._spoof_latencies: deque[tuple[float, float]] = deque(maxlen=10000)

    # -- public --------------------------------------------------------------------------------
    def start_call(
        self,
        customer_id: str,
        *,
        sample_rate: int = 8000,
        encoding: Encoding | str = "mulaw",
        on_decision: Callable[[CallResult], None] | None = None,
        on_update: Callable[[CallResult], None] | None = None,
        call_id: str | None = None,
        screens: Sequence[Screen] | None = None,
    ) -> CallSession:
        """Open a live call for ``customer_id``; see :meth:`VoiceAuth.start_call`."""
        if self._stopping:
            raise SessionError("the session pool is closed; open a new VoiceAuth to take calls")
        rate = _check_rate(sample_rate)
        enc = _parse_encoding(encoding)
        voiceprint, initial, error = self._lookup(customer_id)
        session = CallSession(
            self, customer_id, call_id=call_id or f"call-{uuid.uuid4().hex[:12]}", sample_rate=rate, encoding=enc,
            voiceprint=voiceprint, initial=initial, error=error, on_decision=on_decision, on_update=on_update,
            screens=default_screens(self.settings, self.watchlist) if screens is None else screens,
        )
        if initial is not CallStatus.PENDING:
            result = session._result
            later = [lambda cb=cb: cb(result) for cb in (on_decision, on_update) if cb is not None]
            self._run_later([lambda: self._audit(result), *later])  # on record before anyone is told
            return session
        self._register(session)
        return session

    @property
    def live(self) -> int:
        """Calls holding resources (open, or closed with work left)."""
        with self._cond:
            return len(self._sessions)

    def decision_latencies(self, since: float | None = None) -> np.ndarray:
        """Seconds from feeding the last frame of a segment to its update being published
        (recent updates; with ``since``, those published at or after that ``time.monotonic()``)."""
        return _since(self._latencies, since)

    def batch_sizes(self) -> np.ndarray:
        return np.array(self._batches, dtype=np.int64)

    def spoof_latencies(self, since: float | None = None) -> np.ndarray:
        """Seconds from queueing a call's spoof check to its verdict being published (recent calls)."""
        return _since(self._spoof_latencies, since)

    def cancel_customer(self, customer_id: str, status: CallStatus, reason: str) -> int:
        """End ``customer_id``'s live calls at once (opt-out, erasure); returns how many.

        Each call drops its audio, evidence and voiceprint and ends on ``status`` (one of
        :data:`FINAL`); a segment still in the model is discarded when it comes back.
        ``on_decision`` gets the final result on a worker thread."""
        if status not in FINAL:
            raise SessionError(f"a cancelled call must end on one of {sorted(s.value for s in FINAL)}, not {status}")
        with self._cond:
            sessions = [s for s in self._sessions.values() if s.customer_id == customer_id]
        for session in sessions:
            calls = session._cancel(status, reason)
            with self._cond:
                self._sessions.pop(session.call_id, None)
            self._run_later(calls)
        return len(sessions)

    def expire_stale(self, now: float | None = None) -> int:
        """Close calls not fed for ``idle_timeout_s``; returns how many."""
        now = time.monotonic() if now is None else now
        with self._cond:
            stale = [s for s in self._sessions.values()
                     if not s.closed and now - s._last_fed > self.settings.idle_timeout_s]
        for session in stale:
            session._close(f"expired after {self.settings.idle_timeout_s:g} s without audio")
        return len(stale)

    def close(self, timeout: float = 5.0) -> None:
        """Close every call, let the workers finish what was queued, and stop them."""
        with self._cond:
            sessions = list(self._sessions.values())
        for session in sessions:
            session._close("service shutting down")
        deadline = time.monotonic() + timeout
        for session in sessions:
            session._done.wait(max(0.0, deadline - time.monotonic()))
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        for thread in self._threads:
            thread.join(max(0.0, deadline - time.monotonic()))

    # -- setup ---------------------------------------------------------------------------------
    def _lookup(self, customer_id: str) -> tuple[np.ndarray | None, CallStatus, str | None]:
        from voiceauth.errors import NotEnrolledError

        sv = self.services
        if sv.store.is_opted_out(customer_id):
            return None, CallStatus.OPTED_OUT, None
        try:
            voiceprint = sv.load_voiceprint(customer_id)
        except NotEnrolledError as exc:
            return None, CallStatus.NOT_ENROLLED, str(exc)
        return np.asarray(voiceprint.embedding, dtype=np.float32), CallStatus.PENDING, None

    def _register(self, session: CallSession) -> None:
        with self._cond:
            full = len(self._sessions) >= self.settings.max_sessions
        if full:
            self.expire_stale()
        with self._cond:
            if len(self._sessions) >= self.settings.max_sessions:
                raise SessionError(
                    f"{len(self._sessions)} live calls already (max_sessions={self.settings.max_sessions}); "
                    "close finished calls (use `with va.start_call(...)`) or raise SessionSettings.max_sessions"
                )
            if session.call_id in self._sessions:
                raise SessionError(f"call id {session.call_id!r} is already live; pass a unique call_id")
            self._sessions[session.call_id] = session
            self._start_workers()

    def _start_workers(self) -> None:
        """Start the workers on first use (caller holds ``_cond``)."""
        if self._threads:
            return
        self._tasks.append(self._warm_up)
        for index in range(self.settings.workers):
            thread = threading.Thread(target=self._work, name=f"voiceauth-session-{index}", daemon=True)
            thread.start()
            self._threads.append(thread)

    def _warm_up(self) -> None:
        """Place the policy thresholds before the first call needs them (imports scipy.stats)."""
        scorer = self.services.scorer
        for normalisation in scorer.calibrations.by_normalisation:
            scorer.thresholds(normalisation)

    def _run_later(self, callbacks: Sequence[Callable[[], None]]) -> None:
        with self._cond:
            self._start_workers()
            self._tasks.append(lambda: _run_callbacks(callbacks))
            self._cond.notify()

    # -- scheduling ------------------------------------------------------------------------------
    def _schedule_front(self, session: CallSession) -> None:
        with self._cond:
            self._front.append(session)
            self._cond.notify()

    def _schedule_embedding(self, session: CallSession) -> None:
        with self._cond:
            self._embed.append((time.monotonic(), session))
            self._cond.notify()

    def _schedule_spoof(self, session: CallSession) -> None:
        with self._cond:
            self._spoof.append((time.monotonic(), session))
            self._cond.notify()

    def _release_model(self) -> None:
        with self._cond:
            self._model_busy = False
            self._cond.notify_all()

    def _next_job(self) -> tuple[str, Any] | None:
        """Wait for work; returns (kind, payload), or None when stopping."""
        with self._cond:
            while True:
                if self._tasks:
                    return "task", self._tasks.popleft()
                if self._front:
                    return "front", self._front.popleft()
                if (self._embed or self._spoof) and not self._model_busy:
                    self._model_busy = True  # oldest waiting work first: segments or a spoof check
                    if self._embed and (not self._spoof or self._embed[0][0] <= self._spoof[0][0]):
                        count = min(self.settings.batch_size, len(self._embed))
                        return "embed", [self._embed.popleft()[1] for _ in range(count)]
                    return "spoof", self._spoof.popleft()[1]
                if self._stopping:
                    return None
                now = time.monotonic()
                if now >= self._next_reap:
                    self._next_reap = now + self.settings.reap_interval_s
                    return "reap", None
                self._cond.wait(max(0.0, self._next_reap - now))

    def _work(self) -> None:
        while (job := self._next_job()) is not None:
            try:
                self._run_job(*job)
            except Exception:  # noqa: BLE001 - a worker must outlive any bug in one job
                log.exception("live call worker: job %s failed", job[0])

    def _run_job(self, kind: str, payload: Any) -> None:
        if kind == "task":
            _run_callbacks([payload])
        elif kind == "front":
            self._front_end(payload)
        elif kind == "embed":
            self._embed_batch(payload)
        elif kind == "spoof":
            self._spoof_check(payload)
        else:
            self.expire_stale()

    def _front_end(self, session: CallSession) -> None:
        try:
            ready = session._drain()
        except Exception as exc:  # noqa: BLE001 - any failure must surface in the call, not kill the worker
            log.exception("live call %s: front end failed", session.call_id)
            _run_callbacks(session._fail(_error_message("decoding the call audio", exc)))
            ready = False
        if ready:
            self._schedule_embedding(session)
        self._maybe_finish(session)

    def _embed_batch(self, sessions: list[CallSession]) -> None:
        try:
            taken = [(s, seg) for s in sessions if (seg := s._take_segment()) is not None]
            if taken:
                self._batches.append(len(taken))
                embeddings = self._embed_all([seg.samples for _, seg in taken], [s for s, _ in taken])
        finally:
            self._release_model()
        if not taken:
            for session in sessions:
                self._maybe_finish(session)
            return
        for (session, segment), embedding in zip(taken, embeddings, strict=True):
            callbacks: list[Callable[[], None]] = []
            if embedding is not None:
                try:
                    callbacks = session._apply(segment, embedding)
                    now = time.monotonic()
                    self._latencies.append((now, now - segment.fed_at))
                except Exception as exc:  # noqa: BLE001
                    log.exception("live call %s: scoring failed", session.call_id)
                    callbacks = session._fail(_error_message("scoring the call", exc))
            more, _ = session._segment_done()
            _run_callbacks(callbacks)
            if more:
                self._schedule_embedding(session)
            self._maybe_finish(session)

    def _spoof_check(self, session: CallSession) -> None:
        """Run the presentation-attack detector on the call's speech not yet checked."""
        verdict: Any = None
        error: Exception | None = None
        try:
            audio, queued_at = session._take_spoof_audio()
            if audio is not None and session._spoof is not None:
                try:
                    verdict = session._spoof.score_speech(audio, session.sample_rate)
                except Exception as exc:  # noqa: BLE001 - reported below, once the model slot is free
                    error = exc
        finally:
            self._release_model()
        callbacks: list[Callable[[], None]] = []
        if verdict is None:  # failed or could not run: fail closed, the call cannot be authenticated
            session._spoof_failed()
        if error is not None:
            log.error("live call %s: spoof check failed", session.call_id, exc_info=error)
            callbacks = session._fail(_error_message("the spoof check", error))
        elif verdict is not None:
            callbacks = session._apply_spoof(verdict)
            now = time.monotonic()
            self._spoof_latencies.append((now, now - queued_at))
        _run_callbacks(callbacks)
        if session._inbox or (session._closed and not session._flushed):
            self._schedule_front(session)  # its front end may have waited for this check
        self._maybe_finish(session)

    def _embed_all(self, signals: list[np.ndarray], owners: list[CallSession]) -> list[np.ndarray | None]:
        """One embed call for the batch; on failure, one call per segment so only the bad call fails."""
        try:
            return list(self.services.embedder.embed(signals))
        except Exception:  # noqa: BLE001
            return [self._embed_alone(sig, owner) for sig, owner in zip(signals, owners, strict=True)]

    def _embed_alone(self, signal: np.ndarray, owner: CallSession) -> np.ndarray | None:
        try:
            return np.asarray(self.services.embedder.embed([signal]))[0]
        except Exception as exc:  # noqa: BLE001
            log.exception("live call %s: embedding failed", owner.call_id)
            _run_callbacks(owner._fail(_error_message("embedding the caller's speech", exc)))
            return None

    def _maybe_finish(self, session: CallSession) -> None:
        if not session._ready_to_finish():
            return
        with self._cond:
            self._sessions.pop(session.call_id, None)
        _run_callbacks(session._finish())

    def _audit(self, result: CallResult) -> None:
        """Write the call_decision event; raises when the store cannot (callers fail closed)."""
        sv = self.services
        sv.store.audit(AuditRecord(
            "call_decision", result.customer_id, result.status.value, sv.actor,
            {"call_id": result.call_id, "speech_s": result.speech_s, "llr": result.llr,
             "flags": ",".join(f.value for f in result.flags)},
        ))

    def _erased(self, customer_id: str) -> tuple[CallStatus, str] | None:
        """(final status, reason) when the customer opted out or lost their voiceprint since the
        call started; None while they are still enrolled."""
        _, status, error = self._lookup(customer_id)
        if status is CallStatus.PENDING:
            return None
        return status, f"voiceprint erased during the call: {error or 'the customer opted out'}"


def _since(samples: deque[tuple[float, float]], since: float | None) -> np.ndarray:
    return np.array([value for at, value in list(samples) if since is None or at >= since], dtype=np.float64)


def _error_message(what: str, exc: BaseException) -> str:
    return (
        f"{what} failed ({type(exc).__name__}: {exc}); the call cannot be authenticated by voice, "
        "fall back to the security questions and check the service logs"
    )


def _run_callbacks(callbacks: Sequence[Callable[[], None]]) -> None:
    for callback in callbacks:
        try:
            callback()
        except Exception:  # noqa: BLE001 - a user callback must never kill a worker
            log.exception("live call callback raised")


def speech_percent(speech_s: float, required_s: float) -> float:
    """Progress towards the first decision, in percent."""
    return 100.0 if required_s <= 0 else min(100.0, 100.0 * speech_s / required_s)


__all__ = [
    "CallResult",
    "CallSession",
    "CallStatus",
    "Revision",
    "Screen",
    "ScreenInput",
    "ScreenVerdict",
    "SessionPool",
    "SessionSettings",
    "default_screens",
    "speaker_change_screen",
]
