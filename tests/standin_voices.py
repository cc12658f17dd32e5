"""A stand-in speaker model for fast tests: each 'speaker' is a tone under syllable-modulated noise."""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Sequence

import numpy as np

from voiceauth.scoring.calibration import default_calibration

BASE_HZ, STEP_HZ = 400.0, 60.0


def voice(speaker: int, seconds: float, seed: int = 0, rate: int = 16000) -> np.ndarray:
    """``seconds`` of 'speech' of ``speaker``: modulated noise the speech gate passes, plus the speaker's tone."""
    rng = np.random.default_rng(1000 * speaker + seed)
    t = np.arange(int(seconds * rate)) / rate
    envelope = 0.5 * (1 + np.sin(2 * np.pi * 3 * t)) ** 2
    noise = 0.05 * envelope * rng.standard_normal(len(t))
    tone = 0.08 * (0.3 + envelope) * np.sin(2 * np.pi * (BASE_HZ + STEP_HZ * speaker) * t)
    return np.clip(noise + tone, -1, 1).astype(np.float32)


class ToneEmbedder:
    """Embeds a signal as its speaker's fixed direction plus signal-specific noise (cosine ~0.7 genuine, ~0 not)."""

    model_id = "stand-in/tones@1"
    dim = 64

    def __init__(self) -> None:
        self.basis = np.random.default_rng(7).standard_normal((64, self.dim))

    def speaker_of(self, signal: np.ndarray) -> int:
        spectrum = np.abs(np.fft.rfft(signal))
        freqs = np.fft.rfftfreq(len(signal), 1 / 16000)
        band = (freqs > BASE_HZ - STEP_HZ / 2) & (freqs < 3900)
        peak = float(freqs[band][np.argmax(spectrum[band])])
        return int(round((peak - BASE_HZ) / STEP_HZ))

    def embed(self, signals: Sequence[np.ndarray]) -> np.ndarray:
        out = np.zeros((len(signals), self.dim), dtype=np.float32)
        for row, s in enumerate(signals):
            base = self.basis[self.speaker_of(np.asarray(s))]
            seed = int.from_bytes(hashlib.blake2b(np.asarray(s).tobytes(), digest_size=8).digest(), "little")
            v = base / np.linalg.norm(base) + 0.6 * _unit(np.random.default_rng(seed).standard_normal(self.dim))
            out[row] = _unit(v)
        return out


def _unit(v: np.ndarray) -> np.ndarray:
    return v / np.linalg.norm(v)


STANDIN_CALIBRATION = dataclasses.replace(default_calibration(), model_id=ToneEmbedder.model_id)
"""The shipped ECAPA calibration relabelled for the stand-in, so its scores become decisions."""
