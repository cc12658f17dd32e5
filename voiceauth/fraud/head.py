"""Countermeasure v2: a small head on frozen AASIST features, trained here on local attacks.

AASIST (ASVspoof 2019 LA) misses modern neural TTS and takes broadcast-processed or
phone-coded genuine speech for spoofs. Its weights stay frozen; what changes is the read-out.
For each ~4 s window of speech the head reads AASIST's 160-d hidden representation (the input of
its output layer), its own bona fide log-odds and simple cepstral statistics of the window
(:func:`spectral_features`), standardises them, and maps them through one small hidden layer to a
new bona fide log-odds. It was trained by
``benchmarks/train_spoof_head.py`` on bona fide LibriSpeech and meeting speech against
espeak-ng, Piper, Kokoro-82M and Griffin-Lim attacks, every recording through the same four
simulated channels (clean, G.711, AMR-NB/GSM with noise, broadcast compression with MP3), so
that the channel does not tell the classes apart. ``benchmarks/spoof.py`` measures it with one
generator held out at a time.

The weights (``voiceauth/data/spoof_head.npz``, a few tens of kB) are pinned by
:data:`HEAD_SHA256`; a file that does not match is refused.
"""

from __future__ import annotations

import hashlib
import io
import json
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from voiceauth.errors import ModelChecksumError, ModelUnavailableError
from voiceauth.matmul import matmul

HEAD_PATH = Path(__file__).resolve().parents[1] / "data" / "spoof_head.npz"
HEAD_SHA256 = "33c99d4b23127ee61ead08a13185bcf4d9ac3b161f594863d9bba7039b2969c3"
"""sha256 of the shipped ``spoof_head.npz``; reproduce it with ``benchmarks/train_spoof_head.py``."""
AASIST_DIM = 161
"""AASIST's 160-d read-out and its bona fide log-odds."""
SPECTRAL_DIM = 187
"""Simple spectral and pitch statistics of the window (:func:`spectral_features`)."""
FEATURE_DIM = AASIST_DIM + SPECTRAL_DIM

_RATE, _FRAME, _HOP, _FFT, _BANDS, _CEPS = 16000, 400, 160, 512, 32, 20
_FILTERS: np.ndarray | None = None


def _mel_filters() -> np.ndarray:
    global _FILTERS
    if _FILTERS is None:
        freqs = np.fft.rfftfreq(_FFT, 1 / _RATE)
        mel = 2595 * np.log10(1 + np.array([60.0, 7800.0]) / 700)
        edges = 700 * (10 ** (np.linspace(mel[0], mel[1], _BANDS + 2) / 2595) - 1)
        bank = np.zeros((_BANDS, len(freqs)))
        for i in range(_BANDS):
            low, centre, high = edges[i : i + 3]
            bank[i] = np.clip(np.minimum((freqs - low) / (centre - low), (high - freqs) / (high - centre)), 0, None)
        _FILTERS = bank
    return _FILTERS


def spectral_features(windows: np.ndarray) -> np.ndarray:
    """``(n, 187)`` simple statistics of each 16 kHz window over its loud frames (within ~35 dB of
    the loudest; 25 ms frames every 10 ms, 32 mel bands 60-7800 Hz). Cheap (numpy), beside AASIST:

    * cepstrum (20 coefficients): mean, standard deviation, mean |delta|, mean |delta-delta| (80);
    * frame level: spread, mean change, share of loud frames (3);
    * log mel bands: mean, standard deviation, mean |delta| (96);
    * spectral flatness (mean, spread) and spread of the log spectral centroid (3);
    * pitch by autocorrelation (40 ms frames, 70-400 Hz): voiced share, F0 spread in semitones,
      median and share-under-half-a-semitone of its frame-to-frame change, mean voicing strength (5).
    """
    out = np.empty((len(windows), SPECTRAL_DIM), dtype=np.float64)
    for row, wave in enumerate(np.asarray(windows, dtype=np.float64)):
        out[row] = _window_statistics(wave)
    return out


