"""Speaker models chosen by name (voiceauth.services.engines): facade, CLI, `models pull`, calibration and bench."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("onnxruntime")

from voiceauth.cli import EXIT_ERROR, EXIT_OK, MODEL_NAMES, main  # noqa: E402
from voiceauth.client import VoiceAuth  # noqa: E402
from voiceauth.decision import Decision  # noqa: E402
from voiceauth.embedding.ecapa import EcapaEmbedder  # noqa: E402
from voiceauth.embedding.onnx import CAMPPLUS_ONNX, ENGINES, OnnxEmbedder  # noqa: E402
from voiceauth.errors import CalibrationError, ModelError, ModelMismatchError, ModelUnavailableError  # noqa: E402
from voiceauth.models import CAMPPLUS, ECAPA, resolve  # noqa: E402
from voiceauth.scoring.calibration import Calibration, CalibrationSet
from voiceauth.services import engines
from voiceauth.tools.bench import Report, compare  # noqa: E402

pytestmark = pytest.mark.integration  # real model, processes or external tools


def calibration_for(model_id: str, path: Path) -> Path:
    """A sound calibration file for ``model_id`` fitted on synthetic trials."""
    rng = np.random.default_rng(0)
    labels = rng.random(1000) < 0.3
    scores = np.where(labels, 0.6, 0.1) + rng.normal(0, 0.1, len(labels))
    return CalibrationSet(model_id, {c.normalisation: c for c in [
        Calibration.fit(scores, labels, rng.uniform(1, 20, len(labels)))]}).save(path)


@pytest.fixture
def two_speakers(speakers: dict[str, list[Path]]) -> tuple[list[Path], list[Path]]:
    a, b = list(speakers.values())[:2]
    return a, b


def test_every_name_maps_to_an_embedder_of_its_model() -> None:
    assert tuple(engines.MODELS) == MODEL_NAMES
    assert isinstance(engines.make_embedder("ecapa"), EcapaEmbedder)
    for name in ("ecapa-onnx", "campplus"):
        embedder = engines.make_embedder(name)
        assert isinstance(embedder, OnnxEmbedder) and embedder.engine.model == name
        assert embedder.model_id == engines.model_id_of(name)
    assert engines.model_id_of("ecapa-onnx") == engines.model_id_of("ecapa") == ECAPA.model_id
    assert engines.model_id_of("campplus") == CAMPPLUS.model_id
    assert {e.model: e.name for e in ENGINES.values()} == engines.ONNX_ENGINES
    with pytest.raises(ModelError, match="unknown speaker model 'wavlm'.*campplus"):
        engines.make_embedder("wavlm")


def test_facade_takes_the_model_by_name(tmp_path: Path) -> None:
    with VoiceAuth(tmp_path / "a.db", embedder="campplus", spoof=False) as va:
        assert va.embedder.model_id == CAMPPLUS.model_id
    with VoiceAuth(tmp_path / "b.db", embedder="ecapa-onnx", spoof=False) as va:
        assert va.embedder.model_id == ECAPA.model_id
        assert va.thresholds().expected_far <= 0.01  # ECAPA's shipped calibration applies: same embedding space
    with pytest.raises(ModelError, match="unknown embedder 'wavlm'"):
        VoiceAuth(tmp_path / "c.db", embedder="wavlm", spoof=False)


def test_model_without_calibration_enrols_but_refuses_every_decision(
    tmp_path: Path, two_speakers: tuple[list[Path], list[Path]], consent: object
) -> None:
    a, _ = two_speakers
    with VoiceAuth(tmp_path / "vp.db", embedder="campplus", spoof=False) as va:
        assert va.enroll("alice", a[:3], consent=consent).percent == 100
        for decide in (lambda: va.verify("alice", a[5]), lambda: va.identify(a[5]), va.thresholds):
            with pytest.raises(CalibrationError, match=r"voiceauth bench CORPUS --model campplus.*calibrate"):
                decide()
    with VoiceAuth(tmp_path / "vp.db", embedder="campplus", spoof=False,
                   calibration=calibration_for(CAMPPLUS.model_id, tmp_path / "cal.json")) as va:
        assert va.verify("alice", a[5]).decision in set(Decision)
    with pytest.raises(CalibrationError, match="campplus"):  # ECAPA's calibration is not campplus's
        VoiceAuth(tmp_path / "vp.db", embedder="campplus", spoof=False,
                  calibration=calibration_for(ECAPA.model_id, tmp_path / "ecapa.json"))


def test_voiceprint_of_one_model_is_never_scored_by_another(
    tmp_path: Path, two_speakers: tuple[list[Path], list[Path]], capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    a, _ = two_speakers
    store = str(tmp_path / "vp.db")
    files = [str(f) for f in a[:3]]
    assert main(["enroll", "alice", *files, "--legacy-migration", "--store", store, "--model", "campplus"]) == EXIT_OK
    capsys.readouterr()
    assert main(["verify", "alice", str(a[5]), "--store", store, "--model", "ecapa"]) == EXIT_ERROR
    err = capsys.readouterr().err
    assert CAMPPLUS.model_id in err and ECAPA.model_id in err
    with VoiceAuth(store, embedder="ecapa-onnx", spoof=False) as va, pytest.raises(ModelMismatchError):
        va.verify("alice", a[5])
    monkeypatch.setenv("VOICEAUTH_MODEL", "campplus")  # the environment chooses the model too
    assert main(["verify", "alice", str(a[5]), "--store", store]) == EXIT_ERROR
    assert "no calibration is shipped for speaker model" in capsys.readouterr().err


_NO_TORCH = """
import json, sys
from voiceauth.client import VoiceAuth
from voiceauth.store.base import Consent

