"""The voiceauth error hierarchy.

Every error the library raises on purpose derives from :class:`VoiceAuthError`,
and every message says what happened and what to do about it::

    VoiceAuthError
    ├── AudioError                 input audio cannot be used
    │   ├── AudioDecodeError       missing, unreadable, truncated or wrongly encoded audio
    │   └── NoSpeechError          decodable, but no usable speech in it
    ├── ModelError
    │   ├── ModelUnavailableError  no source could provide the model weights
    │   ├── ModelChecksumError     weights found, but their checksum is wrong
    │   ├── SpeechStackError       torch / torchaudio / SpeechBrain cannot load (see `voiceauth doctor`)
    │   └── ModelMismatchError     a voiceprint was made by another model
    ├── StoreError                 the voiceprint store cannot be used
    │   ├── StoreCorruptError      the store file is not a voiceauth database
    │   ├── KeyMissingError        no encryption key, or the wrong one
    │   ├── TamperedError          a ciphertext or row fails authentication
    │   ├── NotEnrolledError       unknown customer (or enrolment incomplete)
    │   ├── AlreadyEnrolledError   enrolment exists; pass replace= or update=
    │   └── ErasureIncompleteError erased, but a copy remains in the WAL until a reader closes
    ├── InvalidIdError             empty, overlong or invisible-character customer id / label / actor
    ├── ConsentError               enrolment without a consent record
    ├── OptedOutError              the customer opted out of voice biometrics
    ├── CalibrationError           trials or calibration parameters unusable
    ├── OutcomeError               an outcome report names an unknown trial or contradicts an earlier one
    ├── CorpusError                a benchmark corpus has the wrong shape
    └── SessionError               misuse of a live call session
"""

from __future__ import annotations


class VoiceAuthError(Exception):
    """Base class of every error voiceauth raises on purpose."""


class AudioError(VoiceAuthError):
    """The input audio cannot be used."""


class AudioDecodeError(AudioError):
    """Audio is missing, unreadable, truncated, or not in the declared encoding."""


class NoSpeechError(AudioError):
    """The audio decodes, but holds no usable speech (silence, tone, NaN)."""


class ModelError(VoiceAuthError):
    """Problems with the speaker model."""


class ModelUnavailableError(ModelError):
    """No source could provide the model weights."""


class ModelChecksumError(ModelError):
    """Model weights were found but their checksum does not match."""


class SpeechStackError(ModelError):
    """The installed torch / torchaudio / SpeechBrain cannot load; the message names the fixing command."""


class ModelMismatchError(ModelError):
    """A voiceprint was made by another model than the one scoring it."""


class StoreError(VoiceAuthError):
    """The voiceprint store cannot be used."""


class StoreCorruptError(StoreError):
    """The store file is not a voiceauth database."""


class KeyMissingError(StoreError):
    """The encryption key is missing or is not the key the store was written with."""


class TamperedError(StoreError):
    """A stored ciphertext or row failed authentication: it was modified or moved."""


class NotEnrolledError(StoreError):
    """No (complete) voiceprint for this customer."""


class AlreadyEnrolledError(StoreError):
    """The customer already has a voiceprint; pass replace=True or update=True."""


class ErasureIncompleteError(StoreError):
    """An erasure committed, but a copy of the erased ciphertext is still in the store's files
    (a reader kept the write-ahead log in use); ``subjects`` are the customers concerned."""

    def __init__(self, message: str, subjects: tuple[str, ...]) -> None:
        super().__init__(message)
        self.subjects = subjects

    def __reduce__(self) -> tuple[type[ErasureIncompleteError], tuple[str, tuple[str, ...]]]:
        # rebuilt with both arguments in another process (a pool, Ray); the default passes only the message
        return type(self), (str(self), self.subjects)


class InvalidIdError(VoiceAuthError, ValueError):
    """A customer id, watchlist label or actor is empty, too long, or holds invisible characters."""


class ConsentError(VoiceAuthError):
    """Enrolment needs a consent record."""


class OptedOutError(VoiceAuthError):
    """The customer opted out of voice biometrics; no audio is processed."""


class CalibrationError(VoiceAuthError):
    """Calibration trials or parameters are unusable."""


class OutcomeError(VoiceAuthError):
    """An outcome report names no trial of a verification or call, or contradicts an earlier report."""


class CorpusError(VoiceAuthError):
    """A benchmark corpus does not have the expected layout or size."""


class SessionError(VoiceAuthError):
    """A live call session was misused (fed after close, wrong frame format...)."""
