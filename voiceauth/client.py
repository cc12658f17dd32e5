"""``VoiceAuth``: the facade that wires audio, speech, embedding, scoring and the store."""

from __future__ import annotations

import dataclasses
import os
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from voiceauth.audio.decode import load_audio
from voiceauth.decision import Decision, decide
from voiceauth.embedding.base import Embedder
from voiceauth.errors import (
    ModelError,
    ModelMismatchError,
    NoSpeechError,
    VoiceAuthError,
)
from voiceauth.fraud.reference import SpoofReferences
from voiceauth.fraud.spoof import SpoofDetector
from voiceauth.fraud.watchlist import Watchlist
from voiceauth.ids import canonical_id, loose_key
from voiceauth.live import CallResult, CallSession, CallStatus, SessionPool
from voiceauth.live.slots import per_call_threads
from voiceauth.results import (
    Candidate,
    EnrolmentProgress,
    Flag,
    Probe,
    SampleReport,
    VerificationResult,
)
from voiceauth.scoring.calibration import CalibrationSet
from voiceauth.scoring.normalisation import MIN_COHORT, Normalisation
from voiceauth.scoring.policy import Policy, Thresholds
from voiceauth.scoring.scorer import Scorer
from voiceauth.services import shadow
from voiceauth.services.cohort import COHORT_TTL_S, CohortCache
from voiceauth.services.core import AudioSource, Services, Shared, analysis_flags, as_sources, prepare, source_name
from voiceauth.services.engines import DEFAULT_MODEL, MODELS, make_embedder, missing_calibration, shipped_calibration
from voiceauth.services.enrolment import (
    MIN_SAMPLE_SPEECH_S,
    EnrolMode,
    NewSpeech,
    consent_gate,
    mode_of,
    pool,
    progress,
    write,
)
from voiceauth.services.harvest import Harvester
from voiceauth.services.harvest import channel_tag as _tag
from voiceauth.services.recalibrate import install_store_calibrations, store_calibrations
from voiceauth.services.shadow import ShadowModel, ShadowStatus
from voiceauth.speech.activity import analyse
from voiceauth.store import open_store
from voiceauth.store.base import (
    AuditCheck,
    AuditEvent,
    AuditRecord,
    Consent,
    Namespace,
    OptOutResult,
    Store,
    VoiceprintInfo,
)
from voiceauth.store.trials import Trial, TrialKind

DEFAULT_ENROL_SPEECH_S = 10.0
MAX_TOP_K = 100


class _Unset:
    def __repr__(self) -> str:
        return "<required>"


CONSENT_REQUIRED: Any = _Unset()


