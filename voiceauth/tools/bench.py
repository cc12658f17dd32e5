"""`voiceauth bench`: accuracy of one or more speaker models on a labelled corpus, side by side
with plain SpeechBrain.

Corpus layout: ``CORPUS/<speaker>/<any name>.{wav,flac,ogg}``. Each speaker is enrolled
on their first ``enroll_files`` files (sorted by name); every other file is a genuine
trial for its speaker and an impostor trial against every other enrolled speaker.
Optional extra impostor-only files and an AS-norm cohort can be given.

The baseline is what a user gets from SpeechBrain alone: ``EncoderClassifier``
embeddings of each whole file (enrolment = mean of the file embeddings) and cosine.

A model without a calibration (none shipped, none given) is reported on its raw or AS-norm
scores: EER and minDCF only, no error rates at the policy's thresholds (there are none).
"""

from __future__ import annotations

import csv
import json
import logging
import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import cast

import numpy as np

from voiceauth.audio.channel import add_noise, telephone_channel
from voiceauth.audio.decode import MODEL_RATE, Audio, load_audio, resample
from voiceauth.embedding.base import Embedder, l2_normalise
from voiceauth.embedding.ecapa import EcapaEmbedder
from voiceauth.errors import AudioError, CalibrationError, CorpusError
from voiceauth.scoring.calibration import Calibration, CalibrationSet
from voiceauth.scoring.normalisation import MIN_COHORT, Normalisation, as_norm
from voiceauth.scoring.policy import Policy
from voiceauth.scoring.statistics import clopper_pearson, compute_metrics, error_rates
from voiceauth.services.engines import shipped_calibration
from voiceauth.speech.activity import FRAME_S, analyse, speech_mask
from voiceauth.tools.plots import plot_det, plot_score_histograms

log = logging.getLogger(__name__)
AUDIO_SUFFIXES = {".wav", ".flac", ".ogg"}
BASELINE_THRESHOLD = 0.25
"""SpeechBrain's default cosine threshold in ``SpeakerRecognition.verify_batch``."""


@dataclass(frozen=True)
class BenchSettings:
    enroll_files: int = 3
    channel: str = "clean"
    max_seconds: float | None = None
    noise_snr: float | None = None
    baseline: bool = False
    target_far: float = 0.01


@dataclass(frozen=True)
class Split:
    """Which files enrol each speaker and which are trials."""

    enrol: dict[str, list[Path]]
    tests: dict[str, list[Path]]
    impostors: list[Path] = field(default_factory=list)
    cohort: list[Path] = field(default_factory=list)


def audio_files(directory: Path) -> list[Path]:
    return sorted(p for p in directory.iterdir() if p.is_file() and p.suffix.lower() in AUDIO_SUFFIXES)


def audio_tree(root: Path) -> list[Path]:
    """Every audio file below ``root``, sorted."""
    return sorted(p for p in root.rglob("*") if p.is_file() and p.suffix.lower() in AUDIO_SUFFIXES)


def split_corpus(corpus: str | os.PathLike[str], enroll_files: int = 3) -> Split:
    root = Path(corpus)
    if not root.is_dir():
        raise CorpusError(f"corpus directory not found: {root}; expected CORPUS/<speaker>/<files>")
    speakers = {d.name: audio_files(d) for d in sorted(root.iterdir()) if d.is_dir()}
    speakers = {k: v for k, v in speakers.items() if v}
    if len(speakers) < 2:
        raise CorpusError(
            f"{root} holds {len(speakers)} speaker folder(s) with audio; a benchmark needs at least 2 "
            "(layout CORPUS/<speaker>/<file>.wav)"
        )
    short = [f"{k} ({len(v)})" for k, v in speakers.items() if len(v) <= enroll_files]
    if short:
        raise CorpusError(
            f"speakers with too few files for {enroll_files} enrolment files plus at least one trial: "
            f"{', '.join(short)}; remove them or lower --enroll-files"
        )
    return Split({k: v[:enroll_files] for k, v in speakers.items()}, {k: v[enroll_files:] for k, v in speakers.items()})


def crop_to_speech(audio: Audio, seconds: float) -> Audio:
    """The shortest prefix of ``audio`` holding ``seconds`` of net speech."""
    mask = speech_mask(audio.samples, audio.sample_rate)
    needed = int(round(seconds / FRAME_S))
    voiced = np.flatnonzero(mask)
    if len(voiced) <= needed:
        return audio
    end = int((voiced[needed - 1] + 1) * FRAME_S * audio.sample_rate)
    return Audio(audio.samples[:end], audio.sample_rate)


