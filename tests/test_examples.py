"""The examples run end to end as a user would run them: real model, real speech, a subprocess each."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration  # real model, processes or external tools

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def run_example(name: str, *args: str, env: dict[str, str]) -> str:
    done = subprocess.run([sys.executable, str(EXAMPLES / name), *args], capture_output=True, text=True,
                          timeout=300, env=env)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "Traceback" not in done.stderr
    return done.stdout


@pytest.fixture
def env(isolated_keys: Path) -> dict[str, str]:
    """The test's own key file (set by ``isolated_keys``) and no model hub."""
    return {**os.environ, "HF_HUB_OFFLINE": "1"}


def test_quickstart_accepts_the_customer_and_not_the_impostor(env: dict[str, str], tmp_path: Path,
                                                              librispeech: Path) -> None:
    out = run_example("quickstart.py", "--store", str(tmp_path / "q.db"), env=env)
    assert "enrolment: complete" in out
    lines = {line.split(":")[0].strip(): line for line in out.splitlines()}
    assert " accept " in lines["alice"] and " accept " not in lines["bob (impostor)"]


def test_live_call_examples(env: dict[str, str], tmp_path: Path, speakers: dict[str, list[Path]],
                            consent) -> None:  # noqa: ANN001
    from voiceauth.audio.channel import telephone_channel
    from voiceauth.audio.decode import load_audio
    from voiceauth.client import VoiceAuth

    store = tmp_path / "ivr.db"
    customer = sorted(speakers)[0]
    with VoiceAuth(store) as va:
        va.enroll(customer, [telephone_channel(load_audio(p)) for p in speakers[customer][:3]], consent=consent)
    call = str(max(speakers[customer][3:], key=lambda p: p.stat().st_size))  # the longest test recording
    out = run_example("ivr_simulation.py", "--store", str(store), "--customer", customer, "--file", call,
                      "--speed", "10", env=env)
    assert "-> authenticated" in out and "spoof check" in out
    assert "final: authenticated" in out
    out = run_example("callbacks.py", "--store", str(store), "--customer", customer, "--file", call, env=env)
    assert "skip the security questions" in out
