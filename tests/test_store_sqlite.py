"""What only the SQLite store does: file handling, secure delete, key files, processes, crashes."""

from __future__ import annotations

import base64
import json
import multiprocessing
import os
import random
import signal
import sqlite3
import stat
import subprocess
import sys
import threading
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from voiceauth.errors import ErasureIncompleteError, KeyMissingError, StoreCorruptError, StoreError
from voiceauth.store import AuditRecord, Namespace, Voiceprint
from voiceauth.store.crypto import NONCE_BYTES, KeyRing, load_keyring
from voiceauth.store.sqlite import SCHEMA_VERSION, SQLiteStore

CUSTOMER = Namespace.CUSTOMER
TESTS = Path(__file__).resolve().parent
MODEL = "ecapa-v1"


@pytest.fixture(autouse=True)
def key_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Keys live under tmp_path; nothing touches the real home directory."""
    config = tmp_path / "config"
    path = config / "voiceauth" / "keyring.json"
    monkeypatch.setenv("XDG_CONFIG_HOME", str(config))
    monkeypatch.setenv("VOICEAUTH_KEY_FILE", str(path))
    monkeypatch.delenv("VOICEAUTH_KEY", raising=False)
    monkeypatch.delenv("VOICEAUTH_NEW_KEY", raising=False)
    return path


@pytest.fixture
def db(tmp_path: Path) -> Path:
    return tmp_path / "voiceprints.db"


# -- helpers (module level: child processes import them) ------------------------------------------


def embedding(seed: int, dim: int = 192) -> np.ndarray:
    vec = np.random.default_rng(seed).standard_normal(dim).astype(np.float32)
    return vec / np.linalg.norm(vec)


def voiceprint(subject: str, seed: int, *, recordings: int = 1, when: float | None = None) -> Voiceprint:
    when = time.time() if when is None else when
    return Voiceprint(subject, CUSTOMER, MODEL, embedding(seed), 12.0, recordings, True, when, when,
                      meta={"seed": str(seed)})


def put(store: SQLiteStore, subject: str, seed: int) -> Voiceprint:
    vp = voiceprint(subject, seed)
    return store.upsert(CUSTOMER, subject, lambda _cur: vp, event=AuditRecord("enroll", subject, "ok"))


def seed_of(store: SQLiteStore, subject: str) -> int | None:
    """The seed a voiceprint was made from, after checking its embedding matches it."""
    vp = store.get(CUSTOMER, subject)
    if vp is None:
        return None
    seed = int(vp.meta["seed"])
    assert np.array_equal(vp.embedding, embedding(seed)), subject
    return seed


def files_bytes(db: Path) -> bytes:
    """Raw bytes of the database and its WAL and shared-memory files."""
    return b"".join(p.read_bytes() for p in (db, Path(f"{db}-wal"), Path(f"{db}-shm")) if p.exists())


def raw_blob(db: Path, subject: str) -> bytes:
    con = sqlite3.connect(db)
    try:
        return bytes(con.execute("SELECT blob FROM voiceprints WHERE subject_id = ?", (subject,)).fetchone()[0])
    finally:
        con.close()


def wait_for(path: Path, seconds: float = 30.0) -> None:
    deadline = time.time() + seconds
    while not path.exists():
        if time.time() > deadline:
            raise TimeoutError(f"{path} never appeared")
        time.sleep(0.01)


def barrier(ready: Path, wid: int, parties: int) -> None:
    (ready / str(wid)).touch()
    deadline = time.time() + 30
    while len(list(ready.iterdir())) < parties and time.time() < deadline:
        time.sleep(0.005)


# -- opening files ---------------------------------------------------------------------------------


NOT_DATABASES = {
    "text": b"customer_id,score\nc1,0.9\n",
    "random": os.urandom(8192),
    "short": b"SQLite format 3",
    "magic-then-garbage": b"SQLite format 3\x00" + os.urandom(4096),
}


@pytest.mark.parametrize("content", list(NOT_DATABASES.values()), ids=list(NOT_DATABASES))
def test_not_a_database_is_corrupt_and_untouched(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "notes.db"
    path.write_bytes(content)
    with pytest.raises(StoreCorruptError, match=r"notes\.db.*--store"):
        SQLiteStore(path)
    assert path.read_bytes() == content
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.db"]  # no key file, no WAL


def test_other_applications_database_is_refused_untouched(tmp_path: Path) -> None:
    path = tmp_path / "crm.db"
    con = sqlite3.connect(path)
    con.execute("CREATE TABLE customers (id TEXT)")
    con.commit()
    con.close()
    before = path.read_bytes()
    with pytest.raises(StoreCorruptError, match="another application"):
        SQLiteStore(path)
    assert path.read_bytes() == before


def test_missing_directory_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(StoreError, match="does not exist"):
        SQLiteStore(tmp_path / "nope" / "voiceprints.db")
    assert not (tmp_path / "nope").exists()


@pytest.mark.parametrize(("version", "message"), [("99", "upgrade voiceauth"), ("1", "older voiceauth")])
def test_schema_version_and_newer_or_older_schema_refused(db: Path, version: str, message: str) -> None:
    SQLiteStore(db).close()
    con = sqlite3.connect(db)
    assert con.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone() == (str(SCHEMA_VERSION),)
    assert con.execute("PRAGMA journal_mode").fetchone() == ("wal",)
    con.execute("UPDATE meta SET value = ? WHERE key = 'schema_version'", (version,))
    con.commit()
    con.close()
    with pytest.raises(StoreError, match=message):
        SQLiteStore(db)


def test_closed_store_refuses_use(db: Path) -> None:
    with SQLiteStore(db) as store:
        put(store, "c", 1)
    with pytest.raises(StoreError, match="closed"):
        store.get(CUSTOMER, "c")


# -- nothing in the clear, nothing left behind --------------------------------------------------------


def test_no_voiceprint_in_the_clear(db: Path) -> None:
    store = SQLiteStore(db)
    vp = put(store, "c", 7)
    for data in (files_bytes(db), (store.checkpoint(), files_bytes(db))[1]):
        for dtype in ("<f4", "<f8"):
            clear = vp.embedding.astype(dtype).tobytes()
            assert clear[:16] not in data and clear[-16:] not in data
    store.close()


def _assert_erased(db: Path, store: SQLiteStore, blobs: list[bytes]) -> None:
    assert store.checkpoint()
    data = files_bytes(db)
    for blob in blobs:
        assert blob[NONCE_BYTES:NONCE_BYTES + 24] not in data
        assert blob[-24:] not in data


def test_secure_delete_leaves_no_ciphertext(db: Path) -> None:
    store = SQLiteStore(db)
    put(store, "c", 1)
    put(store, "other", 2)
    blob = raw_blob(db, "c")
    assert store.checkpoint() and blob[-24:] in files_bytes(db)  # the search does find it while it exists
    assert store.delete(CUSTOMER, "c", event=AuditRecord("delete", "c", "deleted"))
    _assert_erased(db, store, [blob])
    assert store.get(CUSTOMER, "other") is not None
    store.close()


def test_replaced_opted_out_purged_and_rotated_ciphertexts_are_erased(db: Path) -> None:
    store = SQLiteStore(db)
    for i, subject in enumerate(("replaced", "opted", "purged", "rotated")):
        put(store, subject, i)
    old = {s: raw_blob(db, s) for s in ("replaced", "opted", "purged", "rotated")}
    put(store, "replaced", 10)
    store.opt_out("opted", event=AuditRecord("opt_out", "opted", "ok"))
    store.touch(CUSTOMER, "rotated", time.time() + 3600)
    store.touch(CUSTOMER, "replaced", time.time() + 3600)
    assert store.purge_unused(time.time() + 1) == ["purged"]
    store.rotate_key()
    _assert_erased(db, store, list(old.values()))
    assert seed_of(store, "rotated") == 3 and seed_of(store, "replaced") == 10
    assert store.integrity_check()
    store.close()


# -- key files ------------------------------------------------------------------------------------------


def test_key_file_created_private(key_file: Path, db: Path) -> None:
    with SQLiteStore(db) as store:
        store_id, kid = store.store_id, _store_key(db)
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    assert stat.S_IMODE(key_file.parent.stat().st_mode) == 0o700
    data = json.loads(key_file.read_text())
    assert data["version"] == 2 and list(data["keys"]) == [kid]
    assert data["keys"][kid]["stores"] == [store_id]
    assert len(base64.b64decode(data["keys"][kid]["key"])) == 32
    assert load_keyring().ids == (kid,) and load_keyring().users(kid) == {store_id}


def test_old_format_key_file_is_a_clear_error(key_file: Path, db: Path) -> None:
    key = base64.b64encode(os.urandom(32)).decode()
    key_file.parent.mkdir(parents=True)
    key_file.write_text(json.dumps({"current": "x", "keys": {"x": key}}))
    key_file.chmod(0o600)
    with pytest.raises(KeyMissingError, match="older voiceauth.*move it away"):
        SQLiteStore(db)


def _store_key(db: Path) -> str:
    con = sqlite3.connect(db)
    try:
        return str(con.execute("SELECT value FROM meta WHERE key = 'current_key_id'").fetchone()[0])
    finally:
        con.close()


@pytest.mark.parametrize("mode", [0o640, 0o604, 0o660])
def test_key_file_readable_by_others_refused(key_file: Path, db: Path, mode: int) -> None:
    SQLiteStore(db).close()
    key_file.chmod(mode)
    with pytest.raises(KeyMissingError, match="chmod 600"):
        SQLiteStore(db)


def test_no_key_file_without_create(key_file: Path) -> None:
    with pytest.raises(KeyMissingError, match="VOICEAUTH_KEY"):
        load_keyring(create=False)
    assert not key_file.exists()


@pytest.mark.parametrize("value", ["not base64!", base64.b64encode(b"short").decode()])
def test_invalid_env_key(monkeypatch: pytest.MonkeyPatch, db: Path, value: str) -> None:
    monkeypatch.setenv("VOICEAUTH_KEY", value)
    with pytest.raises(KeyMissingError, match=r"32 random bytes.*os\.urandom\(32\)"):
        SQLiteStore(db)
    assert not db.exists()


def test_env_key_writes_no_key_file(monkeypatch: pytest.MonkeyPatch, key_file: Path, db: Path) -> None:
    monkeypatch.setenv("VOICEAUTH_KEY", base64.b64encode(os.urandom(32)).decode())
    with SQLiteStore(db) as store:
        put(store, "c", 1)
    assert not key_file.exists()


# -- threads and processes ----------------------------------------------------------------------------


def _increment(store: SQLiteStore, subject: str) -> None:
    def build(current: Voiceprint | None) -> Voiceprint:
        if current is None:
            return replace(voiceprint(subject, 0), recordings=1)
        return replace(current, recordings=current.recordings + 1, updated_at=time.time())

    store.upsert(CUSTOMER, subject, build, event=AuditRecord("enroll", subject, "updated"))


def test_threads_share_a_store_without_lost_updates(db: Path) -> None:
    store = SQLiteStore(db)
    errors: list[BaseException] = []

    def work() -> None:
        try:
            for _ in range(25):
                _increment(store, "shared")
                store.get(CUSTOMER, "shared")
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=work) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    vp = store.get(CUSTOMER, "shared")
    assert vp is not None and vp.recordings == 200
    assert len(store.audit_events()) == 200 and store.integrity_check()
    store.close()


def _stress_worker(args: tuple[str, str, str, int, int, float, int]) -> dict[str, Any]:
    """One process's bounded mix of writes and reads; returns what it committed."""
    path, key_file, ready, wid, parties, seconds, max_ops = args
    os.environ["VOICEAUTH_KEY_FILE"] = key_file
    os.environ.pop("VOICEAUTH_KEY", None)
    store = SQLiteStore(path)
    barrier(Path(ready), wid, parties)
    rng = random.Random(wid)
    own: dict[str, int | None] = {f"w{wid}-{i}": None for i in range(8)}
    shared = {f"shared-{i}": 0 for i in range(3)}
    audited = ops = pending = 0
    stale: list[str] = []
    start = time.time()
    while ops < max_ops and time.time() - start < seconds:
        roll, subject = rng.random(), rng.choice(sorted(own))
        if roll < 0.3:
            own[subject] = wid * 1_000_000 + ops
            put(store, subject, wid * 1_000_000 + ops)
            audited += 1
        elif roll < 0.45:
            try:
                store.delete(CUSTOMER, subject, event=AuditRecord("delete", subject, "deleted"))
            except ErasureIncompleteError as exc:  # committed; another process's reader kept the WAL
                assert exc.subjects == (subject,)
                pending += 1
            own[subject], audited = None, audited + 1
        elif roll < 0.7:
            name = rng.choice(sorted(shared))
            _increment(store, name)
            shared[name], audited = shared[name] + 1, audited + 1
        elif roll < 0.9:
            if seed_of(store, subject) != own[subject]:
                stale.append(subject)
        else:
            store.embeddings(CUSTOMER, MODEL)
        ops += 1
    elapsed = time.time() - start
    store.close()
    return {"own": own, "shared": shared, "audited": audited, "ops": ops, "seconds": elapsed, "stale": stale,
            "pending": pending}