def condition(audio: Audio, settings: BenchSettings, *, is_test: bool, seed: int) -> Audio:
    """Apply the benchmark's channel, noise and crop to one recording (16 kHz out)."""
    if settings.channel == "phone":
        phone = telephone_channel(audio)
        audio = Audio(resample(phone.samples, phone.sample_rate, MODEL_RATE), MODEL_RATE)
    if settings.noise_snr is not None:
        audio = add_noise(audio, settings.noise_snr, seed=seed)
    if is_test and settings.max_seconds:
        audio = crop_to_speech(audio, settings.max_seconds)
    return audio


@dataclass
class Embedded:
    ours: np.ndarray
    speech_s: float
    base: np.ndarray | None


@dataclass
class SystemResult:
    eer: float
    min_dcf: dict[str, float]
    far: float | None
    frr: float | None
    far_interval: tuple[float, float] | None
    frr_interval: tuple[float, float] | None
    threshold: float | None
    """None (and so the four above) for a model without a calibration."""
    n_genuine: int
    n_impostor: int
    inconclusive: float | None = None


class Bench:
    """Embeds a split once with ``embedder`` and scores every trial with it (and the baseline).

    ``calibrations`` default to the shipped ones of the embedder's model, if any.
    ``baseline_model_dir``: the ECAPA files of the SpeechBrain baseline (when ``embedder`` is not ECAPA).
    """

    def __init__(
        self,
        settings: BenchSettings,
        *,
        embedder: Embedder | None = None,
        calibrations: CalibrationSet | None = None,
        progress: bool = True,
        cache: dict[tuple[str, ...], Embedded] | None = None,
        baseline_model_dir: str | os.PathLike[str] | None = None,
    ) -> None:
        self.settings = settings
        self.cache = cache if cache is not None else {}
        self.embedder: Embedder = embedder or EcapaEmbedder()
        model_id = self.embedder.model_id
        self.calibrations = calibrations.check_model(model_id) if calibrations else shipped_calibration(model_id)
        self._baseline_dir = baseline_model_dir
        self.policy = Policy(target_far=settings.target_far)
        self.progress = progress
        self.skipped: list[str] = []

    def _embed_files(
        self, files: Sequence[Path], label: str, *, is_test: bool, baseline: bool = True
    ) -> dict[Path, Embedded]:
        from tqdm import tqdm

        out: dict[Path, Embedded] = {}
        st = self.settings
        for index, path in enumerate(tqdm(files, desc=label, disable=not self.progress, leave=False)):
            with_base = st.baseline and baseline
            key = (self.embedder.model_id, str(path), st.channel, str(st.noise_snr),
                   str(st.max_seconds if is_test else None), str(with_base))
            if key in self.cache:
                out[path] = self.cache[key]
                continue
            try:
                audio = condition(load_audio(path), self.settings, is_test=is_test, seed=index)
            except AudioError as exc:
                log.warning("skipping %s: %s", path, exc)
                self.skipped.append(str(path))
                continue
            analysis = analyse(audio)
            if analysis.report.speech_s < 0.5:
                log.warning("skipping %s: %.1f s of speech", path, analysis.report.speech_s)
                self.skipped.append(str(path))
                continue
            ours = self.embedder.embed([analysis.trimmed.samples])[0]
            base = self._baseline_embed(audio.samples) if with_base else None
            out[path] = self.cache[key] = Embedded(ours, analysis.report.speech_s, base)
        return out

    def _baseline_embed(self, samples: np.ndarray) -> np.ndarray:
        import torch

        ecapa = self.embedder if isinstance(self.embedder, EcapaEmbedder) else EcapaEmbedder(self._baseline_dir)
        model = ecapa.load()._model
        with torch.inference_mode():
            emb = model.encode_batch(torch.from_numpy(samples)[None])
        return l2_normalise(emb.squeeze().cpu().numpy())

    def collect(self, split: Split) -> TrialSet:
        """Embed every file once and score every trial (raw, AS-norm, baseline)."""
        enrol_files = [p for files in split.enrol.values() for p in files]
        test_files = [p for files in split.tests.values() for p in files]
        enrolled = self._embed_files(enrol_files, "enrolment", is_test=False)
        tested = self._embed_files(test_files + list(split.impostors), "trials", is_test=True)
        cohort_emb = self._embed_files(split.cohort, "cohort", is_test=False, baseline=False)

        speakers = [s for s in split.enrol if any(p in enrolled for p in split.enrol[s])]
        ours_vp, base_vp = {}, {}
        for s in speakers:
            items = [enrolled[p] for p in split.enrol[s] if p in enrolled]
            weights = np.array([e.speech_s for e in items])
            ours_vp[s] = l2_normalise((np.stack([e.ours for e in items]) * weights[:, None]).sum(0))
            if self.settings.baseline:
                base_vp[s] = l2_normalise(np.stack([e.base for e in items]).mean(0))  # type: ignore[misc]

        owner = {p: s for s, files in split.tests.items() for p in files}
        trials = [(s, path, owner.get(path) == s) for path in tested for s in speakers]
        if not trials:
            raise CorpusError("no usable trials: every test file was skipped; check the corpus audio")

        if cohort_emb:
            cohort, cohort_source = np.stack([e.ours for e in cohort_emb.values()]), "cohort files"
        else:
            cohort, cohort_source = np.stack([ours_vp[s] for s in speakers]), "other enrolled speakers"
        raw = np.array([float(ours_vp[s] @ tested[p].ours) for s, p, _ in trials])
        norm = None
        if len(cohort) - (0 if cohort_emb else 1) >= MIN_COHORT:
            def cohort_for(speaker: str) -> np.ndarray:
                return cohort if cohort_emb else cohort[[i for i, x in enumerate(speakers) if x != speaker]]

            norm = np.array([as_norm(r, ours_vp[s], tested[p].ours, cohort_for(s))
                             for r, (s, p, _) in zip(raw, trials, strict=True)])
        base = None
        if self.settings.baseline:
            base = np.array([float(base_vp[s] @ tested[p].base) for s, p, _ in trials])  # type: ignore[operator]
        return TrialSet(
            labels=np.array([g for _, _, g in trials]),
            speech_s=np.array([tested[p].speech_s for _, p, _ in trials]),
            raw=raw, as_norm=norm, baseline=base, cohort_source=cohort_source, cohort_size=int(len(cohort)),
            speakers=len(speakers), skipped=len(self.skipped),
        )

    def report(self, trials: TrialSet, calibrations: CalibrationSet | None = None) -> Report:
        """Metrics of both systems; voiceauth's at the policy's thresholds on calibrated LLRs
        (without a calibration: on the scores, EER and minDCF only)."""
        calibrations = calibrations or self.calibrations
        if calibrations is None:
            llr, accept_llr = trials.scores, None
            ours = _system(llr, trials.labels, None)
        else:
            calibration = calibrations.get(trials.normalisation)
            llr = np.asarray(calibration.llr(trials.scores, trials.speech_s))
            th = self.policy.thresholds(calibration)
            accept_llr = th.accept_llr
            ours = _system(llr, trials.labels, accept_llr)
            ours.inconclusive = round(float(((llr < th.accept_llr) & (llr >= th.reject_llr)).mean()), 4)
        result: dict[str, object] = {
            "settings": asdict(self.settings) | {"normalisation": trials.normalisation.value,
                                                  "cohort": trials.cohort_source, "cohort_size": trials.cohort_size},
            "speakers": trials.speakers,
            "skipped_files": trials.skipped,
            "model_id": self.embedder.model_id,
            "calibrated": calibrations is not None,
            "voiceauth": asdict(ours),
        }
        if trials.baseline is not None:
            result["baseline"] = asdict(_system(trials.baseline, trials.labels, BASELINE_THRESHOLD))
        return Report(result, trials, llr, accept_llr)

    def run(self, split: Split) -> Report:
        return self.report(self.collect(split))


