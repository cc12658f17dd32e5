"""Errors of the service and how every error becomes an HTTP status or a WebSocket close code."""

from __future__ import annotations

from voiceauth import (
    AlreadyEnrolledError,
    AudioError,
    CalibrationError,
    ConsentError,
    ErasureIncompleteError,
    InvalidIdError,
    ModelError,
    NotEnrolledError,
    OptedOutError,
    OutcomeError,
    SessionError,
    StoreError,
    VoiceAuthError,
)

# WebSocket close codes (RFC 6455 section 7.4.1)
CLOSE_NORMAL = 1000
CLOSE_GOING_AWAY = 1001
CLOSE_UNSUPPORTED = 1003
"""Audio in a format or at a rate the call cannot take."""
CLOSE_INVALID_DATA = 1007
"""Bad JSON, bad base64, a malformed frame."""
CLOSE_POLICY = 1008
"""No key, a wrong key, a key without the scope, a protocol message out of order, idle too long."""
CLOSE_TOO_BIG = 1009
CLOSE_INTERNAL = 1011
CLOSE_TRY_LATER = 1013
"""The server holds its maximum of concurrent streams."""


class ServeError(VoiceAuthError):
    """An error of the service itself (bad request, authentication), with its HTTP status."""

    status = 400

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        if status is not None:
            self.status = status


class AuthError(ServeError):
    """No API key, or one that is unknown or wrong: 401."""

    status = 401


class ScopeError(ServeError):
    """A valid key without the scope the endpoint needs: 403."""

    status = 403


class StreamError(ServeError):
    """A streaming protocol violation; ``code`` is the WebSocket close code to end the stream with."""

    def __init__(self, message: str, code: int = CLOSE_INVALID_DATA) -> None:
        super().__init__(message)
        self.code = code


_STATUS: tuple[tuple[type[BaseException], int], ...] = (
    (ServeError, 400),  # replaced by the instance's own status below
    (NotEnrolledError, 404),
    (AlreadyEnrolledError, 409),
    (OptedOutError, 409),
    (OutcomeError, 409),
    (ErasureIncompleteError, 500),
    (StoreError, 500),  # key missing, tampering, corrupt store: the operator's problem, not the caller's
    (ModelError, 503),
    (AudioError, 422),
    (InvalidIdError, 400),
    (ConsentError, 400),
    (SessionError, 400),
    (CalibrationError, 503),
    (VoiceAuthError, 400),
)


def http_status(exc: BaseException) -> int:
    """The HTTP status for an error: its own for a ServeError, 4xx for the caller's mistakes,
    5xx for the service's (store, model), 500 for anything unexpected."""
    if isinstance(exc, ServeError):
        return exc.status
    for kind, status in _STATUS:
        if isinstance(exc, kind):
            return status
    return 500


def error_body(exc: BaseException, request_id: str) -> dict[str, str]:
    """The JSON body of an error response: the library's message, never a traceback."""
    if isinstance(exc, VoiceAuthError):
        return {"error": type(exc).__name__, "message": str(exc), "request_id": request_id}
    return {"error": "InternalError", "request_id": request_id,
            "message": f"internal error; the service log has the details under request id {request_id}"}
