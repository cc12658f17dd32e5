"""API keys with scopes, stored hashed and compared in constant time.

A key is shown once, at creation, as ``<key id>.<secret>``; the key file keeps only the key
id, its scopes and the SHA-256 of the secret. The secret is 32 random bytes, so a plain hash
is enough (no password stretching needed). The key id is the actor written to the audit
trail for what the key does.
"""

from __future__ import annotations

import enum
import hashlib
import hmac
import json
import logging
import os
import re
import secrets
import tempfile
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

from voiceauth.serve.errors import AuthError, ScopeError, ServeError

KEY_ID = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
HEADER = "x-api-key"
COOKIE = "voiceauth_key"


class Scope(str, enum.Enum):
    """What a key may do. ``admin`` may do everything."""

    STREAM = "stream"
    """Stream calls (Twilio, AudioHook, AudioSocket)."""
    VERIFY = "verify"
    """Verify and identify recordings."""
    AGENT = "agent"
    """Watch live calls (the agent view and its events)."""
    METRICS = "metrics"
    """Read ``/metrics`` (give the Prometheus scraper a key with this scope only)."""
    ADMIN = "admin"
    """Enrol, opt out, delete, manage the watchlist, read metrics; and all of the above."""


def _digest(secret: str) -> str:
    return hashlib.sha256(secret.encode("utf-8")).hexdigest()


@dataclass(frozen=True)
class ApiKey:
    key_id: str
    scopes: frozenset[Scope]
    sha256: str

    def allows(self, scope: Scope) -> bool:
        return scope in self.scopes or Scope.ADMIN in self.scopes

    def require(self, scope: Scope) -> ApiKey:
        if not self.allows(scope):
            raise ScopeError(f"API key {self.key_id} lacks the {scope.value!r} scope; "
                             f"create a key with --scope {scope.value}")
        return self


def parse_scopes(names: Iterable[str]) -> frozenset[Scope]:
    try:
        scopes = frozenset(Scope(n.strip().lower()) for n in names)
    except ValueError as exc:
        raise ServeError(f"unknown scope ({exc}); scopes are {', '.join(s.value for s in Scope)}") from exc
    if not scopes:
        raise ServeError(f"a key needs at least one scope: {', '.join(s.value for s in Scope)}")
    return scopes


class KeyRing:
    """The API keys the service accepts."""

    def __init__(self, keys: Iterable[ApiKey] = ()) -> None:
        self._keys = {k.key_id: k for k in keys}
        self._dummy = _digest(secrets.token_urlsafe(32))

    def __len__(self) -> int:
        return len(self._keys)

    def create(self, key_id: str, scopes: Iterable[Scope | str]) -> str:
        """Add a key; returns its token ``<key id>.<secret>``, the only time the secret exists."""
        if not KEY_ID.match(key_id):
            raise ServeError(f"key id {key_id!r} must be 1-64 letters, digits, '_' or '-'")
        if key_id in self._keys:
            raise ServeError(f"key id {key_id} exists; revoke it first or pick another id")
        secret = secrets.token_urlsafe(32)
        self._keys[key_id] = ApiKey(key_id, parse_scopes(s.value if isinstance(s, Scope) else s for s in scopes),
                                    _digest(secret))
        return f"{key_id}.{secret}"

    def revoke(self, key_id: str) -> bool:
        return self._keys.pop(key_id, None) is not None

    def authenticate(self, token: str | None) -> ApiKey:
        """The key a token belongs to; raises AuthError. The secret is compared in constant time,
        and an unknown key id costs the same comparison as a known one."""
        if not token:
            raise AuthError(f"no API key: send it in the {HEADER} header or as 'Authorization: Bearer <key>'")
        key_id, _, secret = token.strip().partition(".")
        key = self._keys.get(key_id)
        match = hmac.compare_digest(_digest(secret), key.sha256 if key is not None else self._dummy)
        if key is None or not match or not secret:
            raise AuthError("invalid API key")
        return key

    # -- the key file ---------------------------------------------------------------------------
    def to_json(self) -> dict[str, object]:
        return {"version": 1, "keys": [
            {"id": k.key_id, "scopes": sorted(s.value for s in k.scopes), "sha256": k.sha256}
            for k in self._keys.values()]}

    @classmethod
    def from_json(cls, data: Mapping[str, object]) -> KeyRing:
        try:
            entries = data["keys"]
            assert isinstance(entries, list)
            keys = [ApiKey(str(e["id"]), parse_scopes(e["scopes"]), str(e["sha256"])) for e in entries]
        except (KeyError, TypeError, AssertionError) as exc:
            raise ServeError(f"malformed key file ({exc!r}); recreate it with `voiceauth serve-keys create`") from exc
        for k in keys:
            if not KEY_ID.match(k.key_id) or not re.fullmatch(r"[0-9a-f]{64}", k.sha256):
                raise ServeError(f"malformed key {k.key_id!r} in the key file; recreate it")
        return cls(keys)

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> KeyRing:
        try:
            text = Path(path).read_text(encoding="utf-8")
        except OSError as exc:
            raise ServeError(f"cannot read the API key file {path} ({exc.strerror}); "
                             "create one with `voiceauth serve-keys create --keys FILE ...`") from exc
        try:
            return cls.from_json(json.loads(text))
        except json.JSONDecodeError as exc:
            raise ServeError(f"the API key file {path} is not JSON ({exc.msg}); recreate it") from exc

    def save(self, path: str | os.PathLike[str]) -> None:
        """Write the key file atomically, readable by its owner only (mode 0600)."""
        target = Path(path)
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=".keys-")
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as fh:
                json.dump(self.to_json(), fh, indent=2)
            os.chmod(tmp, 0o600)
            os.replace(tmp, target)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise


def token_from(headers: Mapping[str, str], cookies: Mapping[str, str] | None = None) -> str | None:
    """The API key sent in ``X-API-Key``, ``Authorization: Bearer`` or (agent view) the cookie."""
    if headers.get(HEADER):
        return headers[HEADER]
    scheme, _, value = headers.get("authorization", "").partition(" ")
    if scheme.lower() == "bearer" and value:
        return value
    return (cookies or {}).get(COOKIE)


class KeyFile(KeyRing):
    """The key ring of a key file, read again when the file changes (checked at most once a second),
    so ``voiceauth serve-keys create`` / ``revoke`` reach a running server. A file that cannot be
    read any more leaves no key valid (fail closed) until it is fixed."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self._stamp = self._stat()
        self._checked = time.monotonic()
        super().__init__(KeyRing.load(self.path)._keys.values())

    def _stat(self) -> tuple[int, int] | None:
        try:
            st = self.path.stat()
        except OSError:
            return None
        return st.st_mtime_ns, st.st_size

    def _refresh(self) -> None:
        now = time.monotonic()
        if now - self._checked < 1.0:
            return
        self._checked = now
        stamp = self._stat()
        if stamp == self._stamp:
            return
        self._stamp = stamp
        try:
            self._keys = KeyRing.load(self.path)._keys
        except ServeError:
            logging.getLogger("voiceauth.serve").error("the API key file %s is unreadable: no key is accepted "
                                                       "until it is fixed", self.path)
            self._keys = {}

    def authenticate(self, token: str | None) -> ApiKey:
        self._refresh()
        return super().authenticate(token)
