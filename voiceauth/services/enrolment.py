"""Building voiceprints from speech, possibly over several calls, with progress and feedback."""

from __future__ import annotations

import enum
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace

import numpy as np

from voiceauth.embedding.base import l2_normalise
from voiceauth.errors import AlreadyEnrolledError, ConsentError, ModelMismatchError, OptedOutError, VoiceAuthError
from voiceauth.results import EnrolmentProgress, EnrolmentStatus, Flag, SampleReport
from voiceauth.services.core import MIN_SAMPLE_SPEECH_S, Services
from voiceauth.store.base import AuditRecord, Builder, Consent, Namespace, Voiceprint

__all__ = ["MIN_SAMPLE_SPEECH_S", "EnrolMode", "NewSpeech", "builder", "consent_gate", "mode_of", "pool",
           "progress", "write"]


class EnrolMode(str, enum.Enum):
    NEW = "new"
    REPLACE = "replace"
    UPDATE = "update"


def mode_of(replace: bool, update: bool) -> EnrolMode:
    """The public API's two flags as one mode (both at once is refused)."""
    if replace and update:
        raise VoiceAuthError("pass either replace=True or update=True, not both")
    return EnrolMode.REPLACE if replace else EnrolMode.UPDATE if update else EnrolMode.NEW


def consent_gate(services: Services, customer_id: str, consent: Consent | None, *,
                 legacy_migration: bool) -> AuditRecord | None:
    """The one consent rule for customer voiceprints, before any model work.

    Returns the opt-in record to write with the voiceprint (fresh consent lifting an opt-out),
    or None; raises ConsentError / OptedOutError with what to do.
    """
    if consent is None and not legacy_migration:
        raise ConsentError(
            f"enrolling {customer_id} needs a consent record: pass consent=Consent.now(channel=..., "
            "notice_version=..., captured_by=...) (CLI: --consent-channel/--consent-notice/--consent-by; "
            "bulk: the manifest's consent_channel,consent_notice,consent_by); for migrated voiceprints pass "
            "consent=None, legacy_migration=True (CLI: --legacy-migration)"
        )
    if not services.store.is_opted_out(customer_id):
        return None
    if consent is None:
        raise OptedOutError(f"{customer_id} opted out of voice biometrics; enrol again only with fresh consent")
    return AuditRecord("opt_in", customer_id, "fresh_consent", services.actor)


@dataclass(frozen=True)
class NewSpeech:
    """Embedded speech from this enrolment call, ready to merge."""

    embedding: np.ndarray
    speech_s: float
    recordings: int


def pool(embeddings: np.ndarray, speech_s: Sequence[float]) -> NewSpeech:
    """Speech-weighted mean of per-sample embeddings."""
    weights = np.asarray(speech_s, dtype=np.float64)
    mean = (embeddings * weights[:, None]).sum(axis=0)
    return NewSpeech(l2_normalise(mean), float(weights.sum()), len(weights))


def builder(
    subject_id: str,
    namespace: Namespace,
    model_id: str,
    new: NewSpeech,
    *,
    mode: str,
    required_s: float,
    meta: dict[str, str] | None = None,
) -> Builder:
    """The read-modify-write step a Store runs under its write lock."""

    def build(current: Voiceprint | None) -> Voiceprint:
        now = time.time()
        if current is not None and current.model_id != model_id and mode != EnrolMode.REPLACE:
            raise ModelMismatchError(
                f"{subject_id} was enrolled with model {current.model_id}, this is {model_id}; "
                "re-enrol with replace=True"
            )
        merge = current is not None and (mode == EnrolMode.UPDATE or not current.complete)
        if current is not None and current.complete and mode == EnrolMode.NEW:
            raise AlreadyEnrolledError(
                f"{subject_id} is already enrolled; pass replace=True to start over or update=True "
                "to add this speech to the existing voiceprint (CLI: --replace / --update)"
            )
        if merge:
            assert current is not None
            total = current.speech_s + new.speech_s
            embedding = l2_normalise(current.embedding * current.speech_s + new.embedding * new.speech_s)
            return replace(
                current,
                embedding=embedding,
                speech_s=total,
                recordings=current.recordings + new.recordings,
                complete=total >= required_s,
                updated_at=now,
                meta={**current.meta, **(meta or {})},
            )
        return Voiceprint(
            subject_id=subject_id,
            namespace=namespace,
            model_id=model_id,
            embedding=new.embedding,
            speech_s=new.speech_s,
            recordings=new.recordings,
            complete=new.speech_s >= required_s,
            created_at=now,
            updated_at=now,
            meta=dict(meta or {}),
        )

    return build


def progress(voiceprint: Voiceprint, required_s: float, samples: Sequence[SampleReport]) -> EnrolmentProgress:
    feedback: list[Flag] = []
    for sample in samples:
        for flag in sample.flags:
            if flag not in feedback:
                feedback.append(flag)
    if not voiceprint.complete and Flag.TOO_SHORT not in feedback:
        feedback.append(Flag.TOO_SHORT)
    status = EnrolmentStatus.COMPLETE if voiceprint.complete else EnrolmentStatus.IN_PROGRESS
    return EnrolmentProgress(
        customer_id=voiceprint.subject_id,
        status=status,
        percent=round(min(100.0, 100.0 * voiceprint.speech_s / required_s), 1),
        speech_s=round(voiceprint.speech_s, 2),
        required_s=required_s,
        recordings=voiceprint.recordings,
        feedback=tuple(feedback),
        samples=tuple(samples),
    )


def write(
    services: Services,
    namespace: Namespace,
    subject_id: str,
    new: NewSpeech,
    *,
    model_id: str,
    mode: EnrolMode,
    required_s: float,
    action: str = "enroll",
    detail: dict[str, object] | None = None,
    consent: Consent | None = None,
    opt_in: AuditRecord | None = None,
    meta: dict[str, str] | None = None,
    check: Callable[[Builder], Builder] | None = None,
) -> Voiceprint:
    """The one write path for voiceprints (customers, watchlist entries, bulk enrolment).

    Merges ``new`` into the stored voiceprint (or starts one) under the store's write lock,
    together with its audit event, consent record and opt-in, in one transaction; then
    drops the cached cohort when a customer voiceprint changed. ``check`` may wrap the build
    step to refuse a result (the watchlist refuses entries too short to screen).
    """
    build = builder(subject_id, namespace, model_id, new, mode=mode, required_s=required_s, meta=meta)
    if check is not None:
        build = check(build)
    outcome = mode.value if action == "enroll" else "added"
    event = AuditRecord(action, subject_id, outcome, services.actor,
                        {"speech_s": round(new.speech_s, 1), "recordings": new.recordings, "model": model_id,
                         **(detail or {})})
    voiceprint = services.store.upsert(namespace, subject_id, build, event=event, consent=consent, opt_in=opt_in)
    if namespace is Namespace.CUSTOMER:
        services.cohort.invalidate()
    return voiceprint
