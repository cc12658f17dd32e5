"""Encryption of voiceprints at rest: AES-256-GCM under keys with stable ids.

Key sources, in order:

1. ``VOICEAUTH_KEY``: base64 of 32 random bytes. To rotate in this mode, also set
   ``VOICEAUTH_NEW_KEY`` to the new key; once the rotation has committed, switch
   ``VOICEAUTH_KEY`` to that new value (the store records which key id is current and
   refuses to open under any other key).
2. a key file: ``VOICEAUTH_KEY_FILE``, else ``$XDG_CONFIG_HOME/voiceauth/keyring.json``
   (``~/.config/voiceauth/keyring.json``), created on first use with mode 0600 in a 0700
   directory, always rewritten atomically. Format: ``{"current": id, "keys": {id: base64}}``.

A key id is derived from the key itself, so one key always has one id. Generate a key with::

    python -c "import os,base64;print(base64.b64encode(os.urandom(32)).decode())"

Keys in a key file are per deployment, not per store: rotating one store drops the key it
was using, so stores that share a key file should be rotated together (or use separate files).
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import hashlib
import json
import os
import stat
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

from voiceauth.errors import KeyMissingError, TamperedError

KEY_BYTES = 32
NONCE_BYTES = 12
TAG_BYTES = 16
GENERATE_HINT = 'python -c "import os,base64;print(base64.b64encode(os.urandom(32)).decode())"'

Keys = dict[str, bytes]


def key_id(key: bytes) -> str:
    """A stable, non-secret identifier of a key (16 hex characters)."""
    return hashlib.sha256(b"voiceauth-key-id" + key).hexdigest()[:16]


def _decode_key(text: str, where: str) -> bytes:
    try:
        key = base64.b64decode(text.strip(), validate=True)
    except (binascii.Error, ValueError):
        key = b""
    if len(key) != KEY_BYTES:
        raise KeyMissingError(
            f"{where} must be base64 of exactly 32 random bytes; generate one with: {GENERATE_HINT}"
        )
    return key


def key_file_path() -> Path:
    """``VOICEAUTH_KEY_FILE``, else ``$XDG_CONFIG_HOME/voiceauth/keyring.json``."""
    explicit = os.environ.get("VOICEAUTH_KEY_FILE")
    if explicit:
        return Path(explicit).expanduser()
    xdg = os.environ.get("XDG_CONFIG_HOME")
    base = Path(xdg).expanduser() if xdg else Path.home() / ".config"
    return base / "voiceauth" / "keyring.json"


class KeyRing:
    """Known keys by id and the id new data is encrypted under.

    ``path`` is the key file the ring persists to, or None for keys from the environment
    (or ephemeral keys): then rotation changes only this process's copy.
    """

    def __init__(self, keys: Keys, current: str, path: Path | None = None) -> None:
        if current not in keys:
            raise KeyMissingError(f"current key {current} is not in the keyring; restore the key file from backup")
        self._keys = dict(keys)
        self.current = current
        self.path = path

    @classmethod
    def ephemeral(cls) -> KeyRing:
        """A random in-memory key (demos, tests): data under it dies with the process."""
        key = os.urandom(KEY_BYTES)
        return cls({key_id(key): key}, key_id(key))

    @property
    def ids(self) -> tuple[str, ...]:
        """Ids of the loaded keys."""
        return tuple(self._keys)

    def has(self, kid: str) -> bool:
        """Whether key ``kid`` is loaded (re-reading the key file once if it is not)."""
        return kid in self._keys or self._reload_for(kid)

    def encrypt(self, plaintext: bytes, aad: bytes, kid: str | None = None) -> tuple[str, bytes]:
        """(key id, nonce || ciphertext+tag) under ``kid`` (default: the current key)."""
        from cryptography.hazmat.primitives.ciphers.aead import AESGCM

        kid = kid or self.current
        nonce = os.urandom(NONCE_BYTES)
        return kid, nonce + AESGCM(self._key(kid)).encrypt(nonce, plaintext, aad)

    def decrypt(self, kid: str, blob: bytes, aad: bytes, what: str = "data") -> bytes:
        """The plaintext; TamperedError if ``blob`` or ``aad`` is not what was encrypted."""
        from cryptography.exceptions import InvalidTag
        from cryptography.hazmat.primitives.ciphers.aead import AESGCM

        key = self._key(kid)
        try:
            if len(blob) < NONCE_BYTES + TAG_BYTES:
                raise InvalidTag
            return AESGCM(key).decrypt(blob[:NONCE_BYTES], blob[NONCE_BYTES:], aad)
        except InvalidTag:
            raise TamperedError(
                f"{what} failed authentication: the row was modified or moved; restore it from backup or re-enrol"
            ) from None

    def _key(self, kid: str) -> bytes:
        if not self.has(kid):
            raise KeyMissingError(
                f"no key with id {kid} is loaded (loaded: {', '.join(self._keys)}); set VOICEAUTH_KEY / "
                "VOICEAUTH_KEY_FILE to the key the store was written with (after a rotation with VOICEAUTH_KEY, "
                "set it to the value of VOICEAUTH_NEW_KEY)"
            )
        return self._keys[kid]

    def _reload_for(self, kid: str) -> bool:
        """Another process may have rotated: pick up keys added to the key file since loading."""
        if self.path is None or not self.path.exists():
            return False
        self._keys = {**self._keys, **_read_key_file(self.path)[0]}
        return kid in self._keys

    # -- rotation --------------------------------------------------------------------
    def stage_new_key(self) -> str:
        """Add a new key next to the old ones (durably, before any data uses it); return its id.

        Key-file mode generates the key; ``VOICEAUTH_KEY`` mode takes it from ``VOICEAUTH_NEW_KEY``.
        ``current`` does not change until :meth:`retire` (or :meth:`retire_all_but`).
        """
        if self.path is None:
            staged = os.environ.get("VOICEAUTH_NEW_KEY")
            if not staged:
                raise KeyMissingError(
                    "keys come from VOICEAUTH_KEY: to rotate, set VOICEAUTH_NEW_KEY to a new key (base64 of 32 "
                    f"bytes; generate with {GENERATE_HINT}), then switch VOICEAUTH_KEY to it after the rotation"
                )
            key = _decode_key(staged, "VOICEAUTH_NEW_KEY")
            self._keys[key_id(key)] = key
            return key_id(key)
        key = os.urandom(KEY_BYTES)
        kid = key_id(key)

        def add(keys: Keys, current: str) -> tuple[Keys, str]:
            return {**keys, kid: key}, current

        self._keys = {**self._keys, **_update_key_file(self.path, add), kid: key}
        return kid

    def retire(self, new_current: str, old: Iterable[str]) -> None:
        """After a committed rotation: make ``new_current`` current and forget the ``old`` keys."""
        keep = {new_current: self._key(new_current)}
        drop = set(old) - set(keep)
        if self.path is not None:

            def swap(keys: Keys, current: str) -> tuple[Keys, str]:
                return {k: v for k, v in keys.items() if k not in drop} | keep, new_current

            _update_key_file(self.path, swap)
        self._keys = {k: v for k, v in self._keys.items() if k not in drop}
        self.current = new_current

    def retire_all_but(self, kid: str) -> None:
        """After a committed rotation: make ``kid`` current and forget every other key."""
        self.retire(kid, [k for k in self._keys if k != kid])


# -- the key file ------------------------------------------------------------------------------


def _lock_path(path: Path) -> Path:
    return path.with_name(path.name + ".lock")


@contextlib.contextmanager
def _file_lock(path: Path) -> Iterator[None]:
    """An exclusive advisory lock around read-modify-write of the key file (POSIX only)."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows: no cross-process lock
        yield
        return
    fd = os.open(_lock_path(path), os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def _serialise(keys: Keys, current: str) -> bytes:
    return json.dumps({"current": current, "keys": {k: base64.b64encode(v).decode() for k, v in keys.items()}},
                      indent=1).encode()


def _write_new_file(directory: Path, payload: bytes) -> Path:
    """A fresh, fsynced 0600 file next to the key file (created with O_EXCL)."""
    tmp = directory / f".keyring.{os.getpid()}.{os.urandom(6).hex()}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        os.write(fd, payload)
        os.fsync(fd)
    finally:
        os.close(fd)
    return tmp


def _fsync_dir(directory: Path) -> None:
    with contextlib.suppress(OSError):  # not every platform can open a directory
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _make_dir(directory: Path) -> None:
    directory.mkdir(parents=True, exist_ok=True, mode=0o700)


def _write_key_file(path: Path, keys: Keys, current: str) -> None:
    """Replace the key file atomically: tmp file, fsync, rename, fsync the directory."""
    _make_dir(path.parent)
    tmp = _write_new_file(path.parent, _serialise(keys, current))
    os.replace(tmp, path)
    _fsync_dir(path.parent)


def _update_key_file(path: Path, change: Callable[[Keys, str], tuple[Keys, str]]) -> Keys:
    """Re-read the key file under its lock, apply ``change``, write it back; return the new keys."""
    _make_dir(path.parent)
    with _file_lock(path):
        _remove_stale_tmp(path.parent)
        keys, current = _read_key_file(path)
        keys, current = change(keys, current)
        _write_key_file(path, keys, current)
    return keys


def _remove_stale_tmp(directory: Path, age_s: float = 600.0) -> None:
    """Temporary key files left by a crash hold (possibly retired) keys: remove old ones."""
    cutoff = time.time() - age_s
    for tmp in directory.glob(".keyring.*.tmp"):
        with contextlib.suppress(OSError):
            if tmp.stat().st_mtime < cutoff:
                tmp.unlink()


def _read_key_file(path: Path) -> tuple[Keys, str]:
    """(keys, current id) from the key file; refuses a file other users can read."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError as exc:
        raise KeyMissingError(f"cannot read key file {path} ({exc.strerror}); check VOICEAUTH_KEY_FILE") from exc
    with os.fdopen(fd, "rb") as fh:
        if os.fstat(fd).st_mode & (stat.S_IRWXG | stat.S_IRWXO):
            raise KeyMissingError(f"key file {path} is accessible by other users; run: chmod 600 {path}")
        raw = fh.read()
    try:
        data = json.loads(raw)
        keys = {str(kid): _decode_key(text, f"key {kid} in {path}") for kid, text in data["keys"].items()}
        current = str(data["current"])
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise KeyMissingError(f"key file {path} is malformed ({exc}); restore it from your key backup") from exc
    if not keys:
        raise KeyMissingError(f"key file {path} holds no keys; restore it from your key backup")
    bad = [kid for kid, key in keys.items() if key_id(key) != kid]
    if bad:
        raise KeyMissingError(f"key file {path} lists key(s) {', '.join(bad)} under the wrong id; restore it")
    # a crash between staging and retiring leaves several keys; the store says which is current
    return keys, current if current in keys else next(iter(keys))


def _create_key_file(path: Path) -> KeyRing:
    """A new key file with one random key; if another process won the race, load theirs."""
    key = os.urandom(KEY_BYTES)
    _make_dir(path.parent)
    tmp = _write_new_file(path.parent, _serialise({key_id(key): key}, key_id(key)))
    try:
        os.link(tmp, path)  # atomic and exclusive: never a half-written key file
    except FileExistsError:
        keys, current = _read_key_file(path)
        return KeyRing(keys, current, path)
    finally:
        tmp.unlink()
    _fsync_dir(path.parent)
    return KeyRing({key_id(key): key}, key_id(key), path)


def _env_keyring(value: str) -> KeyRing:
    key = _decode_key(value, "VOICEAUTH_KEY")
    keys = {key_id(key): key}
    staged = os.environ.get("VOICEAUTH_NEW_KEY")
    if staged:
        new = _decode_key(staged, "VOICEAUTH_NEW_KEY")
        keys[key_id(new)] = new
    return KeyRing(keys, key_id(key))


def load_keyring(create: bool = True) -> KeyRing:
    """Keys from ``VOICEAUTH_KEY``, else the key file (created with mode 0600 when absent and ``create``)."""
    env = os.environ.get("VOICEAUTH_KEY")
    if env:
        return _env_keyring(env)
    path = key_file_path()
    if path.exists():
        keys, current = _read_key_file(path)
        return KeyRing(keys, current, path)
    if not create:
        raise KeyMissingError(
            f"no encryption key: set VOICEAUTH_KEY (generate one with: {GENERATE_HINT}) or VOICEAUTH_KEY_FILE; "
            f"{path} does not exist"
        )
    return _create_key_file(path)
