"""Trial harvest: in-domain labelled trials from the bank's own traffic, kept as scores only.

* **Enrolment** (consented only): each recording is scored against the customer's other
  recordings of the enrolment (or, continuing an enrolment, against the voiceprint so far):
  genuine trials; and against a random sample of other customers' voiceprints: impostor
  trials. All on the bank's own channel, labelled at once (source ``enrolment``).
* **Verifications and live calls** record the score behind the decision under a random trial
  id returned in the result; the bank reports the outcome later (``VoiceAuth.report_outcome``:
  passed the security questions, a confirmed fraud case...).
* **Spoof bona fide reference**: the spoof check's score of each consented enrolment
  recording, per channel tag (:mod:`voiceauth.fraud.reference` reads them).

Only scores, net speech, the normalisation, the channel tag and the day are kept (see
:mod:`voiceauth.store.trials`); the trial id never reaches the audit trail, so nothing in the
store links a trial to a customer, before or after the customer is erased.

Same-session genuine trials (recordings of one enrolment) score higher than a caller weeks
later; outcome-labelled calls are the cross-session genuine trials that correct for it, and
:mod:`voiceauth.services.recalibrate` says how many of each a refit used.
"""

from __future__ import annotations

import logging
import secrets
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from voiceauth.audio.decode import MODEL_RATE
from voiceauth.embedding.base import l2_normalise
from voiceauth.errors import StoreError, VoiceAuthError
from voiceauth.scoring.normalisation import MIN_COHORT, Normalisation, as_norm_many
from voiceauth.store.trials import Trial, TrialKind, TrialStore

if TYPE_CHECKING:
    from voiceauth.scoring.scorer import Score
    from voiceauth.store.base import Voiceprint

log = logging.getLogger(__name__)

IMPOSTORS_PER_RECORDING = 10
"""Other customers' voiceprints each enrolment recording is scored against."""
OUTCOME_SOURCES = ("kba", "fraud_case", "agent", "customer_complaint", "no_dispute", "test")
"""Usual ``source`` values of an outcome; any short word is accepted."""
MAX_CHANNEL_TAG = 40


def new_trial_id() -> str:
    """A random trial id (96 bits): it names the trial, and nothing else."""
    return f"t-{secrets.token_hex(12)}"


def channel_tag(value: str | None) -> str:
    """A channel tag as stored: ``""`` for none; short printable words (``ivr-8k``) only."""
    if value is None:
        return ""
    tag = str(value).strip()
    if len(tag) > MAX_CHANNEL_TAG or not all(c.isalnum() or c in "-_.:" for c in tag):
        raise VoiceAuthError(f"channel tag {value!r} must be up to {MAX_CHANNEL_TAG} letters, digits, '-', '_', '.' "
                             "or ':' (e.g. 'ivr-8k', 'app-16k')")
    return tag


def trial_store(services: Any) -> TrialStore | None:
    store = services.store
    return store if isinstance(store, TrialStore) else None


