"""Issue 15 item 2: the v2 spoof scorer (a head on frozen AASIST features) and its training recipe."""

from __future__ import annotations

import hashlib
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest

from voiceauth import models
from voiceauth.errors import CalibrationError, ModelChecksumError, ModelUnavailableError
from voiceauth.fraud.head import (
    AASIST_DIM,
    FEATURE_DIM,
    HEAD_PATH,
    HEAD_SHA256,
    SPECTRAL_DIM,
    SpoofHead,
    fit_head,
    head_input,
    load_head,
    save_head,
    spectral_features,
)
from voiceauth.fraud.spoof import (
    AASIST_THRESHOLD,
    DEFAULT_THRESHOLD,
    WINDOW_SAMPLES,
    SpoofDetector,
    speech_windows,
    v2_model_id,
)

ROOT = Path(__file__).resolve().parents[1]


def toy(seed: int = 0, n: int = 400) -> tuple[np.ndarray, np.ndarray]:
    """Two classes apart along a few of the 161 dimensions, with noise on all of them."""
    rng = np.random.default_rng(seed)
    y = rng.random(n) < 0.5
    x = rng.standard_normal((n, FEATURE_DIM))
    x[:, :3] += np.where(y, 1.5, -1.5)[:, None]
    return x, y


# -- the head: file, checksum, maths -------------------------------------------------------------------


def test_shipped_head_matches_its_pinned_checksum() -> None:
    assert hashlib.sha256(HEAD_PATH.read_bytes()).hexdigest() == HEAD_SHA256
    head = load_head()
    assert head.digest == HEAD_SHA256 and head.mean.shape == (FEATURE_DIM,)
    assert HEAD_PATH.stat().st_size < 200_000  # small enough to ship in the wheel
    assert SpoofDetector().model_id == v2_model_id() == SpoofDetector.model_id
    assert HEAD_SHA256[:8] in SpoofDetector.model_id and models.AASIST.model_id in SpoofDetector.model_id