def _traced(job: tuple[Any, Any]) -> tuple[bool, Any]:
    """Run ``worker(args)`` in the child; an exception comes back as its traceback text, because an
    exception that fails to unpickle in the parent stops the pool's result thread and hangs ``map``."""
    worker, args = job
    try:
        return True, worker(args)
    except BaseException:  # noqa: BLE001 - reported to the parent as text
        import traceback

        return False, traceback.format_exc()


def _run_processes(worker: Any, args: list[Any], timeout: float = 180.0) -> list[Any]:
    with multiprocessing.get_context("spawn").Pool(len(args)) as pool:
        outcomes = pool.map_async(_traced, [(worker, a) for a in args]).get(timeout=timeout)
    failures = [text for ok, text in outcomes if not ok]
    assert not failures, "a worker process failed:\n" + "\n".join(failures)
    return [value for _, value in outcomes]


@pytest.mark.integration  # real processes, killed
def test_processes_stress_no_lost_writes(tmp_path: Path, db: Path, key_file: Path) -> None:
    SQLiteStore(db).close()  # schema and key exist before the race
    ready = tmp_path / "ready"
    ready.mkdir()
    parties, seconds, max_ops = 4, 2.0, 5000
    results = _run_processes(_stress_worker, [(str(db), str(key_file), str(ready), w, parties, seconds, max_ops)
                                              for w in range(parties)])
    store = SQLiteStore(db)
    lost = [s for r in results for s, seed in r["own"].items() if seed_of(store, s) != seed]
    for name in results[0]["shared"]:
        vp = store.get(CUSTOMER, name)
        expected = sum(r["shared"][name] for r in results)
        if (vp.recordings if vp else 0) != expected:
            lost.append(f"{name}: {vp.recordings if vp else 0} of {expected} increments")
    audited = sum(r["audited"] for r in results)
    ops = sum(r["ops"] for r in results)
    duration = max(r["seconds"] for r in results)
    print(f"\nstress: {parties} processes, {ops} ops ({audited} writes) in {duration:.2f} s, "
          f"lost writes: {len(lost)}, stale reads: {sum(len(r['stale']) for r in results)}")
    assert lost == []
    assert [r["stale"] for r in results] == [[]] * parties
    assert len(store.audit_events()) == audited
    assert store.integrity_check()
    # erasures reported incomplete under contention finish once the other processes have gone
    assert store.checkpoint(), f"{sum(r['pending'] for r in results)} erasures still pending"
    store.close()


