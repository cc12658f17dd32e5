"""Is the speech stack (torch, torchaudio, SpeechBrain) able to load? Checked before the first model load.

A broken torch / torchaudio pair surfaces as one :class:`~voiceauth.errors.SpeechStackError`
with the fixing command, never as a traceback from deep inside SpeechBrain.
"""

from __future__ import annotations

import importlib
import threading
from dataclasses import dataclass

from voiceauth.errors import SpeechStackError

REINSTALL = (
    "run `make clean setup` in a voiceauth checkout (installs the locked pair torch==2.11.0, "
    "torchaudio==2.11.0), or `pip install 'torch==2.11.0' 'torchaudio==2.11.0'` in your environment"
)


@dataclass(frozen=True)
class Check:
    """One finding: ``ok`` False means voiceauth will fail; ``fix`` says what to run."""

    name: str
    ok: bool
    detail: str
    fix: str = ""


def _release(version: str) -> tuple[int, ...]:
    """``'2.11.0+cu130'`` -> ``(2, 11, 0)``."""
    base = version.split("+", 1)[0]
    parts: list[int] = []
    for piece in base.split("."):
        digits = "".join(ch for ch in piece if ch.isdigit())
        if not digits:
            break
        parts.append(int(digits))
    return tuple(parts)


def check_speech_stack() -> list[Check]:
    """torch, torchaudio (native library included) and SpeechBrain import, and torchaudio matches torch."""
    checks: list[Check] = []
    versions: dict[str, str] = {}
    for module in ("torch", "torchaudio", "speechbrain"):
        try:
            imported = importlib.import_module(module)
        except Exception as exc:  # OSError from a native library, ImportError, anything the import raises
            reason = f"{type(exc).__name__}: {str(exc).strip().splitlines()[0][:300] if str(exc).strip() else ''}"
            checks.append(Check(module, False, f"cannot be imported ({reason})", REINSTALL))
            return checks
        versions[module] = str(getattr(imported, "__version__", "?"))
        checks.append(Check(module, True, versions[module]))
    torch_release, audio_release = _release(versions["torch"]), _release(versions["torchaudio"])
    # torchaudio is built against exactly one torch release; any other pair fails when its library loads.
    if torch_release != audio_release:
        checks.append(Check(
            "torch/torchaudio pair", False,
            f"torchaudio {versions['torchaudio']} is built for torch {'.'.join(map(str, audio_release))}, "
            f"but torch {versions['torch']} is installed", REINSTALL,
        ))
    else:
        checks.append(Check("torch/torchaudio pair", True, "matching releases"))
    return checks


_STACK_OK = False
_STACK_LOCK = threading.Lock()


def ensure_speech_stack() -> None:
    """Raise :class:`SpeechStackError` with the fix if the speech stack cannot load (checked once per process)."""
    global _STACK_OK
    if _STACK_OK:
        return
    with _STACK_LOCK:
        if _STACK_OK:
            return
        failed = [c for c in check_speech_stack() if not c.ok]
        if failed:
            first = failed[0]
            raise SpeechStackError(
                f"the speech stack is broken: {first.name} {first.detail}. Fix: {first.fix}; "
                "`voiceauth doctor` checks the whole installation"
            )
        _STACK_OK = True
