"""What the facade's parts share: the store, the models, the cohort, and preparing audio.

:class:`voiceauth.client.VoiceAuth` builds one :class:`Services` and hands it to the
watchlist, the live-call pool and bulk enrolment, so that none of them needs the facade.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Generic, Protocol, TypeVar, Union, overload

import numpy as np

from voiceauth.audio.decode import Audio, load_audio
from voiceauth.errors import ModelMismatchError, NoSpeechError, NotEnrolledError
from voiceauth.results import Flag, SampleReport
from voiceauth.services.cohort import CohortCache
from voiceauth.services.index import IdentifyIndex
from voiceauth.speech.activity import SpeechAnalysis, analyse
from voiceauth.store.base import AuditRecord, Namespace, Store, Voiceprint

MIN_SAMPLE_SPEECH_S = 1.0
"""Samples with less net speech than this are reported but not used."""

if TYPE_CHECKING:
    from voiceauth.embedding.base import Embedder
    from voiceauth.fraud.reference import SpoofReferences
    from voiceauth.fraud.spoof import SpoofDetector
    from voiceauth.scoring.calibration import CalibrationSet
    from voiceauth.scoring.policy import Policy
    from voiceauth.scoring.scorer import Scorer
    from voiceauth.services.harvest import Harvester
    from voiceauth.store.trials import Trial

AudioSource = Union[str, "os.PathLike[str]", np.ndarray, Audio]


@dataclass
class ShadowModel:
    """The next speaker model, whose voiceprints grow in the shadow of the current one
    (:mod:`voiceauth.services.shadow`)."""

    embedder: Embedder


@dataclass
class Services:
    """The shared parts of one ``VoiceAuth``.

    Mutable on purpose and shared by reference: ``va.embedder = ...`` (or any other of these
    attributes set on the facade) reaches the watchlist and the live calls too.
    """

    store: Store
    embedder: Embedder
    scorer: Scorer
    policy: Policy
    spoof: SpoofDetector | None
    actor: str
    enrol_speech_s: float
    cohort: CohortCache = field(default_factory=CohortCache)
    index: IdentifyIndex = field(default_factory=IdentifyIndex)
    """The 1:N identification index, in memory only, built on the first ``identify`` (issue 17)."""
    channel_scorers: dict[str, Scorer] = field(default_factory=dict)
    """Scorers of calibrations fitted on one channel tag's trials (``voiceauth calibrate --from-store``)."""
    calibration_versions: dict[str, int] = field(default_factory=dict)
    """Store calibration version in force per channel tag (``""``: untagged; 0 or absent: shipped/file)."""
    base_calibration: CalibrationSet | None = None
    """The calibration the client was given (None: the shipped one); what no active store version leaves."""
    call_margins: dict[str, dict[str, float]] = field(default_factory=dict)
    """Live accept margins by channel tag and normalisation, derived with the store calibration in
    force from reported call trajectories (:mod:`voiceauth.scoring.margin`); absent: the settings'."""
    spoof_reference: SpoofReferences | None = None
    """The spoof check's bona fide reference per channel tag (:mod:`voiceauth.fraud.reference`)."""
    shadow: ShadowModel | None = None
    """The next speaker model, whose voiceprints grow from authenticated speech (:mod:`voiceauth.services.shadow`)."""
    harvester: Harvester | None = None
    """Records trials (:mod:`voiceauth.services.harvest`); set by the Harvester itself."""

    def scorer_for(self, channel: str | None) -> Scorer:
        """The scorer of the channel tag's own calibration, else the default one."""
        return self.channel_scorers.get(channel or "", self.scorer)

    def call_margins_for(self, channel: str | None) -> dict[str, float]:
        """The derived live accept margins (by normalisation) of the calibration :meth:`scorer_for` uses."""
        tag = channel or ""
        return self.call_margins.get(tag if tag in self.channel_scorers else "", {})

    def cohort_matrix(self, exclude: str = "") -> np.ndarray:
        """The AS-norm cohort for the current model, without customer ``exclude``."""
        return self.cohort.matrix(self.store, self.embedder.model_id, exclude)

    def forget(self, *customer_ids: str) -> None:
        """Customer voiceprints were erased (or may have been) in this process: drop them from the
        cohort and the 1:N index at once (other processes follow the store's change feed)."""
        self.cohort.invalidate()
        self.index.forget(customer_ids)

    def record_use(self, customer_id: str, event: AuditRecord, trials: Sequence[Trial] = ()) -> None:
        """Mark the voiceprint used now, audit ``event`` and keep the decision's ``trials`` (scores
        only), in one transaction where the store can; a store without trial tables keeps none."""
        touch_audited = getattr(self.store, "touch_audited", None)
        if touch_audited is not None:
            if trials:
                touch_audited(Namespace.CUSTOMER, customer_id, time.time(), event, trials)
            else:
                touch_audited(Namespace.CUSTOMER, customer_id, time.time(), event)
            return
        self.store.touch(Namespace.CUSTOMER, customer_id, time.time())
        self.store.audit(event)
        add_trials = getattr(self.store, "add_trials", None)
        if trials and add_trials is not None:
            add_trials(trials)

    def spoof_check(self, speech: Audio, tag: str) -> tuple[tuple[Flag, ...], float | None]:
        """The spoof check of a recording's speech frames (never its pauses): (flags, spoof probability),
        ``((), None)`` with the check off. The channel's bona fide reference, where there is one,
        decides whether a high score gates the decision or only advises."""
        if self.spoof is None:
            return (), None
        verdict = self.spoof.score_speech(speech.samples, speech.sample_rate)
        probability = round(verdict.spoof_probability, 4)
        if self.spoof_reference is not None:
            assessment = self.spoof_reference.for_channel(tag).assess(verdict.score)
            return ((Flag.SPOOF_SUSPECTED,) if assessment.gate
                    else (Flag.SPOOF_ADVISORY,) if assessment.flag else ()), probability
        return ((Flag.SPOOF_SUSPECTED,) if verdict.suspected else ()), probability

    def refresh_cohort(self) -> int | None:
        """Re-draw the current model's bounded cohort now (a scheduled, off-peak job); its version,
        or None while the store is small enough to be the cohort itself."""
        return self.cohort.refresh(self.store, self.embedder.model_id)

    def load_voiceprint(self, customer_id: str, *, any_model: bool = False) -> Voiceprint:
        """The customer's complete voiceprint of the current model (``any_model``: of whichever model
        made it); NotEnrolledError / ModelMismatchError else. Callers that score use
        :func:`voiceauth.services.shadow.load`, which also upgrades to a complete shadow voiceprint."""
        voiceprint = self.store.get(Namespace.CUSTOMER, customer_id)
        if voiceprint is None:
            raise NotEnrolledError(f"customer {customer_id} is not enrolled; enrol them first (voiceauth enroll)")
        if not voiceprint.complete:
            raise NotEnrolledError(
                f"enrolment of {customer_id} is incomplete ({voiceprint.speech_s:.1f} s of "
                f"{self.enrol_speech_s:.0f} s of speech); add speech with enroll()"
            )
        if voiceprint.model_id != self.embedder.model_id and not any_model:
            raise ModelMismatchError(
                f"{customer_id}'s voiceprint was made by model {voiceprint.model_id}, not {self.embedder.model_id}; "
                "score with that model or re-enrol the customer with replace=True"
            )
        return voiceprint


