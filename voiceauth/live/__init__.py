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

1. *front end* (cheap): decode, pass 20 ms frames (up to 0.2 s of those queued at once) through a streaming
   :class:`~voiceauth.speech.activity.SpeechGate`, buffer the voiced samples at the input rate
   and cut them into segments of ``segment_s`` seconds of net speech, resampled to
   16 kHz. Audio is dropped as soon as it has been cut into a segment.
2. *embedding*: a worker takes up to ``batch_size`` ready segments from *different*
   calls and embeds them in one ``embedder.embed`` call (one segment for an embedder that
   embeds a batch one signal after another, ``sequential``: ONNX Runtime; a batch would only make
   the first wait for the last, and hold a model slot meanwhile). Each segment is embedded
   exactly once; the call embedding is the speech-weighted sum of its segment
   embeddings, so the work per update is one segment whatever the call's length.
3. *decision*: after each segment the call embedding is scored against the voiceprint
   (``va.scorer``, AS-norm against ``va``'s cohort when it is large enough, LLR
   calibrated for the net speech so far), the *screens* run (speaker change built in,
   the watchlist when one is set up) and the status is updated. Every status change is
   first written to the audit trail (``call_decision``; if that write fails the call ends
   in ERROR instead), then fires ``on_decision`` once, on a worker thread.
4. *spoof check*: ``va.spoof`` (the v2 scorer on AASIST, :mod:`voiceauth.fraud.head`, with the
   threshold of the channel's bona fide reference, as verification uses) scores the call's *speech*, the voiced frames
   the gate let through, never the pauses, silence, noise or hum around them (the
   network takes those for live speech). The first check runs when the call has enough
   net speech for a decision, on all of it; later checks each take the speech heard
   since the previous one (padded to one ``spoof_window_s`` window with the speech just
   before it), whenever a window's worth has come in and whenever a matching voice
   waits for its speech to be checked. The most spoof-like window decides.
   Checks run ahead of a decision only while the call is within reach of one (its LLR not
   under the reject threshold, :func:`voiceauth.decision.within_reach`): the speech of a
   call whose voice does not match, mostly impostors, is kept unchecked, up to
   ``spoof_backlog_s``; if the voice comes to match, all of it is checked before the call
   can be AUTHENTICATED, and past that bound it is forgotten and the call can no longer be
   AUTHENTICATED. Spoof-checking every window of impostor speech was what limited the
   service's capacity (``benchmarks/service.py``). Model work runs ``model_slots`` calls at a
   time: one with torch ECAPA (it uses every core), one per core with a model on ONNX
   Runtime's single thread (CAM++, ``ecapa-onnx``). The calls still deciding come first, their
   embedding batches and spoof checks oldest first; settled calls' segments (below) only when
   none of those waits, or once they have waited ``max_queued_s`` (so none waits for ever).
   With two slots or more, spoof checks (0.3-0.9 s each) take all but one: a segment waits for
   at most one embedding, never for two checks (50 steady calls on 2 cores: deciding updates
   p95 0.63 s, against 0.88-1.0 s when checks could take both slots).
   A call is AUTHENTICATED only once every second of speech in its evidence has passed
   (it stays PENDING meanwhile, even when the voice matches). When a check passes, the latest
   update that matched on speech the checks now cover authenticates the call, as long as the
   voice is still within reach and nothing barred it: speech that came in while the check ran
   does not send the call after another check (under load each would take all the speech heard
   while it waited, and the call would never catch up). A suspected spoof sets
   SPOOF_SUSPECTED and bars authentication for the rest of the call
   (NOT_AUTHENTICATED), withdrawing it if a check still running finds one; a check
   that fails or cannot run bars it too (fail closed).
   Except on a channel whose bona fide spoof reference is calibrated (enough consented
   enrolments, :mod:`voiceauth.fraud.reference`; ``SessionSettings.spoof_may_follow``): there
   authentication does not wait. The check then takes whole windows as they come in, and all
   the speech heard before the decision once the call is AUTHENTICATED; a suspected spoof (or a
   check that cannot run) withdraws the authentication (NOT_AUTHENTICATED, both on record).
   Speech after the call is AUTHENTICATED (or barred) is not checked: it made no
   decision, the speaker-change screen watches for a hand-over, and each extra window
   is another chance of a false alarm on a genuine caller (the most spoof-like window
   decides). So such a call can never be AUTHENTICATED again once it has left that
   status. One window costs about 0.4 s on the 2-core machine;
   ``SessionSettings(spoof_check=False)`` or ``VoiceAuth(spoof=False)`` turns it off.

Settled calls. Once a call is NOT_AUTHENTICATED with its voice out of reach of an accept (or
barred), only every ``unmatched_stride``-th segment (2) is embedded: mostly impostors, whose
further speech is unlikely to matter. An AUTHENTICATED call embeds every segment by default
(``watch_stride`` 1): they feed the speaker-change screen; 2 halves a decided call's cost and a
voice taking over is caught later (median 5.3 s of its speech instead of 3.3 s, README). While the
model is pressed (model work has waited ``pressed_wait_s``, 0.5 s, for a slot), settled calls embed
only every ``pressed_stride``-th segment (3): the calls still deciding keep pace instead of the
service dropping audio, and the watch over decided calls is thinned for as long as the pressure
lasts (each call reports it in ``CallResult.thinned_under_load_s``; ``pressed_stride=1`` turns this
off). A settled call's segments wait behind every call still deciding, so a new caller's decision
never queues behind the watch over fifty others; while they wait, segments piling up past
``max_pending_segments`` are left out of the watch the same way (thinned, not dropped). The
decision itself always sees every segment; speech left out still counts as heard, and the spoof
check hears it all.

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
  0. Held out, on the council-meeting calls: 1/288 impostors, 78 % of genuine callers
  within 10 s (the calibration does not transfer to that domain; see the README).
* raw scoring (SMALL_COHORT, a new store): 22/270 impostors reached the bare threshold,
  2/270 with a margin of 3, so ``raw_accept_margin_llr`` is 3.

Re-measure with ``benchmarks/streaming.py`` after recalibrating. ``voiceauth calibrate
--from-store`` does it on the bank's own calls: every call's trial keeps the (score, net speech)
of each update, and from enough reported calls (1 000 impostor calls at ``target_far=0.01``) the
refit derives the margin that holds them at the target under its new calibration
(:mod:`voiceauth.scoring.margin`); while that calibration is active its margins replace these.

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
  (4 x 96 kB = 384 kB; under overload the oldest is dropped and counted, or, in a settled
  call, left out of its watch and counted as thinned);
* spoof speech: the voiced speech not yet checked (while a check is running, the front
  end waits once a ``spoof_window_s`` window of it has piled up, so at most 4.04 s + one
  0.2 s batch of frames and one 1 s frame) and the last window of checked speech as context: at
  most 594 kB at 16 kHz float32, 297 kB at 8 kHz;
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

from voiceauth.decision import FINAL, CallStatus
from voiceauth.live.call import CallSession
from voiceauth.live.pool import SessionPool
from voiceauth.live.screens import (
    Screen,
    ScreenInput,
    ScreenVerdict,
    default_screens,
    speaker_change_screen,
    watchlist_screen,
)
from voiceauth.live.state import CallResult, Revision, SessionSettings

__all__ = [
    "FINAL",
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
    "watchlist_screen",
]
