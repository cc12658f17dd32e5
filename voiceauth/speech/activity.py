"""Voice activity, net speech seconds and a quality report.

An energy detector on 20 ms frames. Each frame's level is its variance in dBFS (so DC
offset never counts). A frame is speech when it is

* above the adaptive threshold: the noise floor (a low percentile of the audible frame
  levels, or a running minimum tracker when streaming) plus ``MARGIN_DB``, but never
  more than ``DYNAMIC_RANGE_DB`` under the loud frames and never less than
  ``MIN_MARGIN_DB`` over the floor;
* above ``ABSOLUTE_FLOOR_DB``, so digital silence and faint hiss never count;
* not steady: speech level moves by several dB within a syllable, a tone or hum does
  not, so frames in a ``STEADY_FRAMES`` run that stays within ``STEADY_RANGE_DB`` are
  dropped.

Isolated bursts shorter than ``MIN_BURST_FRAMES`` are dropped and ``HANGOVER_FRAMES``
frames after each run are kept, for word endings. About 20 ms per minute of audio.

The speech frames measure net speech (the minimum-speech checks, progress) and are what
the spoof check hears. The speaker model gets :attr:`SpeechAnalysis.trimmed` (live:
:meth:`SpeechGate.push_kept`): the recording with only long non-speech taken out, short
pauses and word edges kept (:mod:`voiceauth.speech.pauses`).
"""

from __future__ import annotations

import enum
from collections import deque
from dataclasses import dataclass

import numpy as np

from voiceauth.audio.decode import Audio
from voiceauth.errors import NoSpeechError, SessionError
from voiceauth.speech.pauses import PauseTrimmer, keep_mask, pause_frames, remove_dc

FRAME_S = 0.02
"""Nominal frame length (seconds); the real one is ``frame_length(rate) / rate``."""

SILENCE_DBFS = -120.0
"""Level reported for digital silence."""
DIGITAL_SILENCE_DB = -90.0
"""Frames below this are dead air: they say nothing about the background noise."""
ABSOLUTE_FLOOR_DB = -55.0
"""Frames at or under this level (dBFS) are never speech."""
NOISE_PERCENTILE = 10.0
"""The noise floor is this percentile of the audible frame levels."""
MARGIN_DB = 9.0
"""Speech is this far above the noise floor..."""
DYNAMIC_RANGE_DB = 25.0
"""...or, in recordings with hardly any pauses, within this of the loud frames..."""
MIN_MARGIN_DB = 3.0
"""...but always at least this far above the floor."""
LOUD_PERCENTILE = 95.0
STEADY_FRAMES = 25
"""Frames in a run this long whose levels stay within ``STEADY_RANGE_DB`` are a tone, not speech."""
STEADY_RANGE_DB = 1.0
HANGOVER_FRAMES = 4
MIN_BURST_FRAMES = 3

CLIPPING_LEVEL = 0.99
CLIPPED_RATIO = 0.01
"""Flag CLIPPED above this fraction of samples at or beyond ``CLIPPING_LEVEL``."""
QUIET_DBFS = -45.0
"""Flag TOO_QUIET when the speech level is under this."""
NOISY_SNR_DB = 10.0
"""Flag NOISY when the speech-to-background ratio is under this."""
MAX_SNR_DB = 60.0
"""SNR reported when there is no background to compare with."""

_ENERGY_CHUNK_FRAMES = 4096
_EPS = 1e-12
_MAX_LEVEL_DB = 1000.0


class QualityFlag(str, enum.Enum):
    """Why a recording may make a poor voiceprint."""

    TOO_SHORT = "too_short"
    TOO_QUIET = "too_quiet"
    CLIPPED = "clipped"
    NOISY = "noisy"
    TRUNCATED = "truncated"


@dataclass(frozen=True)
class QualityReport:
    """What the detector found; levels in dBFS, times in seconds."""

    duration_s: float
    speech_s: float
    clipping_ratio: float
    """Fraction of samples with ``|x| >= CLIPPING_LEVEL``."""
    snr_db: float
    """Speech frames' power over the other frames' power, capped at ``MAX_SNR_DB``; 0 without speech."""
    level_dbfs: float
    """RMS level of the speech frames; ``SILENCE_DBFS`` without speech."""
    flags: tuple[QualityFlag, ...]


@dataclass(frozen=True)
class SpeechAnalysis:
    speech: Audio
    """Only the voiced frames, concatenated, at the input rate: for the spoof check, not the speaker model."""
    report: QualityReport
    trimmed: Audio
    """What the speaker model hears: the recording less long non-speech, DC removed (``pauses``); empty
    when there is no speech."""