T = TypeVar("T")


class HasServices(Protocol):
    services: Services


class Shared(Generic[T]):
    """A facade attribute kept in its ``services``: setting it on the facade reaches every part."""

    def __set_name__(self, owner: type, name: str) -> None:
        self._name = name

    @overload
    def __get__(self, obj: None, owner: type) -> Shared[T]: ...
    @overload
    def __get__(self, obj: HasServices, owner: type) -> T: ...
    def __get__(self, obj: HasServices | None, owner: type) -> T | Shared[T]:
        return self if obj is None else getattr(obj.services, self._name)  # type: ignore[no-any-return]

    def __set__(self, obj: HasServices, value: T) -> None:
        setattr(obj.services, self._name, value)


@dataclass(frozen=True)
class Prepared:
    """Analysed speech of the samples of one request, before anything is written."""

    speech: list[np.ndarray]
    """What the speaker model hears of each used sample: long non-speech out, short pauses kept
    (:attr:`~voiceauth.speech.activity.SpeechAnalysis.trimmed`)."""
    reports: list[SampleReport]
    seconds: list[float] = field(default_factory=list)
    """Net speech of each used sample (weights and enrolment progress: never the pauses)."""
    voiced: list[np.ndarray] = field(default_factory=list)
    """Only the speech frames of each used sample (the spoof check's input)."""


def source_name(source: AudioSource, index: int) -> str:
    """The file name of ``source``, or ``sample-<index>`` for audio in memory."""
    if isinstance(source, (str, os.PathLike)):
        return Path(source).name
    return f"sample-{index}"


def analysis_flags(analysis: SpeechAnalysis) -> tuple[Flag, ...]:
    return tuple(Flag(f.value) for f in analysis.report.flags)


def as_sources(samples: Sequence[AudioSource] | AudioSource) -> list[AudioSource]:
    """One recording or several, as a non-empty list; NoSpeechError when empty."""
    sources = [samples] if isinstance(samples, (str, os.PathLike, np.ndarray, Audio)) else list(samples)
    if not sources:
        raise NoSpeechError("no samples given; pass at least one recording")
    return sources


def prepare(
    sources: Sequence[AudioSource],
    sample_rate: int | None = None,
    channel: int | None = None,
    on_sample: Callable[[SampleReport], None] | None = None,
) -> Prepared:
    """Decode and analyse every sample; keep the speech of those with enough of it."""
    speech: list[np.ndarray] = []
    reports: list[SampleReport] = []
    seconds: list[float] = []
    voiced: list[np.ndarray] = []
    for index, source in enumerate(sources):
        audio = load_audio(source, sample_rate=sample_rate, channel=channel)
        analysis = analyse(audio)
        flags = analysis_flags(analysis)
        speech_s = analysis.report.speech_s
        used = speech_s >= MIN_SAMPLE_SPEECH_S
        if speech_s == 0:
            flags += (Flag.NO_SPEECH,)
        elif not used and Flag.TOO_SHORT not in flags:
            flags += (Flag.TOO_SHORT,)
        reports.append(SampleReport(source_name(source, index), round(speech_s, 2), used, flags))
        if on_sample is not None:
            on_sample(reports[-1])
        if used:
            speech.append(analysis.trimmed.samples)
            seconds.append(speech_s)
            voiced.append(analysis.speech.samples)
    return Prepared(speech, reports, seconds, voiced)
