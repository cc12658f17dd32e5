"""Shared fixtures: real speech, isolated key files, a client on the real ECAPA model."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

SHARED = Path(__file__).resolve().parents[2] / "shared"
LIBRISPEECH = SHARED / "corpora" / "librispeech-samples"


def librispeech_root() -> Path:
    if not LIBRISPEECH.is_dir():
        pytest.skip(f"shared LibriSpeech samples not found at {LIBRISPEECH}")
    return LIBRISPEECH


@pytest.fixture(scope="session")
def librispeech() -> Path:
    return librispeech_root()


@pytest.fixture(scope="session")
def speakers(librispeech: Path) -> dict[str, list[Path]]:
    """test-other speaker id -> their 10 FLAC files, sorted."""
    root = librispeech / "test-other"
    return {d.name: sorted(d.glob("*.flac")) for d in sorted(root.iterdir()) if d.is_dir()}


@pytest.fixture(autouse=True)
def isolated_keys(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Every test gets its own key file; no test touches the real ~/.config."""
    config = tmp_path_factory.mktemp("config")
    monkeypatch.setenv("XDG_CONFIG_HOME", str(config))
    monkeypatch.setenv("VOICEAUTH_KEY_FILE", str(config / "voiceauth" / "keyring.json"))
    monkeypatch.delenv("VOICEAUTH_KEY", raising=False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return config


@pytest.fixture(scope="session")
def embedder():  # noqa: ANN201 - EcapaEmbedder, imported lazily
    """The real ECAPA model, loaded once per test session."""
    from voiceauth.embedding.ecapa import EcapaEmbedder

    return EcapaEmbedder().load()


@pytest.fixture
def consent():  # noqa: ANN201
    from voiceauth.store.base import Consent

    return Consent.now(channel="test", notice_version="v1", captured_by="tests")


@pytest.fixture
def make_client(tmp_path: Path, embedder) -> Iterator[Callable[..., object]]:  # noqa: ANN001
    """Factory for VoiceAuth clients on a fresh SQLite file in tmp_path, sharing the loaded model."""
    from voiceauth.client import VoiceAuth

    made: list[VoiceAuth] = []

    def make(store: str | Path | None = None, **kw: object) -> VoiceAuth:
        va = VoiceAuth(store or tmp_path / "voiceprints.db", embedder=embedder, **kw)
        made.append(va)
        return va

    yield make
    for va in made:
        va.close()


@pytest.fixture
def speak(tmp_path: Path) -> Callable[[list[str]], list[Path]]:
    """Synthetic speech: ``speak(lines)`` renders each line with espeak-ng into a WAV file.
    Skips the test where espeak-ng is not installed (``make test`` installs it)."""
    import shutil
    import subprocess

    if shutil.which("espeak-ng") is None:
        pytest.skip("espeak-ng not on PATH (apt-get install espeak-ng)")

    def render(lines: list[str]) -> list[Path]:
        wavs = []
        for i, text in enumerate(lines):
            wav = tmp_path / f"tts{i}.wav"
            subprocess.run(["espeak-ng", "-v", "en-gb", "-w", str(wav), text], check=True)
            wavs.append(wav)
        return wavs

    return render


@pytest.fixture(autouse=True)
def _no_speechbrain_lazy_proxies() -> None:
    """Drop speechbrain's unloaded lazy-redirect modules from ``sys.modules``.

    Once speechbrain is imported (by the embedder), it leaves proxy modules such as
    ``speechbrain.k2_integration`` in ``sys.modules`` whose attribute access raises
    ImportError when the optional backend (k2, flair, spacy...) is missing
    (speechbrain#2995). Hypothesis scans every module's ``__file__`` before drawing
    examples and trips over them, failing any property test that runs after a model test.
    """
    import sys

    importutils = sys.modules.get("speechbrain.utils.importutils")
    lazy = getattr(importutils, "LazyModule", None)
    if lazy is None:
        return
    for name, module in list(sys.modules.items()):
        if isinstance(module, lazy) and vars(module).get("lazy_module") is None:
            del sys.modules[name]


# Fixtures that load a real model or start a real server: a test using any of them (directly or
# through another fixture) is an integration test. `make test-unit` runs the rest, on stand-ins.
INTEGRATION_FIXTURES = frozenset({"embedder", "make_client", "speak", "pg_url", "postgres", "real", "detector",
                                  "ray_cluster"})


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if INTEGRATION_FIXTURES.intersection(getattr(item, "fixturenames", ())) or item.get_closest_marker("slow"):
            item.add_marker(pytest.mark.integration)


# A test that hangs (a deadlocked pool, a server that never answers) must end the run with the stacks of
# every thread, not run into CI's time limit silently. The slowest test takes about 4 minutes here.
HANG_LIMIT_S = 900


@pytest.fixture(autouse=True)
def _hang_watchdog() -> Iterator[None]:
    import faulthandler
    import sys

    faulthandler.dump_traceback_later(HANG_LIMIT_S, exit=True, file=sys.__stderr__)
    try:
        yield
    finally:
        faulthandler.cancel_dump_traceback_later()