def _window_statistics(wave: np.ndarray) -> np.ndarray:
    from scipy.fft import dct

    frames = np.lib.stride_tricks.sliding_window_view(wave, _FRAME)[::_HOP] * np.hanning(_FRAME)
    power = np.abs(np.fft.rfft(frames, _FFT)) ** 2
    logmel = np.log(matmul(power, _mel_filters().T) + 1e-10)
    level = logmel.max(axis=1)
    loud = level > level.max() - 8.0
    cep = dct(logmel[loud], type=2, axis=1, norm="ortho")[:, :_CEPS]
    d1 = np.abs(np.diff(cep, axis=0)).mean(axis=0) if len(cep) > 1 else np.zeros(_CEPS)
    d2 = np.abs(np.diff(cep, 2, axis=0)).mean(axis=0) if len(cep) > 2 else np.zeros(_CEPS)
    lv = level[loud]
    cepstral = [cep.mean(axis=0), cep.std(axis=0), d1, d2,
                [lv.std(), np.abs(np.diff(lv)).mean() if len(lv) > 1 else 0.0, loud.mean()]]

    bands = logmel[loud]
    spectrum = power[loud] + 1e-12
    flatness = np.exp(np.mean(np.log(spectrum), axis=1)) / np.mean(spectrum, axis=1)
    centroid = matmul(spectrum, np.fft.rfftfreq(_FFT, 1 / _RATE)) / spectrum.sum(axis=1)
    band_delta = np.abs(np.diff(bands, axis=0)).mean(axis=0) if len(bands) > 1 else np.zeros(_BANDS)
    spectral = [bands.mean(axis=0), bands.std(axis=0), band_delta,
                [flatness.mean(), flatness.std(), np.log(centroid).std()]]

    pitch_frames = np.lib.stride_tricks.sliding_window_view(wave, 640)[::_HOP]
    pitch_frames = pitch_frames - pitch_frames.mean(axis=1, keepdims=True)
    autocorr = np.fft.irfft(np.abs(np.fft.rfft(pitch_frames, 1280)) ** 2)[:, :640]
    low, high = _RATE // 400, _RATE // 70
    lag = low + np.argmax(autocorr[:, low:high], axis=1)
    strength = autocorr[np.arange(len(autocorr)), lag] / (autocorr[:, 0] + 1e-12)
    voiced = strength > 0.5
    semitones = 12 * np.log2(_RATE / lag[voiced] / 100) if voiced.sum() > 2 else np.zeros(3)
    change = np.abs(np.diff(semitones))
    pitch = [voiced.mean(), semitones.std(), np.median(change) if len(change) else 0.0,
             np.mean(change < 0.5) if len(change) else 0.0, strength[voiced].mean() if voiced.any() else 0.0]
    return np.concatenate([*cepstral[:4], cepstral[4], *spectral[:3], spectral[3], pitch])


def head_input(readout: np.ndarray, logodds: np.ndarray, spectral: np.ndarray) -> np.ndarray:
    """The head's input rows: ``(n, 160)`` read-outs, their ``(n,)`` AASIST log-odds, ``(n, 83)``
    :func:`spectral_features`."""
    readout = np.asarray(readout, dtype=np.float64).reshape(-1, AASIST_DIM - 1)
    spectral = np.asarray(spectral, dtype=np.float64).reshape(-1, SPECTRAL_DIM)
    return np.concatenate([readout, np.asarray(logodds, dtype=np.float64).reshape(-1, 1), spectral], axis=1)


@dataclass(frozen=True)
class SpoofHead:
    """``logodds(x) = w2 . selu(((x - mean) / scale) @ w1 + b1) + b2`` (linear when ``w1`` is empty)."""

    mean: np.ndarray
    scale: np.ndarray
    w1: np.ndarray
    b1: np.ndarray
    w2: np.ndarray
    b2: float
    meta: dict[str, Any] = field(default_factory=dict)

    def logodds(self, features: np.ndarray) -> np.ndarray:
        """Bona fide log-odds of each row of ``features`` (:func:`head_input`)."""
        x = (np.asarray(features, dtype=np.float64) - self.mean) / self.scale
        if self.w1.size:
            x = _selu(x @ self.w1 + self.b1)
        return x @ self.w2 + self.b2

    @property
    def digest(self) -> str:
        return str(self.meta.get("sha256", ""))


def _selu(x: np.ndarray) -> np.ndarray:
    alpha, scale = 1.6732632423543772, 1.0507009873554805
    return scale * np.where(x > 0, x, alpha * np.expm1(np.minimum(x, 0.0)))


# -- file -----------------------------------------------------------------------------------------------


def save_head(head: SpoofHead, path: str | Path) -> None:
    """Write ``head`` as an ``.npz`` whose bytes depend only on its arrays (fixed zip timestamps)."""
    arrays = {"mean": head.mean, "scale": head.scale, "w1": head.w1, "b1": head.b1, "w2": head.w2,
              "b2": np.array(head.b2), "meta": np.array(json.dumps(head.meta, sort_keys=True))}
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        for name, array in arrays.items():
            data = io.BytesIO()
            np.lib.format.write_array(data, np.asarray(array), allow_pickle=False)
            info = zipfile.ZipInfo(f"{name}.npy", date_time=(1980, 1, 1, 0, 0, 0))
            info.compress_type = zipfile.ZIP_DEFLATED
            archive.writestr(info, data.getvalue())
    Path(path).write_bytes(buffer.getvalue())


