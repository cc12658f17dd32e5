"""`voiceauth doctor` and the speech-stack guard turn a broken installation into one clear error."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from voiceauth import doctor
from voiceauth.embedding import stack
from voiceauth.errors import SpeechStackError, VoiceAuthError

pytestmark = pytest.mark.integration  # real model, processes or external tools

BROKEN_LIB = (
    "Could not load this library: /venv/torchaudio/lib/libtorchaudio.so: "
    "undefined symbol: torch_exception_get_what_without_backtrace"
)


def _stand_in(tmp_path: Path, body: str) -> dict[str, str]:
    """An environment whose `import torchaudio` finds a stand-in package first."""
    package = tmp_path / "standin" / "torchaudio"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text(textwrap.dedent(body))
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(package.parent), env.get("PYTHONPATH", "")])
    env["VOICEAUTH_KEY_FILE"] = str(tmp_path / "keys" / "keyring.json")
    return env


def _run(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, *args], env=env, capture_output=True, text=True, timeout=300, check=False)


def test_doctor_reports_torchaudio_that_fails_to_load(tmp_path: Path) -> None:
    env = _stand_in(tmp_path, f"raise OSError({BROKEN_LIB!r})\n")
    proc = _run(["-m", "voiceauth", "doctor", "--no-store"], env)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "FAIL  torchaudio" in proc.stdout
    assert "undefined symbol" in proc.stdout
    assert "make clean setup" in proc.stdout
    assert "Traceback" not in proc.stdout + proc.stderr


def test_doctor_reports_mismatched_torchaudio_release(tmp_path: Path) -> None:
    env = _stand_in(tmp_path, "__version__ = '2.11.1'\n")
    proc = _run(["-m", "voiceauth", "doctor", "--no-store", "--json"], env)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    checks = {c["name"]: c for c in json.loads(proc.stdout)}
    assert checks["torchaudio"]["ok"] is True
    pair = checks["torch/torchaudio pair"]
    assert pair["ok"] is False and "2.11.1" in pair["detail"] and "torch==2.11.0" in pair["fix"]


def test_first_model_load_raises_speech_stack_error(tmp_path: Path) -> None:
    env = _stand_in(tmp_path, f"raise OSError({BROKEN_LIB!r})\n")
    script = textwrap.dedent("""
        from voiceauth.embedding.ecapa import EcapaEmbedder
        from voiceauth.errors import SpeechStackError
        try:
            EcapaEmbedder().load()
        except SpeechStackError as exc:
            print("SpeechStackError:", exc)
    """)
    proc = _run(["-c", script], env)
    assert proc.returncode == 0, proc.stderr
    assert "SpeechStackError: the speech stack is broken: torchaudio" in proc.stdout
    assert "make clean setup" in proc.stdout and "voiceauth doctor" in proc.stdout


def test_cli_identify_with_broken_stack_exits_2_without_traceback(
    tmp_path: Path, speakers: dict[str, list[Path]]
) -> None:
    speech_file = next(iter(speakers.values()))[0]
    env = _stand_in(tmp_path, f"raise OSError({BROKEN_LIB!r})\n")
    env["VOICEAUTH_KEY"] = "A" * 43 + "="
    store = tmp_path / "s.db"
    made = _run(["-c", f"from voiceauth.store import open_store; open_store({str(store)!r}).close()"], env)
    assert made.returncode == 0, made.stderr  # the store needs no speech stack
    proc = _run(["-m", "voiceauth", "identify", str(speech_file), "--store", str(store)], env)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "speech stack is broken" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_guard_passes_on_this_installation() -> None:
    stack.ensure_speech_stack()
    assert all(c.ok for c in stack.check_speech_stack())


def test_guard_error_is_a_voiceauth_error_with_the_fix(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(stack, "_STACK_OK", False)
    monkeypatch.setattr(stack, "check_speech_stack",
                        lambda: [doctor.Check("torchaudio", False, "cannot be imported", stack.REINSTALL)])
    with pytest.raises(SpeechStackError, match="make clean setup") as info:
        stack.ensure_speech_stack()
    assert isinstance(info.value, VoiceAuthError)


@pytest.mark.parametrize(("torch_v", "audio_v", "ok"), [
    ("2.11.0+cu130", "2.11.0+cu130", True),
    ("2.11.0", "2.11.1", False),
    ("2.10.0+cpu", "2.11.0", False),
])
def test_release_pairing(torch_v: str, audio_v: str, ok: bool) -> None:
    assert (stack._release(torch_v) == stack._release(audio_v)) is ok


def test_key_file_readable_by_others_fails(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("VOICEAUTH_KEY", raising=False)
    key_dir = tmp_path / "cfg"
    key_dir.mkdir(mode=0o700)
    key_file = key_dir / "keyring.json"
    key_file.write_text("{}")
    key_file.chmod(0o644)
    monkeypatch.setenv("VOICEAUTH_KEY_FILE", str(key_file))
    (check,) = doctor.check_key_file()
    assert not check.ok and "0644" in check.detail and "chmod 600" in check.fix
    key_file.chmod(0o600)
    assert doctor.check_key_file()[0].ok


def test_store_that_is_not_a_voiceauth_store_fails(tmp_path: Path) -> None:
    other = tmp_path / "other.db"
    with sqlite3.connect(other) as conn:
        conn.execute("CREATE TABLE t (x)")
    (check,) = doctor.check_store(str(other))
    assert not check.ok and "not a voiceauth store" in check.detail
    assert doctor.check_store(str(tmp_path / "missing.db"))[0].ok


def test_postgres_password_is_not_shown(tmp_path: Path) -> None:
    (check,) = doctor.check_store("postgresql://bank:s3cret-pw@127.0.0.1:1/voiceauth")
    assert not check.ok
    assert "s3cret-pw" not in check.detail and "***" in check.detail


def test_tampered_model_dir_fails(tmp_path: Path) -> None:
    from voiceauth.models import ECAPA, resolve

    ecapa_dir = resolve(ECAPA)
    copy = tmp_path / "model"
    copy.mkdir()
    for f in ecapa_dir.iterdir():
        (copy / f.name).write_bytes(f.read_bytes())
    with open(copy / "embedding_model.ckpt", "r+b") as fh:
        fh.seek(100)
        fh.write(b"\x00\x01\x02")
    checks = {c.name: c for c in doctor.check_models(model_dir=str(copy))}
    ecapa = checks["model ecapa-voxceleb"]
    assert not ecapa.ok and "models pull" in ecapa.fix
