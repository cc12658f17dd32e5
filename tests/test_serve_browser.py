"""The agent view in a real headless browser (Debian's chromium, driven over the DevTools protocol).

An agent signs in on the page while calls stream into a real server; the page must show each
call's status as it changes (server-sent events), without a reload. ``make test`` installs
chromium; elsewhere the test is skipped when no chromium is on PATH. With
``VOICEAUTH_SCREENSHOT=path.png`` the page is also saved there (docs/agent-view.png)."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from test_serve_support import Server, running, twilio_call
from test_session import LOUD, StandIn, frames, make_va, synth
from websockets.asyncio.client import ClientConnection, connect

from voiceauth.client import VoiceAuth
from voiceauth.store.base import Consent

pytestmark = pytest.mark.integration


def chromium() -> str:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        if path := shutil.which(name):
            return path
    pytest.skip("no chromium on PATH (apt-get install chromium; `make test` does)")


class Browser:
    """Headless chromium and one page, over the DevTools protocol."""

    def __init__(self, profile: Path) -> None:
        self.proc = subprocess.Popen(
            [chromium(), "--headless=new", "--no-sandbox", "--disable-gpu", "--no-first-run",
             "--remote-debugging-port=0", f"--user-data-dir={profile}", "--window-size=1280,560", "about:blank"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        port_file = profile / "DevToolsActivePort"
        deadline = time.monotonic() + 30
        while not port_file.exists() or not port_file.read_text().strip():
            if time.monotonic() > deadline:
                raise RuntimeError("chromium did not start")
            time.sleep(0.1)
        self.port = int(port_file.read_text().split()[0])
        self.ws: ClientConnection | None = None
        self.next_id = 0

    async def open(self) -> None:
        import urllib.request

        with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/json/list") as resp:
            page = next(t for t in json.load(resp) if t["type"] == "page")
        self.ws = await connect(page["webSocketDebuggerUrl"], max_size=2**26)

    async def call(self, method: str, **params: Any) -> dict[str, Any]:
        assert self.ws is not None
        self.next_id += 1
        await self.ws.send(json.dumps({"id": self.next_id, "method": method, "params": params}))
        while True:
            reply = json.loads(await self.ws.recv())
            if reply.get("id") == self.next_id:
                if "error" in reply:
                    raise RuntimeError(reply["error"])
                return reply["result"]

    async def eval(self, expression: str) -> Any:
        result = await self.call("Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True)
        return result["result"].get("value")

    async def wait_for(self, expression: str, timeout: float = 30) -> Any:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            value = await self.eval(expression)
            if value:
                return value
            await asyncio.sleep(0.1)
        raise AssertionError(f"timed out waiting for {expression}")

    def close(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()


@pytest.fixture
def browser(tmp_path: Path) -> Iterator[Browser]:
    b = Browser(tmp_path / "profile")
    yield b
    b.close()


@pytest.fixture
def va(tmp_path: Path) -> Iterator[VoiceAuth]:
    client = make_va(tmp_path, Consent.now(channel="test", notice_version="v1", captured_by="tests"), StandIn())
    client.enroll("cust-2", [synth(12, 16000, seed=9)], sample_rate=16000,
                  consent=Consent.now(channel="test", notice_version="v1", captured_by="tests"))
    yield client
    client.close()


def status_of(customer: str) -> str:
    return (f"Array.from(document.querySelectorAll('#calls tr')).filter(r => r.children[0].textContent === "
            f"'{customer}').map(r => r.dataset.status).join(',')")


def test_agent_view_shows_live_calls_in_a_real_browser(browser: Browser, va: VoiceAuth) -> None:
    with running(va) as server:
        asyncio.run(_scenario(browser, server))


async def _scenario(browser: Browser, server: Server) -> None:
    await browser.open()
    try:
        await _watch_calls(browser, server)
    finally:
        assert browser.ws is not None
        await browser.ws.close()


async def _watch_calls(browser: Browser, server: Server) -> None:
    await browser.call("Page.navigate", url=f"{server.http}/agent")
    await browser.wait_for("document.getElementById('key') !== null")
    # a wrong key is refused, the right one signs in (the cookie is HttpOnly: the page cannot read it)
    await browser.eval(f"document.getElementById('key').value = {json.dumps(server.keys['ivr'])};"
                       "document.querySelector('form').submit()")
    await browser.wait_for("document.body && document.body.innerText.includes('Sign-in failed')")
    await browser.eval(f"document.getElementById('key').value = {json.dumps(server.keys['agent'])};"
                       "document.querySelector('form').submit()")
    await browser.wait_for("document.getElementById('state') && document.getElementById('state').textContent === "
                           "'live'")
    assert await browser.eval("document.cookie") == ""

    key = server.keys["ivr"]
    genuine = list(frames(synth(12)))
    impostor = list(frames(synth(12, amp=LOUD, seed=3)))
    calls = [asyncio.create_task(twilio_call(server.ws, key, "cust-1", genuine, pace=0.01)),
             asyncio.create_task(twilio_call(server.ws, key, "cust-2", impostor, pace=0.01)),
             asyncio.create_task(twilio_call(server.ws, key, "cust-3", genuine[:50], pace=0.01)),
             asyncio.create_task(twilio_call(server.ws, key, "cust-2", genuine, pace=0.04))]
    # the page follows the calls while they stream: pending first, then the decisions
    await browser.wait_for(f"{status_of('cust-1')}.includes('pending')", 20)
    await browser.wait_for(f"{status_of('cust-1')} === 'authenticated'", 30)
    await browser.wait_for(f"{status_of('cust-2')}.includes('not_authenticated')", 30)
    await browser.wait_for(f"{status_of('cust-3')} === 'not_enrolled'", 30)
    assert not calls[0].done(), "the decision must show while the call is still streaming"
    assert "Verified by voice" in await browser.eval("document.body.innerText")
    await asyncio.sleep(1.0)
    shot = os.environ.get("VOICEAUTH_SCREENSHOT")
    if shot:
        image = await browser.call("Page.captureScreenshot", format="png")
        Path(shot).write_bytes(base64.b64decode(image["data"]))
    await asyncio.gather(*calls)
    await browser.wait_for(f"{status_of('cust-1')} === 'authenticated' && "
                           "document.querySelector('#calls tr.ended') !== null", 20)
