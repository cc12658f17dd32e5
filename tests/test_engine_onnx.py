"""ONNX speaker engines: export from verified weights, checksum before load, parity, and no torch at inference."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from voiceauth.embedding.base import Embedder
from voiceauth.embedding.fbank import speechbrain_fbank
from voiceauth.embedding.onnx import (
    CAMPPLUS_ONNX,
    ECAPA_ONNX,
    ENGINES,
    OnnxEmbedder,
    _torch_network,
    export_onnx,
)
from voiceauth.errors import AudioError, ModelChecksumError, ModelError, ModelUnavailableError
from voiceauth.models import resolve

pytestmark = pytest.mark.integration  # real model, processes or external tools

PARITY = 0.9999


@pytest.fixture(scope="module")
def onnx_cache(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A cache directory holding both graphs, exported once from the (already pulled) verified weights."""
    model_dirs = {name: resolve(engine.spec) for name, engine in ENGINES.items()}
    cache = tmp_path_factory.mktemp("cache")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("VOICEAUTH_CACHE_DIR", str(cache))
        for name, engine in ENGINES.items():
            export_onnx(engine, model_dirs[name])
        yield cache


@pytest.fixture
def use_cache(onnx_cache: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("VOICEAUTH_CACHE_DIR", str(onnx_cache))
    return onnx_cache


def speech(speakers: dict[str, list[Path]], count: int = 3) -> list[np.ndarray]:
    """The first file of ``count`` speakers, cut to lengths that are not whole segments or windows."""
    out = []
    for i, files in enumerate(list(speakers.values())[:count]):
        audio, _ = sf.read(files[0], dtype="float32")
        out.append(audio[: 40_000 + 23_457 * i])
    return out


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


@pytest.mark.parametrize("name", sorted(ENGINES))
def test_export_records_the_graph_checksum_beside_it(name: str, use_cache: Path) -> None:
    path = ENGINES[name].cache_path()
    assert path.parent == use_cache / "onnx"
    digest, filename = path.with_name(path.name + ".sha256").read_text().split()
    assert filename == path.name
    assert digest == hashlib.sha256(path.read_bytes()).hexdigest()
    assert ENGINES[name].spec.checksums[ENGINES[name].weights].startswith(path.stem.split("-")[-1])


@pytest.mark.parametrize("name", sorted(ENGINES))
def test_exported_graph_runs_no_1d_convolution(name: str, use_cache: Path) -> None:
    """ONNX Runtime's blocked-layout kernels take only 2-D convolutions (benchmarks/engine.py: the speed)."""
    import onnx

    graph = onnx.load(str(ENGINES[name].cache_path())).graph
    dims = {init.name: len(init.dims) for init in graph.initializer}
    convs = [dims.get(node.input[1]) for node in graph.node if node.op_type == "Conv"]
    assert convs and set(convs) == {4}


@pytest.mark.parametrize("name", sorted(ENGINES))
def test_onnx_graph_matches_the_torch_network(name: str, use_cache: Path, speakers: dict[str, list[Path]]) -> None:
    import torch

    engine = ENGINES[name]
    network = _torch_network(engine, resolve(engine.spec) / engine.weights)
    session = OnnxEmbedder(engine).load()._session
    for audio in speech(speakers):
        feats = engine.features(audio)[None]
        with torch.no_grad():
            expected = network(torch.from_numpy(feats))[0].numpy()
        (got,) = session.run(["embedding"], {"feats": feats})
        assert cosine(got[0], expected) >= PARITY


def test_ecapa_onnx_matches_speechbrain_end_to_end(
    use_cache: Path, speakers: dict[str, list[Path]], embedder: Embedder
) -> None:
    onnx = OnnxEmbedder(ECAPA_ONNX)
    assert onnx.model_id == embedder.model_id and onnx.dim == embedder.dim
    for audio in speech(speakers):
        assert cosine(onnx.embed([audio])[0], embedder.embed([audio])[0]) >= PARITY


def test_speechbrain_fbank_matches_speechbrain(speakers: dict[str, list[Path]]) -> None:
    import torch
    from speechbrain.lobes.features import Fbank
    from speechbrain.processing.features import InputNormalization

    audio = speech(speakers, 1)[0]
    with torch.no_grad():
        feats = Fbank(n_mels=80)(torch.from_numpy(audio)[None])
        ref = InputNormalization(norm_type="sentence", std_norm=False)(feats, torch.ones(1))[0].numpy()
    ours = speechbrain_fbank(audio)
    assert ours.dtype == np.float32 and ours.shape == ref.shape
    assert np.abs(ours - ref).max() < 0.01


@pytest.mark.parametrize("name", sorted(ENGINES))
def test_embedder_returns_unit_rows(name: str, use_cache: Path, speakers: dict[str, list[Path]]) -> None:
    embedder = OnnxEmbedder(name, max_window_s=2.0)  # several windows per signal
    assert isinstance(embedder, Embedder)
    signals = speech(speakers) + [np.zeros(1000, np.float32) + 0.01 * np.sin(np.arange(1000, dtype=np.float32))]
    out = embedder.embed(signals)
    assert out.shape == (len(signals), 192) and out.dtype == np.float32
    assert np.allclose(np.linalg.norm(out, axis=1), 1.0, atol=1e-5)
    assert embedder.embed([]).shape == (0, 192)
    for bad in (np.full(16000, np.nan, np.float32), np.zeros(0, np.float32), np.zeros((2, 16000), np.float32)):
        with pytest.raises(AudioError):
            embedder.embed([bad])


def test_campplus_onnx_separates_speakers(use_cache: Path, speakers: dict[str, list[Path]]) -> None:
    (_, files_a), (_, files_b) = list(speakers.items())[2:4]
    a = OnnxEmbedder(CAMPPLUS_ONNX).embed([sf.read(f, dtype="float32")[0] for f in files_a[:3]])
    b = OnnxEmbedder(CAMPPLUS_ONNX).embed([sf.read(f, dtype="float32")[0] for f in files_b[:3]])
    same = [float(x[i] @ x[j]) for x in (a, b) for i in range(3) for j in range(i + 1, 3)]
    assert min(same) > float((a @ b.T).max())


@pytest.fixture
def private_cache(onnx_cache: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A copy of the CAM++ graph and its checksum in a cache of this test's own."""
    shutil.copytree(onnx_cache / "onnx", tmp_path / "onnx", ignore=shutil.ignore_patterns("ecapa-*"))
    monkeypatch.setenv("VOICEAUTH_CACHE_DIR", str(tmp_path))
    return tmp_path


def test_modified_graph_is_refused(private_cache: Path) -> None:
    path = CAMPPLUS_ONNX.cache_path()
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 1
    path.write_bytes(bytes(data))
    with pytest.raises(ModelChecksumError, match="recorded beside it.*voiceauth models pull"):
        OnnxEmbedder(CAMPPLUS_ONNX).load()


def test_modified_checksum_file_is_refused(private_cache: Path) -> None:
    sidecar = CAMPPLUS_ONNX.cache_path().with_name(CAMPPLUS_ONNX.cache_path().name + ".sha256")
    sidecar.write_text("0" * 64 + "  x.onnx\n")
    with pytest.raises(ModelChecksumError):
        OnnxEmbedder(CAMPPLUS_ONNX).embed([np.zeros(16000, np.float32)])


@pytest.mark.parametrize("remove", ["graph", "checksum"])
def test_missing_graph_or_checksum_fails_closed(remove: str, private_cache: Path) -> None:
    path = CAMPPLUS_ONNX.cache_path()
    (path if remove == "graph" else path.with_name(path.name + ".sha256")).unlink()
    with pytest.raises(ModelUnavailableError, match="voiceauth models pull"):
        OnnxEmbedder(CAMPPLUS_ONNX).load()


def test_unknown_engine_is_refused() -> None:
    with pytest.raises(ModelError, match="unknown speaker engine"):
        OnnxEmbedder("wavlm")


_NO_TORCH = """
import json, sys
import soundfile as sf
from voiceauth.embedding.onnx import OnnxEmbedder
audio = sf.read(sys.argv[1], dtype="float32")[0]
out = {name: OnnxEmbedder(name).embed([audio])[0].tolist() for name in ("campplus", "ecapa")}
out["torch_modules"] = sorted(m for m in sys.modules if m == "torch" or m.startswith(("torch.", "speechbrain")))
print(json.dumps(out))
"""


def test_onnx_embed_does_not_import_torch(use_cache: Path, speakers: dict[str, list[Path]]) -> None:
    path = next(iter(speakers.values()))[1]
    env = {**os.environ, "VOICEAUTH_CACHE_DIR": str(use_cache)}
    proc = subprocess.run(
        [sys.executable, "-c", _NO_TORCH, str(path)], capture_output=True, text=True, env=env, timeout=300, check=False
    )
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)
    assert result["torch_modules"] == []
    audio = sf.read(path, dtype="float32")[0]
    for name in ("campplus", "ecapa"):
        assert cosine(np.array(result[name]), OnnxEmbedder(name).embed([audio])[0]) > 0.99999


@pytest.mark.parametrize("bad", [np.zeros(0, np.float32), np.full(800, np.nan, np.float32), np.zeros((2, 800))])
def test_every_embedder_refuses_unusable_input_before_the_model(bad: np.ndarray) -> None:
    """Both engines share one input check: an empty signal used to crash EcapaEmbedder with a ValueError."""
    from voiceauth.embedding.ecapa import EcapaEmbedder

    for embedder in (EcapaEmbedder(), OnnxEmbedder("campplus")):
        with pytest.raises(AudioError, match="non-empty, finite 1-D"):
            embedder.embed([bad])