store, calibration, enrol, genuine, impostor = sys.argv[1:6]
with VoiceAuth(store, embedder="campplus", spoof=False, calibration=calibration) as va:
    va.enroll("alice", enrol.split(","), consent=Consent.now(channel="t", notice_version="1", captured_by="t"))
    same, other = va.verify("alice", genuine), va.verify("alice", impostor)
torch = sorted(m for m in sys.modules if m.split(".")[0] in ("torch", "speechbrain", "torchaudio"))
print(json.dumps({"same": [same.decision.value, same.score], "other": [other.decision.value, other.score],
                  "torch": torch}))
"""


def test_campplus_enrols_and_verifies_without_importing_torch(
    tmp_path: Path, two_speakers: tuple[list[Path], list[Path]]
) -> None:
    a, b = two_speakers
    calibration = calibration_for(CAMPPLUS.model_id, tmp_path / "cal.json")
    args = [str(tmp_path / "vp.db"), str(calibration), ",".join(str(f) for f in a[:3]), str(a[5]), str(b[5])]
    proc = subprocess.run([sys.executable, "-c", _NO_TORCH, *args], capture_output=True, text=True, timeout=300,
                          check=False)
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    assert out["torch"] == []
    assert out["same"][0] == Decision.ACCEPT.value and out["other"][0] == Decision.REJECT.value
    assert out["same"][1] > out["other"][1]


def test_missing_graph_says_to_pull_that_model(
    tmp_path: Path, two_speakers: tuple[list[Path], list[Path]], consent: object,
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setenv("VOICEAUTH_CACHE_DIR", str(tmp_path / "empty-cache"))
    with VoiceAuth(tmp_path / "vp.db", embedder="campplus", spoof=False) as va, pytest.raises(
        ModelUnavailableError, match=r"voiceauth models pull --model campplus"
    ):
        va.enroll("alice", two_speakers[0][:3], consent=consent)
    assert not CAMPPLUS_ONNX.cache_path().exists()  # scoring never exports (nor imports torch)
    code = main(["enroll", "alice", str(two_speakers[0][0]), "--legacy-migration", "--store", str(tmp_path / "c.db"),
                 "--model", "ecapa-onnx"])
    assert code == EXIT_ERROR and "voiceauth models pull --model ecapa-onnx" in capsys.readouterr().err


def test_models_pull_exports_the_graph(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    weights = tmp_path / "campplus"
    shutil.copytree(resolve(CAMPPLUS), weights)
    monkeypatch.setenv("VOICEAUTH_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("VOICEAUTH_MODEL_SOURCES", "dir,cache")
    assert main(["models", "pull", "--model", "campplus", "--model-dir", str(weights), "--json"]) == EXIT_OK
    found = json.loads(capsys.readouterr().out)
    assert found["campplus (onnx graph)"] == str(CAMPPLUS_ONNX.cache_path())
    assert OnnxEmbedder("campplus").embed([np.sin(np.arange(16000, dtype=np.float32) / 9)]).shape == (1, 192)
    assert main(["models", "pull", "--all", "--model-dir", str(weights)]) == EXIT_ERROR
    assert "one --model" in capsys.readouterr().err


def test_calibrate_for_a_model(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rng = np.random.default_rng(1)
    rows = ["score,label,speech_s"] + [
        f"{rng.normal(0.6 if g else 0.1, 0.1):.4f},{'genuine' if g else 'impostor'},{rng.uniform(1, 20):.1f}"
        for g in rng.random(600) < 0.3]
    (tmp_path / "t.csv").write_text("\n".join(rows) + "\n")
    out = tmp_path / "cal.json"
    assert main(["calibrate", str(tmp_path / "t.csv"), "--model", "campplus", "-o", str(out)]) == EXIT_OK
    assert CalibrationSet.load(out, CAMPPLUS.model_id).model_id == CAMPPLUS.model_id
    with pytest.raises(CalibrationError):
        CalibrationSet.load(out, ECAPA.model_id)


def test_bench_compares_models_on_the_same_trials(
    tmp_path: Path, speakers: dict[str, list[Path]], capsys: pytest.CaptureFixture[str]
) -> None:
    corpus = tmp_path / "corpus"
    for spk in sorted(speakers)[:3]:
        (corpus / spk).mkdir(parents=True)
        for f in speakers[spk][:2]:
            shutil.copy(f, corpus / spk / f.name)
    out = tmp_path / "out"
    code = main(["bench", str(corpus), "--enroll-files", "1", "--model", "ecapa-onnx", "--model", "campplus",
                 "--max-seconds", "3", "--json", "--out", str(out)])
    assert code == EXIT_OK
    result = json.loads(capsys.readouterr().out)
    models = result["models"]
    assert list(models) == ["ecapa-onnx", "campplus"]
    assert models["ecapa-onnx"]["calibrated"] and models["ecapa-onnx"]["far"] is not None
    assert not models["campplus"]["calibrated"] and models["campplus"]["far"] is None
    assert models["campplus"]["model_id"] == CAMPPLUS.model_id
    for r in models.values():
        assert r["n_genuine"] == 3 and r["n_impostor"] == 6 and 0.0 <= r["eer"] <= 0.5
    assert json.loads((out / "bench.json").read_text())["models"] == models
    for name in ("ecapa-onnx", "campplus"):
        assert (out / f"bench-{name}-trials.csv").stat().st_size > 0
    assert main(["bench", str(corpus), "--enroll-files", "1", "--model", "campplus", "--max-seconds", "3"]) == EXIT_OK
    text = capsys.readouterr().out
    assert "voiceauth campplus" in text and "no calibration for campplus" in text


def test_compare_puts_each_model_next_to_the_baseline() -> None:
    def report(model_id: str, eer: float, baseline: bool) -> Report:
        result: dict[str, object] = {"model_id": model_id, "calibrated": False, "voiceauth": {"eer": eer}}
        if baseline:
            result["baseline"] = {"eer": 0.2}
        return Report(result, None, np.zeros(0), None)  # type: ignore[arg-type]  # compare reads only the result

    result = compare({"campplus": report(CAMPPLUS.model_id, 0.1, False), "ecapa": report(ECAPA.model_id, 0.05, True)})
    assert result["models"] == {"campplus": {"model_id": CAMPPLUS.model_id, "calibrated": False, "eer": 0.1},
                                "ecapa": {"model_id": ECAPA.model_id, "calibrated": False, "eer": 0.05}}
    assert result["baseline"] == {"eer": 0.2} and result["voiceauth"] == {"eer": 0.1}
