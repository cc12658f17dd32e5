"""The service's limits and settings (``voiceauth serve`` options map onto these)."""

from __future__ import annotations

from dataclasses import dataclass

from voiceauth.serve.errors import ServeError


@dataclass(frozen=True)
class Limits:
    """Limits that keep one misbehaving client from hurting the others.

    The defaults suit a 2-core machine taking up to ~100 concurrent calls.
    """

    max_streams: int = 200
    """Concurrent streaming calls; one more is accepted and closed at once with code 1013 (try again later)."""
    max_frame_ms: int = 1000
    """Longest audio frame one message may carry (Twilio sends 20 ms, AudioHook 20-200 ms): over it, close 1009."""
    max_message_bytes: int = 64 * 1024
    """Largest WebSocket message uvicorn accepts at all (its ``ws_max_size``); over it, close 1009."""
    idle_timeout_s: float = 30.0
    """A stream with no message for this long is ended (close 1008); its call is settled as usual."""
    final_wait_s: float = 20.0
    """At the end of a stream, how long to wait for the call's queued speech to be scored."""
    drain_timeout_s: float = 60.0
    """On shutdown (SIGTERM / Ctrl-C): how long calls in flight may go on before the server ends them."""
    max_upload_bytes: int = 25 * 1024 * 1024
    """Largest REST request body (all audio files of one enrolment together)."""
    max_upload_files: int = 16
    finished_kept_s: float = 120.0
    """How long the agent view keeps showing a call after it ended."""
    max_subscribers: int = 200
    """Concurrent agent-view event streams."""
    audiosocket_ticket_s: float = 60.0
    """How long an announced AudioSocket call (``POST /v1/audiosocket/calls``) waits for its connection."""

    def __post_init__(self) -> None:
        for name in ("max_streams", "max_frame_ms", "max_message_bytes", "max_upload_bytes", "max_upload_files",
                     "max_subscribers"):
            if getattr(self, name) < 1:
                raise ServeError(f"Limits.{name} must be at least 1, got {getattr(self, name)!r}")
        for name in ("idle_timeout_s", "final_wait_s", "drain_timeout_s", "finished_kept_s",
                     "audiosocket_ticket_s"):
            if not getattr(self, name) > 0:
                raise ServeError(f"Limits.{name} must be positive, got {getattr(self, name)!r}")

    def max_frame_bytes(self, sample_rate: int, width: int, channels: int = 1) -> int:
        return self.max_frame_ms * sample_rate * width * channels // 1000
