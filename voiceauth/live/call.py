"""One live call: ``feed`` on the IVR thread, everything else on the pool's workers."""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import replace
from typing import Any

import numpy as np

from voiceauth.audio.decode import Encoding
from voiceauth.decision import DECIDED, FINAL, CallStatus, decide_call, within_reach
from voiceauth.errors import SessionError
from voiceauth.live.evidence import CallTrajectory, Evidence, Segment, Segmenter, ShadowSpeech, Thinning, unit
from voiceauth.live.frames import BATCH_S, FrameFormat, Queued, decode_batch, take_batch, validate_chunk
from voiceauth.live.screens import Screen, run_screens
from voiceauth.live.spoof_track import SpoofState, SpoofTrack
from voiceauth.live.state import CallResult, Chunk, Host, Revision, speech_percent
from voiceauth.results import Flag
from voiceauth.scoring.normalisation import Normalisation
from voiceauth.speech.activity import SpeechGate, frame_length

log = logging.getLogger(__name__)


class CallSession:
    """One live call. Made by ``VoiceAuth.start_call`` (or ``SessionPool.start_call``).

    ``feed``, ``pause``, ``resume``, ``close``, ``status`` and ``result`` are safe to call
    from the IVR thread; ``feed`` returns in microseconds. Feed one call from one thread.
    """

    channel_tag = ""
    """The channel tag the pool set (its calibration scores the call)."""

    def __init__(
        self, pool: Host, customer_id: str, *, call_id: str, sample_rate: int, encoding: Encoding,
        voiceprint: np.ndarray | None, initial: CallStatus, error: str | None,
        on_decision: Callable[[CallResult], None] | None, on_update: Callable[[CallResult], None] | None,
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
        self._format = FrameFormat(encoding, sample_rate, settings.max_chunk_s)
        self._max_queued, self._batch = int(settings.max_queued_s * sample_rate), int(BATCH_S * sample_rate)
        # IVR side (written only by the feeding thread)
        self._inbox: deque[Queued] = deque()
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
        self._segmenter = Segmenter(sample_rate, settings.segment_s, settings.min_flush_s)
        self._lock = threading.Lock()
        self._segments: deque[Segment] = deque()
        self._in_flight = False
        self._queued_for_embedding = False
        self._flushed = False
        self._dropped_speech_s = 0.0
        self._thinning, self._finishing = Thinning(), False  # finishing: one worker has claimed the end
        self._evidence = Evidence(settings.change_segments, np.zeros(pool.dim, dtype=np.float64))
        self._decision_s = max(settings.min_decision_s, pool.services.policy.min_speech_s)
        # spoof check: the voiced speech (input rate) not yet checked, in order; under _lock
        self._spoof = pool.services.spoof if settings.spoof_check else None
        frame = frame_length(sample_rate)  # whole gate frames, so the check sees the gate's frame grid
        self._check = SpoofTrack(
            SpoofState.WAITING if self._spoof is not None and not self._discard else SpoofState.OFF,
            max(1, -(-int(round(settings.spoof_window_s * sample_rate)) // frame)) * frame, sample_rate,
            backlog=int(settings.spoof_backlog_s * sample_rate))
        self._shadow = ShadowSpeech(pool.services.enrol_speech_s) if pool.services.shadow and voiceprint is not None \
            else None  # under _lock
        self._last_score: tuple[float, Normalisation] | None = None
        """LLR and normalisation of the latest update, to decide again when the spoof verdict comes."""
        self._trial = CallTrajectory()  # latest score and trajectory: recorded as the call's trial when it ends
        self._barred = False
        self._flags: dict[Flag, None] = {}
        self._history: deque[Revision] = deque(maxlen=settings.history_limit)
        self._done = threading.Event()
        self._result = CallResult(call_id, customer_id, initial, 0.0, 0.0, 0.0, self._decision_s, 0.0, error=error,
                                  closed=self._discard)
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
        payload, count = validate_chunk(chunk, self._format, self.call_id)
        now = time.monotonic()
        self._last_fed = now  # a paused call fed frames is alive (a long card payment), not idle
        if self._paused or self._discard or self._result.status in FINAL or count == 0:
            return  # paused: dropped unseen; not enrolled, opted out, erased or failed: never processed
        self._make_room(count)
        self._inbox.append((payload, count, now))
        self._fed_samples += count
        if not self._scheduled:
            self._scheduled = True
            self._pool.schedule_front(self)

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
    def _make_room(self, count: int) -> None:
        """Drop the oldest queued frames when the workers have fallen ``max_queued_s`` behind."""
        limit = self._max_queued - count
        while self._inbox and self._fed_samples - self._consumed_samples - self._dropped_samples > limit:
            try:
                _, old, _ = self._inbox.popleft()
            except IndexError:
                break
            self._dropped_samples += old

    def _close(self, reason: str) -> None:
        if not self._closed:
            self._closed, self._close_reason = True, reason
            if not self._discard:
                self._pool.schedule_front(self)

    # -- worker side -----------------------------------------------------------------------------
    def _drain(self) -> bool:
        """Front end: decode, gate, cut segments. Returns True when segments are ready."""
        with self._front_lock:
            self._scheduled = False
            if self._discard:  # cancelled: a frame fed meanwhile is dropped unheard
                self._inbox.clear()
                return False
            while not self._check.backlogged() and (batch := take_batch(self._inbox, self._batch)):
                self._consumed_samples += sum(count for _, count, _ in batch)
                kept = self._gate.push_kept(decode_batch(batch, self.encoding))  # short pauses kept, long cut
                if kept.voiced.any():
                    self._hear(kept.speech)  # before _buffer: no segment holds speech unheard by the check
                if len(kept.voiced):  # timed from the batch's oldest frame: latency never understated
                    self._push_segments(self._segmenter.push(kept, batch[0][2]))
            if self._closed and not self._flushed and not self._inbox:
                try:
                    self._push_segments(self._segmenter.flush())
                finally:  # after the last segment is queued: no worker finishes the call before it
                    self._flushed = True
            self._queue_spoof_if_due(schedule=True)
        with self._lock:
            ready = bool(self._segments) and not self._in_flight and not self._queued_for_embedding
            if ready:
                self._queued_for_embedding = True
            return ready

    def _hear(self, voiced: np.ndarray) -> None:
        """Keep voiced speech for the spoof check (only speech: the gate has cut the pauses)."""
        if not self._check.listening:
            return
        with self._lock:
            self._check.hear(voiced, decided=self._barred or self._result.status is CallStatus.AUTHENTICATED)

    def _queue_spoof_if_due(self, schedule: bool = False) -> list[Callable[[], None]]:
        """Queue a check when one is due; returns the scheduling callback (or schedules it now)."""
        with self._lock:
            authenticated = self._result.status is CallStatus.AUTHENTICATED
            if authenticated and self._check.follows and not self._check.gap:
                self._check.stop_hearing()  # authenticated ahead of the check: it takes what is left now
            blocked = self._barred or (authenticated and not self._check.follows) or self._done.is_set()
            if not self._check.due(self._decision_s * self.sample_rate, blocked=blocked):
                return []
            self._check.queue()
        if schedule:
            self._pool.schedule_spoof(self)
            return []
        return [lambda: self._pool.schedule_spoof(self)]

    def _take_spoof_audio(self) -> tuple[np.ndarray | None, float]:
        """The speech to check now (see :meth:`SpoofTrack.take`) and when its check was queued."""
        with self._lock:
            if self._result.status in FINAL or self._done.is_set() or not self._check.new:
                self._check.state = SpoofState.FAILED
                return None, 0.0
            return self._check.take(), self._check.queued_at

    def _apply_spoof(self, verdict: Any) -> list[Callable[[], None]]:
        """Install the spoof verdict: bar the call, or let a waiting accept through."""
        with self._lock:
            r = self._result
            if self._done.is_set() or r.status is CallStatus.ERROR:
                self._check.state = SpoofState.FAILED
                return []
            if verdict.suspected:
                self._check.suspected(verdict.score)
                self._flags[Flag.SPOOF_SUSPECTED] = None
                self._barred = True
                reason = (f"spoof suspected: bona fide score {verdict.score:.2f} < threshold "
                          f"{self._spoof.threshold:.2f}" if self._spoof is not None else "spoof suspected")
                return self._publish(CallStatus.NOT_AUTHENTICATED, reason, r.speech_s, r.llr, r.confidence)
            self._check.passed(verdict.score)
            status, why = r.status, ""
            if self._last_score is not None:
                llr, normalisation = self._last_score
                status, why = self._decide(llr, r.speech_s, normalisation)
            prefix = self._check.covered_accept()  # an earlier update matched on speech now checked
            if prefix is not None and status is not CallStatus.AUTHENTICATED and not self._barred:
                status, why = CallStatus.AUTHENTICATED, f"matched on the first {prefix:.1f} s of speech"
            calls = self._publish(status, why and f"{why} (spoof check passed)", r.speech_s, r.llr, r.confidence)
        return calls + self._queue_spoof_if_due()

    def _push_segments(self, segments: list[Segment]) -> None:
        with self._lock:
            self._segments.extend(segments)
            while len(self._segments) > self._settings.max_pending_segments:  # the model fell behind:
                segment = self._segments.popleft()  # a settled call (behind the deciding ones) is thinned
                if self._stride() > 0:
                    self._thinning.skip(segment)
                    self._keep_for_shadow(segment)
                else:
                    self._dropped_speech_s += segment.speech_s

    def _take_segment(self) -> Segment | None:
        with self._lock:
            self._queued_for_embedding = False
            if self._in_flight or self._result.status in FINAL:
                return None
            self._thinning.settle(self._stride(), self._settings.pressed_stride, self._pool.pressed)
            while self._segments:
                segment = self._segments.popleft()
                if not self._thinning.leave_out(segment):
                    self._in_flight = True
                    return segment
                self._keep_for_shadow(segment)
            return None

    def _keep_for_shadow(self, segment: Segment) -> None:
        """A segment left out of an AUTHENTICATED call's watch still grows its shadow voiceprint."""
        if self._shadow is not None and self._result.status is CallStatus.AUTHENTICATED:
            self._shadow.add(segment)

    def _stride(self) -> int:
        """Every how many segments a settled call embeds (``SessionSettings``); 0 while not settled."""
        if (status := self._result.status) is CallStatus.AUTHENTICATED:
            return self._settings.watch_stride
        unmatched = status is CallStatus.NOT_AUTHENTICATED and (self._barred or not self._check.in_reach)
        return self._settings.unmatched_stride if unmatched else 0

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
            and (self._check.state is not SpoofState.QUEUED or failed)
            and not self._done.is_set()
        )

    def _claim_finish(self) -> bool:
        """True for the one worker that gets to finish the call (it is ready and nobody else has it)."""
        with self._lock:
            claimed = self._finishable() and not self._finishing
            self._finishing = self._finishing or claimed
            return claimed

    def _apply(self, segment: Segment, embedding: np.ndarray) -> list[Callable[[], None]]:
        """Fold one segment embedding into the evidence, score, screen, decide; the callbacks to run after."""
        sv = self._pool.services
        with self._lock:
            if self._result.status in FINAL or self._done.is_set():
                return []  # failed, erased or finished while the segment was in the model
            evidence = self._evidence
            evidence.add(np.asarray(embedding, dtype=np.float32), segment.speech_s)
            if self._shadow is not None:
                self._shadow.add(segment)
            data = evidence.screen_input(self.customer_id)
            verdicts = run_screens(self._screens, data)
            reason = ""
            for verdict in verdicts:
                self._flags[verdict.flag] = None
                if verdict.withdraw and not self._barred:
                    self._barred = True
                    reason = verdict.reason
                    evidence.restart_from_recent()
            speech_s = self._result.speech_s + self._thinning.take_unscored() + segment.speech_s
            assert self._voiceprint is not None
            call_embedding = unit(evidence.total)
            score = sv.scorer_for(self.channel_tag).score(
                self._voiceprint, call_embedding, evidence.seconds, sv.cohort_matrix(exclude=self.customer_id)
            )
            self._trial.add(score, evidence.seconds, decidable=speech_s >= self._decision_s)
            if score.normalisation is Normalisation.RAW:
                self._flags[Flag.SMALL_COHORT] = None
            self._last_score = (score.llr, score.normalisation)
            status, why = self._decide(score.llr, speech_s, score.normalisation)
            calls = self._publish(status, reason or why, speech_s, score.llr, score.confidence)
        return calls + self._queue_spoof_if_due()

    def _decide(self, llr: float, speech_s: float, normalisation: Normalisation) -> tuple[CallStatus, str]:
        """The call's status for this evidence: :func:`voiceauth.decision.decide_call` (caller holds ``_lock``)."""
        thresholds = self._pool.services.scorer_for(self.channel_tag).thresholds(normalisation)
        self._check.in_reach = within_reach(llr, thresholds)  # check ahead of a decision only in reach of one
        verdict = decide_call(
            self._result.status, llr, speech_s, normalisation, thresholds,
            margins=self._settings.margins.derived(self._pool.services.call_margins_for(self.channel_tag)),
            min_speech_s=self._decision_s, barred=self._barred,
            spoof_covered=self._check.covers(speech_s, self._dropped_speech_s),
        )
        if verdict.awaits_spoof_check:  # a matching voice waits: check its speech now
            self._check.want(speech_s + self._dropped_speech_s)
        return verdict.status, verdict.reason

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
            status, reason, error = self._pool.record(self._event(status, speech_s, llr), reason, error)
        if status in FINAL:
            self._segments.clear()
            self._check.drop()
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
            self._check.score, old.trial_id, round(self._thinning.pressed_s, 2),
        )
        result = self._result
        calls: list[Callable[[], None]] = []
        if changed and self._on_decision is not None:
            calls.append(lambda cb=self._on_decision: cb(result))
        if self._on_update is not None:
            calls.append(lambda cb=self._on_update: cb(result))
        return calls

    def _event(self, status: CallStatus, speech_s: float, llr: float) -> CallResult:
        """What the call_decision event records (caller holds ``_lock``)."""
        return replace(self._result, status=status, speech_s=round(speech_s, 2), llr=round(llr, 3),
                       flags=tuple(self._flags))

    def _spoof_failed(self) -> list[Callable[[], None]]:
        """The spoof check failed or could not run: never authenticated, a followed accept withdrawn (fail closed)."""
        with self._lock:
            self._check.fail()
            r = self._result
            if self._check.follows and r.status is CallStatus.AUTHENTICATED and not self._barred:
                self._barred = True
                return self._publish(CallStatus.NOT_AUTHENTICATED, "spoof check could not run: authentication "
                                     "withdrawn", r.speech_s, r.llr, r.confidence)
        return []

    def _fail(self, message: str) -> list[Callable[[], None]]:
        with self._lock:
            self._segments.clear()
            self._inbox.clear()
            self._segmenter.clear()
            self._check.drop()
            r = self._result
            return self._publish(CallStatus.ERROR, message, r.speech_s, r.llr, r.confidence, error=message)

    def _finish(self) -> list[Callable[[], None]]:
        """The call ended and everything fed has been processed: settle the final status."""
        with self._lock:
            if self._done.is_set():
                return []
            r = self._result
            status = CallStatus.INCONCLUSIVE if r.status is CallStatus.PENDING else r.status
            speech_s = r.speech_s + self._thinning.take_unscored()
            calls = self._publish(status, f"{self._close_reason} with {speech_s:.1f} s of speech", speech_s, r.llr,
                                  r.confidence, closed=True)
            self._release()
            return calls

    def _cancel(self, status: CallStatus, reason: str) -> list[Callable[[], None]]:
        """End the call at once (voiceprint erased): drop all it holds, settle on ``status`` (ERROR stays)."""
        with self._front_lock, self._lock:
            if self._done.is_set():
                return []
            self._discard = True
            self._inbox.clear()
            self._segmenter.clear()
            r = self._result
            final = r.status if r.status in FINAL else status
            calls = self._publish(final, reason, r.speech_s, r.llr, r.confidence, closed=True)
            self._release()
            return calls

    def _take_shadow_speech(self) -> list[Segment]:
        """The scored speech of a call about to end AUTHENTICATED (for the shadow voiceprint), else none."""
        with self._lock:
            kept, self._shadow = self._shadow, None
            held = self._result.status is CallStatus.AUTHENTICATED and not self._barred and not self._done.is_set()
            return kept.segments if kept is not None and held else []

    def _release(self) -> None:
        """The call is over: drop what it still holds and mark it finished (caller holds ``_lock``)."""
        self._shadow = None
        self._evidence.ring.clear()
        self._voiceprint = None
        self._check.drop()
        self._segments.clear()
        self._done.set()

