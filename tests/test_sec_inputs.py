"""Untrusted inputs: calibration files, audio headers, short watchlist entries (issue 12, items 12, 13, 15)."""

from __future__ import annotations

import json
import struct
import tracemalloc
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import soundfile as sf

from voiceauth.audio.decode import load_audio
from voiceauth.cli import EXIT_ERROR, EXIT_OK, main
from voiceauth.errors import AudioDecodeError, CalibrationError, NoSpeechError
from voiceauth.models import ECAPA
from voiceauth.scoring.calibration import MIN_TRIALS_PER_CLASS, Calibration, CalibrationSet, default_calibration
from voiceauth.scoring.normalisation import Normalisation
from voiceauth.scoring.policy import Policy

# -- calibration files ------------------------------------------------------------------------

BAD_FILE = {  # the issue's file: 2 trials, any model id, weights that accept every caller
    "model_id": "anything",
    "calibrations": [{"normalisation": "raw", "weights": [10, 0, 0, 5],
                      "trials": {"score": [0.8, 0.1], "genuine": [True, False], "speech_s": [5.0, 5.0]}}],
}


def _write(path: Path, payload: object) -> Path:
    path.write_text(json.dumps(payload))
    return path


def _good_payload(n: int = 2000, seed: int = 0) -> dict[str, Any]:
    rng = np.random.default_rng(seed)
    labels = rng.random(n) < 0.3
    scores = np.where(labels, 0.6, 0.1) + rng.normal(0, 0.1, n)
    speech = rng.uniform(1, 20, n)
    cal = Calibration.fit(scores, labels, speech)
    return json.loads(json.dumps({"version": 1, "model_id": ECAPA.model_id, "calibrations": [cal.to_dict()]}))


def test_the_issues_calibration_file_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = _write(tmp_path / "bad.json", BAD_FILE)
    with pytest.raises(CalibrationError):
        CalibrationSet.load(path)
    assert main(["policy", "--calibration", str(path), "--target-far", "0.001"]) == EXIT_ERROR
    err = capsys.readouterr().err
    assert "voiceauth calibrate" in err


def test_a_sound_calibration_file_loads_and_round_trips(tmp_path: Path) -> None:
    path = _write(tmp_path / "good.json", _good_payload())
    cals = CalibrationSet.load(path)
    again = CalibrationSet.load(cals.save(tmp_path / "again.json"))
    assert json.loads((tmp_path / "again.json").read_text())["version"] == 1
    assert again.get(Normalisation.RAW).llr(0.5, 5.0) == pytest.approx(cals.get(Normalisation.RAW).llr(0.5, 5.0))


def _break(payload: dict[str, Any], fault: str) -> dict[str, Any]:
    cal = payload["calibrations"][0]
    trials = cal["trials"]
    if fault == "model":
        payload["model_id"] = "some/other-model@1"
    elif fault == "version":
        payload["version"] = 2
    elif fault == "few genuine":
        keep = [i for i, g in enumerate(trials["genuine"]) if not g] + \
            [i for i, g in enumerate(trials["genuine"]) if g][: MIN_TRIALS_PER_CLASS - 1]
        for key in trials:
            trials[key] = [trials[key][i] for i in keep]
    elif fault == "negative slope":
        cal["weights"] = [-abs(w) for w in cal["weights"]]
    elif fault == "flat slope":
        cal["weights"][0], cal["weights"][1] = 0.0, 0.0
    elif fault == "slope negative for long speech":
        cal["weights"][0], cal["weights"][1] = 0.5, -2.0  # 0.5 - 2 * log(20 s) < 0
    elif fault == "nan weight":
        cal["weights"][2] = float("nan")
    elif fault == "huge weight":
        cal["weights"][3] = 1e308 * 10  # inf after parsing
    elif fault == "three weights":
        cal["weights"] = cal["weights"][:3]
    elif fault == "nan score":
        trials["score"][0] = float("nan")
    elif fault == "string labels":
        trials["genuine"] = ["false" if not g else "true" for g in trials["genuine"]]
    elif fault == "string scores":
        trials["score"] = [str(s) for s in trials["score"]]
    elif fault == "ragged":
        trials["speech_s"] = trials["speech_s"][:-1]
    elif fault == "duplicate":
        payload["calibrations"].append(dict(cal))
    elif fault == "not an object":
        return [payload]  # type: ignore[return-value]
    return payload


