"""Encryption of voiceprints at rest: AES-256-GCM under keys with stable ids.

Key sources, in order:

1. ``VOICEAUTH_KEY``: base64 of 32 random bytes, for every store the process opens. To
   rotate in this mode, also set ``VOICEAUTH_NEW_KEY`` to the new key; once the rotation has
   committed, switch ``VOICEAUTH_KEY`` to that new value (the store records which key id it
   uses and refuses to open under any other key).
2. a key file: ``VOICEAUTH_KEY_FILE``, else ``$XDG_CONFIG_HOME/voiceauth/keyring.json``
   (``~/.config/voiceauth/keyring.json``), created on first use with mode 0600 in a 0700
   directory, always rewritten atomically under a lock. Every store gets its own key, and
   each key record lists the stores (by the random store id kept in each store) that use it::

       {"version": 2, "keys": {id: {"key": base64, "stores": [store id, ...]}}}

   Rotating a store adds a key for it and, once the rotation has committed, takes the store
   off its old key's record. The old key stays in the file (old backups of that store still
   decrypt) until :meth:`KeyRing.retire_unused` deletes every key no store uses: retiring is
   an explicit step, never a side effect of rotating one store.

A key id is derived from the key itself, so one key always has one id. Generate a key with::

    python -c "import os,base64;print(base64.b64encode(os.urandom(32)).decode())"
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
from collections.abc import Callable, Iterable, Iterator, Mapping
from pathlib import Path

from voiceauth.errors import KeyMissingError, TamperedError

KEY_BYTES = 32
NONCE_BYTES = 12
TAG_BYTES = 16
KEY_FILE_VERSION = 2
GENERATE_HINT = 'python -c "import os,base64;print(base64.b64encode(os.urandom(32)).decode())"'

Keys = dict[str, bytes]
Users = dict[str, frozenset[str]]
"""Key id -> ids of the stores that use the key."""


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
    """Known keys by id, and which stores use each.

    ``path`` is the key file the ring persists to: each new store gets its own key there.
    Without a path (keys from the environment, or given explicitly) every new store uses
    ``default``, and rotation changes only this process's copy.
    """

    def __init__(self, keys: Keys, default: str | None = None, path: Path | None = None,
                 users: Mapping[str, Iterable[str]] | None = None) -> None:
        if default is not None and default not in keys:
            raise KeyMissingError(f"default key {default} is not in the keyring; pass one of the given keys")
        if path is None and default is None:
            raise KeyMissingError("a keyring without a key file needs a default key; set VOICEAUTH_KEY")
        self._keys = dict(keys)
        self._users: Users = {kid: frozenset(ids) for kid, ids in (users or {}).items()}
        self.default = default
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

    def users(self, kid: str) -> frozenset[str]:
        """Ids of the stores the key file records as using key ``kid`` (empty without a key file)."""
        return self._users.get(kid, frozenset())

    def has(self, kid: str) -> bool:
        """Whether key ``kid`` is loaded (re-reading the key file once if it is not)."""
        return kid in self._keys or self._reload_for(kid)

    def encrypt(self, plaintext: bytes, aad: bytes, kid: str) -> tuple[str, bytes]:
        """(key id, nonce || ciphertext+tag) under key ``kid``."""
        from cryptography.hazmat.primitives.ciphers.aead import AESGCM

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
                f"{what} failed authentication: the row was modified, moved or restored from a backup; "
                "restore it from backup or re-enrol"
            ) from None

    def derive(self, kid: str, label: str) -> bytes:
        """A 32-byte subkey of key ``kid`` for one other purpose (HKDF-SHA256, ``label`` as info)."""
        from cryptography.hazmat.primitives import hashes
        from cryptography.hazmat.primitives.kdf.hkdf import HKDF

        return HKDF(hashes.SHA256(), KEY_BYTES, salt=None, info=label.encode()).derive(self._key(kid))

    def _key(self, kid: str) -> bytes:
        if not self.has(kid):
            raise KeyMissingError(
                f"no key with id {kid} is loaded (loaded: {', '.join(self._keys) or 'none'}); set VOICEAUTH_KEY / "
                "VOICEAUTH_KEY_FILE to the key the store was written with (after a rotation with VOICEAUTH_KEY, "
                "set it to the value of VOICEAUTH_NEW_KEY)"
            )
        return self._keys[kid]

    def _reload_for(self, kid: str) -> bool:
        """Another process may have added keys to the key file since loading: pick them up."""
        if self.path is None or not self.path.exists():
            return False
        self._adopt(*_read_key_file(self.path))
        return kid in self._keys

    def _adopt(self, keys: Keys, users: Users) -> None:
        self._keys = {**self._keys, **keys}
        self._users = {**self._users, **users}

    def _change_file(self, change: Callable[[Keys, Users], tuple[Keys, Users]]) -> None:
        assert self.path is not None
        self._adopt(*_update_key_file(self.path, change))

    # -- keys for stores -----------------------------------------------------------------
    def key_for_store(self, store_id: str) -> str:
        """The key a new store encrypts under: ``default`` without a key file, else a new key
        recorded in the key file as store ``store_id``'s (durably, before any data uses it)."""
        if self.path is None:
            assert self.default is not None
            return self.default
        return self._new_file_key(store_id)

    def stage_new_key(self, store_id: str) -> str:
        """A new key for store ``store_id``, saved next to the old ones before any data uses it.

        Key-file mode generates it; ``VOICEAUTH_KEY`` mode takes it from ``VOICEAUTH_NEW_KEY``.
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
        return self._new_file_key(store_id)

    def _new_file_key(self, store_id: str) -> str:
        key = os.urandom(KEY_BYTES)
        kid = key_id(key)

        def add(keys: Keys, users: Users) -> tuple[Keys, Users]:
            return {**keys, kid: key}, {**users, kid: frozenset({store_id})}

        self._change_file(add)
        return kid

    def assign(self, store_id: str, kid: str) -> None:
        """Record in the key file that store ``store_id`` uses key ``kid`` and no other.

        Call it under the store's write lock with the key the store has committed to (after a
        rotation, and on every open, which finishes one a crash interrupted or drops a key a
        crashed rotation staged). Keys no store uses stay, so old backups still decrypt, until
        :meth:`retire_unused`; other stores' records are untouched.
        """
        if self.path is None or not self.path.exists():
            return

        def reassign(keys: Keys, users: Users) -> tuple[Keys, Users]:
            if kid not in keys:  # the store's key comes from elsewhere: leave the file alone
                return keys, users
            return keys, {k: users.get(k, frozenset()) - {store_id} | ({store_id} if k == kid else set())
                          for k in keys}

        self._change_file(reassign)

    def retire_unused(self) -> list[str]:
        """Delete from the key file every key no store uses any more; return their ids.

        Copies (backups, WAL archives) of data under those keys become unreadable for good.
        """
        if self.path is None:
            raise KeyMissingError(
                "keys come from VOICEAUTH_KEY: retire an old key by destroying it in your secret store"
            )
        gone: list[str] = []

        def retire(keys: Keys, users: Users) -> tuple[Keys, Users]:
            gone[:] = [kid for kid in keys if not users.get(kid)]
            return ({kid: key for kid, key in keys.items() if kid not in gone},
                    {kid: ids for kid, ids in users.items() if kid not in gone})

        if self.path.exists():
            self._change_file(retire)
        for kid in gone:
            self._keys.pop(kid, None)
            self._users.pop(kid, None)
        return gone


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


def _serialise(keys: Keys, users: Users) -> bytes:
    records = {kid: {"key": base64.b64encode(key).decode(), "stores": sorted(users.get(kid, ()))}
               for kid, key in keys.items()}
    return json.dumps({"version": KEY_FILE_VERSION, "keys": records}, indent=1).encode()


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


def _write_key_file(path: Path, keys: Keys, users: Users) -> None:
    """Replace the key file atomically: tmp file, fsync, rename, fsync the directory."""
    _make_dir(path.parent)
    tmp = _write_new_file(path.parent, _serialise(keys, users))
    os.replace(tmp, path)
    _fsync_dir(path.parent)


def _update_key_file(path: Path, change: Callable[[Keys, Users], tuple[Keys, Users]]) -> tuple[Keys, Users]:
    """Re-read the key file (absent: empty) under its lock, apply ``change``, write it back.
    A change that changes nothing neither locks nor writes (a read-only key file keeps working)."""
    current = _read_key_file(path) if path.exists() else ({}, {})
    if change(*current) == current:
        return current
    try:
        _make_dir(path.parent)
        with _file_lock(path):
            _remove_stale_tmp(path.parent)
            before = _read_key_file(path) if path.exists() else ({}, {})
            keys, users = change(*before)
            if (keys, users) != before:
                _write_key_file(path, keys, users)
    except OSError as exc:
        raise KeyMissingError(
            f"cannot update key file {path} ({exc.strerror}); check that its directory is writable by this user"
        ) from exc
    return keys, users


def _remove_stale_tmp(directory: Path, age_s: float = 600.0) -> None:
    """Temporary key files left by a crash hold (possibly retired) keys: remove old ones."""
    cutoff = time.time() - age_s
    for tmp in directory.glob(".keyring.*.tmp"):
        with contextlib.suppress(OSError):
            if tmp.stat().st_mtime < cutoff:
                tmp.unlink()


def _read_key_file(path: Path) -> tuple[Keys, Users]:
    """(keys, stores using each key) from the key file; refuses a file other users can read."""
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
        if data.get("version") != KEY_FILE_VERSION:
            raise KeyMissingError(
                f"key file {path} is in the format of an older voiceauth (one key shared by every store), whose "
                "stores this version cannot open; move it away (keep it as a backup) and enrol into a new store"
            )
        records = data["keys"]
        keys = {str(kid): _decode_key(r["key"], f"key {kid} in {path}") for kid, r in records.items()}
        users = {str(kid): frozenset(str(s) for s in r["stores"]) for kid, r in records.items()}
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise KeyMissingError(f"key file {path} is malformed ({exc}); restore it from your key backup") from exc
    bad = [kid for kid, key in keys.items() if key_id(key) != kid]
    if bad:
        raise KeyMissingError(f"key file {path} lists key(s) {', '.join(bad)} under the wrong id; restore it")
    return keys, users


def _env_keyring(value: str) -> KeyRing:
    key = _decode_key(value, "VOICEAUTH_KEY")
    keys = {key_id(key): key}
    staged = os.environ.get("VOICEAUTH_NEW_KEY")
    if staged:
        new = _decode_key(staged, "VOICEAUTH_NEW_KEY")
        keys[key_id(new)] = new
    return KeyRing(keys, key_id(key))


def load_keyring(create: bool = True) -> KeyRing:
    """Keys from ``VOICEAUTH_KEY``, else the key file (created, mode 0600, by the first store
    that needs a key when absent and ``create``)."""
    env = os.environ.get("VOICEAUTH_KEY")
    if env:
        return _env_keyring(env)
    path = key_file_path()
    if path.exists():
        keys, users = _read_key_file(path)
        return KeyRing(keys, path=path, users=users)
    if not create:
        raise KeyMissingError(
            f"no encryption key: set VOICEAUTH_KEY (generate one with: {GENERATE_HINT}) or VOICEAUTH_KEY_FILE; "
            f"{path} does not exist"
        )
    return KeyRing({}, path=path)
