"""Kaldi filterbanks in numpy against kaldi-native-fbank, the implementation CAM++'s recipe uses."""

from __future__ import annotations

import numpy as np
import pytest

from voiceauth.embedding.fbank import kaldi_fbank

knf = pytest.importorskip("kaldi_native_fbank")


def reference(signal: np.ndarray) -> np.ndarray:
    opts = knf.FbankOptions()
    opts.frame_opts.samp_freq = 16000
    opts.frame_opts.dither = 0.0
    opts.mel_opts.num_bins = 80
    computer = knf.OnlineFbank(opts)
    computer.accept_waveform(16000, signal)
    computer.input_finished()
    feats = np.array([computer.get_frame(i) for i in range(computer.num_frames_ready)], dtype=np.float32)
    return feats - feats.mean(axis=0, keepdims=True)


def voiced(seconds: float, seed: int) -> np.ndarray:
    """A harmonic, amplitude-modulated signal with noise: spectral shape in every band, like speech."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * 16000)) / 16000
    f0 = 90.0 + 60.0 * rng.random()
    tone = sum(np.sin(2 * np.pi * f0 * k * t + rng.random()) / k for k in range(1, 40))
    envelope = 0.5 + 0.5 * np.sin(2 * np.pi * 3.0 * t)
    return (0.05 * tone * envelope + 0.003 * rng.standard_normal(len(t))).astype(np.float32)


@pytest.mark.parametrize(("seconds", "seed"), [(0.025, 0), (0.5, 1), (3.0, 2), (7.3, 3)])
def test_kaldi_fbank_matches_kaldi_native_fbank(seconds: float, seed: int) -> None:
    signal = voiced(seconds, seed)
    ours, ref = kaldi_fbank(signal), reference(signal)
    assert ours.dtype == np.float32 and ours.shape == ref.shape == (1 + (len(signal) - 400) // 160, 80)
    if len(ref) > 1:
        assert np.abs(ref).mean() > 0.5  # real features, not zeros
    assert np.abs(ours - ref).max() < 5e-3


def test_exact_zeros_hit_the_same_floor_as_kaldi() -> None:
    signal = np.zeros(16000, np.float32)
    signal[4000:6000] = voiced(0.125, 4)
    ours, ref = kaldi_fbank(signal), reference(signal)
    assert np.abs(ours - ref).max() < 5e-3
    assert np.ptp(ours[:10], axis=0).max() == 0.0  # silent frames all sit on the epsilon floor
