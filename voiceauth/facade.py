"""``VoiceAuth``: the facade that wires audio, speech, embedding, scoring and the store."""

from __future__ import annotations

import dataclasses
import os
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Union

import numpy as np

from voiceauth.audio import MODEL_RATE, Audio, load_audio
from voiceauth.embedding import Embedder
from voiceauth.engines import DEFAULT_MODEL, MODELS, make_embedder, missing_calibration, shipped_calibration
from voiceauth.enrolment import MIN_SAMPLE_SPEECH_S, EnrolMode, NewSpeech, builder, pool, progress
from voiceauth.errors import (
    ConsentError,
    ModelError,
    ModelMismatchError,
    NoSpeechError,
    NotEnrolledError,
    OptedOutError,
    VoiceAuthError,
)
from voiceauth.ids import canonical_id, loose_key
from voiceauth.results import (
    Candidate,
    EnrolmentProgress,
    Flag,
    Probe,
    SampleReport,
    VerificationResult,
)
from voiceauth.scoring import (
    MIN_COHORT,
    CalibrationSet,
    Decision,
    Normalisation,
    Policy,
    Scorer,
    Thresholds,
)
from voiceauth.session import CallResult, CallSession, CallStatus, SessionPool
from voiceauth.speech import SpeechAnalysis, analyse
from voiceauth.spoof import SpoofDetector
from voiceauth.store import open_store
from voiceauth.store.base import AuditRecord, Consent, Namespace, OptOutResult, Store, VoiceprintInfo
from voiceauth.watchlist import Watchlist

AudioSource = Union[str, "os.PathLike[str]", np.ndarray, Audio]

DEFAULT_ENROL_SPEECH_S = 10.0
COHORT_TTL_S = 60.0
MAX_TOP_K = 100


class _Unset:
    def __repr__(self) -> str:
        return "<required>"


CONSENT_REQUIRED: Any = _Unset()


@dataclass(frozen=True)
class _Prepared:
    """Analysed speech of the samples of one request, before anything is written."""

    speech: list[np.ndarray]
    reports: list[SampleReport]


def _name_of(source: AudioSource, index: int) -> str:
    if isinstance(source, (str, os.PathLike)):
        return Path(source).name
    return f"sample-{index}"


def _flags(analysis: SpeechAnalysis) -> tuple[Flag, ...]:
    return tuple(Flag(f.value) for f in analysis.report.flags)


