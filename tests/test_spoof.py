"""The AASIST spoof countermeasure: weights contract, behaviour on real and synthetic speech."""

from __future__ import annotations

import shutil
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest

from voiceauth import models
from voiceauth.errors import AudioDecodeError, ModelChecksumError, ModelError, NoSpeechError
from voiceauth.fraud.spoof import WINDOW_SAMPLES, SpoofDetector, SpoofResult, window_starts

pytestmark = pytest.mark.integration  # real model, processes or external tools

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def model_dir() -> Path:
    return models.resolve(models.AASIST)


@pytest.fixture(scope="module")
def detector(model_dir: Path) -> SpoofDetector:
    """One loaded model for the module (short clips keep the windows per call few on CPU)."""
    return SpoofDetector(model_dir).load()


def test_import_does_not_load_torch() -> None:
    code = "import sys, voiceauth.fraud.spoof; sys.exit('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], cwd=ROOT).returncode == 0


def test_state_dict_loads_strictly_and_covers_every_weight(model_dir: Path) -> None:
    import torch

    from voiceauth.fraud.aasist import load_aasist

    net = load_aasist(model_dir)  # load_state_dict(strict=True) inside
    published = torch.load(model_dir / "AASIST.pth", map_location="cpu", weights_only=True)
    assert set(net.state_dict()) == set(published)
    assert sum(p.numel() for p in net.parameters()) == 297_866  # the paper's "297K parameters"


def test_network_output_shape(detector: SpoofDetector) -> None:
    import torch

    with torch.inference_mode():
        out = detector.network(torch.zeros(3, WINDOW_SAMPLES))
    assert tuple(out.shape) == (3, 2)
    assert torch.isfinite(out).all()


