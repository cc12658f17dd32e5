"""REST endpoints: enrol, verify, identify, opt-out, delete, watchlist, outcomes, live calls, OpenAPI.

Uploads are ``multipart/form-data`` with one or more ``audio`` file parts (WAV, FLAC or OGG),
decoded in memory (never written to disk) and dropped after the request. Each request acts
as its API key: the key id is the actor (``key:<id>``) of everything it writes to the audit
trail. The model work runs in a thread, off the event loop.
"""

from __future__ import annotations

import copy
import dataclasses
import enum
import io
from typing import Any

import numpy as np
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import FormData, UploadFile
from starlette.formparsers import MultiPartParser
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from voiceauth.audio.decode import Audio
from voiceauth.client import VoiceAuth
from voiceauth.errors import AudioDecodeError
from voiceauth.serve.auth import ApiKey, Scope, token_from
from voiceauth.serve.errors import ServeError
from voiceauth.serve.hub import Hub
from voiceauth.store.base import AuditRecord, Consent

MAX_UPLOAD_SECONDS = 600.0


def jsonable(value: Any) -> Any:
    """A library result (dataclass, enum, numpy value) as plain JSON values."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: jsonable(getattr(value, f.name)) for f in dataclasses.fields(value)
                if not isinstance(getattr(value, f.name), np.ndarray)}  # never an embedding
    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, np.generic):
        return value.item()
    return value


def acting_as(va: VoiceAuth, key: ApiKey) -> VoiceAuth:
    """A view of the shared client whose audit actor is the key: same store, model, cohort, live
    calls; only ``actor`` differs (the facade keeps its shared parts in ``va.services``)."""
    view = copy.copy(va)
    view.services = dataclasses.replace(va.services, actor=f"key:{key.key_id}")
    view.watchlist = copy.copy(va.watchlist)
    view.watchlist._services = view.services  # noqa: SLF001 - the watchlist's audit actor
    return view


def decode_upload(data: bytes, name: str) -> Audio:
    """One uploaded recording, decoded in memory."""
    import soundfile as sf

    try:
        with sf.SoundFile(io.BytesIO(data)) as fh:
            rate = int(fh.samplerate)
            frames = min(fh.frames, int(MAX_UPLOAD_SECONDS * rate)) if fh.frames > 0 else int(MAX_UPLOAD_SECONDS * rate)
            block = fh.read(frames, dtype="float32", always_2d=True)
    except (sf.LibsndfileError, RuntimeError, TypeError, ValueError) as exc:
        raise AudioDecodeError(f"cannot read upload {name!r} as audio (WAV, FLAC or OGG): {exc}") from exc
    if len(block) == 0:
        raise AudioDecodeError(f"upload {name!r} holds no audio")
    return Audio(block.mean(axis=1).astype(np.float32), rate)


class Rest:
    """The REST handlers, bound to one client, key ring and hub."""

    def __init__(self, va: VoiceAuth, keys: Any, hub: Hub) -> None:
        self.va = va
        self.keys = keys
        self.hub = hub
        self.limits = hub.limits

    def key(self, request: Request, scope: Scope) -> ApiKey:
        return self.keys.authenticate(token_from(request.headers)).require(scope)

    async def form(self, request: Request) -> tuple[FormData, list[Audio]]:
        length = request.headers.get("content-length")
        if length is None or not length.isdigit():
            raise ServeError("send the upload with a Content-Length header", 411)
        if int(length) > self.limits.max_upload_bytes:
            raise ServeError(f"upload of {int(length)} bytes is over the limit of {self.limits.max_upload_bytes}", 413)
        if not request.headers.get("content-type", "").startswith("multipart/form-data"):
            raise ServeError("send multipart/form-data with the recording(s) in 'audio' file parts", 415)
        # keep uploaded audio in memory: the parser would spill parts over 1 MB to a temporary file
        parser = MultiPartParser(request.headers, request.stream(), max_files=self.limits.max_upload_files,
                                 max_fields=32)
        parser.spool_max_size = self.limits.max_upload_bytes
        try:
            form = await parser.parse()
        except Exception as exc:  # noqa: BLE001 - MultiPartException and malformed bodies alike
            raise ServeError(f"malformed multipart body ({exc})") from exc
        audio = []
        try:
            for part in form.getlist("audio"):
                if not isinstance(part, UploadFile):
                    raise ServeError("'audio' must be a file part")
                audio.append(decode_upload(await part.read(), part.filename or "audio"))
        finally:
            await form.close()  # the uploaded bytes are dropped here
        if not audio:
            raise ServeError("no recording: add one or more 'audio' file parts")
        return form, audio

    # -- endpoints ------------------------------------------------------------------------------------
    async def enrol(self, request: Request) -> JSONResponse:
        key = self.key(request, Scope.ADMIN)
        customer = request.path_params["customer_id"]
        form, audio = await self.form(request)
        channel, notice = form.get("consent_channel"), form.get("consent_notice_version")
        if not isinstance(channel, str) or not channel or not isinstance(notice, str) or not notice:
            raise ServeError("enrolment needs the customer's consent: send consent_channel (ivr, agent, web...) and "
                             "consent_notice_version (the privacy notice they agreed to)")
        purpose = form.get("consent_purpose")
        consent = Consent.now(channel=channel[:64], notice_version=notice[:64],
                              captured_by=str(form.get("consent_captured_by") or f"key:{key.key_id}")[:64],
                              **({"purpose": purpose[:200]} if isinstance(purpose, str) and purpose else {}))
        mode = form.get("mode", "new")
        if mode not in ("new", "update", "replace"):
            raise ServeError(f"mode must be new, update or replace, got {mode!r}")
        view = acting_as(self.va, key)
        progress = await run_in_threadpool(view.enroll, customer, audio, consent=consent,
                                           update=mode == "update", replace=mode == "replace")
        return JSONResponse(jsonable(progress), status_code=201 if progress.complete else 202)

    async def verify(self, request: Request) -> JSONResponse:
        key = self.key(request, Scope.VERIFY)
        _, audio = await self.form(request)
        if len(audio) != 1:
            raise ServeError("verify takes exactly one 'audio' file part")
        result = await run_in_threadpool(acting_as(self.va, key).verify, request.path_params["customer_id"], audio[0])
        self.hub.metrics.decisions.labels("verify", result.decision.value).inc()
        self.hub.metrics.flags("verify", result.flags)
        return JSONResponse(jsonable(result))

    async def identify(self, request: Request) -> JSONResponse:
        key = self.key(request, Scope.VERIFY)
        form, audio = await self.form(request)
        if len(audio) != 1:
            raise ServeError("identify takes exactly one 'audio' file part")
        top_k = form.get("top_k", "5")
        if not isinstance(top_k, str) or not top_k.isdigit():
            raise ServeError(f"top_k must be a whole number, got {top_k!r}")
        found = await run_in_threadpool(acting_as(self.va, key).identify, audio[0], top_k=int(top_k))
        return JSONResponse({"candidates": jsonable(found)})

    async def opt_out(self, request: Request) -> JSONResponse:
        key = self.key(request, Scope.ADMIN)
        result = await run_in_threadpool(acting_as(self.va, key).opt_out, request.path_params["customer_id"])
        return JSONResponse(jsonable(result))

    async def delete(self, request: Request) -> JSONResponse:
        key = self.key(request, Scope.ADMIN)
        customer = request.path_params["customer_id"]
        removed = await run_in_threadpool(acting_as(self.va, key).delete, customer)
        return JSONResponse({"customer_id": customer, "deleted": removed}, status_code=200 if removed else 404)

    async def watchlist_add(self, request: Request) -> JSONResponse:
        key = self.key(request, Scope.ADMIN)
        form, audio = await self.form(request)
        reason = form.get("reason")
        if not isinstance(reason, str) or not reason:
            raise ServeError("a watchlist entry needs a 'reason' (case reference)")
        view = acting_as(self.va, key)
        try:
            info = await run_in_threadpool(view.watchlist.add, request.path_params["label"], audio, reason=reason,
                                           update=form.get("update") == "true")
        finally:
            self.va.watchlist.clear_cache()  # the shared client screens with the new list at once
        return JSONResponse(jsonable(info), status_code=201)

    async def watchlist_remove(self, request: Request) -> JSONResponse:
        key = self.key(request, Scope.ADMIN)
        try:
            removed = await run_in_threadpool(acting_as(self.va, key).watchlist.remove, request.path_params["label"])
        finally:
            self.va.watchlist.clear_cache()
        return JSONResponse({"label": request.path_params["label"], "removed": removed},
                            status_code=200 if removed else 404)

    async def watchlist_list(self, request: Request) -> JSONResponse:
        self.key(request, Scope.ADMIN)
        entries = await run_in_threadpool(self.va.watchlist.list)
        return JSONResponse({"entries": jsonable(entries)})

    async def outcome(self, request: Request) -> JSONResponse:
        key = self.key(request, Scope.ADMIN)
        try:
            body = await request.json()
        except ValueError as exc:
            raise ServeError(f"send the outcome as JSON: genuine (true or false) and source ({exc})") from exc
        if not isinstance(body, dict) or not isinstance(body.get("genuine"), bool) \
                or not isinstance(body.get("source"), str) or not body["source"]:
            raise ServeError('an outcome needs "genuine" (true or false) and "source" (kba, fraud_case, ...)')
        trial = await run_in_threadpool(acting_as(self.va, key).report_outcome, request.path_params["trial_id"],
                                        genuine=body["genuine"], source=body["source"][:64])
        return JSONResponse(jsonable(trial))

    async def openapi(self, request: Request) -> JSONResponse:
        from voiceauth.serve.openapi import document

        return JSONResponse(document())

    async def calls(self, request: Request) -> JSONResponse:
        self.key(request, Scope.AGENT)
        return JSONResponse({"calls": self.hub.snapshot()})

    async def pause(self, request: Request) -> JSONResponse:
        return await self._listen(request, paused=True)

    async def resume(self, request: Request) -> JSONResponse:
        return await self._listen(request, paused=False)

    async def _listen(self, request: Request, *, paused: bool) -> JSONResponse:
        """PCI: stop (or go back to) hearing a live call, e.g. while the caller keys in a card number;
        audio streamed meanwhile is discarded unheard. For protocols without a pause message of their
        own (Twilio, AudioSocket); the call is named by its call id or its stream id."""
        key = self.key(request, Scope.STREAM)
        ident = request.path_params["call_id"]
        session = self.hub.live_session(ident)
        if session is None:
            raise ServeError(f"no live call has the call or stream id {ident[:64]!r}; it may have ended", 404)
        record = AuditRecord("call_pause" if paused else "call_resume", session.customer_id,
                             "paused" if paused else "listening", f"key:{key.key_id}", {"call_id": session.call_id})
        # fail closed: a pause takes effect even if the audit write then fails; a resume only once audited
        if paused:
            self.hub.set_paused(session, True)
        await run_in_threadpool(self.va.store.audit, record)
        if not paused:
            self.hub.set_paused(session, False)
        return JSONResponse({"call_id": session.call_id, "paused": session.paused})

    def routes(self) -> list[Route]:
        return [
            Route("/v1/customers/{customer_id}/enrol", self.enrol, methods=["POST"]),
            Route("/v1/customers/{customer_id}/verify", self.verify, methods=["POST"]),
            Route("/v1/customers/{customer_id}/opt-out", self.opt_out, methods=["POST"]),
            Route("/v1/customers/{customer_id}", self.delete, methods=["DELETE"]),
            Route("/v1/identify", self.identify, methods=["POST"]),
            Route("/v1/watchlist", self.watchlist_list, methods=["GET"]),
            Route("/v1/watchlist/{label}", self.watchlist_add, methods=["POST"]),
            Route("/v1/watchlist/{label}", self.watchlist_remove, methods=["DELETE"]),
            Route("/v1/outcomes/{trial_id}", self.outcome, methods=["POST"]),
            Route("/v1/calls", self.calls, methods=["GET"]),
            Route("/v1/calls/{call_id}/pause", self.pause, methods=["POST"]),
            Route("/v1/calls/{call_id}/resume", self.resume, methods=["POST"]),
            Route("/openapi.json", self.openapi, methods=["GET"]),
        ]
