"""``voiceauth doctor``: is this installation able to run, and if not, what fixes it?

Each check returns a :class:`Check`; none raises. The speech-stack check is also the guard
the library runs before its first model load (:func:`ensure_speech_stack`), so a broken
torch / torchaudio pair surfaces as one :class:`~voiceauth.errors.SpeechStackError` with the
fixing command, never as a traceback from deep inside SpeechBrain.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Sequence
from pathlib import Path

from voiceauth.embedding.stack import Check, check_speech_stack


def check_models(model_dir: str | None = None, spoof_model_dir: str | None = None) -> list[Check]:
    """Model files present (explicit directory or cache) and matching their pinned checksums."""
    from voiceauth.errors import ModelChecksumError, ModelUnavailableError
    from voiceauth.models import AASIST, CAMPPLUS, ECAPA, cache_root, verify

    checks: list[Check] = []
    for spec, explicit, pull in (
        (ECAPA, model_dir, "voiceauth models pull"),
        (CAMPPLUS, None, "voiceauth models pull --model campplus"),
        (AASIST, spoof_model_dir, "voiceauth models pull --spoof"),
    ):
        given = explicit or os.environ.get(spec.env_var)
        directory = Path(given).expanduser() if given else cache_root() / "models" / spec.name
        if not given and not directory.is_dir():
            detail = f"not downloaded yet (fetched on first use or by `{pull}`)"
            checks.append(Check(f"model {spec.name}", True, detail))
            continue
        try:
            verify(spec, directory)
        except ModelChecksumError as exc:
            checks.append(Check(f"model {spec.name}", False, str(exc), f"delete {directory} and run `{pull}`"))
        except ModelUnavailableError as exc:
            checks.append(Check(f"model {spec.name}", False, str(exc), f"run `{pull}`"))
        else:
            checks.append(Check(f"model {spec.name}", True, f"{directory} (checksums ok)"))
    return checks


def check_onnxruntime() -> list[Check]:
    """onnxruntime, where installed (optional: only the ONNX engine needs it)."""
    try:
        import onnxruntime
    except ImportError:
        return []
    except Exception as exc:
        return [Check("onnxruntime", False, f"cannot be imported ({type(exc).__name__}: {exc})",
                      "reinstall it from the lock file: `make clean setup`")]
    return [Check("onnxruntime", True, str(onnxruntime.__version__))]


def check_key_file() -> list[Check]:
    """The key file, where one is used, is readable by its owner only (0600) in a private directory."""
    from voiceauth.store.crypto import key_file_path

    if os.environ.get("VOICEAUTH_KEY"):
        return [Check("encryption key", True, "from VOICEAUTH_KEY")]
    path = key_file_path()
    if not path.exists():
        return [Check("encryption key", True, f"{path} does not exist yet (created with mode 0600 on first use)")]
    problems = []
    mode = stat.S_IMODE(path.stat().st_mode)
    if mode & 0o077:
        problems.append(f"{path} has mode {mode:04o}")
    parent_mode = stat.S_IMODE(path.parent.stat().st_mode)
    if parent_mode & 0o077:
        problems.append(f"{path.parent} has mode {parent_mode:04o}")
    if problems:
        return [Check("encryption key", False, "; ".join(problems) + ": other users can read or replace the key",
                      f"chmod 600 {path} && chmod 700 {path.parent}")]
    return [Check("encryption key", True, f"{path} (mode 0600)")]


def check_store(store: str) -> list[Check]:
    """The store answers (SQLite file readable as a voiceauth store, or PostgreSQL reachable)."""
    if store.startswith(("postgresql://", "postgres://")):
        return _check_postgres(store)
    path = Path(store).expanduser()
    if not path.exists():
        return [Check("store", True, f"{path} does not exist yet (created by the first enrolment)")]
    import sqlite3

    try:
        with sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=5) as conn:
            tables = {row[0] for row in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    except sqlite3.Error as exc:
        return [Check("store", False, f"{path} cannot be read as SQLite ({exc})", "check --store / VOICEAUTH_STORE")]
    if "voiceprints" not in tables:
        return [Check("store", False, f"{path} is not a voiceauth store", "check --store / VOICEAUTH_STORE")]
    return [Check("store", True, f"{path} (SQLite)")]


def _redact(url: str) -> str:
    from urllib.parse import urlsplit, urlunsplit

    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@", 1)
    return urlunsplit(parts._replace(netloc=netloc))


def _check_postgres(url: str) -> list[Check]:
    shown = _redact(url)
    try:
        import psycopg
    except ImportError:
        return [Check("store", False, f"{shown} needs psycopg", "pip install 'voiceauth[scale]'")]
    try:
        with psycopg.connect(url, connect_timeout=5) as conn:
            conn.execute("SELECT 1")
    except Exception as exc:
        message = str(exc).replace(url, shown).strip().splitlines()[0][:200] if str(exc).strip() else type(exc).__name__
        return [Check("store", False, f"{shown} unreachable ({message})",
                      "check the URL, the server, and the network path to it")]
    return [Check("store", True, f"{shown} (PostgreSQL)")]


def run_checks(
    store: str | None = None, model_dir: str | None = None, spoof_model_dir: str | None = None
) -> Sequence[Check]:
    """Every check, in the order a person would fix them."""
    checks = check_speech_stack() + check_onnxruntime() + check_models(model_dir, spoof_model_dir) + check_key_file()
    if store is not None:
        checks += check_store(store)
    return checks
