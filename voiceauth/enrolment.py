"""Building voiceprints from speech, possibly over several calls, with progress and feedback."""

from __future__ import annotations

import enum
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace

import numpy as np

from voiceauth.embedding import l2_normalise
from voiceauth.errors import AlreadyEnrolledError, ModelMismatchError
from voiceauth.results import EnrolmentProgress, EnrolmentStatus, Flag, SampleReport
from voiceauth.store.base import Builder, Namespace, Voiceprint

MIN_SAMPLE_SPEECH_S = 1.0
"""Samples with less net speech than this are reported but not used."""


class EnrolMode(str, enum.Enum):
    NEW = "new"
    REPLACE = "replace"
    UPDATE = "update"


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