class Harvester:
    """Records trials into the store of ``services`` (a :class:`~voiceauth.services.core.Services`;
    a no-op for stores without trial tables).

    A failure to record never changes a decision: it is logged and the result carries no trial id.
    """

    def __init__(self, services: Any, *, enabled: bool = True,
                 impostors_per_recording: int = IMPOSTORS_PER_RECORDING) -> None:
        self.services = services
        services.harvester = self
        self.enabled = enabled
        self.impostors_per_recording = impostors_per_recording
        self._rng = np.random.default_rng(secrets.randbits(64))

    @property
    def store(self) -> TrialStore | None:
        return trial_store(self.services) if self.enabled else None

    def _calibration_version(self, channel: str) -> int:
        return int(self.services.calibration_versions.get(channel, self.services.calibration_versions.get("", 0)))

    def _save(self, trials: Sequence[Trial]) -> bool:
        store = self.store
        if store is None or not trials:
            return False
        try:
            store.add_trials(trials)
            return True
        except (StoreError, OSError) as exc:
            log.warning("could not record %d trial(s): %s", len(trials), exc)
            return False

    # -- enrolment ---------------------------------------------------------------------------------
    def enrolment(self, customer_id: str, embeddings: np.ndarray, speech_s: Sequence[float], channel: str,
                  previous: np.ndarray | None = None) -> int:
        """Genuine and impostor trials of one consented enrolment call; returns how many were recorded."""
        if self.store is None:
            return 0
        sv = self.services
        emb = np.asarray(embeddings, dtype=np.float64)
        secs = np.asarray(speech_s, dtype=np.float64)
        cohort = np.asarray(sv.cohort_matrix(exclude=customer_id), dtype=np.float64)
        use_norm = len(cohort) >= MIN_COHORT
        model_id = sv.embedder.model_id
        kind = Normalisation.AS_NORM if use_norm else Normalisation.RAW
        version = self._calibration_version(channel)
        trials: list[Trial] = []
        # genuine: each recording against the others (speech-weighted), or against the voiceprint so far
        enrol_sides = []
        for i in range(len(emb)):
            others = [j for j in range(len(emb)) if j != i]
            if others:
                side = l2_normalise((emb[others] * secs[others, None]).sum(axis=0))
            elif previous is not None:
                side = np.asarray(previous, dtype=np.float64)
            else:
                continue
            enrol_sides.append((i, side))
        if enrol_sides:
            idx = np.array([i for i, _ in enrol_sides])
            sides = np.stack([s for _, s in enrol_sides])
            raw = np.einsum("ij,ij->i", sides, emb[idx])
            normed = as_norm_many(raw, sides, emb[idx], cohort) if use_norm else None
            for n, i in enumerate(idx):
                trials.append(Trial(new_trial_id(), TrialKind.ENROL_GENUINE, model_id, channel, kind.value,
                                    float(raw[n]), None if normed is None else float(normed[n]), float(secs[i]),
                                    label=True, source="enrolment", calibration=version))
        # impostor: each recording against a sample of other voiceprints (AS-norm without that voiceprint)
        k = min(self.impostors_per_recording, len(cohort))
        for i in range(len(emb)):
            for j in self._rng.choice(len(cohort), size=k, replace=False) if k else []:
                raw_ij = float(cohort[j] @ emb[i])
                normed_ij = None
                if use_norm and len(cohort) - 1 >= MIN_COHORT:
                    rest = np.delete(cohort, j, axis=0)
                    normed_ij = float(as_norm_many(np.array([raw_ij]), cohort[j][None], emb[i][None], rest)[0])
                trials.append(Trial(new_trial_id(), TrialKind.ENROL_IMPOSTOR, model_id, channel,
                                    kind.value if normed_ij is not None or not use_norm else Normalisation.RAW.value,
                                    raw_ij, normed_ij, float(secs[i]), label=False, source="enrolment",
                                    calibration=version))
        self._rng.shuffle(trials)  # type: ignore[arg-type]
        return len(trials) if self._save(trials) else 0

    def enrolment_with_spoof(self, customer_id: str, embeddings: np.ndarray, speech_s: Sequence[float],
                             channel: str, before: Voiceprint | None, speech: Sequence[np.ndarray]) -> None:
        """Everything a consented enrolment yields: speaker trials, then the bona fide spoof scores of
        its recordings for the channel's reference. Never fails the enrolment."""
        sv = self.services
        previous = before.embedding if before is not None and before.model_id == sv.embedder.model_id else None
        self.enrolment(customer_id, embeddings, speech_s, channel, previous)
        references, detector = sv.spoof_reference, sv.spoof
        if detector is None or references is None or self.store is None:
            return
        try:
            reference = references.for_channel(channel)
            scores = [detector.score_speech(x, MODEL_RATE).score for x in speech]
        except (VoiceAuthError, ValueError, RuntimeError, OSError) as exc:
            log.warning("no bona fide spoof scores from this enrolment: %s", exc)
            return
        # a recording the reference would gate is not taken as bona fide: a synthetic enrolment cannot poison it
        kept = [v for v in scores if not reference.assess(v).gate]
        if self.spoof_scores(kept, channel, getattr(detector, "model_id", "")):
            references.invalidate()

    def spoof_scores(self, scores: Sequence[float], channel: str, model_id: str) -> int:
        """Bona fide spoof scores of a consented enrolment's recordings, for the channel's reference."""
        trials = [Trial(new_trial_id(), TrialKind.SPOOF_BONA_FIDE, model_id, channel, Normalisation.RAW.value,
                        float(s), None, 0.0, label=True, source="enrolment") for s in scores if np.isfinite(s)]
        return len(trials) if self._save(trials) else 0

    # -- decisions -----------------------------------------------------------------------------------
    def decision(self, kind: str, score: Score, speech_s: float, channel: str, trial_id: str | None = None, *,
                 trajectory: tuple[tuple[float, float], ...] | None = None) -> str | None:
        """Record the score behind a verification or call (a call: with its trajectory); its trial id
        (None: not recorded)."""
        trial = self.trial(kind, score, speech_s, channel, trial_id, trajectory=trajectory)
        return trial.trial_id if trial is not None and self._save([trial]) else None

    def trial(self, kind: str, score: Score, speech_s: float, channel: str, trial_id: str | None = None, *,
              trajectory: tuple[tuple[float, float], ...] | None = None) -> Trial | None:
        """The trial row of a decision, not yet written (None: this client records no trials); the
        caller writes it in the decision's own transaction (:meth:`Services.record_use`)."""
        if self.store is None:
            return None
        normed = score.value if score.normalisation is Normalisation.AS_NORM else None
        return Trial(trial_id or new_trial_id(), kind, self.services.embedder.model_id, channel,
                     score.normalisation.value, score.raw, normed, float(speech_s), llr=score.llr,
                     calibration=self._calibration_version(channel), trajectory=trajectory)

    def report_outcome(self, trial_id: str, *, genuine: bool, source: str) -> Trial:
        """Label a verification or call trial with what the bank found out; StoreError when impossible."""
        store = trial_store(self.services)
        if store is None:
            raise StoreError("this store keeps no trials (a custom Store without voiceauth.store.trials.TrialStore)")
        if not isinstance(genuine, bool):
            raise VoiceAuthError(f"genuine must be True or False, got {genuine!r}")
        word = str(source).strip()
        if not word or len(word) > MAX_CHANNEL_TAG or not all(c.isalnum() or c in "-_." for c in word):
            raise VoiceAuthError(f"source {source!r} must be a short word such as {', '.join(OUTCOME_SOURCES[:3])}")
        if not (isinstance(trial_id, str) and trial_id.startswith("t-") and len(trial_id) <= 64):
            raise VoiceAuthError(f"{trial_id!r} is not a trial id (they look like t-3f2a...; results carry them)")
        return store.label_trial(trial_id, genuine, word, actor=self.services.actor)
