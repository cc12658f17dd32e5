"""voiceauth: passive voice-biometric authentication for bank call centres.

    from voiceauth import VoiceAuth, Policy, Consent

    va = VoiceAuth(store="voiceprints.db", policy=Policy(target_far=0.01))
    va.enroll("cust-42", ["call1.wav", "call2.wav"],
              consent=Consent.now(channel="ivr", notice_version="v3", captured_by="ivr"))
    result = va.verify("cust-42", "call3.wav")
"""

from voiceauth.audio.decode import Audio, Encoding, load_audio
from voiceauth.client import VoiceAuth
from voiceauth.decision import Decision
from voiceauth.errors import (
    AlreadyEnrolledError,
    AudioDecodeError,
    AudioError,
    CalibrationError,
    ConsentError,
    CorpusError,
    ErasureIncompleteError,
    InvalidIdError,
    KeyMissingError,
    ModelChecksumError,
    ModelError,
    ModelMismatchError,
    ModelUnavailableError,
    NoSpeechError,
    NotEnrolledError,
    OptedOutError,
    OutcomeError,
    SessionError,
    SpeechStackError,
    StoreCorruptError,
    StoreError,
    TamperedError,
    VoiceAuthError,
)
from voiceauth.ids import canonical_id
from voiceauth.live import CallResult, CallSession, CallStatus, Revision, ScreenInput, ScreenVerdict, SessionSettings
from voiceauth.results import (
    Candidate,
    EnrolmentProgress,
    EnrolmentStatus,
    Flag,
    Probe,
    SampleReport,
    VerificationResult,
    WatchlistHit,
)
from voiceauth.scoring.calibration import Calibration, CalibrationSet
from voiceauth.scoring.policy import Policy, Thresholds
from voiceauth.services.shadow import ShadowStatus
from voiceauth.store.base import Consent, OptOutResult, VoiceprintInfo

__version__ = "0.1.0"

__all__ = [
    "AlreadyEnrolledError",
    "Audio",
    "AudioDecodeError",
    "AudioError",
    "Calibration",
    "CalibrationError",
    "OutcomeError",
    "CalibrationSet",
    "CallResult",
    "CallSession",
    "CallStatus",
    "Candidate",
    "Consent",
    "ConsentError",
    "CorpusError",
    "ErasureIncompleteError",
    "Decision",
    "Encoding",
    "EnrolmentProgress",
    "EnrolmentStatus",
    "Flag",
    "InvalidIdError",
    "KeyMissingError",
    "ModelChecksumError",
    "ModelError",
    "ModelMismatchError",
    "ModelUnavailableError",
    "NoSpeechError",
    "NotEnrolledError",
    "OptOutResult",
    "OptedOutError",
    "Policy",
    "Probe",
    "Revision",
    "SampleReport",
    "ScreenInput",
    "ScreenVerdict",
    "SessionError",
    "SessionSettings",
    "ShadowStatus",
    "SpeechStackError",
    "StoreCorruptError",
    "StoreError",
    "TamperedError",
    "Thresholds",
    "VerificationResult",
    "VoiceAuth",
    "VoiceAuthError",
    "VoiceprintInfo",
    "WatchlistHit",
    "canonical_id",
    "load_audio",
    "__version__",
]