def test_a_modified_head_is_refused(tmp_path: Path) -> None:
    data = bytearray(HEAD_PATH.read_bytes())
    data[len(data) // 2] ^= 0xFF
    bad = tmp_path / "spoof_head.npz"
    bad.write_bytes(bytes(data))
    with pytest.raises(ModelChecksumError, match="pinned"):
        load_head(bad, sha256=HEAD_SHA256)
    with pytest.raises(ModelUnavailableError, match="cannot be read"):
        load_head(tmp_path / "missing.npz")


def test_saving_is_byte_for_byte_reproducible_and_round_trips(tmp_path: Path) -> None:
    x, y = toy()
    head = fit_head(x, y, hidden=8, epochs=150, seed=3, meta={"note": "toy"})
    again = fit_head(x, y, hidden=8, epochs=150, seed=3, meta={"note": "toy"})
    save_head(head, tmp_path / "a.npz")
    save_head(again, tmp_path / "b.npz")
    assert (tmp_path / "a.npz").read_bytes() == (tmp_path / "b.npz").read_bytes()  # seeded, fixed zip dates
    loaded = load_head(tmp_path / "a.npz")
    assert loaded.meta["note"] == "toy" and loaded.meta["hidden"] == 8
    np.testing.assert_allclose(loaded.logodds(x), head.logodds(x))


@pytest.mark.parametrize("hidden", [16])
def test_fit_separates_the_classes_with_bona_fide_high(hidden: int) -> None:
    x, y = toy(n=2000)
    head = fit_head(x, y, hidden=hidden, epochs=300, seed=0)
    test_x, test_y = toy(seed=1)
    scores = head.logodds(test_x)
    assert np.mean((scores > 0) == test_y) > 0.95
    assert np.median(scores[test_y]) > 0 > np.median(scores[~test_y])


def test_sample_weights_move_the_boundary() -> None:
    x, y = toy()
    plain = fit_head(x, y, hidden=4, epochs=200)
    weights = np.where(y, 10.0, 1.0)  # bona fide errors cost 10x: fewer genuine callers flagged
    careful = fit_head(x, y, hidden=4, epochs=200, sample_weight=weights)
    assert np.mean(careful.logodds(x)[y] < 0) <= np.mean(plain.logodds(x)[y] < 0)
    assert careful.b2 > plain.b2 and np.mean(careful.logodds(x)) > np.mean(plain.logodds(x))


def test_head_input_order_readout_aasist_spectral() -> None:
    readout = np.arange(2 * 160, dtype=float).reshape(2, 160)
    rows = head_input(readout, np.array([7.0, -3.0]), np.zeros((2, SPECTRAL_DIM)))
    assert rows.shape == (2, FEATURE_DIM) and list(rows[:, AASIST_DIM - 1]) == [7.0, -3.0]
    weights = np.zeros(FEATURE_DIM)
    weights[AASIST_DIM - 1] = 1.0
    linear = SpoofHead(np.zeros(FEATURE_DIM), np.ones(FEATURE_DIM), np.zeros(0), np.zeros(0), weights, 0.5)
    assert list(linear.logodds(rows)) == [7.5, -2.5]  # a head that passes AASIST's own verdict through


def test_spectral_features_are_finite_and_level_invariant() -> None:
    rng = np.random.default_rng(0)
    t = np.arange(WINDOW_SAMPLES) / 16000
    voiced = (np.sin(2 * np.pi * 150 * t) + 0.3 * rng.standard_normal(len(t))) * (1 + np.sin(2 * np.pi * 3 * t))
    rows = spectral_features(np.stack([0.3 * voiced, 0.15 * voiced]))
    assert rows.shape == (2, SPECTRAL_DIM) and np.isfinite(rows).all()
    same = np.r_[1:80, 115:SPECTRAL_DIM]  # all but the level (c0, frame level, band means)
    np.testing.assert_allclose(rows[0, same], rows[1, same], atol=1e-4)
    np.testing.assert_allclose(rows[0, 83:115] - rows[1, 83:115], np.log(4), atol=1e-3)
    silence = spectral_features(np.zeros((1, WINDOW_SAMPLES)))
    assert np.isfinite(silence).all()


# -- the detector's configuration (no model) --------------------------------------------------------------


def test_scorers_and_their_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    from voiceauth.fraud.spoof import THRESHOLD_ENV

    monkeypatch.delenv(THRESHOLD_ENV, raising=False)
    assert SpoofDetector().threshold == DEFAULT_THRESHOLD and SpoofDetector().scorer == "v2"
    legacy = SpoofDetector(scorer="aasist")
    assert legacy.threshold == AASIST_THRESHOLD and legacy.model_id == models.AASIST.model_id
    with pytest.raises(CalibrationError, match="unknown spoof scorer"):
        SpoofDetector(scorer="rawnet")
    with pytest.raises(CalibrationError, match="unknown backend"):
        SpoofDetector(backend="tpu")
    x, y = toy()
    mine = fit_head(x, y, hidden=0, epochs=10)
    assert SpoofDetector(head=mine).model_id != SpoofDetector.model_id  # its scores are not mixed with ours


def test_speech_windows_cover_the_audible_speech() -> None:
    rate = 8000
    t = np.arange(int(9.5 * rate)) / rate
    speech = (0.2 * np.sin(2 * np.pi * 220 * t) * (1 + np.sin(2 * np.pi * 3 * t))).astype(np.float32)
    rows = speech_windows(speech, rate)
    assert rows.shape[1] == WINDOW_SAMPLES and rows.dtype == np.float32
    assert len(rows) == -(-int(9.5 * 16000) // WINDOW_SAMPLES)  # resampled to 16 kHz, every sample covered
    short = speech_windows(speech[: rate], rate)
    assert short.shape == (1, WINDOW_SAMPLES)  # one second, repeated to fill a window
    assert np.mean(np.abs(short[0, -16000:])) > 0.5 * np.mean(np.abs(short[0, :16000]))  # no zero padding


# -- the training recipe ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def recipe():  # noqa: ANN201
    sys.path.insert(0, str(ROOT / "benchmarks"))
    import train_spoof_head

    return train_spoof_head


def test_recipe_is_seeded(recipe) -> None:  # noqa: ANN001
    assert recipe.sentences(5, 1) == recipe.sentences(5, 1) != recipe.sentences(5, 2)
    item = {"path": "x.wav", "start_s": 0.0}
    assert recipe.item_seed(item, "g711") == recipe.item_seed(dict(item), "g711") != recipe.item_seed(item, "clean")


@pytest.mark.skipif(shutil.which("sox") is None, reason="sox not on PATH (apt-get install sox libsox-fmt-all)")
def test_every_channel_degrades_both_classes_the_same_way(recipe) -> None:  # noqa: ANN001
    rate = 22050
    t = np.arange(int(2.0 * rate)) / rate
    wave = (0.3 * np.sin(2 * np.pi * 180 * t) * (1 + np.sin(2 * np.pi * 4 * t))).astype(np.float32)
    for channel in recipe.CHANNELS:
        out = recipe.apply_channel(wave, rate, channel, np.random.default_rng(0))
        again = recipe.apply_channel(wave, rate, channel, np.random.default_rng(0))
        assert out.dtype == np.float32 and abs(len(out) / 16000 - 2.0) < 0.1, channel
        np.testing.assert_array_equal(out, again)  # seeded: a class never gets its own version of a channel
        spectrum = np.abs(np.fft.rfft(out)) ** 2
        high = spectrum[np.fft.rfftfreq(len(out), 1 / 16000) > 4200].sum() / spectrum.sum()
        if channel in ("g711", "cellular"):
            assert high < 1e-3, channel  # narrowband: nothing above 4 kHz


def test_class_weights_balance_classes_corpora_and_channels(recipe) -> None:  # noqa: ANN001
    label = np.array(["bona_fide"] * 6 + ["spoof"] * 2)
    corpus = np.array(["librispeech"] * 4 + ["meeting"] * 2 + ["kokoro"] * 2)
    channel = np.array(["clean", "g711"] * 4)
    w = recipe.class_weights({"label": label, "corpus": corpus, "channel": channel})
    assert np.isclose(w[label == "bona_fide"].sum(), w[label == "spoof"].sum())
    assert np.isclose(w[corpus == "librispeech"].sum(), w[corpus == "meeting"].sum())