class VoiceAuth:
    """Passive voice authentication against an encrypted voiceprint store.

    Customer ids (and watchlist labels) pass through :func:`voiceauth.ids.canonical_id`:
    NFC, trimmed, case kept; invisible or control characters are refused.

    Args:
        store: a SQLite file path (created on first use), a ``postgresql://`` URL, or a Store.
        policy: the bank's risk appetite (target false-accept rate and friends).
        embedder: the speaker model: a name of :mod:`voiceauth.engines` (``ecapa``, the default;
            ``ecapa-onnx``; ``campplus``), ``ray://HOST:PORT`` or an Embedder; loaded lazily.
        model_dir: directory with the ``ecapa`` files (otherwise cache, hub, package index).
        calibration: path of a calibration file from ``voiceauth calibrate`` for the model; default
            the shipped one. A model with none shipped (``campplus``) enrols, but every decision
            raises CalibrationError until one is given.
        enrol_speech_s: net speech seconds an enrolment needs before it is complete.
        actor: who is acting, recorded in the audit trail (an agent id, a service name).
        spoof: the presentation-attack detector (AASIST) run on every verification and once
            per live call; a suspected spoof never yields ACCEPT or AUTHENTICATED.
            ``False`` turns it off.
        create: create the store (and key file) if missing; ``False`` opens only an existing
            store, as management tools should.
    """

    def __init__(
        self,
        store: str | os.PathLike[str] | Store = "voiceprints.db",
        *,
        policy: Policy | None = None,
        embedder: Embedder | str | None = None,
        model_dir: str | os.PathLike[str] | None = None,
        calibration: str | os.PathLike[str] | CalibrationSet | None = None,
        enrol_speech_s: float = DEFAULT_ENROL_SPEECH_S,
        actor: str = "system",
        spoof: SpoofDetector | bool = True,
        create: bool = True,
    ) -> None:
        self.store: Store = open_store(store, create=create)
        self.policy = policy or Policy()
        self.embedder = self._make_embedder(embedder, model_dir)
        model_id = self.embedder.model_id
        if calibration is None:
            calibrations = shipped_calibration(model_id)
        elif isinstance(calibration, CalibrationSet):
            calibrations = calibration.check_model(model_id)
        else:
            calibrations = CalibrationSet.load(calibration, model_id)
        # without a calibration for the model, enrolment still works and every decision is refused
        self.scorer = Scorer(calibrations, self.policy, missing=missing_calibration(model_id))
        self.enrol_speech_s = enrol_speech_s
        self.actor = actor
        self._cohort: tuple[float, list[str], np.ndarray] | None = None
        self._cohort_lock = threading.Lock()
        self._sessions: SessionPool | None = None  # live calls: created by start_call()
        self._sessions_lock = threading.Lock()
        self.watchlist = Watchlist(self)
        self.spoof: SpoofDetector | None = (
            SpoofDetector() if spoof is True else spoof or None
        )

    @staticmethod
    def _make_embedder(embedder: Embedder | str | None, model_dir: str | os.PathLike[str] | None) -> Embedder:
        if embedder is None:
            embedder = DEFAULT_MODEL
        if not isinstance(embedder, str):
            return embedder
        if embedder.startswith("ray://"):
            from voiceauth.serving import RayEmbedder  # optional [scale] extra

            return RayEmbedder(embedder)
        if embedder not in MODELS:
            raise ModelError(f"unknown embedder {embedder!r}; use one of {', '.join(MODELS)}, "
                             "'ray://HOST:PORT' or an Embedder")
        return make_embedder(embedder, model_dir)

    # -- context management -------------------------------------------------
    def close(self) -> None:
        if self._sessions is not None:
            self._sessions.close()
        self.store.close()

    def __enter__(self) -> VoiceAuth:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- live calls (voiceauth.session) -------------------------------------------
    def start_call(
        self,
        customer_id: str,
        *,
        sample_rate: int = 8000,
        encoding: str = "mulaw",
        on_decision: Callable[[CallResult], None] | None = None,
        call_id: str | None = None,
        on_update: Callable[[CallResult], None] | None = None,
    ) -> CallSession:
        """Open a live call: ``feed()`` it IVR frames, read ``status`` / ``result()``.

        ``encoding`` is ``mulaw``, ``alaw``, ``pcm16`` or ``float32`` at 8000 or 16000 Hz.
        ``on_decision`` fires once per status change, ``on_update`` after every scored
        segment and after the spoof verdict; both on a worker thread. An unknown customer is
        NOT_ENROLLED at once. The call is not AUTHENTICATED before ``spoof`` has passed it.
        """
        customer_id = canonical_id(customer_id)
        with self._sessions_lock:
            if self._sessions is None:
                self._sessions = SessionPool(self)
            sessions = self._sessions
        return sessions.start_call(customer_id, sample_rate=sample_rate, encoding=encoding,
                                   on_decision=on_decision, on_update=on_update, call_id=call_id)

    def _end_live_calls(self, customer_id: str, status: CallStatus, reason: str) -> None:
        """Erasure reaches live calls at once: they end on ``status``, never AUTHENTICATED."""
        with self._sessions_lock:
            sessions = self._sessions
        if sessions is not None:
            sessions.cancel_customer(customer_id, status, reason)

    # -- helpers --------------------------------------------------------------
    def _analyse(
        self,
        sources: Sequence[AudioSource],
        sample_rate: int | None,
        channel: int | None,
        on_sample: Callable[[SampleReport], None] | None = None,
    ) -> _Prepared:
        speech: list[np.ndarray] = []
        reports: list[SampleReport] = []
        for index, source in enumerate(sources):
            audio = load_audio(source, sample_rate=sample_rate, channel=channel)
            analysis = analyse(audio)
            flags = _flags(analysis)
            speech_s = analysis.report.speech_s
            used = speech_s >= MIN_SAMPLE_SPEECH_S
            if speech_s == 0:
                flags += (Flag.NO_SPEECH,)
            elif not used and Flag.TOO_SHORT not in flags:
                flags += (Flag.TOO_SHORT,)
            reports.append(SampleReport(_name_of(source, index), round(speech_s, 2), used, flags))
            if on_sample is not None:
                on_sample(reports[-1])
            if used:
                speech.append(analysis.speech.samples)
        return _Prepared(speech, reports)

    @staticmethod
    def _as_sources(samples: Sequence[AudioSource] | AudioSource) -> list[AudioSource]:
        sources = [samples] if isinstance(samples, (str, os.PathLike, np.ndarray, Audio)) else list(samples)
        if not sources:
            raise NoSpeechError("no samples given; pass at least one recording")
        return sources

    def _cohort_matrix(self, exclude: str) -> np.ndarray:
        with self._cohort_lock:
            now = time.monotonic()
            if self._cohort is None or now - self._cohort[0] > COHORT_TTL_S:
                ids, matrix = self.store.embeddings(Namespace.CUSTOMER, self.embedder.model_id)
                self._cohort = (now, ids, matrix)
            _, ids, matrix = self._cohort
        keep = [i for i, cid in enumerate(ids) if cid != exclude]
        return matrix[keep]

    def _invalidate_cohort(self) -> None:
        with self._cohort_lock:
            self._cohort = None

    # -- enrolment -------------------------------------------------------------
    def enroll(
        self,
        customer_id: str,
        samples: Sequence[AudioSource] | AudioSource,
        *,
        consent: Consent | None = CONSENT_REQUIRED,
        legacy_migration: bool = False,
        replace: bool = False,
        update: bool = False,
        sample_rate: int | None = None,
        channel: int | None = None,
        on_sample: Callable[[SampleReport], None] | None = None,
    ) -> EnrolmentProgress:
        """Enrol (or continue enrolling) ``customer_id`` from one or more recordings.

        A consent record is required; ``consent=None`` is accepted only together with
        ``legacy_migration=True`` (voiceprints migrated from a system that holds consent
        elsewhere). An enrolment with less than ``enrol_speech_s`` of net speech is kept
        as in progress and continued by the next call. Nothing is written unless every
        sample decodes; an opt-out is lifted (with fresh consent) only together with the
        voiceprint it lets through, in one transaction.
        """
        customer_id = canonical_id(customer_id)
        if consent is CONSENT_REQUIRED or (consent is None and not legacy_migration):
            raise ConsentError(
                f"enrolling {customer_id} needs a consent record: pass consent=Consent.now(channel=..., "
                "notice_version=..., captured_by=...) (CLI: --consent-channel/--consent-notice/--consent-by); "
                "for migrated voiceprints pass consent=None, legacy_migration=True"
            )
        if replace and update:
            raise VoiceAuthError("pass either replace=True or update=True, not both")
        opt_in = None
        if self.store.is_opted_out(customer_id):
            if consent is None:
                raise OptedOutError(
                    f"{customer_id} opted out of voice biometrics; enrol again only with fresh consent"
                )
            opt_in = AuditRecord("opt_in", customer_id, "fresh_consent", self.actor)
        sources = self._as_sources(samples)
        prepared = self._analyse(sources, sample_rate, channel, on_sample)
        if not prepared.speech:
            total = sum(r.speech_s for r in prepared.reports)
            raise NoSpeechError(
                f"no usable speech to enrol {customer_id} ({total:.1f} s of speech in {len(sources)} sample(s), "
                f"each sample needs at least {MIN_SAMPLE_SPEECH_S:.0f} s); record the customer speaking"
            )
        embeddings = self.embedder.embed(prepared.speech)
        new: NewSpeech = pool(embeddings, [len(s) / MODEL_RATE for s in prepared.speech])
        mode = EnrolMode.REPLACE if replace else EnrolMode.UPDATE if update else EnrolMode.NEW
        event = AuditRecord(
            "enroll", customer_id, mode.value, self.actor,
            {"speech_s": round(new.speech_s, 1), "recordings": new.recordings, "model": self.embedder.model_id},
        )
        voiceprint = self.store.upsert(
            Namespace.CUSTOMER,
            customer_id,
            builder(customer_id, Namespace.CUSTOMER, self.embedder.model_id, new,
                    mode=mode, required_s=self.enrol_speech_s),
            event=event,
            consent=consent,
            opt_in=opt_in,
        )
        self._invalidate_cohort()
        return progress(voiceprint, self.enrol_speech_s, prepared.reports)

    # -- verification ------------------------------------------------------------
    def _load_voiceprint(self, customer_id: str) -> Any:
        voiceprint = self.store.get(Namespace.CUSTOMER, customer_id)
        if voiceprint is None:
            raise NotEnrolledError(f"customer {customer_id} is not enrolled; enrol them first (voiceauth enroll)")
        if not voiceprint.complete:
            raise NotEnrolledError(
                f"enrolment of {customer_id} is incomplete ({voiceprint.speech_s:.1f} s of "
                f"{self.enrol_speech_s:.0f} s of speech); add speech with enroll()"
            )
        if voiceprint.model_id != self.embedder.model_id:
            raise ModelMismatchError(
                f"{customer_id}'s voiceprint was made by model {voiceprint.model_id}, not {self.embedder.model_id}; "
                "score with that model or re-enrol the customer with replace=True"
            )
        return voiceprint

    def _opted_out_result(self, customer_id: str) -> VerificationResult:
        self.store.audit(AuditRecord("verify", customer_id, Decision.OPTED_OUT.value, self.actor))
        return VerificationResult(customer_id, Decision.OPTED_OUT, 0.0, 0.0, 0.0, Normalisation.RAW, 0.0)

    def probe(self, sample: AudioSource, *, sample_rate: int | None = None, channel: int | None = None) -> Probe:
        """Decode, find the speech in, and embed one recording."""
        audio = load_audio(sample, sample_rate=sample_rate, channel=channel)
        analysis = analyse(audio, min_speech_s=self.policy.min_speech_s)
        if analysis.report.speech_s == 0:
            raise NoSpeechError(
                f"no speech detected in {_name_of(sample, 0)} ({audio.duration_s:.1f} s of audio); "
                "check the recording is not silent and the customer's channel is selected"
            )
        embedding = self.embedder.embed([analysis.speech.samples])[0]
        flags, spoof_probability = _flags(analysis), None
        if self.spoof is not None:
            # every window of the speech that was embedded, never the pauses around it
            verdict = self.spoof.score_speech(analysis.speech.samples, analysis.speech.sample_rate)
            spoof_probability = round(verdict.spoof_probability, 4)
            if verdict.suspected:
                flags += (Flag.SPOOF_SUSPECTED,)
        return Probe(embedding, self.embedder.model_id, analysis.report.speech_s, flags, audio.duration_s,
                     spoof_probability)

    def verify(
        self,
        customer_id: str,
        sample: AudioSource | Probe,
        *,
        sample_rate: int | None = None,
        channel: int | None = None,
    ) -> VerificationResult:
        """Is the speaker of ``sample`` (a recording or a :class:`Probe`) the enrolled ``customer_id``?"""
        customer_id = canonical_id(customer_id)
        if self.store.is_opted_out(customer_id):
            return self._opted_out_result(customer_id)
        voiceprint = self._load_voiceprint(customer_id)
        probe = sample if isinstance(sample, Probe) else self.probe(sample, sample_rate=sample_rate, channel=channel)
        if probe.model_id != voiceprint.model_id:
            raise ModelMismatchError(
                f"the probe was made by model {probe.model_id}, {customer_id}'s voiceprint by {voiceprint.model_id}"
            )
        result = self._decide(customer_id, voiceprint.embedding, probe.embedding, probe.speech_s, probe.flags)
        return dataclasses.replace(result, spoof_probability=probe.spoof_probability)

    def _decide(
        self, customer_id: str, enrolled: np.ndarray, embedding: np.ndarray, speech_s: float, flags: tuple[Flag, ...]
    ) -> VerificationResult:
        cohort = self._cohort_matrix(exclude=customer_id)
        score = self.scorer.score(enrolled, embedding, speech_s, cohort)
        decision = self.scorer.decide(score, speech_s)
        if score.normalisation is Normalisation.RAW:
            flags += (Flag.SMALL_COHORT,)
        hit = self.watchlist.screen(embedding, speech_s, customer_id)
        if hit is not None:
            flags += (Flag.FRAUDSTER_MATCH,)
            if decision is Decision.ACCEPT:
                decision = Decision.REJECT
        if Flag.SPOOF_SUSPECTED in flags and decision is Decision.ACCEPT:
            decision = Decision.INCONCLUSIVE  # fall back to other checks, never accept
        thresholds = self.scorer.thresholds(score.normalisation)
        result = VerificationResult(
            customer_id=customer_id,
            decision=decision,
            confidence=round(score.confidence, 4),
            score=round(score.raw, 4),
            llr=round(score.llr, 3),
            normalisation=score.normalisation,
            speech_s=round(speech_s, 2),
            flags=flags,
            expected_far=thresholds.expected_far,
            watchlist_hit=hit,
        )
        self.store.touch(Namespace.CUSTOMER, customer_id, time.time())
        self.store.audit(
            AuditRecord(
                "verify", customer_id, decision.value, self.actor,
                {"confidence": result.confidence, "speech_s": result.speech_s,
                 "flags": ",".join(f.value for f in flags)},
            )
        )
        return result

    def identify(
        self, sample: AudioSource | Probe, *, top_k: int = 5, sample_rate: int | None = None,
        channel: int | None = None,
    ) -> list[Candidate]:
        """The ``top_k`` (1 to ``MAX_TOP_K``) enrolled customers most similar to the speaker of ``sample``."""
        if isinstance(top_k, bool) or not isinstance(top_k, (int, np.integer)) or not 1 <= top_k <= MAX_TOP_K:
            raise VoiceAuthError(f"top_k must be a whole number from 1 to {MAX_TOP_K}, got {top_k!r}")
        probe = sample if isinstance(sample, Probe) else self.probe(sample, sample_rate=sample_rate, channel=channel)
        ids, matrix = self.store.embeddings(Namespace.CUSTOMER, probe.model_id)
        if not ids:
            return []
        scores = matrix @ probe.embedding
        order = np.argsort(-scores)[:top_k]
        calibration = self.scorer.calibrations.get(Normalisation.RAW)
        out = [
            Candidate(ids[i], round(float(scores[i]), 4),
                      round(self.policy.confidence(float(calibration.llr(float(scores[i]), probe.speech_s))), 4))
            for i in order
        ]
        self.store.audit(AuditRecord("identify", None, "ok", self.actor, {"candidates": len(out)}))
        return out

    def thresholds(self) -> Thresholds:
        """The accept / reject thresholds in force and their expected error rates.

        AS-norm thresholds apply once the store holds enough other voiceprints to form a
        cohort; before that, the raw-score calibration's.
        """
        cohort = self._cohort_matrix(exclude="")
        kind = Normalisation.AS_NORM if len(cohort) >= MIN_COHORT else Normalisation.RAW
        return self.scorer.thresholds(kind)

    # -- management ----------------------------------------------------------------
    def delete(self, customer_id: str) -> bool:
        """Erase the customer's voiceprint. Returns False when there was none."""
        customer_id = canonical_id(customer_id)
        try:
            removed = self.store.delete(
                Namespace.CUSTOMER, customer_id, event=AuditRecord("delete", customer_id, "deleted", self.actor)
            )
        finally:  # also on ErasureIncompleteError (deleted, a copy left in the WAL): fail closed
            self._end_live_calls(customer_id, CallStatus.NOT_ENROLLED, "voiceprint deleted during the call")
            self._invalidate_cohort()
        return removed

    def list(self) -> list[VoiceprintInfo]:
        return self.store.list(Namespace.CUSTOMER)

    def opt_out(self, customer_id: str) -> OptOutResult:
        """Delete the voiceprint, withdraw consent, and refuse voice biometrics from now on.

        The opt-out is recorded even when nothing is enrolled (the customer says "never enrol
        me"); the result says what was actually erased.
        """
        customer_id = canonical_id(customer_id)
        try:
            result = self.store.opt_out(customer_id, event=AuditRecord("opt_out", customer_id, "opted_out", self.actor))
        finally:  # also on ErasureIncompleteError (opted out, a copy left in the WAL): fail closed
            self._end_live_calls(customer_id, CallStatus.OPTED_OUT, "the customer opted out during the call")
            self._invalidate_cohort()
        return result

    def consent(self, customer_id: str) -> Consent | None:
        return self.store.consent(canonical_id(customer_id))

    def is_opted_out(self, customer_id: str) -> bool:
        return self.store.is_opted_out(canonical_id(customer_id))

    def similar_ids(self, customer_id: str) -> list[str]:
        """Enrolled ids that differ from ``customer_id`` only in case, width or spacing: the id an
        operator probably meant when ``delete`` / ``opt_out`` found nothing."""
        key = loose_key(customer_id)
        return [i.subject_id for i in self.list() if i.subject_id != customer_id and loose_key(i.subject_id) == key]
