"""The public API is a deliberate list: adding or removing a name is a decision made here."""

from __future__ import annotations

import inspect

import voiceauth
from voiceauth import errors

PUBLIC = {
    # the client and its settings
    "VoiceAuth", "Policy", "Consent", "SessionSettings", "Calibration", "CalibrationSet", "Thresholds",
    # inputs
    "Audio", "Encoding", "Probe", "load_audio", "canonical_id",
    # results
    "Decision", "VerificationResult", "EnrolmentProgress", "EnrolmentStatus", "SampleReport", "Candidate",
    "Flag", "WatchlistHit", "VoiceprintInfo", "OptOutResult", "ShadowStatus",
    # live calls
    "CallSession", "CallResult", "CallStatus", "Revision", "ScreenInput", "ScreenVerdict",
    # errors
    "VoiceAuthError", "AudioError", "AudioDecodeError", "NoSpeechError", "ModelError", "ModelUnavailableError",
    "ModelChecksumError", "ModelMismatchError", "SpeechStackError", "StoreError", "StoreCorruptError",
    "KeyMissingError", "TamperedError", "NotEnrolledError", "AlreadyEnrolledError", "ErasureIncompleteError",
    "InvalidIdError", "ConsentError", "OptedOutError", "CalibrationError", "OutcomeError", "CorpusError",
    "SessionError",
    "__version__",
}


def test_exported_names_are_the_deliberate_list() -> None:
    assert set(voiceauth.__all__) == PUBLIC
    assert len(voiceauth.__all__) == len(PUBLIC)  # no name listed twice


def test_every_exported_name_exists() -> None:
    for name in voiceauth.__all__:
        assert getattr(voiceauth, name) is not None, name


def test_every_error_of_the_hierarchy_is_exported_and_documented() -> None:
    classes = {name: cls for name, cls in inspect.getmembers(errors, inspect.isclass)
               if issubclass(cls, errors.VoiceAuthError) and cls.__module__ == errors.__name__}
    assert set(classes) <= set(voiceauth.__all__)
    for name, cls in classes.items():
        assert name in (errors.__doc__ or ""), f"{name} is missing from the tree in errors.py's docstring"
        assert cls.__doc__, name