def _first_open_worker(args: tuple[str, str, str, int, int]) -> str:
    path, key_file, ready, wid, parties = args
    os.environ["VOICEAUTH_KEY_FILE"] = key_file
    barrier(Path(ready), wid, parties)
    with SQLiteStore(path) as store:
        put(store, f"first-{wid}", wid)
        return _store_key(Path(path))


@pytest.mark.integration  # real processes, killed
def test_processes_creating_store_and_key_at_once(tmp_path: Path, db: Path, key_file: Path) -> None:
    ready = tmp_path / "ready"
    ready.mkdir()
    kids = _run_processes(_first_open_worker, [(str(db), str(key_file), str(ready), w, 4) for w in range(4)])
    assert len(set(kids)) == 1 and load_keyring().ids == (kids[0],)
    with SQLiteStore(db) as store:
        assert [seed_of(store, f"first-{w}") for w in range(4)] == [0, 1, 2, 3]
        assert store.integrity_check()


class _CommitAfterFirstRead(sqlite3.Connection):
    """A read-only connection that lets another process finish creating the store right after
    its first statement, as a concurrent first open can."""

    other_open: Any = None

    def execute(self, sql: str, *args: Any) -> sqlite3.Cursor:  # type: ignore[override]
        cursor = super().execute(sql, *args)
        hook, type(self).other_open = type(self).other_open, None
        if hook is not None:
            hook()
        return cursor