FAULTS = {
    "model": "model", "version": "version", "few genuine": f"at least {MIN_TRIALS_PER_CLASS}",
    "negative slope": "slope", "flat slope": "slope", "slope negative for long speech": "slope",
    "nan weight": "finite", "huge weight": "finite", "three weights": "4 weights", "nan score": "NaN",
    "string labels": "true or false", "string scores": "numbers", "ragged": "same length",
    "duplicate": "twice", "not an object": "JSON object",
}


@pytest.mark.parametrize("fault", sorted(FAULTS))
def test_each_unsound_calibration_file_is_refused_saying_what_to_do(tmp_path: Path, fault: str) -> None:
    path = _write(tmp_path / "c.json", _break(_good_payload(), fault))
    with pytest.raises(CalibrationError, match=FAULTS[fault]) as caught:
        CalibrationSet.load(path)
    assert "voiceauth calibrate" in str(caught.value) or "upgrade" in str(caught.value)


def test_fit_refuses_too_few_trials_and_scores_that_fall_for_genuine_callers() -> None:
    rng = np.random.default_rng(1)
    labels = np.arange(400) < 200
    scores = np.where(labels, 0.6, 0.1) + rng.normal(0, 0.1, 400)
    speech = np.full(400, 5.0)
    few = np.r_[np.arange(MIN_TRIALS_PER_CLASS - 1), np.arange(200, 400)]
    with pytest.raises(CalibrationError, match=f"at least {MIN_TRIALS_PER_CLASS} genuine"):
        Calibration.fit(scores[few], labels[few], speech[few])
    with pytest.raises(CalibrationError, match="slope"):
        Calibration.fit(-scores, labels, speech)  # genuine callers score lower: not a speaker score


def test_llr_is_not_extrapolated_beyond_the_trials_durations() -> None:
    """The slope is checked over the trials' durations, so the LLR is never taken outside them."""
    raw = Calibration.from_dict(_good_payload()["calibrations"][0])
    shortest, longest = raw.durations_s
    assert 1.0 <= shortest < longest <= 20.0
    assert raw.llr(0.3, 0.5) == raw.llr(0.3, shortest)
    assert raw.llr(0.3, 60.0) == raw.llr(0.3, longest)
    assert raw.llr(0.3, shortest) != raw.llr(0.3, longest)


def test_shipped_calibration_still_loads_with_enough_trials() -> None:
    cals = default_calibration()
    assert cals.model_id == ECAPA.model_id
    for cal in cals.by_normalisation.values():
        assert int(cal.labels.sum()) >= MIN_TRIALS_PER_CLASS and int((~cal.labels).sum()) >= 1000


def test_policy_refuses_a_target_finer_than_the_impostor_trials_resolve() -> None:
    raw = default_calibration().get(Normalisation.RAW)
    impostors = int((~raw.labels).sum())
    Policy(target_far=1.0 / impostors).thresholds(raw)  # one impostor trial: still resolved
    with pytest.raises(CalibrationError, match="impostor trials"):
        Policy(target_far=0.5 / impostors).thresholds(raw)
    assert main(["policy", "--target-far", str(0.5 / impostors)]) == EXIT_ERROR


def test_client_refuses_a_calibration_made_for_another_model(tmp_path: Path) -> None:
    from voiceauth.client import VoiceAuth

    class OtherModel:
        model_id = "some/other-model@1"
        dim = 192

        def embed(self, signals: list[np.ndarray]) -> np.ndarray:
            return np.ones((len(signals), 192), dtype=np.float32) / np.sqrt(192)

    path = _write(tmp_path / "ecapa.json", _good_payload())
    with pytest.raises(CalibrationError, match="some/other-model@1"):
        VoiceAuth(tmp_path / "a.db", embedder=OtherModel(), calibration=path, spoof=False)
    with pytest.raises(CalibrationError, match="some/other-model@1"):
        VoiceAuth(tmp_path / "b.db", embedder=OtherModel(), calibration=CalibrationSet.load(path), spoof=False)