def test_window_plan_covers_every_sample() -> None:
    assert window_starts(100) == [0]
    assert window_starts(WINDOW_SAMPLES) == [0]
    assert window_starts(WINDOW_SAMPLES + 1) == [0, 1]
    for n in (2 * WINDOW_SAMPLES, 60 * 16000, 10 * WINDOW_SAMPLES - 7):
        starts = window_starts(n)
        assert len(starts) == -(-n // WINDOW_SAMPLES) and starts[0] == 0 and starts[-1] == n - WINDOW_SAMPLES
        assert all(np.diff(starts) <= WINDOW_SAMPLES)  # no gap between windows


def test_bona_fide_librispeech_is_mostly_not_suspected(
    detector: SpoofDetector, speakers: dict[str, list[Path]]
) -> None:
    from voiceauth.audio.decode import load_audio

    files = [paths[0] for paths in speakers.values()][:10]
    assert len(files) == 10
    results = [detector.score(a.samples, a.sample_rate) for a in map(load_audio, files)]
    passed = sum(not r.suspected for r in results)
    assert passed >= 8, [round(r.score, 2) for r in results]


@pytest.mark.skipif(shutil.which("espeak-ng") is None, reason="espeak-ng not on PATH (apt-get install espeak-ng)")
def test_espeak_synthetic_speech_is_mostly_suspected(detector: SpoofDetector, tmp_path: Path) -> None:
    from voiceauth.audio.decode import load_audio

    results = []
    for voice in ("en-us", "en-gb", "en+f3", "en-us+m3"):
        wav = tmp_path / f"{voice}.wav"
        text = "Hello, I would like to check the balance of my current account, please."
        subprocess.run(["espeak-ng", "-v", voice, "-w", str(wav), text], check=True)
        audio = load_audio(wav)
        results.append(detector.score(audio.samples, audio.sample_rate))
    assert sum(r.suspected for r in results) >= 3, [round(r.score, 2) for r in results]
    assert all(r.spoof_probability > 0.5 for r in results if r.suspected)


def test_corrupt_weights_raise_checksum_error(model_dir: Path, tmp_path: Path) -> None:
    for name in models.AASIST.files:
        shutil.copy(model_dir / name, tmp_path / name)
    with open(tmp_path / "AASIST.pth", "r+b") as fh:
        fh.seek(1000)
        byte = fh.read(1)
        fh.seek(1000)
        fh.write(bytes([byte[0] ^ 0xFF]))
    with pytest.raises(ModelChecksumError):
        SpoofDetector(tmp_path).load()


def speechlike(seconds: float, rate: int = 16000, seed: int = 0) -> np.ndarray:
    """Syllable-rate modulated noise: the voice activity detector takes it for speech."""
    t = np.arange(int(seconds * rate)) / rate
    envelope = 0.5 * (1 + np.sin(2 * np.pi * 3 * t)) ** 2
    return (0.1 * envelope * np.random.default_rng(seed).standard_normal(len(t))).astype(np.float32)


def test_short_input_and_8khz(detector: SpoofDetector) -> None:
    half_second = speechlike(0.5)
    result = detector.score_speech(half_second, 16000)
    assert isinstance(result, SpoofResult) and result.windows == 1 and np.isfinite(result.score)
    narrow = detector.score_speech(half_second, 8000)
    assert np.isfinite(narrow.score) and 0.0 <= narrow.spoof_probability <= 1.0


def test_only_the_speech_is_scored(detector: SpoofDetector) -> None:
    """Silence around the speech changes nothing: it is cut out before scoring."""
    speech = speechlike(2.0)
    pad = np.zeros(3 * 16000, dtype=np.float32)
    alone = detector.score(speech, 16000)
    padded = detector.score(np.concatenate([pad, speech, pad]), 16000)
    assert padded.windows == alone.windows == 1 and padded.score == pytest.approx(alone.score, abs=1e-4)


def test_bad_input_is_rejected(detector: SpoofDetector) -> None:
    with pytest.raises(NoSpeechError):
        detector.score(np.zeros(0, dtype=np.float32), 16000)
    with pytest.raises(AudioDecodeError):
        detector.score(np.array([0.0, np.nan], dtype=np.float32), 16000)


def test_concurrent_scoring_matches_sequential(detector: SpoofDetector) -> None:
    clips = [speechlike(1.0, seed=i) for i in range(3)]
    expected = [detector.score_speech(c, 16000).score for c in clips]
    got: dict[int, float] = {}

    def work(i: int) -> None:
        got[i] = detector.score_speech(clips[i], 16000).score

    threads = [threading.Thread(target=work, args=(i,)) for i in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert [got[i] for i in range(3)] == pytest.approx(expected, abs=1e-4)


# -- fitting the threshold on the bank's own channel ----------------------------------------


def test_threshold_for_false_alarms_flags_at_most_that_share() -> None:
    from voiceauth.errors import CalibrationError
    from voiceauth.fraud.spoof import threshold_for_false_alarms

    scores = np.linspace(-10, 10, 40)
    threshold = threshold_for_false_alarms(scores, 0.05)
    assert np.mean(scores < threshold) <= 0.05 and np.mean(scores < np.nextafter(threshold, np.inf)) > 0.05
    with pytest.raises(CalibrationError, match="at least 20 recordings"):
        threshold_for_false_alarms(scores[:19], 0.05)
    with pytest.raises(CalibrationError, match="between 0 and 1"):
        threshold_for_false_alarms(scores, 0.0)


def test_threshold_comes_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    from voiceauth.errors import CalibrationError
    from voiceauth.fraud.spoof import DEFAULT_THRESHOLD, THRESHOLD_ENV

    monkeypatch.delenv(THRESHOLD_ENV, raising=False)
    assert SpoofDetector().threshold == DEFAULT_THRESHOLD
    monkeypatch.setenv(THRESHOLD_ENV, "-2.5")
    assert SpoofDetector().threshold == -2.5 and SpoofDetector(threshold=1.0).threshold == 1.0
    monkeypatch.setenv(THRESHOLD_ENV, "lots")
    with pytest.raises(CalibrationError, match=THRESHOLD_ENV):
        SpoofDetector()


def test_spoof_threshold_cli_fits_on_genuine_calls(tmp_path: Path, speakers, capsys, monkeypatch) -> None:  # noqa: ANN001
    import json

    from voiceauth.cli import EXIT_ERROR, EXIT_OK, main
    from voiceauth.fraud.spoof import THRESHOLD_ENV

    monkeypatch.delenv(THRESHOLD_ENV, raising=False)
    folder = tmp_path / "calls"
    folder.mkdir()
    (folder / "broken.wav").write_bytes(b"RIFF not really audio")
    a, b = sorted(speakers)[:2]
    args = ["spoof-threshold", str(folder), *map(str, speakers[a]), *map(str, speakers[b]), "--phone"]
    assert main([*args, "--false-alarm", "0.1", "--json"]) == EXIT_OK
    fit = json.loads(capsys.readouterr().out)
    assert fit["recordings"] == 20 and len(fit["skipped"]) == 1 and fit["skipped"][0].startswith("broken.wav")
    assert fit["false_alarm"] == 0.1 and fit["threshold"] > fit["current_threshold"]  # phone audio: stricter here

    # the fitted threshold, put in the environment, flags at most 10 % of those callers
    monkeypatch.setenv(THRESHOLD_ENV, str(fit["threshold"]))
    from voiceauth.audio.channel import telephone_channel
    from voiceauth.audio.decode import load_audio

    detector = SpoofDetector()
    flagged = []
    for path in [*speakers[a], *speakers[b]]:
        audio = telephone_channel(load_audio(path))
        flagged.append(detector.score(audio.samples, audio.sample_rate).suspected)
    assert detector.threshold == fit["threshold"] and 0 < sum(flagged) <= 2

    assert main(["spoof-threshold", *map(str, speakers[a][:3])]) == EXIT_ERROR
    assert "at least 20 recordings" in capsys.readouterr().err


# -- issue 15: the v2 scorer, ONNX Runtime ----------------------------------------------------------------


def test_onnx_runtime_and_torch_agree(model_dir: Path) -> None:
    windows = np.stack([np.resize(speechlike(4.1, seed=i), WINDOW_SAMPLES) for i in range(2)])
    onnx = SpoofDetector(model_dir, backend="onnx")
    torch_ = SpoofDetector(model_dir, backend="torch")
    (h1, o1), (h2, o2) = onnx.window_features(windows), torch_.window_features(windows)
    assert h1.shape == (2, 160) and o1.shape == (2,)
    np.testing.assert_allclose(h1, h2, atol=1e-3)
    np.testing.assert_allclose(o1, o2, atol=1e-3)
    np.testing.assert_allclose(onnx.network_scores(windows), torch_.network_scores(windows), atol=1e-2)


def test_aasist_scorer_is_the_network_alone(model_dir: Path) -> None:
    import torch

    windows = np.resize(speechlike(4.1), WINDOW_SAMPLES)[None]
    legacy = SpoofDetector(model_dir, scorer="aasist", backend="torch")
    with torch.inference_mode():
        logits = legacy.network(torch.from_numpy(windows)).numpy()
    assert legacy.network_scores(windows) == pytest.approx(logits[:, 1] - logits[:, 0], abs=1e-4)


def test_a_modified_onnx_graph_is_refused(model_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from voiceauth.fraud import aasist

    SpoofDetector(model_dir, scorer="aasist", backend="onnx").load()  # exported (once) to the cache
    graph = tmp_path / aasist.onnx_cache_path().name
    shutil.copy(aasist.onnx_cache_path(), graph)
    shutil.copy(aasist._sidecar(aasist.onnx_cache_path()), aasist._sidecar(graph))
    monkeypatch.setattr(aasist, "onnx_cache_path", lambda: graph)
    SpoofDetector(model_dir, scorer="aasist", backend="onnx").load()  # the copy verifies
    data = bytearray(graph.read_bytes())
    data[len(data) // 3] ^= 0xFF
    graph.write_bytes(bytes(data))
    with pytest.raises(ModelChecksumError, match="sha256"):
        SpoofDetector(model_dir, scorer="aasist", backend="onnx").load()


@pytest.mark.parametrize("threads", [1, 2])
def test_onnx_session_runs_on_the_threads_asked_for(model_dir: Path, threads: int) -> None:
    detector = SpoofDetector(model_dir, backend="onnx", threads=threads).load()
    assert detector._session.get_session_options().intra_op_num_threads == threads


@pytest.mark.parametrize("threads", [0, -1, 1.5, True, "2"])
def test_threads_must_be_a_whole_number(threads: object) -> None:
    with pytest.raises(ModelError, match="threads must be a whole number"):
        SpoofDetector(threads=threads)  # type: ignore[arg-type]