def load_head(path: str | Path | None = None, sha256: str | None = None) -> SpoofHead:
    """Read a head, checking its bytes against ``sha256`` (default: the shipped file and :data:`HEAD_SHA256`).

    Raises:
        ModelUnavailableError: no such file.
        ModelChecksumError: the bytes do not match the pinned checksum.
    """
    target = Path(path) if path is not None else HEAD_PATH
    expected = sha256 if sha256 is not None else (HEAD_SHA256 if path is None else None)
    try:
        data = target.read_bytes()
    except OSError as exc:
        raise ModelUnavailableError(
            f"spoof head {target} cannot be read ({exc}); reinstall voiceauth or rebuild it with "
            "benchmarks/train_spoof_head.py") from exc
    digest = hashlib.sha256(data).hexdigest()
    if expected is not None and digest != expected:
        raise ModelChecksumError(
            f"spoof head {target} has sha256 {digest[:16]}..., not the pinned {expected[:16]}...; "
            "reinstall voiceauth (or pass the checksum of a head you trained yourself)")
    with np.load(io.BytesIO(data), allow_pickle=False) as npz:
        meta = json.loads(str(npz["meta"]))
        meta["sha256"] = digest
        return SpoofHead(npz["mean"], npz["scale"], npz["w1"], npz["b1"], npz["w2"], float(npz["b2"]), meta)


# -- training (benchmarks/train_spoof_head.py, benchmarks/spoof.py) ---------------------------------------


def fit_head(features: np.ndarray, bona_fide: np.ndarray, *, sample_weight: np.ndarray | None = None,
             hidden: int = 32, weight_decay: float = 1e-3, epochs: int = 600, seed: int = 0,
             meta: dict[str, Any] | None = None) -> SpoofHead:
    """Fit the head by full-batch Adam on weighted logistic loss (bona fide = 1). Seeded, torch on CPU."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny matrices: more threads only contend (and would vary the sums)
    try:
        return _fit(torch, features, bona_fide, sample_weight, hidden, weight_decay, epochs, seed, meta)
    finally:
        torch.set_num_threads(threads)


def _fit(torch: Any, features: np.ndarray, bona_fide: np.ndarray, sample_weight: np.ndarray | None, hidden: int,
         weight_decay: float, epochs: int, seed: int, meta: dict[str, Any] | None) -> SpoofHead:
    x = np.asarray(features, dtype=np.float64)
    y = np.asarray(bona_fide, dtype=np.float64)
    w = np.ones(len(y)) if sample_weight is None else np.asarray(sample_weight, dtype=np.float64)
    mean = x.mean(axis=0)
    scale = x.std(axis=0) + 1e-6
    generator = torch.Generator().manual_seed(seed)
    xt = torch.from_numpy((x - mean) / scale)
    yt, wt = torch.from_numpy(y), torch.from_numpy(w / w.mean())
    if hidden:
        w1 = torch.nn.Parameter(torch.randn(x.shape[1], hidden, generator=generator, dtype=torch.float64)
                                / np.sqrt(x.shape[1]))
        b1 = torch.nn.Parameter(torch.zeros(hidden, dtype=torch.float64))
        w2 = torch.nn.Parameter(torch.randn(hidden, generator=generator, dtype=torch.float64) / np.sqrt(hidden))
        params = [w1, b1, w2]
    else:
        w1 = b1 = None
        w2 = torch.nn.Parameter(torch.zeros(x.shape[1], dtype=torch.float64))
        params = [w2]
    b2 = torch.nn.Parameter(torch.zeros((), dtype=torch.float64))
    optimiser = torch.optim.Adam([*params, b2], lr=0.01)
    for _ in range(epochs):
        optimiser.zero_grad()
        h = torch.nn.functional.selu(xt @ w1 + b1) if hidden else xt
        logits = h @ w2 + b2
        loss = (torch.nn.functional.binary_cross_entropy_with_logits(logits, yt, reduction="none") * wt).mean()
        loss = loss + weight_decay * sum((p**2).sum() for p in params)
        loss.backward()
        optimiser.step()
    detach = lambda p: p.detach().numpy().copy()  # noqa: E731
    empty = np.zeros((0,), dtype=np.float64)
    return SpoofHead(mean, scale, detach(w1) if hidden else empty, detach(b1) if hidden else empty, detach(w2),
                     float(b2.detach()), dict(meta or {}, hidden=hidden, weight_decay=weight_decay, epochs=epochs,
                                              seed=seed, rows=int(len(y))))
