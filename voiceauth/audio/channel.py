"""Simulated telephone channels for benchmarks: band-pass + G.711, noise, crops."""

from __future__ import annotations

import numpy as np

from voiceauth.audio.decode import Audio, resample
from voiceauth.audio.g711 import mulaw_decode, mulaw_encode

TELEPHONE_RATE = 8000
TELEPHONE_BAND_HZ = (300.0, 3400.0)


def telephone_channel(audio: Audio) -> Audio:
    """Simulate a phone line: 8 kHz, 300-3400 Hz band-pass, G.711 mu-law round trip (8 kHz out)."""
    from scipy.signal import butter, sosfilt

    narrow = resample(audio.samples, audio.sample_rate, TELEPHONE_RATE)
    sos = butter(4, TELEPHONE_BAND_HZ, btype="bandpass", fs=TELEPHONE_RATE, output="sos")
    band = sosfilt(sos, narrow) if len(narrow) else narrow
    return Audio(mulaw_decode(mulaw_encode(np.clip(band, -1.0, 1.0))), TELEPHONE_RATE, audio.truncated)


def add_noise(audio: Audio, snr_db: float, seed: int = 0) -> Audio:
    """Add Gaussian white noise ``snr_db`` below the signal's mean power (silence stays silent)."""
    power = float(np.mean(np.square(audio.samples, dtype=np.float64))) if len(audio.samples) else 0.0
    noise_rms = np.sqrt(power / 10.0 ** (snr_db / 10.0))
    noise = np.random.default_rng(seed).standard_normal(len(audio.samples)) * noise_rms
    noisy = np.clip(audio.samples + noise, -1.0, 1.0).astype(np.float32)
    return Audio(noisy, audio.sample_rate, audio.truncated)


def crop(audio: Audio, seconds: float) -> Audio:
    """The first ``seconds`` of ``audio`` (all of it when shorter)."""
    keep = max(0, int(round(seconds * audio.sample_rate)))
    return Audio(audio.samples[:keep], audio.sample_rate, audio.truncated)


