"""The service's OpenAPI 3.1 document (``GET /openapi.json``), written out rather than inferred.

Every operation names the API-key scope it needs; errors are JSON ``{"error", "request_id"}``
with the library's message (never a traceback). Streams are WebSockets and are described in
the README, as OpenAPI does not model them.
"""

from __future__ import annotations

from typing import Any

from voiceauth import __version__

AUDIO_FORM = {
    "multipart/form-data": {
        "schema": {
            "type": "object",
            "properties": {"audio": {"type": "array", "items": {"type": "string", "format": "binary"},
                                     "description": "recording(s): WAV, FLAC or OGG, decoded in memory, never stored"}},
            "required": ["audio"],
        }
    }
}

# path, method, summary, scope, extra form fields (name -> description), JSON body schema
OPERATIONS: list[tuple[str, str, str, str, dict[str, str], dict[str, Any] | None]] = [
    ("/v1/customers/{customer_id}/enrol", "post", "Enrol or continue enrolling a customer (consent required)", "admin",
     {"consent_channel": "where consent was captured (ivr, agent, web...)",
      "consent_notice_version": "the privacy notice the customer agreed to",
      "consent_captured_by": "who captured it (default: the key)", "mode": "new | update | replace"}, None),
    ("/v1/customers/{customer_id}/verify", "post", "Verify one recording against the customer's voiceprint",
     "verify", {}, None),
    ("/v1/customers/{customer_id}/opt-out", "post", "Erase the voiceprint and refuse voice biometrics from now on",
     "admin", {}, None),
    ("/v1/customers/{customer_id}", "delete", "Erase the customer's voiceprint", "admin", {}, None),
    ("/v1/identify", "post", "Rank enrolled customers by similarity to one recording", "verify",
     {"top_k": "how many candidates (1-100)"}, None),
    ("/v1/watchlist", "get", "List watchlist entries (no biometric data)", "admin", {}, None),
    ("/v1/watchlist/{label}", "post", "Add a fraudster voiceprint under a case label", "admin",
     {"reason": "case reference", "update": "true to add speech to an existing entry"}, None),
    ("/v1/watchlist/{label}", "delete", "Remove a watchlist entry", "admin", {}, None),
    ("/v1/outcomes/{trial_id}", "post", "Report what the bank found out about a verification or call "
     "(its trial_id): feeds in-domain calibration", "admin", {},
     {"type": "object", "required": ["genuine", "source"],
      "properties": {"genuine": {"type": "boolean"},
                     "source": {"type": "string", "description": "kba, fraud_case, ..."}}}),
    ("/v1/calls", "get", "Live calls with status, confidence, progress and flags", "agent", {}, None),
    ("/v1/calls/{call_id}/pause", "post", "PCI: stop hearing a live call (card numbers); audio streamed "
     "meanwhile is discarded unheard. call_id may be the stream id (Twilio streamSid, AudioSocket UUID)",
     "stream", {}, None),
    ("/v1/calls/{call_id}/resume", "post", "Hear a paused live call again", "stream", {}, None),
    ("/v1/audiosocket/calls", "post", "Announce an Asterisk AudioSocket call (its UUID, single use) before "
     "AudioSocket() connects to the TCP port", "stream", {},
     {"type": "object", "required": ["uuid", "customer_id"],
      "properties": {"uuid": {"type": "string", "format": "uuid"}, "customer_id": {"type": "string"}}}),
    ("/v1/audiosocket/calls/{uuid}", "get", "An announced AudioSocket call's state and verdict", "stream", {}, None),
    ("/healthz", "get", "The process is alive", "", {}, None),
    ("/readyz", "get", "Models loaded and not draining (503 otherwise)", "", {}, None),
    ("/metrics", "get", "Prometheus metrics", "metrics", {}, None),
]


NO_BODY = ("/v1/customers/{customer_id}/opt-out", "/v1/calls/{call_id}/pause", "/v1/calls/{call_id}/resume")
"""POST operations that take no request body."""


def document() -> dict[str, Any]:
    paths: dict[str, dict[str, Any]] = {}
    for path, method, summary, scope, fields, body in OPERATIONS:
        op: dict[str, Any] = {
            "summary": summary,
            "responses": {"200": {"description": "JSON result"},
                          "4XX": {"description": "JSON {error, request_id}: what was wrong and what to do"}},
        }
        params = [{"name": p, "in": "path", "required": True, "schema": {"type": "string"}}
                  for p in ("customer_id", "label", "trial_id", "uuid", "call_id") if "{" + p + "}" in path]
        if params:
            op["parameters"] = params
        if scope:
            op["security"] = [{"apiKey": []}]
            op["description"] = f"Needs an API key with the `{scope}` scope."
        if body is not None:
            op["requestBody"] = {"required": True, "content": {"application/json": {"schema": body}}}
        elif method == "post" and path not in NO_BODY:
            form = {k: dict(v) for k, v in AUDIO_FORM.items()}
            schema = dict(form["multipart/form-data"]["schema"])
            schema["properties"] = {**schema["properties"],
                                    **{k: {"type": "string", "description": d} for k, d in fields.items()}}
            form["multipart/form-data"] = {"schema": schema}
            op["requestBody"] = {"required": True, "content": form}
        paths.setdefault(path, {})[method] = op
    return {
        "openapi": "3.1.0",
        "info": {"title": "voiceauth", "version": __version__,
                 "description": "Passive voice-biometric authentication; streams: /v1/streams/twilio, "
                                "/v1/streams/audiohook (WebSocket), Asterisk AudioSocket (TCP; see the README)."},
        "components": {"securitySchemes": {"apiKey": {"type": "http", "scheme": "bearer"}}},
        "paths": paths,
    }
