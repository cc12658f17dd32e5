"""Encryption of voiceprints at rest: AES-256-GCM under keys with stable ids.

Key sources, in order:

1. ``VOICEAUTH_KEY``: base64 of 32 random bytes (plus ``VOICEAUTH_NEW_KEY`` during a
   rotation; afterwards set ``VOICEAUTH_KEY`` to the new value);
2. a key file: ``VOICEAUTH_KEY_FILE``, else ``$XDG_CONFIG_HOME/voiceauth/keyring.json``
   (``~/.config/voiceauth/keyring.json``), created on first use with mode 0600.

Generate a key with::

    python -c "import os,base64;print(base64.b64encode(os.urandom(32)).decode())"
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import os
import stat
from pathlib import Path

from voiceauth.errors import KeyMissingError, TamperedError

KEY_BYTES = 32
NONCE_BYTES = 12
GENERATE_HINT = 'python -c "import os,base64;print(base64.b64encode(os.urandom(32)).decode())"'


def key_id(key: bytes) -> str:
    """A stable, non-secret identifier of a key."""
    return hashlib.sha256(b"voiceauth-key-id" + key).hexdigest()[:16]


def _decode_key(text: str, where: str) -> bytes:
    try:
        key = base64.b64decode(text.strip(), validate=True)
    except (binascii.Error, ValueError):
        key = b""
    if len(key) != KEY_BYTES:
        raise KeyMissingError(f"{where} must be base64 of exactly 32 bytes; generate one with: {GENERATE_HINT}")
    return key


def key_file_path() -> Path:
    explicit = os.environ.get("VOICEAUTH_KEY_FILE")
    if explicit:
        return Path(explicit).expanduser()
    xdg = os.environ.get("XDG_CONFIG_HOME")
    base = Path(xdg) if xdg else Path.home() / ".config"
    return base / "voiceauth" / "keyring.json"


class KeyRing:
    """Known keys by id and the one new data is encrypted under."""

    def __init__(self, keys: dict[str, bytes], current: str, path: Path | None = None) -> None:
        if current not in keys:
            raise KeyMissingError(f"current key {current} is not in the keyring")
        self._keys = dict(keys)
        self.current = current
        self.path = path
        """The key file this ring persists to, or None (environment or ephemeral keys)."""

    @classmethod
    def ephemeral(cls) -> KeyRing:
        """A random in-memory key (demos, tests): data under it dies with the process."""
        key = os.urandom(KEY_BYTES)
        return cls({key_id(key): key}, key_id(key))

    @property
    def ids(self) -> tuple[str, ...]:
        return tuple(self._keys)

    def has(self, kid: str) -> bool:
        return kid in self._keys

    def encrypt(self, plaintext: bytes, aad: bytes, kid: str | None = None) -> tuple[str, bytes]:
        from cryptography.hazmat.primitives.ciphers.aead import AESGCM

        kid = kid or self.current
        nonce = os.urandom(NONCE_BYTES)
        return kid, nonce + AESGCM(self._key(kid)).encrypt(nonce, plaintext, aad)

    def decrypt(self, kid: str, blob: bytes, aad: bytes, what: str = "data") -> bytes:
        from cryptography.exceptions import InvalidTag
        from cryptography.hazmat.primitives.ciphers.aead import AESGCM

        try:
            return AESGCM(self._key(kid)).decrypt(blob[:NONCE_BYTES], blob[NONCE_BYTES:], aad)
        except InvalidTag:
            raise TamperedError(
                f"{what} failed authentication: the row was modified or moved; restore it from backup or re-enrol"
            ) from None

    def _key(self, kid: str) -> bytes:
        try:
            return self._keys[kid]
        except KeyError:
            raise KeyMissingError(
                f"no key with id {kid} is loaded; set VOICEAUTH_KEY / VOICEAUTH_KEY_FILE to the key the store "
                "was written with"
            ) from None

    # -- rotation --------------------------------------------------------------------
    def stage_new_key(self) -> str:
        """Add a fresh key (durably, before any data uses it) and return its id."""
        if self.path is None:
            staged = os.environ.get("VOICEAUTH_NEW_KEY")
            if not staged:
                raise KeyMissingError(
                    "keys come from VOICEAUTH_KEY: set VOICEAUTH_NEW_KEY to the new key (base64, 32 bytes; "
                    f"generate with {GENERATE_HINT}) to rotate, then switch VOICEAUTH_KEY to it"
                )
            key = _decode_key(staged, "VOICEAUTH_NEW_KEY")
        else:
            key = os.urandom(KEY_BYTES)
        self._keys[key_id(key)] = key
        self._save()
        return key_id(key)

    def retire_all_but(self, kid: str) -> None:
        """After a committed rotation: make ``kid`` current and forget the other keys."""
        self._keys = {kid: self._key(kid)}
        self.current = kid
        self._save()

    def _save(self) -> None:
        if self.path is not None:
            _write_key_file(self.path, self._keys, self.current)


def _write_key_file(path: Path, keys: dict[str, bytes], current: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    payload = json.dumps({"current": current, "keys": {k: base64.b64encode(v).decode() for k, v in keys.items()}})
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.write(fd, payload.encode())
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def _read_key_file(path: Path) -> KeyRing:
    mode = path.stat().st_mode
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise KeyMissingError(f"key file {path} is readable by other users; run: chmod 600 {path}")
    try:
        data = json.loads(path.read_text())
        keys = {kid: _decode_key(text, f"key {kid} in {path}") for kid, text in data["keys"].items()}
        current = data["current"]
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise KeyMissingError(f"key file {path} is malformed ({exc}); restore it from your key backup") from exc
    # a crash between staging and retiring leaves several keys: any of them may be current
    return KeyRing(keys, current if current in keys else next(iter(keys)), path)


def load_keyring(create: bool = True) -> KeyRing:
    """Keys from the environment, else the key file (created with mode 0600 when absent)."""
    env = os.environ.get("VOICEAUTH_KEY")
    if env:
        key = _decode_key(env, "VOICEAUTH_KEY")
        keys = {key_id(key): key}
        staged = os.environ.get("VOICEAUTH_NEW_KEY")
        if staged:
            new = _decode_key(staged, "VOICEAUTH_NEW_KEY")
            keys[key_id(new)] = new
        return KeyRing(keys, key_id(key))
    path = key_file_path()
    if path.exists():
        return _read_key_file(path)
    if not create:
        raise KeyMissingError(f"no key: set VOICEAUTH_KEY or create the key file {path}")
    key = os.urandom(KEY_BYTES)
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:  # another process created it first
        return _read_key_file(path)
    try:
        os.write(fd, json.dumps({"current": key_id(key), "keys": {key_id(key): base64.b64encode(key).decode()}}).encode())
        os.fsync(fd)
    finally:
        os.close(fd)
    return KeyRing({key_id(key): key}, key_id(key), path)