@dataclass
class TrialSet:
    """Every trial of one benchmark condition, scored by each system."""

    labels: np.ndarray
    speech_s: np.ndarray
    raw: np.ndarray
    as_norm: np.ndarray | None
    baseline: np.ndarray | None
    cohort_source: str
    cohort_size: int
    speakers: int
    skipped: int

    @property
    def normalisation(self) -> Normalisation:
        return Normalisation.RAW if self.as_norm is None else Normalisation.AS_NORM

    @property
    def scores(self) -> np.ndarray:
        return self.raw if self.as_norm is None else self.as_norm


@dataclass
class Report:
    result: dict[str, object]
    trials: TrialSet
    llr: np.ndarray
    """Calibrated LLRs, or the scores themselves when ``accept_llr`` is None (no calibration)."""
    accept_llr: float | None

    def write(self, out: str | os.PathLike[str], name: str = "bench") -> None:
        """JSON, trials CSV (for `voiceauth calibrate`), DET plot and score histograms."""
        out_dir = Path(out)
        out_dir.mkdir(parents=True, exist_ok=True)
        (out_dir / f"{name}.json").write_text(json.dumps(self.result, indent=2))
        write_trials(out_dir / f"{name}-trials.csv", self.trials)
        labels = self.trials.labels
        systems = {"voiceauth": (self.llr, labels)}
        if self.trials.baseline is not None:
            systems["SpeechBrain baseline"] = (self.trials.baseline, labels)
        plot_det(systems, out_dir / f"{name}-det.png", title=f"DET: {name}")
        calibrated = self.accept_llr is not None
        plot_score_histograms(self.llr, labels, out_dir / f"{name}-scores.png",
                              title=f"voiceauth {'LLR' if calibrated else 'score (uncalibrated)'}: {name}",
                              thresholds={"accept": self.accept_llr} if self.accept_llr is not None else None)


