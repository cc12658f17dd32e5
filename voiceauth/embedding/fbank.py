"""Log mel filterbank features in numpy, without torch.

Two recipes, one per speaker network:

* :func:`kaldi_fbank` - the Kaldi recipe (as kaldi-native-fbank computes it): 25 ms Povey windows every 10 ms,
  no dither, 80 log mel bins, per-utterance mean subtracted. CAM++ was trained on these.
* :func:`speechbrain_fbank` - SpeechBrain's ``Fbank(n_mels=80)`` followed by
  ``InputNormalization(norm_type="sentence", std_norm=False)``: a centred 400-point STFT with a
  periodic Hamming window, triangular mel filters, decibels floored 80 dB below the utterance
  peak, per-utterance mean subtracted. ECAPA-TDNN was trained on these.

Both take one float32 signal at 16 kHz and return ``(frames, 80)`` float32.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np

from voiceauth.audio.decode import MODEL_RATE
from voiceauth.errors import AudioError
from voiceauth.matmul import matmul

N_MELS = 80
_WIN = 400  # 25 ms at 16 kHz
_HOP = 160  # 10 ms


def _checked(signal: np.ndarray) -> np.ndarray:
    signal = np.asarray(signal, dtype=np.float32)
    if signal.ndim != 1 or len(signal) < _WIN or not np.all(np.isfinite(signal)):
        raise AudioError(
            f"features need finite 1-D audio at {MODEL_RATE} Hz of at least {_WIN} samples; "
            "decode the audio with voiceauth.audio first"
        )
    return signal


_FFT = 512  # the frame rounded up to a power of two, as Kaldi does
_PREEMPHASIS = 0.97
_LOW_HZ = 20.0


@lru_cache(maxsize=1)
def _kaldi_tables() -> tuple[np.ndarray, np.ndarray]:
    """(Povey window, Kaldi mel matrix of shape (256, 80)): triangles on the 1127 ln(1 + f/700) scale
    from 20 Hz to Nyquist over the FFT bins below Nyquist."""
    window = (0.5 - 0.5 * np.cos(2.0 * np.pi * np.arange(_WIN) / (_WIN - 1))) ** 0.85

    def mel(hz: np.ndarray | float) -> np.ndarray:
        return 1127.0 * np.log(1.0 + np.asarray(hz) / 700.0)

    low, high = mel(_LOW_HZ), mel(MODEL_RATE / 2)
    step = (high - low) / (N_MELS + 1)
    left = low + np.arange(N_MELS) * step
    centre, right = left + step, left + 2.0 * step
    bins = mel(np.arange(_FFT // 2) * MODEL_RATE / _FFT)[:, None]
    rising, falling = (bins - left) / (centre - left), (right - bins) / (right - centre)
    matrix = np.where((bins > left) & (bins < right), np.where(bins <= centre, rising, falling), 0.0)
    return window, matrix


def kaldi_fbank(signal: np.ndarray) -> np.ndarray:
    """80-bin Kaldi log mel filterbank, dither 0, with the utterance mean subtracted.

    Kaldi's ``compute-fbank-feats`` defaults (those of kaldi-native-fbank and torchaudio's
    ``compliance.kaldi.fbank``): 25 ms frames every 10 ms without padding at the edges, each frame's
    DC removed, pre-emphasis 0.97, Povey window, 512-point power spectrum, log floored at float32
    epsilon. Vectorised over frames (about 4x faster than kaldi-native-fbank's frame loop).
    """
    window, matrix = _kaldi_tables()
    frames = np.lib.stride_tricks.sliding_window_view(_checked(signal).astype(np.float64), _WIN)[::_HOP]
    frames = frames - frames.mean(axis=1, keepdims=True)
    emphasised = np.empty_like(frames)
    emphasised[:, 1:] = frames[:, 1:] - _PREEMPHASIS * frames[:, :-1]
    emphasised[:, 0] = frames[:, 0] * (1.0 - _PREEMPHASIS)
    spectrum = np.fft.rfft(emphasised * window, n=_FFT, axis=1)[:, : _FFT // 2]
    power = spectrum.real**2 + spectrum.imag**2
    feats = np.log(np.maximum(matmul(power, matrix), np.finfo(np.float32).eps)).astype(np.float32)
    return feats - feats.mean(axis=0, keepdims=True)


def _mel(hz: np.ndarray) -> np.ndarray:
    return 2595.0 * np.log10(1.0 + hz / 700.0)


def _hz(mel: np.ndarray) -> np.ndarray:
    return 700.0 * (10.0 ** (mel / 2595.0) - 1.0)


@lru_cache(maxsize=1)
def _speechbrain_tables() -> tuple[np.ndarray, np.ndarray]:
    """(periodic Hamming window, triangular mel matrix of shape (201, 80))."""
    window = 0.54 - 0.46 * np.cos(2.0 * np.pi * np.arange(_WIN) / _WIN)
    edges = _hz(np.linspace(_mel(np.array(0.0)), _mel(np.array(MODEL_RATE / 2)), N_MELS + 2))
    centre = edges[1:-1]
    band = (edges[1:] - edges[:-1])[:-1]
    freqs = np.linspace(0.0, MODEL_RATE / 2, _WIN // 2 + 1)
    slope = (freqs[:, None] - centre[None, :]) / band[None, :]
    matrix = np.maximum(0.0, np.minimum(1.0 + slope, 1.0 - slope))
    return window, matrix


def speechbrain_fbank(signal: np.ndarray, top_db: float = 80.0) -> np.ndarray:
    """SpeechBrain's 80-bin ``Fbank`` with sentence mean normalisation, computed in numpy."""
    window, matrix = _speechbrain_tables()
    padded = np.pad(_checked(signal).astype(np.float64), _WIN // 2)
    frames = np.lib.stride_tricks.sliding_window_view(padded, _WIN)[::_HOP]
    power = np.abs(np.fft.rfft(frames * window, axis=-1)) ** 2
    db = 10.0 * np.log10(np.maximum(matmul(power, matrix), 1e-10))
    db = np.maximum(db, db.max() - top_db)
    return (db - db.mean(axis=0, keepdims=True)).astype(np.float32)
