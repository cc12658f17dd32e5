"""The worker pool shared by all live calls: schedules front ends, embedding batches and spoof checks."""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import replace
from typing import TYPE_CHECKING, Any

import numpy as np

from voiceauth.audio.decode import Encoding
from voiceauth.decision import FINAL, CallStatus
from voiceauth.errors import SessionError
from voiceauth.fraud.reference import ReferencedDetector
from voiceauth.live.call import CallSession
from voiceauth.live.frames import check_rate, parse_encoding
from voiceauth.live.screens import Screen, default_screens
from voiceauth.live.slots import batch_limit, model_slots
from voiceauth.live.state import CallResult, SessionSettings, error_message, run_callbacks
from voiceauth.services import shadow
from voiceauth.services.harvest import new_trial_id
from voiceauth.store.base import AuditRecord
from voiceauth.store.trials import TrialKind

if TYPE_CHECKING:
    from voiceauth.fraud.watchlist import Watchlist
    from voiceauth.services.core import Services

log = logging.getLogger(__name__)


class SessionPool:
    """Worker threads shared by all live calls of one ``VoiceAuth``.

    Work is picked in this order: callbacks for calls decided at start, front ends of
    calls with queued audio, then model work, :func:`model_slots` calls at a time: whichever waited
    longer of a batch of up to :func:`batch_limit` ready segments from different calls still deciding
    (embedded together) and a call's spoof check (which takes all slots but one when there are two or
    more, so a segment never waits for two checks); only then a batch of segments of settled calls
    (the watch over AUTHENTICATED calls, unmatched calls: ``CallSession._stride``), which never hold
    up a decision, unless the oldest of them has waited ``max_queued_s``: then it goes first, so
    that no call waits for ever (nor its end, which waits for its last segments).
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
        self._watch: deque[tuple[float, CallSession]] = deque()
        """Settled calls' segments: served when no call still deciding waits for the model."""
        self._spoof: deque[tuple[float, CallSession]] = deque()
        self._model_running = 0
        self._batch = batch_limit(services.embedder, self.settings)
        """Segments per embedding call (:func:`batch_limit`)."""
        self._model_slots = model_slots(services.embedder, self.settings)
        """Model calls (a batch of embeddings or a spoof check) that run side by side: one when the
        speaker model uses every core (torch), more when it runs on fewer threads (ONNX Runtime on
        one: one per core). Segments that wait meanwhile join a larger batch (up to :func:`batch_limit`)."""
        self._spoof_slots = max(1, self._model_slots - 1)
        """Spoof checks that run side by side: all but one slot, so that a segment never waits for
        a spoof check (0.3-0.9 s) to end when there are two slots or more."""
        self._spoof_running = 0
        self._tasks: deque[Callable[[], None]] = deque()
        self._sessions: dict[str, CallSession] = {}
        self._threads: list[threading.Thread] = []
        self._stopping = False
        self._next_reap = 0.0
        self._latencies: deque[tuple[float, float]] = deque(maxlen=10000)
        self._watch_latencies: deque[tuple[float, float]] = deque(maxlen=10000)
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
        channel_tag: str = "",
    ) -> CallSession:
        """Open a live call for ``customer_id``; see :meth:`VoiceAuth.start_call`."""
        if self._stopping:
            raise SessionError("the session pool is closed; open a new VoiceAuth to take calls")
        rate = check_rate(sample_rate)
        enc = parse_encoding(encoding)
        voiceprint, initial, error = self._lookup(customer_id)
        session = CallSession(
            self, customer_id, call_id=call_id or f"call-{uuid.uuid4().hex[:12]}", sample_rate=rate, encoding=enc,
            voiceprint=voiceprint, initial=initial, error=error, on_decision=on_decision, on_update=on_update,
            screens=default_screens(self.settings, self.watchlist) if screens is None else screens,
        )
        self._tag(session, channel_tag)
        if initial is not CallStatus.PENDING:
            result = session._result
            later = [lambda cb=cb: cb(result) for cb in (on_decision, on_update) if cb is not None]
            self._run_later([lambda: self.audit(result), *later])  # on record before anyone is told
            return session
        self._register(session)
        return session

    def _tag(self, session: CallSession, channel_tag: str) -> None:
        """The channel's calibration and spoof reference for a new call, and its trial id."""
        sv = self.services
        session.channel_tag = channel_tag
        if session._spoof is not None and sv.spoof_reference is not None:
            reference = sv.spoof_reference.for_channel(channel_tag)
            session._spoof = ReferencedDetector(session._spoof, reference)
            # a calibrated channel: authenticate without waiting, the verdict follows (and may withdraw it)
            session._check.follows = self.settings.spoof_may_follow and bool(getattr(reference, "calibrated", False))
        harvester = sv.harvester
        if harvester is not None and harvester.store is not None and session._result.status is CallStatus.PENDING:
            session._result = replace(session._result, trial_id=new_trial_id())

    def _record_trial(self, session: CallSession) -> None:
        """The finished call's score as a trial under its id (nothing for failed or erased calls)."""
        result, harvester = session._result, self.services.harvester
        if harvester is None or result.trial_id is None or session._trial.last is None or result.status in FINAL:
            return
        score, seconds = session._trial.last
        harvester.decision(TrialKind.CALL, score, seconds, session.channel_tag, result.trial_id,
                           trajectory=tuple(session._trial.points))

    @property
    def live(self) -> int:
        """Calls holding resources (open, or closed with work left)."""
        with self._cond:
            return len(self._sessions)

    def decision_latencies(self, since: float | None = None, *, watch: bool | None = None) -> np.ndarray:
        """Seconds from feeding the last frame of a segment to its update being published
        (recent updates; with ``since``, those published at or after that ``time.monotonic()``):
        of every call, or with ``watch=False`` only of calls still deciding, ``watch=True`` only of
        settled ones."""
        queues = [q for q, w in ((self._latencies, False), (self._watch_latencies, True)) if watch in (None, w)]
        return np.concatenate([_since(q, since) for q in queues])

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
            voiceprint = shadow.load(sv, customer_id)  # a complete shadow of this model takes over here
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
            self._tasks.append(lambda: run_callbacks(callbacks))
            self._cond.notify()

    # -- scheduling ------------------------------------------------------------------------------
    def schedule_front(self, session: CallSession) -> None:
        with self._cond:
            self._front.append(session)
            self._cond.notify()

    def _schedule_embedding(self, session: CallSession) -> None:
        settled = session._stride() > 0 and not session.closed  # a hint read without the call's lock
        with self._cond:
            (self._watch if settled else self._embed).append((time.monotonic(), session))
            self._cond.notify()

    def schedule_spoof(self, session: CallSession) -> None:
        with self._cond:
            self._spoof.append((time.monotonic(), session))
            self._cond.notify()

    def pressed(self) -> bool:
        """Has the oldest model work still waiting (segments, or a spoof check where checks may take
        every slot) waited ``pressed_wait_s`` for a slot? A check waiting while a slot is kept for
        segments would not start sooner for thinning. Read without the lock (a hint for thinning
        settled calls, ``SessionSettings.pressed_stride``): called by a call holding its own lock."""
        limit = time.monotonic() - self.settings.pressed_wait_s
        spoof = (self._spoof,) if self._spoof_slots == self._model_slots else ()
        for queue in (self._embed, *spoof, self._watch):
            try:
                if queue[0][0] <= limit:
                    return True
            except IndexError:  # emptied meanwhile
                continue
        return False

    def _release_model(self, spoof: bool = False) -> None:
        with self._cond:
            self._model_running -= 1
            self._spoof_running -= spoof
            self._cond.notify_all()

    def _model_job(self) -> tuple[str, Any] | None:
        """The model work to start in a free slot (caller holds ``_cond``): calls still deciding first,
        oldest waiting work first; a spoof check only while another slot is left for segments
        (``_spoof_slots``); None when only spoof checks wait and none may start."""
        starved = self._watch and self._watch[0][0] <= time.monotonic() - self.settings.max_queued_s
        if (self._spoof and self._spoof_running < self._spoof_slots and not starved
                and (not self._embed or self._spoof[0][0] < self._embed[0][0])):
            self._model_running += 1
            self._spoof_running += 1
            return "spoof", self._spoof.popleft()[1]
        queue = self._watch if starved else self._embed or self._watch
        if not queue:
            return None
        self._model_running += 1
        return "embed", [queue.popleft()[1] for _ in range(min(self._batch, len(queue)))]

    def _next_job(self) -> tuple[str, Any] | None:
        """Wait for work; returns (kind, payload), or None when stopping."""
        with self._cond:
            while True:
                if self._tasks:
                    return "task", self._tasks.popleft()
                if self._front:
                    return "front", self._front.popleft()
                if self._model_running < self._model_slots and (job := self._model_job()) is not None:
                    return job
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
            run_callbacks([payload])
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
            run_callbacks(session._fail(error_message("decoding the call audio", exc)))
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
        embedded = {id(s) for s, _ in taken}
        for session in sessions:  # nothing to embed (all its segments left out, or none): maybe it is done
            if id(session) not in embedded:
                self._maybe_finish(session)
        if not taken:
            return
        for (session, segment), embedding in zip(taken, embeddings, strict=True):
            callbacks: list[Callable[[], None]] = []
            if embedding is not None:
                try:
                    latencies = self._watch_latencies if session._stride() > 0 else self._latencies
                    callbacks = session._apply(segment, embedding)
                    now = time.monotonic()
                    latencies.append((now, now - segment.fed_at))
                except Exception as exc:  # noqa: BLE001
                    log.exception("live call %s: scoring failed", session.call_id)
                    callbacks = session._fail(error_message("scoring the call", exc))
            more, _ = session._segment_done()
            run_callbacks(callbacks)
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
            self._release_model(spoof=True)
        callbacks: list[Callable[[], None]] = []
        if verdict is None:  # failed or could not run: fail closed, the call cannot be authenticated
            callbacks = session._spoof_failed()
        if error is not None:
            log.error("live call %s: spoof check failed", session.call_id, exc_info=error)
            callbacks += session._fail(error_message("the spoof check", error))
        elif verdict is not None:
            callbacks = session._apply_spoof(verdict)
            now = time.monotonic()
            self._spoof_latencies.append((now, now - queued_at))
        run_callbacks(callbacks)
        if session._inbox or (session._closed and not session._flushed):
            self.schedule_front(session)  # its front end may have waited for this check
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
            run_callbacks(owner._fail(error_message("embedding the caller's speech", exc)))
            return None

    def _maybe_finish(self, session: CallSession) -> None:
        if not session._claim_finish():
            return
        with self._cond:
            self._sessions.pop(session.call_id, None)
        self._record_trial(session)  # on record before the final result is out
        speech = session._take_shadow_speech()
        run_callbacks(session._finish())
        if speech:  # after the verdict is out: the next model learns from the authenticated speech
            shadow.grow(self.services, session.customer_id, [seg.samples for seg in speech],
                        [seg.speech_s for seg in speech], self.services.embedder.model_id)

    def record(self, event: CallResult, reason: str, error: str | None) -> tuple[CallStatus, str, str | None]:
        """Before a call's status change is published: check the store before AUTHENTICATED (the
        voiceprint may have been erased elsewhere, e.g. purged by the CLI), then write the
        call_decision event. Returns the status to publish: ERROR when either fails (fail closed:
        no decision that is not on record)."""
        status = event.status
        try:
            if status is CallStatus.AUTHENTICATED and (erased := self.erased_since_start(event.customer_id)):
                status, reason = erased
            self.audit(replace(event, status=status))
            return status, reason, error
        except Exception as exc:  # noqa: BLE001 - any store failure ends the call in ERROR
            log.exception("live call %s: recording the %s decision failed", event.call_id, status.value)
            if status is CallStatus.ERROR:
                return status, reason, error
            message = error_message("recording the call's decision in the audit trail", exc)
            try:
                self.audit(replace(event, status=CallStatus.ERROR))
            except Exception:  # noqa: BLE001
                log.exception("live call %s: the audit trail cannot record the error either", event.call_id)
            return CallStatus.ERROR, message, error or message

    def audit(self, result: CallResult) -> None:
        """Write the call_decision event; raises when the store cannot (callers fail closed)."""
        sv = self.services
        sv.store.audit(AuditRecord(
            "call_decision", result.customer_id, result.status.value, sv.actor,
            {"call_id": result.call_id, "speech_s": result.speech_s, "llr": result.llr,
             "flags": ",".join(f.value for f in result.flags)},
        ))

    def erased_since_start(self, customer_id: str) -> tuple[CallStatus, str] | None:
        """(final status, reason) when the customer opted out or lost their voiceprint since the
        call started; None while they are still enrolled."""
        _, status, error = self._lookup(customer_id)
        if status is CallStatus.PENDING:
            return None
        return status, f"voiceprint erased during the call: {error or 'the customer opted out'}"


def _since(samples: deque[tuple[float, float]], since: float | None) -> np.ndarray:
    return np.array([value for at, value in list(samples) if since is None or at >= since], dtype=np.float64)