@dataclass(frozen=True)
class Kept:
    """What one :meth:`SpeechGate.push_kept` released, at the input rate, in whole frames."""

    samples: np.ndarray
    """The kept frames (speech, short pauses, pads), concatenated: the speaker model's input."""
    voiced: np.ndarray
    """One bool per kept frame: is it speech?"""
    frame: int
    """Samples per frame."""

    @property
    def speech(self) -> np.ndarray:
        """Only the speech frames, concatenated: the spoof check's input."""
        if self.voiced.all():
            return self.samples
        return self.samples.reshape(-1, self.frame)[self.voiced].reshape(-1)


def frame_length(sample_rate: int) -> int:
    """Samples in one 20 ms frame at ``sample_rate``."""
    return max(1, int(round(FRAME_S * sample_rate)))


def _frame_levels_db(frames: np.ndarray) -> np.ndarray:
    """Variance of each row of ``frames`` in dB (non-finite samples count as 0).

    Called for every 20 ms frame of every live call, so it avoids numpy's slower helpers
    (``var``, ``errstate``, ``nan_to_num``) where they cannot matter: samples of 32 bits or fewer
    cannot overflow a float64 sum of squares, and the levels are finite unless an input was not."""
    frames = np.asarray(frames)
    narrow = frames.dtype.itemsize <= 4
    out = np.empty(len(frames), dtype=np.float64)
    for start in range(0, len(frames), _ENERGY_CHUNK_FRAMES):
        chunk = np.asarray(frames[start : start + _ENERGY_CHUNK_FRAMES], dtype=np.float64)
        if not np.isfinite(chunk).all():
            chunk = np.nan_to_num(chunk, nan=0.0, posinf=0.0, neginf=0.0)
        if narrow:
            centred = chunk - chunk.sum(axis=1, keepdims=True) / chunk.shape[1]
            out[start : start + len(chunk)] = 10.0 * np.log10(np.einsum("ij,ij->i", centred, centred)
                                                              / chunk.shape[1] + _EPS)
            continue
        with np.errstate(over="ignore", invalid="ignore"):
            out[start : start + len(chunk)] = 10.0 * np.log10(np.var(chunk, axis=1) + _EPS)
    if np.isfinite(out).all():
        return out
    return np.nan_to_num(out, nan=SILENCE_DBFS, posinf=_MAX_LEVEL_DB, neginf=SILENCE_DBFS)


def frame_levels_db(samples: np.ndarray, sample_rate: int) -> np.ndarray:
    """Level of each whole 20 ms frame in dBFS (DC removed); a trailing partial frame is ignored."""
    n = frame_length(sample_rate)
    count = len(samples) // n
    return _frame_levels_db(np.asarray(samples)[: count * n].reshape(count, n))


def _threshold_db(floor_db: float, loud_db: float) -> float:
    relative = max(min(floor_db + MARGIN_DB, loud_db - DYNAMIC_RANGE_DB), floor_db + MIN_MARGIN_DB)
    return max(relative, ABSOLUTE_FLOOR_DB)


def _steady(levels: np.ndarray) -> np.ndarray:
    """Frames that sit in a ``STEADY_FRAMES`` window whose levels span under ``STEADY_RANGE_DB``."""
    out = np.zeros(len(levels), dtype=bool)
    if len(levels) < STEADY_FRAMES:
        return out
    windows = np.lib.stride_tricks.sliding_window_view(levels, STEADY_FRAMES)
    flat = np.flatnonzero(windows.max(axis=1) - windows.min(axis=1) < STEADY_RANGE_DB)
    for offset in range(STEADY_FRAMES):
        out[flat + offset] = True
    return out


