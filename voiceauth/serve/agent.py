"""The agent view: ``/agent``, a page listing live calls, updated by server-sent events.

An agent signs in once with a key holding the ``agent`` scope (``POST /agent/login``); the
key is kept in an HttpOnly, SameSite=Strict cookie scoped to ``/agent``, which the page's
``EventSource('/agent/events')`` sends. Each event is one call's state as JSON (the same
body as ``GET /v1/calls``); the first events are every call the service holds. The page
shows status, confidence, progress towards a decision, flags and the spoof check.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator

from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response, StreamingResponse
from starlette.routing import Route

from voiceauth.serve.auth import COOKIE, ApiKey, KeyRing, Scope, token_from
from voiceauth.serve.errors import ServeError
from voiceauth.serve.hub import Hub

KEEPALIVE_S = 15.0

LOGIN = """<!doctype html><html lang="en"><head><meta charset="utf-8"><title>voiceauth - sign in</title>
<style>body{font:15px system-ui,sans-serif;margin:3em}input{font:inherit;padding:.3em;width:28em}</style></head>
<body><h1>voiceauth agent view</h1><p>{message}</p>
<form method="post" action="/agent/login"><label>API key (agent scope)<br>
<input id="key" name="key" type="password" autocomplete="off"></label> <button id="signin">Sign in</button></form>
</body></html>"""

PAGE = """<!doctype html><html lang="en"><head><meta charset="utf-8"><title>voiceauth - live calls</title>
<style>
body{font:14px system-ui,sans-serif;margin:1.5em;color:#222}
h1{font-size:1.3em;margin:0 0 .2em}#state{color:#666;margin-bottom:1em}
table{border-collapse:collapse;width:100%}th,td{text-align:left;padding:.45em .6em;border-bottom:1px solid #ddd}
th{background:#f4f4f4;font-weight:600}
.status{font-weight:700;padding:.15em .5em;border-radius:.3em;color:#fff;background:#777}
.authenticated{background:#1b7f3b}.not_authenticated{background:#b3261e}.pending{background:#8a6d00}
.inconclusive{background:#555}.error,.opted_out,.not_enrolled{background:#4a4a8a}
.bar{width:8em;height:.7em;background:#eee;border-radius:.35em;overflow:hidden;display:inline-block}
.bar i{display:block;height:100%;background:#3b6fb6}.flag{background:#fde7e7;color:#8b1a1a;padding:.1em .4em;
border-radius:.3em;margin-right:.3em;font-size:.85em}.ended{opacity:.55}.what{color:#555;font-size:.9em}
</style></head><body>
<h1>Live calls</h1><div id="state">connecting...</div>
<table><thead><tr><th>Customer</th><th>Status</th><th>Confidence</th><th>Speech</th><th>Flags</th>
<th>Spoof check</th><th>Call</th><th>What to do</th></tr></thead><tbody id="calls"></tbody></table>
<script>
const rows = new Map();
const advice = {authenticated: "Verified by voice: skip the security questions",
  not_authenticated: "Not verified: ask the security questions / step up",
  pending: "Listening...", inconclusive: "Ask the security questions",
  not_enrolled: "No voiceprint: ask the security questions", opted_out: "Opted out: ask the security questions",
  error: "Voice check failed: ask the security questions"};
function cell(tr, i, html) { tr.children[i].innerHTML = html; }
function esc(s) { return String(s).replace(/[&<>"']/g, c => "&#" + c.charCodeAt(0) + ";"); }
function show(c) {
  let tr = rows.get(c.call_id);
  if (!tr) {
    tr = document.createElement("tr"); tr.id = "call-" + c.call_id;
    for (let i = 0; i < 8; i++) tr.appendChild(document.createElement("td"));
    document.getElementById("calls").appendChild(tr); rows.set(c.call_id, tr);
  }
  tr.className = c.closed ? "ended" : "";
  tr.dataset.status = c.status;
  cell(tr, 0, esc(c.customer_id));
  const label = esc(c.status.replace("_", " ").toUpperCase());
  cell(tr, 1, '<span class="status ' + esc(c.status) + '">' + label + '</span>');
  cell(tr, 2, c.confidence ? (100 * c.confidence).toFixed(1) + " %" : "-");
  cell(tr, 3, '<span class="bar"><i style="width:' + Math.min(100, c.progress) + '%"></i></span> '
    + c.speech_s.toFixed(1) + " s");
  cell(tr, 4, c.flags.map(f => '<span class="flag">' + esc(f) + '</span>').join("") || "-");
  cell(tr, 5, c.spoof_score === null ? "-" : (c.flags.includes("spoof_suspected") ? "failed" : "passed"));
  cell(tr, 6, esc(c.protocol || "") + (c.closed ? " (ended)" : ""));
  cell(tr, 7, '<span class="what">' + esc(advice[c.status] || "") + '</span>');
}
const source = new EventSource("/agent/events");
source.onopen = () => { document.getElementById("state").textContent = "live"; };
source.onerror = () => { document.getElementById("state").textContent = "reconnecting..."; };
source.onmessage = (e) => {
  const ev = JSON.parse(e.data);
  if (ev.type === "call") show(ev.call);
  else if (ev.type === "gone" && rows.has(ev.call_id)) { rows.get(ev.call_id).remove(); rows.delete(ev.call_id); }
};
</script></body></html>"""


class AgentView:
    def __init__(self, keys: KeyRing, hub: Hub) -> None:
        self.keys = keys
        self.hub = hub

    def _key(self, request: Request) -> ApiKey | None:
        try:
            return self.keys.authenticate(token_from(request.headers, request.cookies)).require(Scope.AGENT)
        except ServeError:
            return None

    async def page(self, request: Request) -> Response:
        if self._key(request) is None:
            return HTMLResponse(LOGIN.replace("{message}", "Sign in with an API key that has the agent scope."),
                                status_code=401)
        return HTMLResponse(PAGE, headers={"Cache-Control": "no-store"})

    async def login(self, request: Request) -> Response:
        form = await request.form(max_files=0, max_fields=4)
        token = form.get("key")
        try:
            self.keys.authenticate(token if isinstance(token, str) else None).require(Scope.AGENT)
        except ServeError as exc:
            return HTMLResponse(LOGIN.replace("{message}", f"Sign-in failed: {exc}."), status_code=401)
        response = RedirectResponse("/agent", status_code=303)
        response.set_cookie(COOKIE, str(token), httponly=True, samesite="strict", path="/agent",
                            secure=request.url.scheme == "https")
        return response

    async def events(self, request: Request) -> Response:
        if self._key(request) is None:
            raise ServeError("sign in at /agent with a key that has the agent scope", 401)
        if len(self.hub.subscribers) >= self.hub.limits.max_subscribers or self.hub.draining:
            raise ServeError("too many agent views open; try again later", 503)
        queue = self.hub.subscribe()

        async def stream() -> AsyncIterator[str]:
            try:
                for call in self.hub.snapshot():
                    yield f"data: {json.dumps({'type': 'call', 'call': call})}\n\n"
                while True:
                    try:
                        event = await asyncio.wait_for(queue.get(), KEEPALIVE_S)
                    except asyncio.TimeoutError:
                        yield ": keep-alive\n\n"
                        continue
                    if event is None:  # the server is shutting down
                        return
                    yield f"data: {json.dumps(event)}\n\n"
            finally:
                self.hub.unsubscribe(queue)

        return StreamingResponse(stream(), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"})

    def routes(self) -> list[Route]:
        return [Route("/agent", self.page, methods=["GET"]), Route("/agent/login", self.login, methods=["POST"]),
                Route("/agent/events", self.events, methods=["GET"])]