def test_store_created_by_another_process_during_the_identity_check_is_recognised(
    db: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The CI failure on 88a71bb: the identity check read the application id and the table count
    in two read transactions; another process's first open committed between them, so a new
    voiceauth store looked like another application's database."""
    con = sqlite3.connect(db)
    assert con.execute("PRAGMA journal_mode = WAL").fetchone()[0] == "wal"  # what a first open does first
    con.close()
    real_connect = sqlite3.connect

    def connect(target: Any, *args: Any, **kwargs: Any) -> sqlite3.Connection:
        if "mode=ro" in str(target):
            kwargs["factory"] = _CommitAfterFirstRead
        return real_connect(target, *args, **kwargs)

    _CommitAfterFirstRead.other_open = lambda: SQLiteStore(db).close()
    monkeypatch.setattr(sqlite3, "connect", connect)
    with SQLiteStore(db) as store:
        put(store, "after-race", 7)
        assert seed_of(store, "after-race") == 7
    assert _CommitAfterFirstRead.other_open is None  # the other open did run inside the check


# -- crashes: SIGKILL in the middle of writes -------------------------------------------------------------


def _child_upsert(path: str, marker: str, where: str) -> None:
    """Overwrite ``c`` with seed 2, but stop inside the transaction at ``where`` and wait to be killed."""
    import voiceauth.store.sqlite as sqlite_module

    store = SQLiteStore(path)

    def stop() -> None:
        Path(marker).touch()
        time.sleep(60)

    if where == "before_commit":  # the row and its audit event are written, COMMIT is not
        append = sqlite_module.SQLiteStore._append_audit

        def slow_append(self: SQLiteStore, con: sqlite3.Connection, record: AuditRecord) -> None:
            append(self, con, record)
            stop()

        sqlite_module.SQLiteStore._append_audit = slow_append  # type: ignore[method-assign]

    def build(_current: Voiceprint | None) -> Voiceprint:
        if where == "in_builder":
            stop()
        return voiceprint("c", 2)

    store.upsert(CUSTOMER, "c", build, event=AuditRecord("enroll", "c", "ok"))


def _child_rotate(path: str, marker: str, where: str) -> None:
    """Rotate the key, but stop at ``where`` and wait to be killed."""
    import voiceauth.store.sql as sql_module  # the shared SQL logic re-encrypts

    store = SQLiteStore(path)

    def stop() -> None:
        Path(marker).touch()
        time.sleep(60)

    if where == "mid_reencrypt":  # half the rows re-encrypted inside the transaction
        params = sql_module.voiceprint_params
        calls = [0]

        def slow_params(ring: KeyRing, *args: Any) -> tuple[Any, ...]:
            calls[0] += 1
            if calls[0] == 10:
                stop()
            return params(ring, *args)

        sql_module.voiceprint_params = slow_params  # type: ignore[assignment]
    elif where == "after_commit":  # committed, the key file not yet told the store uses the new key
        def slow_assign(self: KeyRing, store_id: str, kid: str) -> None:
            stop()

        KeyRing.assign = slow_assign  # type: ignore[method-assign]
    store.rotate_key()


def _child_loop(path: str, marker: str, what: str) -> None:
    """Upsert or rotate over and over (logging each committed upsert) until killed."""
    store = SQLiteStore(path)
    Path(marker).touch()
    log = Path(path + ".log")
    seed = 100
    while True:
        if what == "upsert":
            put(store, "c", seed)
            with open(log, "a") as fh:
                fh.write(f"{seed}\n")
            seed += 1
        else:
            store.rotate_key()


def _spawn(function: str, *args: str) -> subprocess.Popen[bytes]:
    code = f"import sys; sys.path.insert(0, {str(TESTS)!r}); import test_store_sqlite as t; t.{function}(*sys.argv[1:])"
    return subprocess.Popen([sys.executable, "-c", code, *args], env=dict(os.environ),
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def _kill_when(child: subprocess.Popen[bytes], marker: Path, delay: float = 0.0) -> None:
    try:
        wait_for(marker)
    except TimeoutError:
        child.kill()
        raise AssertionError(child.communicate(timeout=10)[1].decode()) from None
    time.sleep(delay)
    assert child.poll() is None, child.communicate()[1].decode()
    child.send_signal(signal.SIGKILL)
    child.communicate(timeout=10)
    assert child.returncode == -signal.SIGKILL


def _populated(db: Path, n: int = 20) -> None:
    with SQLiteStore(db) as store:
        for i in range(n):
            put(store, f"c{i}" if i else "c", i + 1)


def _assert_all_readable(db: Path, expected: dict[str, int]) -> SQLiteStore:
    store = SQLiteStore(db)
    assert store.integrity_check()
    assert {s: seed_of(store, s) for s in expected} == expected
    assert len({row[0] for row in sqlite3.connect(db).execute("SELECT key_id FROM voiceprints")}) == 1
    return store


@pytest.mark.integration  # real processes, killed
@pytest.mark.parametrize("where", ["in_builder", "before_commit"])
def test_sigkill_mid_upsert(tmp_path: Path, db: Path, where: str) -> None:
    _populated(db, 1)
    marker = tmp_path / "inside"
    _kill_when(_spawn("_child_upsert", str(db), str(marker), where), marker)
    store = _assert_all_readable(db, {"c": 1})
    assert len(store.audit_events()) == 1
    put(store, "c", 3)  # the lock died with the child
    assert seed_of(store, "c") == 3
    store.close()


@pytest.mark.integration  # real processes, killed
def test_sigkill_at_random_times_during_upserts(tmp_path: Path, db: Path) -> None:
    _populated(db, 1)
    rng = random.Random(7)
    log = Path(f"{db}.log")
    for attempt in range(3):
        with SQLiteStore(db) as store:
            events_before, seed_before = len(store.audit_events()), seed_of(store, "c")
        marker = tmp_path / f"started-{attempt}"
        _kill_when(_spawn("_child_loop", str(db), str(marker), "upsert"), marker, rng.uniform(0.05, 0.3))
        logged = [int(x) for x in log.read_text().split()] if log.exists() else []
        with SQLiteStore(db) as store:
            assert store.integrity_check()
            last = logged[-1] if logged else seed_before
            assert seed_of(store, "c") in {last, last + 1 if logged else 100}  # committed, maybe not yet logged
            assert len(store.audit_events()) - events_before - len(logged) in {0, 1}
        log.unlink(missing_ok=True)


@pytest.mark.integration  # real processes, killed
@pytest.mark.parametrize("where", ["mid_reencrypt", "after_commit"])
def test_sigkill_mid_rotation(tmp_path: Path, db: Path, key_file: Path, where: str) -> None:
    _populated(db)
    expected = {(f"c{i}" if i else "c"): i + 1 for i in range(20)}
    old_kid = _store_key(db)
    marker = tmp_path / "inside"
    _kill_when(_spawn("_child_rotate", str(db), str(marker), where), marker)
    records = json.loads(key_file.read_text())["keys"]
    assert len(records) == 2 and all(r["stores"] for r in records.values())  # both in use until after the commit
    store = _assert_all_readable(db, expected)
    rotated = [e for e in store.audit_events() if e.action == "key_rotation"]
    key_ids = {row[0] for row in sqlite3.connect(db).execute("SELECT key_id FROM voiceprints")}
    if where == "mid_reencrypt":
        assert rotated == [] and key_ids == {old_kid}
        assert load_keyring().users(old_kid) == {store.store_id}
    else:
        assert len(rotated) == 1 and key_ids == {rotated[0].details["key_id"]}
        assert load_keyring().users(old_kid) == set()  # reopening finished the interrupted hand-over
    new_kid = store.rotate_key()  # and the next rotation completes
    store.close()
    assert load_keyring().users(new_kid) == {store.store_id}
    retired = load_keyring().retire_unused()
    assert old_kid in retired and new_kid not in retired and load_keyring().ids == (new_kid,)
    _assert_all_readable(db, expected).close()


@pytest.mark.integration  # real processes, killed
def test_sigkill_at_random_times_during_rotations(tmp_path: Path, db: Path) -> None:
    _populated(db)
    expected = {(f"c{i}" if i else "c"): i + 1 for i in range(20)}
    rng = random.Random(11)
    for attempt in range(3):
        marker = tmp_path / f"started-{attempt}"
        _kill_when(_spawn("_child_loop", str(db), str(marker), "rotate"), marker, rng.uniform(0.05, 0.3))
        _assert_all_readable(db, expected).close()
