"""A throwaway PostgreSQL server on loopback for the tests (a helper, not a test module).

``pg_url`` (session-scoped) installs the Debian ``postgresql`` package when ``initdb`` is
missing, creates a cluster in a temporary directory, starts it on 127.0.0.1 on a free
port (as the ``postgres`` user when running as root: PostgreSQL refuses root), and stops
and removes it at the end. :func:`fresh_database` gives each test an empty database.

When PostgreSQL cannot be installed or started the tests skip locally, and fail under
CI (``CI=true``) so a broken set-up is never mistaken for a green run.
"""

from __future__ import annotations

import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

SERVICE_USER = "postgres"
DB_USER = "voiceauth"
START_TIMEOUT_S = 60


class PgUnavailable(RuntimeError):
    """PostgreSQL could not be installed or started here."""


def _version_key(path: Path) -> tuple[int, ...]:
    parts = path.parent.name.split(".")
    return tuple(int(p) for p in parts if p.isdigit())


def find_bin_dir() -> Path | None:
    """The directory holding ``initdb`` and ``pg_ctl`` (PATH first, then Debian's layout)."""
    on_path = shutil.which("initdb")
    if on_path and shutil.which("pg_ctl"):
        return Path(on_path).parent
    candidates = sorted(Path("/usr/lib/postgresql").glob("*/bin"), key=_version_key)
    for directory in reversed(candidates):
        if (directory / "initdb").exists() and (directory / "pg_ctl").exists():
            return directory
    return None


def _apt_install() -> None:
    if os.geteuid() != 0:
        raise PgUnavailable("initdb/pg_ctl not found and not root; install the Debian package: "
                            "sudo apt-get install -y postgresql")
    if not shutil.which("apt-get"):
        raise PgUnavailable("initdb/pg_ctl not found and apt-get is missing; install PostgreSQL server binaries")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    install = ["apt-get", "install", "-y", "-q", "--no-install-recommends", "postgresql"]
    if subprocess.run(install, env=env, capture_output=True).returncode != 0:
        subprocess.run(["apt-get", "update", "-q"], env=env, capture_output=True)
        done = subprocess.run(install, env=env, capture_output=True, text=True)
        if done.returncode != 0:
            raise PgUnavailable(f"apt-get install postgresql failed: {done.stderr.strip()[-500:]}")


def ensure_installed() -> Path:
    """Find the server binaries, installing the ``postgresql`` package when they are missing."""
    found = find_bin_dir()
    if found is None:
        _apt_install()
        found = find_bin_dir()
    if found is None:
        raise PgUnavailable("postgresql was installed but initdb/pg_ctl are not under /usr/lib/postgresql/*/bin")
    return found


def _service_user() -> pwd.struct_passwd | None:
    """The unprivileged account to run the server as when we are root, else None."""
    if os.geteuid() != 0:
        return None
    try:
        return pwd.getpwnam(SERVICE_USER)
    except KeyError:
        subprocess.run(["useradd", "--system", "--no-create-home", SERVICE_USER], check=True, capture_output=True)
        return pwd.getpwnam(SERVICE_USER)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class PgServer:
    """One PostgreSQL cluster in a temporary directory, listening on 127.0.0.1 only."""

    def __init__(self, bin_dir: Path) -> None:
        self.bin_dir = bin_dir
        self.root = Path(tempfile.mkdtemp(prefix="voiceauth-pg-"))
        self.data = self.root / "data"
        self.sockets = self.root / "sock"
        self.log = self.root / "server.log"
        self.port = free_port()
        self._user = _service_user()

    @property
    def url(self) -> str:
        return f"postgresql://{DB_USER}@127.0.0.1:{self.port}/postgres"

    def _run(self, *args: str) -> subprocess.CompletedProcess[str]:
        command = [str(self.bin_dir / args[0]), *args[1:]]
        if self._user is not None:
            command = ["runuser", "-u", self._user.pw_name, "--", *command]
        return subprocess.run(command, capture_output=True, text=True, timeout=START_TIMEOUT_S, cwd=self.root)

    def start(self) -> PgServer:
        self.sockets.mkdir()
        if self._user is not None:
            for path in (self.root, self.sockets):
                os.chown(path, self._user.pw_uid, self._user.pw_gid)
        init = self._run("initdb", "-D", str(self.data), "-U", DB_USER, "-A", "trust", "-E", "UTF8",
                         "--no-sync", "--no-instructions")
        if init.returncode != 0:
            raise PgUnavailable(f"initdb failed: {init.stderr.strip()[-800:]}")
        options = (f"-c listen_addresses=127.0.0.1 -p {self.port} -k {self.sockets} "
                   "-c fsync=off -c synchronous_commit=off -c full_page_writes=off -c max_connections=100")
        started = self._run("pg_ctl", "-D", str(self.data), "-l", str(self.log), "-o", options,
                            "-w", "-t", str(START_TIMEOUT_S), "start")
        if started.returncode != 0:
            tail = self.log.read_text()[-800:] if self.log.exists() else started.stderr
            raise PgUnavailable(f"PostgreSQL did not start on 127.0.0.1:{self.port}: {tail.strip()}")
        return self

    def stop(self) -> None:
        if self.data.exists():
            self._run("pg_ctl", "-D", str(self.data), "-m", "fast", "-w", "stop")
        shutil.rmtree(self.root, ignore_errors=True)


@contextmanager
def running_server() -> Iterator[str]:
    """Install if needed, start a throwaway cluster, yield its URL, then stop and remove it."""
    server = PgServer(ensure_installed())
    try:
        server.start()
        yield server.url
    finally:
        server.stop()


def fresh_database(url: str) -> str:
    """Create an empty database on the server at ``url`` and return its URL."""
    import psycopg

    name = f"t_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(url, autocommit=True) as con:
        con.execute(f'CREATE DATABASE "{name}"')
    return url.rsplit("/", 1)[0] + "/" + name


def _unavailable(reason: str) -> None:
    if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
        pytest.fail(f"PostgreSQL is required in CI but unavailable: {reason}", pytrace=False)
    pytest.skip(f"PostgreSQL unavailable ({reason}); CI=true makes this a failure")


@pytest.fixture(scope="session")
def pg_url() -> Iterator[str]:
    """URL of a throwaway PostgreSQL server on 127.0.0.1, for the whole test session."""
    try:
        import psycopg  # noqa: F401
    except ImportError:
        _unavailable("psycopg is not installed; pip install 'voiceauth[scale]'")
    try:
        with running_server() as url:
            yield url
    except PgUnavailable as exc:
        _unavailable(str(exc))