def compare(reports: dict[str, Report]) -> dict[str, object]:
    """One result for the reports of several models on the same split: ``models`` holds each
    model's metrics (with its id and whether it was calibrated); ``voiceauth`` is the first's."""
    if not reports:
        raise CorpusError("no model to compare; pass at least one --model")
    first = next(iter(reports.values())).result
    models = {name: {"model_id": r.result["model_id"], "calibrated": r.result["calibrated"],
                     **cast(dict[str, object], r.result["voiceauth"])} for name, r in reports.items()}
    baseline = next((r.result["baseline"] for r in reports.values() if "baseline" in r.result), None)
    return {**first, "models": models} | ({"baseline": baseline} if baseline else {})


def _system(scores: np.ndarray, labels: np.ndarray, threshold: float | None) -> SystemResult:
    """Metrics of one system; error rates at ``threshold`` unless it is None."""
    m = compute_metrics(scores, labels)
    n_imp, n_gen = int((~labels).sum()), int(labels.sum())
    result = SystemResult(
        eer=round(m.eer, 5), min_dcf={"0.01": round(m.min_dcf_01, 4), "0.001": round(m.min_dcf_001, 4)},
        far=None, frr=None, far_interval=None, frr_interval=None, threshold=None, n_genuine=n_gen, n_impostor=n_imp,
    )
    if threshold is not None:
        far, frr = error_rates(scores, labels, threshold)
        fa_i = clopper_pearson(int(round(far * n_imp)), n_imp)
        fr_i = clopper_pearson(int(round(frr * n_gen)), n_gen)
        result.far, result.frr, result.threshold = round(far, 5), round(frr, 5), round(float(threshold), 4)
        result.far_interval = (round(fa_i.low, 5), round(fa_i.high, 5))
        result.frr_interval = (round(fr_i.low, 5), round(fr_i.high, 5))
    return result


def write_trials(path: Path, trials: TrialSet) -> None:
    with open(path, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["normalisation", "score", "label", "speech_s"])
        for kind, scores in ((Normalisation.RAW, trials.raw), (Normalisation.AS_NORM, trials.as_norm)):
            if scores is None:
                continue
            for s, g, d in zip(scores, trials.labels, trials.speech_s, strict=True):
                w.writerow([kind.value, f"{s:.5f}", "genuine" if g else "impostor", f"{d:.2f}"])


LABELS = {"genuine": True, "target": True, "1": True, "true": True,
          "impostor": False, "nontarget": False, "0": False, "false": False}


TrialColumns = tuple[list[float], list[bool], list[float]]


def read_trials(paths: Sequence[str | os.PathLike[str]]) -> dict[Normalisation, TrialColumns]:
    """Read trials CSV files (columns ``score,label,speech_s`` and optional ``normalisation``)."""
    out: dict[Normalisation, TrialColumns] = {}
    for path in paths:
        try:
            with open(path, newline="") as fh:
                rows = list(csv.DictReader(fh))
        except OSError as exc:
            raise CalibrationError(f"cannot read trials file {path}: {exc}") from exc
        for line, row in enumerate(rows, start=2):
            try:
                label = LABELS[str(row.get("label", "")).strip().lower()]
            except KeyError:
                raise CalibrationError(
                    f"{path}:{line}: unknown label {row.get('label')!r}; "
                    "use genuine/impostor (or target/nontarget, 1/0)"
                ) from None
            try:
                kind = Normalisation(row.get("normalisation") or "raw")
                score, speech = float(row["score"]), float(row.get("speech_s") or 10.0)
            except (KeyError, ValueError, TypeError) as exc:
                raise CalibrationError(
                    f"{path}:{line}: bad row {row} ({exc}); columns are score,label,speech_s"
                ) from exc
            bucket = out.setdefault(kind, ([], [], []))
            bucket[0].append(score)
            bucket[1].append(label)
            bucket[2].append(speech)
    if Normalisation.RAW not in out:
        raise CalibrationError(
            "no raw-score trials found; the trials file needs rows with normalisation 'raw' (or none)"
        )
    return out


def fit_calibrations(trials: dict[Normalisation, TrialColumns], model_id: str, source: str) -> CalibrationSet:
    return CalibrationSet(
        model_id, {kind: Calibration.fit(s, y, d, kind, source) for kind, (s, y, d) in trials.items()}
    )