def _runs(mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Start and end (exclusive) indices of the True runs of ``mask``."""
    edges = np.flatnonzero(np.diff(np.concatenate(([0], mask.view(np.int8), [0]))))
    return edges[::2], edges[1::2]


def _smooth(loud: np.ndarray) -> np.ndarray:
    """Drop bursts shorter than ``MIN_BURST_FRAMES``, then keep ``HANGOVER_FRAMES`` after each run."""
    out = np.zeros_like(loud)
    for start, end in zip(*_runs(loud), strict=True):
        if end - start >= MIN_BURST_FRAMES:
            out[start : min(end + HANGOVER_FRAMES, len(out))] = True
    return out


def _mask_from_levels(levels: np.ndarray) -> np.ndarray:
    audible = levels[levels > DIGITAL_SILENCE_DB]
    if len(audible) == 0:
        return np.zeros(len(levels), dtype=bool)
    floor_db, loud_db = np.percentile(audible, [NOISE_PERCENTILE, LOUD_PERCENTILE])
    loud = (levels > _threshold_db(float(floor_db), float(loud_db))) & ~_steady(levels)
    return _smooth(loud)


def speech_mask(samples: np.ndarray, sample_rate: int) -> np.ndarray:
    """One bool per whole 20 ms frame: is it speech?"""
    return _mask_from_levels(frame_levels_db(samples, sample_rate))


def _power_db(levels: np.ndarray) -> float:
    with np.errstate(over="ignore"):
        power = float(np.mean(10.0 ** (np.minimum(levels, _MAX_LEVEL_DB) / 10.0)))
    return min(10.0 * np.log10(power + _EPS), _MAX_LEVEL_DB)


def analyse(audio: Audio, *, min_speech_s: float = 0.0) -> SpeechAnalysis:
    """Find the speech in ``audio`` and rate its quality. Never raises for silence: check ``speech_s``."""
    samples = np.asarray(audio.samples)
    n = frame_length(audio.sample_rate)
    count = len(samples) // n
    frames = samples[: count * n].reshape(count, n)
    levels = _frame_levels_db(frames)
    mask = _mask_from_levels(levels)
    frame_s = n / audio.sample_rate if audio.sample_rate > 0 else FRAME_S
    speech_s = round(float(mask.sum()) * frame_s, 6)

    if mask.any():
        level = _power_db(levels[mask])
        background = levels[~mask]
        snr = MAX_SNR_DB if len(background) == 0 else min(MAX_SNR_DB, level - _power_db(background))
        level = max(level, SILENCE_DBFS)
    else:
        level, snr = SILENCE_DBFS, 0.0
    with np.errstate(invalid="ignore"):
        clipping = float(np.mean(np.abs(samples) >= CLIPPING_LEVEL)) if len(samples) else 0.0

    flags: list[QualityFlag] = []
    if speech_s < min_speech_s:
        flags.append(QualityFlag.TOO_SHORT)
    if level < QUIET_DBFS:
        flags.append(QualityFlag.TOO_QUIET)
    if clipping > CLIPPED_RATIO:
        flags.append(QualityFlag.CLIPPED)
    if mask.any() and snr < NOISY_SNR_DB:
        flags.append(QualityFlag.NOISY)
    if audio.truncated:
        flags.append(QualityFlag.TRUNCATED)

    report = QualityReport(
        duration_s=audio.duration_s,
        speech_s=speech_s,
        clipping_ratio=clipping,
        snr_db=float(snr),
        level_dbfs=float(level),
        flags=tuple(flags),
    )
    voiced = np.ascontiguousarray(frames[mask], dtype=np.float32).reshape(-1)
    keep = keep_mask(mask, *pause_frames(frame_s))
    trimmed = remove_dc(np.ascontiguousarray(frames[keep], dtype=np.float32).reshape(-1))
    return SpeechAnalysis(
        Audio(voiced, audio.sample_rate, audio.truncated), report, Audio(trimmed, audio.sample_rate, audio.truncated)
    )


def require_speech(analysis: SpeechAnalysis, source_name: str = "audio") -> None:
    """Raise ``NoSpeechError`` when the analysis found no speech at all."""
    report = analysis.report
    if report.speech_s == 0:
        raise NoSpeechError(
            f"no speech detected in {source_name} ({report.speech_s:.1f} s of speech in "
            f"{report.duration_s:.1f} s of audio); check the recording is not silent or the wrong channel"
        )


class SpeechGate:
    """Streaming voice activity for live calls: push samples, get back the voiced ones.

    No look-ahead: the noise floor is a running minimum tracker (falls fast, rises
    slowly), the loud level a slowly decaying peak. A run of loud frames is released
    once it reaches ``MIN_BURST_FRAMES``, so output lags by up to two frames. Memory is
    one partial frame, a few pending frames and ``STEADY_FRAMES`` levels.
    """

    FLOOR_FALL = 0.2
    """Fraction of the gap closed per frame when a frame is under the floor."""
    FLOOR_RISE = 0.005
    """...and when it is above (about 4 s time constant)."""
    PEAK_DECAY_DB = 0.02
    """Loud-level decay per frame (1 dB/s)."""

    def __init__(self, sample_rate: int) -> None:
        if isinstance(sample_rate, bool) or not isinstance(sample_rate, (int, np.integer)) or sample_rate <= 0:
            raise SessionError(f"SpeechGate needs a positive integer sample rate, got {sample_rate!r}")
        self.sample_rate = int(sample_rate)
        self._n = frame_length(self.sample_rate)
        self._partial = np.zeros(0, dtype=np.float32)
        self._floor: float | None = None
        self._loud = SILENCE_DBFS
        self._recent: deque[float] = deque(maxlen=STEADY_FRAMES)
        self._pending: list[np.ndarray] = []
        self._hangover = 0
        self._voiced = 0
        self._seen = 0
        self._trimmer = PauseTrimmer(*pause_frames(self._n / self.sample_rate))

    @property
    def speech_s(self) -> float:
        """Voiced seconds released so far."""
        return self._voiced * self._n / self.sample_rate

    @property
    def seen_s(self) -> float:
        """Seconds of whole frames processed so far."""
        return self._seen * self._n / self.sample_rate

    def push(self, samples: np.ndarray) -> np.ndarray:
        """Feed any number of samples; returns the samples of newly completed speech frames."""
        frames, voiced = self._judge(samples)
        speech = [f for f, v in zip(frames, voiced, strict=True) if v]
        return np.concatenate(speech) if speech else np.zeros(0, dtype=np.float32)

    def push_kept(self, samples: np.ndarray) -> Kept:
        """Feed any number of samples; returns what the speaker model should hear of them so far.

        Speech frames, short pauses whole and the edges of long ones
        (:class:`~voiceauth.speech.pauses.PauseTrimmer`); a pause is released when speech resumes.
        Use either this or :meth:`push` on one gate, not both.
        """
        frames, voiced = self._judge(samples)
        kept, flags = self._trimmer.push(frames, voiced)
        return Kept(
            np.concatenate(kept) if kept else np.zeros(0, dtype=np.float32), np.array(flags, dtype=bool), self._n
        )

    def _judge(self, samples: np.ndarray) -> tuple[list[np.ndarray], list[bool]]:
        """Every frame judged so far (in order, up to ``MIN_BURST_FRAMES`` late) and whether it is speech."""
        chunk = np.asarray(samples)
        if chunk.ndim != 1:
            raise SessionError(f"push() takes 1-D mono samples, got shape {chunk.shape}; pick one channel first")
        if chunk.dtype == np.int16:
            chunk = chunk.astype(np.float32) / np.float32(32768.0)
        elif chunk.dtype.kind != "f":
            raise SessionError(f"push() takes float samples in [-1, 1] or int16, got {chunk.dtype}; decode first")
        # a copy either way: the frames kept must not alias the caller's buffer
        data = np.concatenate((self._partial, chunk), dtype=np.float32) if len(self._partial) else \
            np.array(chunk, dtype=np.float32)
        count = len(data) // self._n
        self._partial = data[count * self._n :].copy()
        if count == 0:
            return [], []
        frames = data[: count * self._n].reshape(count, self._n)
        judged: list[np.ndarray] = []
        flags: list[bool] = []
        for frame, level in zip(frames, _frame_levels_db(frames), strict=True):
            for out, is_speech in self._step(frame, float(level)):
                judged.append(out)
                flags.append(is_speech)
        return judged, flags

    def _step(self, frame: np.ndarray, level: float) -> list[tuple[np.ndarray, bool]]:
        """Judge one frame; returns the frames judged now, in order, each with whether it is speech."""
        self._seen += 1
        self._track(level)
        self._recent.append(level)
        steady = len(self._recent) == STEADY_FRAMES and max(self._recent) - min(self._recent) < STEADY_RANGE_DB
        floor = self._floor if self._floor is not None else SILENCE_DBFS
        loud = not steady and level > _threshold_db(floor, self._loud)
        if loud:
            self._pending.append(frame)
            if len(self._pending) < MIN_BURST_FRAMES and not self._hangover:
                return []
            released, self._pending = self._pending, []
            self._hangover = HANGOVER_FRAMES
        else:
            dropped = [(f, False) for f in self._pending]  # a burst too short to be speech
            self._pending = []
            if not self._hangover:
                return [*dropped, (frame, False)]
            self._hangover -= 1
            self._voiced += 1
            return [*dropped, (frame, True)]
        self._voiced += len(released)
        return [(f, True) for f in released]

    def _track(self, level: float) -> None:
        if level <= DIGITAL_SILENCE_DB:
            return
        if self._floor is None:
            self._floor = level
        else:
            rate = self.FLOOR_FALL if level < self._floor else self.FLOOR_RISE
            self._floor += rate * (level - self._floor)
        self._loud = max(level, self._loud - self.PEAK_DECAY_DB)
