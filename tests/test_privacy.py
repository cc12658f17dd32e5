"""Nothing the library does leaves audio or embeddings in the clear on disk (issue: minimisation).

Enrol and verify through the CLI with a temporary HOME, working directory and TMPDIR,
then scan every file written there for the embeddings' bytes and for pieces of the audio.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import pytest
import soundfile as sf

from voiceauth.cli import main
from voiceauth.models import cache_root

CONSENT = ["--consent-channel", "ivr", "--consent-notice", "v3", "--consent-by", "agent-17"]


def needles(audio_path: Path) -> dict[str, bytes]:
    """Byte patterns that would betray stored audio."""
    x, rate = sf.read(audio_path, dtype="float32")
    mid = len(x) // 2
    piece = x[mid : mid + 32]
    raw = audio_path.read_bytes()
    return {
        "float32 audio": piece.astype("<f4").tobytes(),
        "int16 audio": (piece * 32767).astype("<i2").tobytes(),
        "source file bytes": raw[len(raw) // 2 : len(raw) // 2 + 64],
    }


def test_no_audio_or_embedding_written(tmp_path, monkeypatch, speakers, embedder) -> None:  # noqa: ANN001
    home, work, tmp = tmp_path / "home", tmp_path / "work", tmp_path / "tmp"
    for d in (home, work, tmp):
        d.mkdir()
    monkeypatch.setenv("VOICEAUTH_CACHE_DIR", str(cache_root()))  # model weights stay where they are
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("XDG_CONFIG_HOME", str(home / ".config"))
    monkeypatch.delenv("VOICEAUTH_KEY_FILE", raising=False)
    monkeypatch.setenv("TMPDIR", str(tmp))
    monkeypatch.setattr(tempfile, "tempdir", str(tmp))
    monkeypatch.chdir(work)

    spk = sorted(speakers)[0]
    enrol = [str(p) for p in speakers[spk][:3]]
    probe = speakers[spk][5]
    assert main(["enroll", spk, *enrol, *CONSENT]) == 0
    assert main(["verify", spk, str(probe)]) == 0
    assert main(["identify", str(probe)]) == 0

    from voiceauth.client import VoiceAuth
    from voiceauth.store.base import Namespace

    with VoiceAuth("voiceprints.db", embedder=embedder) as va:
        stored = va.store.get(Namespace.CUSTOMER, spk).embedding
        probed = va.probe(probe).embedding
    patterns = {f"{name} ({label})": value for label, vec in (("voiceprint", stored), ("probe", probed))
                for name, value in (("float32 embedding", vec.astype("<f4").tobytes()[:32]),
                                    ("float64 embedding", vec.astype("<f8").tobytes()[:32]))}
    for path in [*enrol, str(probe)]:
        patterns |= {f"{k} of {Path(path).name}": v for k, v in needles(Path(path)).items()}

    written = [p for root in (home, work, tmp) for p in root.rglob("*") if p.is_file()]
    assert any(p.name == "voiceprints.db" for p in written)
    assert any(p.name == "keyring.json" for p in written)
    for path in written:
        assert path.suffix.lower() not in {".wav", ".flac", ".ogg", ".raw", ".npy"}, path
        data = path.read_bytes()
        for label, pattern in patterns.items():
            assert pattern not in data, f"{label} found in {path}"
    key_file = home / ".config" / "voiceauth" / "keyring.json"
    assert key_file.stat().st_mode & 0o077 == 0


@pytest.mark.parametrize("bad", [b"", b"\x00" * 7, b"RIFF" + b"\xff" * 100])
def test_bad_bytes_via_cli_leave_no_trace(tmp_path, monkeypatch, bad) -> None:  # noqa: ANN001
    monkeypatch.chdir(tmp_path)
    path = tmp_path / "bad.wav"
    path.write_bytes(bad)
    assert main(["verify", "someone", str(path), "--store", str(tmp_path / "s.db")]) == 2
    assert {p.name for p in tmp_path.iterdir()} <= {"bad.wav", "s.db", "s.db-wal", "s.db-shm"}
