"""The error hierarchy: every error survives a process boundary (Ray, multiprocessing, a pool)."""

from __future__ import annotations

import inspect
import pickle

import pytest

import voiceauth.errors
import voiceauth.serve.errors
from voiceauth.errors import ErasureIncompleteError, VoiceAuthError


def _all_errors() -> list[type[VoiceAuthError]]:
    seen: list[type[VoiceAuthError]] = []
    todo = [VoiceAuthError]
    while todo:
        cls = todo.pop()
        seen.append(cls)
        todo.extend(cls.__subclasses__())
    return sorted(set(seen), key=lambda c: c.__qualname__)


def _example(cls: type[VoiceAuthError]) -> VoiceAuthError:
    """One instance built through the class's own constructor, extra required arguments filled in."""
    init = cls.__init__
    own = getattr(init, "__module__", "").startswith("voiceauth")
    params = list(inspect.signature(init).parameters.values())[2:] if own else []
    extra = {p.name: ("c1", "c2") for p in params if p.default is inspect.Parameter.empty}
    return cls("what went wrong; what to do", **extra)


def test_the_walk_finds_the_service_errors_too() -> None:
    names = {cls.__name__ for cls in _all_errors()}
    assert {"ErasureIncompleteError", "StreamError", "AuthError", "NoSpeechError"} <= names
    assert voiceauth.serve.errors.StreamError.__module__ == "voiceauth.serve.errors"


@pytest.mark.parametrize("cls", _all_errors(), ids=lambda c: c.__name__)
def test_every_error_survives_pickling_with_its_message_and_fields(cls: type[VoiceAuthError]) -> None:
    error = _example(cls)
    copy = pickle.loads(pickle.dumps(error))
    assert type(copy) is cls
    assert str(copy) == str(error)
    assert vars(copy) == vars(error)


def test_erasure_incomplete_keeps_the_customers_across_processes() -> None:
    error = ErasureIncompleteError("deleted, but a copy remains", ("c1", "c2"))
    copy = pickle.loads(pickle.dumps(error))
    assert copy.subjects == ("c1", "c2") and isinstance(copy, voiceauth.errors.StoreError)