def test_cli_policy_with_a_sound_file_still_works(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = _write(tmp_path / "good.json", _good_payload())
    assert main(["policy", "--calibration", str(path), "--json"]) == EXIT_OK
    assert "raw" in json.loads(capsys.readouterr().out)


# -- audio headers ----------------------------------------------------------------------------


def _wav_with_rate(path: Path, rate: int) -> Path:
    """A 1 s 16 kHz PCM16 WAV whose header then claims ``rate``."""
    sf.write(path, np.zeros(16000, dtype=np.float32), 16000, subtype="PCM_16")
    data = bytearray(path.read_bytes())
    data[24:28] = struct.pack("<I", rate)
    data[28:32] = struct.pack("<I", (rate * 2) & 0xFFFFFFFF)
    path.write_bytes(bytes(data))
    return path


def test_wav_claiming_2_31_hz_is_refused(tmp_path: Path) -> None:
    with pytest.raises(AudioDecodeError, match="8000-48000 Hz"):
        load_audio(_wav_with_rate(tmp_path / "fast.wav", 2**31 - 1))


@pytest.mark.parametrize("suffix", ["flac", "wav"])
def test_655350_hz_file_is_refused_before_decoding(tmp_path: Path, suffix: str) -> None:
    path = tmp_path / f"fast.{suffix}"
    sf.write(path, np.zeros(655350 * 2, dtype=np.float32), 655350)
    tracemalloc.start()
    try:
        with pytest.raises(AudioDecodeError, match="8000-48000 Hz"):
            load_audio(path)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 2 * 2**20, f"peak {peak / 2**20:.1f} MiB"


@pytest.mark.parametrize("rate", [7999, 48001])
def test_rates_just_outside_the_bound_are_refused(tmp_path: Path, rate: int) -> None:
    path = tmp_path / "x.wav"
    sf.write(path, np.zeros(rate, dtype=np.float32), rate)
    with pytest.raises(AudioDecodeError, match="8000-48000 Hz"):
        load_audio(path)
    with pytest.raises(AudioDecodeError, match="8000-48000 Hz"):
        load_audio(np.zeros(rate, dtype=np.float32), sample_rate=rate)


@pytest.mark.parametrize(("rate", "suffix"), [(8000, "wav"), (48000, "flac"), (44100, "wav"), (16000, "flac")])
def test_8_to_48_khz_files_still_decode(tmp_path: Path, rate: int, suffix: str) -> None:
    path = tmp_path / f"ok.{suffix}"
    t = np.arange(rate) / rate
    sf.write(path, (0.3 * np.sin(2 * np.pi * 440 * t)).astype(np.float32), rate)
    audio = load_audio(path)
    assert audio.sample_rate == 16000 and audio.duration_s == pytest.approx(1.0, abs=1e-3)


def test_decoded_samples_are_capped_across_channels(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The cap counts every channel decoded, and holds even when max_seconds is unlimited."""
    from voiceauth.audio import decode as audio_module

    path = tmp_path / "many.wav"
    sf.write(path, np.zeros((48000 * 4, 8), dtype=np.float32), 48000, subtype="PCM_16")
    monkeypatch.setattr(audio_module, "MAX_DECODED_SAMPLES", 48000 * 8)  # one second of 8 channels
    audio = load_audio(path, max_seconds=float("inf"))
    assert audio.truncated and audio.duration_s == pytest.approx(1.0, abs=1e-3)


def test_file_with_too_many_channels_is_refused_before_reading(tmp_path: Path) -> None:
    path = tmp_path / "wide.wav"
    sf.write(path, np.zeros((100, 65), dtype=np.float32), 16000, subtype="PCM_16")
    with pytest.raises(AudioDecodeError, match="65 channels"):
        load_audio(path)


# -- watchlist --------------------------------------------------------------------------------


def test_watchlist_entry_with_too_little_speech_is_refused_not_listed(make_client, speakers, tmp_path) -> None:  # noqa: ANN001
    from voiceauth.fraud.watchlist import MIN_WATCHLIST_SPEECH_S

    va = make_client(spoof=False)
    source = speakers[sorted(speakers)[1]][0]
    samples, rate = sf.read(source, dtype="float32")
    short = tmp_path / "short.wav"
    sf.write(short, samples[: int(2.2 * rate)], rate)
    with pytest.raises(NoSpeechError, match=f"at least {MIN_WATCHLIST_SPEECH_S:.0f} s"):
        va.watchlist.add("case-short", [short], reason="mule")
    assert va.watchlist.list() == []
    # enough speech: listed and screened
    va.watchlist.add("case-ok", [source], reason="mule")
    assert [e.subject_id for e in va.watchlist.list()] == ["case-ok"]
    probe = va.probe(source)
    assert va.watchlist.screen(probe.embedding, probe.speech_s) is not None