class VoiceAuth:
    """Passive voice authentication against an encrypted voiceprint store.

    Customer ids (and watchlist labels) pass through :func:`voiceauth.ids.canonical_id`:
    NFC, trimmed, case kept; invisible or control characters are refused.

    Args:
        store: a SQLite file path (created on first use), a ``postgresql://`` URL, or a Store.
        policy: the bank's risk appetite (target false-accept rate and friends).
        embedder: the speaker model: a name of :mod:`voiceauth.services.engines` (``ecapa``, the default;
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
        harvest: record in-domain trials and bona fide spoof scores (scores only, no customer id:
            :mod:`voiceauth.services.harvest`); without ``calibration``, the store's active one is used.
        shadow_model: the next speaker model (a name or an Embedder): accepted verifications and
            authenticated calls also grow each customer's voiceprint for it, which takes over once
            the deployment runs that model (:mod:`voiceauth.services.shadow`). Off by default.

    The parts shared with the watchlist and live calls live in ``va.services``;
    ``va.store``, ``va.embedder`` and the other attributes below read and write them.
    """

    store = Shared[Store]()
    embedder = Shared[Embedder]()
    scorer = Shared[Scorer]()
    policy = Shared[Policy]()
    spoof = Shared[SpoofDetector | None]()
    actor = Shared[str]()
    enrol_speech_s = Shared[float]()

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
        harvest: bool = True,
        shadow_model: Embedder | str | None = None,
    ) -> None:
        opened = open_store(store, create=create)
        policy = policy or Policy()
        model = self._make_embedder(embedder, model_dir)
        model_id = model.model_id
        in_store = store_calibrations(opened, model_id) if calibration is None else {}
        if calibration is None:
            calibrations = in_store[""].calibrations if "" in in_store else shipped_calibration(model_id)
        elif isinstance(calibration, CalibrationSet):
            calibrations = calibration.check_model(model_id)
        else:
            calibrations = CalibrationSet.load(calibration, model_id)
        # without a calibration for the model, enrolment still works and every decision is refused
        self.services = Services(
            store=opened,
            embedder=model,
            scorer=Scorer(calibrations, policy, missing=missing_calibration(model_id)),
            policy=policy,
            spoof=SpoofDetector(threads=per_call_threads(model)) if spoof is True else spoof or None,
            actor=actor,
            enrol_speech_s=enrol_speech_s,
            cohort=CohortCache(COHORT_TTL_S),
            base_calibration=calibrations if calibration is not None else None,
        )
        if shadow_model is not None:
            next_model = self._make_embedder(shadow_model, model_dir)
            if next_model.model_id == model_id:
                raise ModelError(f"shadow_model {next_model.model_id} is the model in use; name the next model "
                                 "(e.g. shadow_model='campplus'), or leave it out")
            self.services.shadow = ShadowModel(next_model)
        install_store_calibrations(self.services, in_store)
        self.harvester = Harvester(self.services, enabled=harvest)
        if harvest and self.services.spoof is not None:
            self.services.spoof_reference = SpoofReferences(
                opened, getattr(self.services.spoof, "model_id", ""), self.services.spoof.threshold)
        self._sessions: SessionPool | None = None  # live calls: created by start_call()
        self._sessions_lock = threading.Lock()
        self.watchlist = Watchlist(self.services)

    @staticmethod
    def _make_embedder(embedder: Embedder | str | None, model_dir: str | os.PathLike[str] | None) -> Embedder:
        if embedder is None:
            embedder = DEFAULT_MODEL
        if not isinstance(embedder, str):
            return embedder
        if embedder.startswith("ray://"):
            from voiceauth.embedding.remote import RayEmbedder  # optional [scale] extra

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

    # -- live calls (voiceauth.live.call) -------------------------------------------
    def start_call(
        self,
        customer_id: str,
        *,
        sample_rate: int = 8000,
        encoding: str = "mulaw",
        on_decision: Callable[[CallResult], None] | None = None,
        call_id: str | None = None,
        on_update: Callable[[CallResult], None] | None = None,
        channel_tag: str | None = None,
    ) -> CallSession:
        """Open a live call: ``feed()`` it IVR frames, read ``status`` / ``result()``.

        ``encoding`` is ``mulaw``, ``alaw``, ``pcm16`` or ``float32`` at 8000 or 16000 Hz.
        ``on_decision`` fires once per status change, ``on_update`` after every scored
        segment and after the spoof verdict; both on a worker thread. An unknown customer is
        NOT_ENROLLED at once. The call is not AUTHENTICATED before ``spoof`` has passed it.
        ``channel_tag`` (``ivr-8k``...) picks the channel's calibration and spoof reference; the
        call's score is recorded as a trial when it ends, under ``CallResult.trial_id``.
        """
        customer_id = canonical_id(customer_id)
        tag = _tag(channel_tag)
        with self._sessions_lock:
            if self._sessions is None:
                self._sessions = SessionPool(self.services, watchlist=self.watchlist)
            sessions = self._sessions
        return sessions.start_call(customer_id, sample_rate=sample_rate, encoding=encoding,
                                   on_decision=on_decision, on_update=on_update, call_id=call_id, channel_tag=tag)

    def _end_live_calls(self, customer_id: str, status: CallStatus, reason: str) -> None:
        """Erasure reaches live calls at once: they end on ``status``, never AUTHENTICATED."""
        with self._sessions_lock:
            sessions = self._sessions
        if sessions is not None:
            sessions.cancel_customer(customer_id, status, reason)

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
        channel_tag: str | None = None,
    ) -> EnrolmentProgress:
        """Enrol (or continue enrolling) ``customer_id`` from one or more recordings.

        A consent record is required; ``consent=None`` is accepted only together with
        ``legacy_migration=True`` (voiceprints migrated from a system that holds consent
        elsewhere). An enrolment with less than ``enrol_speech_s`` of net speech is kept
        as in progress and continued by the next call. Nothing is written unless every
        sample decodes; an opt-out is lifted (with fresh consent) only together with the
        voiceprint it lets through, in one transaction.

        A consented enrolment also yields in-domain trials for calibration and bona fide spoof
        scores for the reference of ``channel_tag`` (scores only; :mod:`voiceauth.services.harvest`).
        """
        customer_id = canonical_id(customer_id)
        tag = _tag(channel_tag)
        mode = mode_of(replace, update)
        opt_in = consent_gate(self.services, customer_id, None if consent is CONSENT_REQUIRED else consent,
                              legacy_migration=legacy_migration and consent is not CONSENT_REQUIRED)
        sources = as_sources(samples)
        prepared = prepare(sources, sample_rate, channel, on_sample)
        if not prepared.speech:
            total = sum(r.speech_s for r in prepared.reports)
            raise NoSpeechError(
                f"no usable speech to enrol {customer_id} ({total:.1f} s of speech in {len(sources)} sample(s), "
                f"each sample needs at least {MIN_SAMPLE_SPEECH_S:.0f} s); record the customer speaking"
            )
        embeddings = self.embedder.embed(prepared.speech)
        seconds = prepared.seconds  # net speech, not the kept pauses
        new: NewSpeech = pool(embeddings, seconds)
        harvesting = isinstance(consent, Consent) and self.harvester.store is not None
        before = self.store.get(Namespace.CUSTOMER, customer_id) if harvesting and len(seconds) == 1 else None
        voiceprint = write(self.services, Namespace.CUSTOMER, customer_id, new, model_id=self.embedder.model_id,
                           mode=mode, required_s=self.enrol_speech_s, consent=consent, opt_in=opt_in)
        if mode is EnrolMode.REPLACE:  # the speech behind a shadow was verified against the old voiceprint
            shadow.discard(self.services, customer_id, "re-enrolled")
        if harvesting:
            self.harvester.enrolment_with_spoof(customer_id, embeddings, seconds, tag, before, prepared.voiced)
        return progress(voiceprint, self.enrol_speech_s, prepared.reports)

    def report_outcome(self, trial_id: str, *, genuine: bool, source: str) -> Trial:
        """The outcome of a verification or call (``result.trial_id``): ``genuine=True``, ``source="kba"``
        (passed the questions) or ``genuine=False``, ``source="fraud_case"``; audited without the id."""
        return self.harvester.report_outcome(trial_id, genuine=genuine, source=source)

    def reload_calibrations(self) -> None:
        """Use the calibrations activated (or rolled back) in the store since this client opened it;
        with none active, the calibration this client was given (else the shipped one)."""
        install_store_calibrations(self.services, reload=True)

    # -- verification ------------------------------------------------------------
    def _opted_out_result(self, customer_id: str) -> VerificationResult:
        self.store.audit(AuditRecord("verify", customer_id, Decision.OPTED_OUT.value, self.actor))
        return VerificationResult(customer_id, Decision.OPTED_OUT, 0.0, 0.0, 0.0, Normalisation.RAW, 0.0)

    def probe(self, sample: AudioSource, *, sample_rate: int | None = None, channel: int | None = None,
              channel_tag: str | None = None) -> Probe:
        """Decode, find the speech in, and embed one recording."""
        return self._probe(sample, sample_rate=sample_rate, channel=channel, channel_tag=channel_tag)[0]

    def _probe(self, sample: AudioSource, *, sample_rate: int | None = None, channel: int | None = None,
               channel_tag: str | None = None) -> tuple[Probe, np.ndarray]:
        """The probe and the speech it was embedded from (in memory only: a shadow voiceprint may grow from it)."""
        audio = load_audio(sample, sample_rate=sample_rate, channel=channel)
        analysis = analyse(audio, min_speech_s=self.policy.min_speech_s)
        if analysis.report.speech_s == 0:
            raise NoSpeechError(
                f"no speech detected in {source_name(sample, 0)} ({audio.duration_s:.1f} s of audio); "
                "check the recording is not silent and the customer's channel is selected"
            )
        embedding = self.embedder.embed([analysis.trimmed.samples])[0]  # short pauses and word edges kept
        spoof_flags, spoof_probability = self.services.spoof_check(analysis.speech, _tag(channel_tag))
        flags = analysis_flags(analysis) + spoof_flags
        return Probe(embedding, self.embedder.model_id, analysis.report.speech_s, flags, audio.duration_s,
                     spoof_probability), analysis.trimmed.samples

    def verify(
        self,
        customer_id: str,
        sample: AudioSource | Probe,
        *,
        sample_rate: int | None = None,
        channel: int | None = None,
        channel_tag: str | None = None,
    ) -> VerificationResult:
        """Is the speaker of ``sample`` (a recording or a :class:`Probe`) the enrolled ``customer_id``?

        ``channel_tag`` picks the channel's calibration and spoof reference; the score behind the
        decision is recorded as a trial under ``result.trial_id`` (see :meth:`report_outcome`)."""
        customer_id = canonical_id(customer_id)
        tag = _tag(channel_tag)
        if self.store.is_opted_out(customer_id):
            return self._opted_out_result(customer_id)
        voiceprint = shadow.load(self.services, customer_id)  # a complete shadow of this model takes over here
        probe, speech = ((sample, None) if isinstance(sample, Probe)
                         else self._probe(sample, sample_rate=sample_rate, channel=channel, channel_tag=tag))
        if probe.model_id != voiceprint.model_id:
            raise ModelMismatchError(
                f"the probe was made by model {probe.model_id}, {customer_id}'s voiceprint by {voiceprint.model_id}"
            )
        result = self._decide(customer_id, voiceprint.embedding, probe.embedding, probe.speech_s, probe.flags, tag)
        if result.decision is Decision.ACCEPT and speech is not None:  # the next model learns from accepted speech
            shadow.grow(self.services, customer_id, [speech], [probe.speech_s], voiceprint.model_id)
        return dataclasses.replace(result, spoof_probability=probe.spoof_probability)

    def shadow_status(self) -> ShadowStatus:
        """How many customers the shadow model (``shadow_model=``) could verify now: the switch-over report."""
        return shadow.status(self.services)

    def _decide(
        self, customer_id: str, enrolled: np.ndarray, embedding: np.ndarray, speech_s: float, flags: tuple[Flag, ...],
        tag: str = "",
    ) -> VerificationResult:
        cohort = self.services.cohort_matrix(exclude=customer_id)
        scorer = self.services.scorer_for(tag)
        score = scorer.score(enrolled, embedding, speech_s, cohort)
        if score.normalisation is Normalisation.RAW:
            flags += (Flag.SMALL_COHORT,)
        hit = self.watchlist.screen(embedding, speech_s, customer_id)
        if hit is not None:
            flags += (Flag.FRAUDSTER_MATCH,)
        thresholds = scorer.thresholds(score.normalisation)
        decision = decide(score.llr, speech_s, thresholds, min_speech_s=self.policy.min_speech_s,
                          watchlist_hit=hit is not None, spoof_suspected=Flag.SPOOF_SUSPECTED in flags)
        trial = self.harvester.trial(TrialKind.VERIFY, score, speech_s, tag)
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
            trial_id=trial.trial_id if trial is not None else None,
        )
        self.services.record_use(  # last used (retention), the audit event and the trial: one transaction
            customer_id,
            AuditRecord(
                "verify", customer_id, decision.value, self.actor,
                {"confidence": result.confidence, "speech_s": result.speech_s,
                 "flags": ",".join(f.value for f in flags)},
            ),
            trials=(trial,) if trial is not None else (),
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
        found = self.services.index.search(self.store, probe.model_id, probe.embedding, int(top_k))  # 1:N index
        if not found:
            return []
        calibration = self.scorer.calibrations.get(Normalisation.RAW)
        out = [Candidate(cid, round(score, 4),
                         round(self.policy.confidence(float(calibration.llr(score, probe.speech_s))), 4))
               for cid, score in found]
        self.store.audit(AuditRecord("identify", None, "ok", self.actor, {"candidates": len(out)}))
        return out

    def thresholds(self) -> Thresholds:
        """The accept / reject thresholds in force and their expected error rates.

        AS-norm thresholds apply once the store holds enough other voiceprints to form a
        cohort; before that, the raw-score calibration's.
        """
        cohort = self.services.cohort_matrix(exclude="")
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
            self.services.forget(customer_id)
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
            self.services.forget(customer_id)
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

    # -- administration (what the CLI's keys / audit / purge commands call) ---------------------
    def purge_unused(self, unused_days: float) -> list[str]:
        """Erase the voiceprints not used for ``unused_days`` days (retention); returns their ids."""
        if unused_days < 0:
            raise VoiceAuthError(f"unused_days must be 0 or more, got {unused_days}")
        removed: list[str] = []
        try:
            removed = self.store.purge_unused(time.time() - unused_days * 86400, actor=self.actor)
        finally:  # the 1:N index and the cohort drop the purged (other processes: the change feed)
            self.services.forget(*removed)
        for customer_id in removed:
            self._end_live_calls(customer_id, CallStatus.NOT_ENROLLED, "voiceprint purged during the call")
        return removed

    def rotate_key(self) -> str:
        """Re-encrypt every voiceprint under a new key, atomically; returns the new key id."""
        return self.store.rotate_key(actor=self.actor)

    def verify_audit(self) -> AuditCheck:
        """Check the audit chain and its sealed head."""
        return self.store.verify_audit()

    def audit_events(self, customer_id: str | None = None, *, last: int | None = None) -> list[AuditEvent]:
        """Audit events (never biometric data), oldest first; only ``customer_id``'s when given."""
        wanted = None if customer_id is None else canonical_id(customer_id)
        events = [e for e in self.store.audit_events() if wanted is None or e.subject_id == wanted]
        return events if last is None else events[-last:] if last > 0 else []
