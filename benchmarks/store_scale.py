"""Store scale benchmark: verification and 1:N identification with up to a million customers.

Synthetic voiceprints (random unit 192-d vectors with the ECAPA model id, so the shipped
calibration applies) are written through the store interface (``bulk_insert``: encrypted and
audited as usual) into SQLite and PostgreSQL. Probes are precomputed (a customer's vector plus
noise: no model runs), so what is timed is the library around the model: store reads and writes,
the AS-norm cohort, the watchlist screen, the audit trail. For each N:

- fill rate (voiceprints per second) and the cohort draw (the scheduled ``refresh_cohort``);
- in a fresh process: open (``VoiceAuth(...)``) + the first verification (``first_verify_s``; split
  into ``open_s`` and ``first_call_s``); then warm verifications (p50 / p99);
- 1:N identification: index build, then identify top-5 (p50 / p99) and recall@5 against an
  exact brute-force search over every voiceprint;
- resident memory of that process (after verifying; after identifying);
- baseline, same run, at the smallest N: the old code paths (the whole store as the cohort,
  identify by decrypting every voiceprint), for the ratio;
- PostgreSQL: 4 processes verifying and enrolling (the one enrolment path) concurrently for a
  minute: errors, and every acknowledged enrolment read back (lost writes).

    python benchmarks/store_scale.py                                  # 10k, 100k, 1M on both stores
    python benchmarks/store_scale.py --sizes 10000 --stores sqlite    # a quick run

Writes benchmarks/results/store_scale.json and store_scale.png. The PostgreSQL server is a
throwaway cluster on loopback (tests/pg_server.py: fsync off, as in the tests).
"""

from __future__ import annotations

import argparse
import base64
import json
import multiprocessing as mp
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
MODEL = "speechbrain/spkrec-ecapa-voxceleb@0575cb64"
DIM = 192
TARGETS = {"warm_verify_p99_ms": 10.0, "first_verify_s": 1.0, "identify_p99_ms": 50.0, "recall_at_5": 0.99,
           "rss_mb": 1024.0}


def unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=-1, keepdims=True)).astype(np.float32)


def cid(i: int) -> str:
    return f"cust-{i:08d}"


def chunk_vectors(start: int, count: int) -> np.ndarray:
    """The synthetic voiceprints of customers start..start+count (reproducible by chunk of 10k)."""
    return unit(np.random.default_rng(start // 10_000 + 1).standard_normal((count, DIM), dtype=np.float32))


def noisy(v: np.ndarray, rng: np.random.Generator, sigma: float = 0.04) -> np.ndarray:
    return unit(v + rng.normal(0.0, sigma, v.shape).astype(np.float32))


class NoModel:
    """Stands for the speaker model: probes are precomputed, nothing is embedded."""

    model_id = MODEL
    dim = DIM

    def embed(self, signals: Any) -> np.ndarray:
        raise RuntimeError("the benchmark passes precomputed probes")


class WholeStoreCohort:
    """The old cohort (the baseline): every voiceprint of the model, decrypted again every 60 s."""

    def __init__(self) -> None:
        self._entry: tuple[float, list[str], np.ndarray] | None = None

    def matrix(self, store: Any, model_id: str, exclude: str = "", channel: str | None = None) -> np.ndarray:
        from voiceauth.store.base import Namespace

        if self._entry is None or time.monotonic() - self._entry[0] > 60.0:
            self._entry = (time.monotonic(), *store.embeddings(Namespace.CUSTOMER, model_id))
        _, ids, matrix = self._entry
        return matrix[[i for i, c in enumerate(ids) if c != exclude]]

    def invalidate(self) -> None:
        self._entry = None


class WholeStoreIdentify:
    """The old identify (the baseline): decrypt every voiceprint on every call."""

    def search(self, store: Any, model_id: str, probe: np.ndarray, top_k: int) -> list[tuple[str, float]]:
        from voiceauth.store.base import Namespace

        ids, matrix = store.embeddings(Namespace.CUSTOMER, model_id)
        scores = matrix @ probe
        return [(ids[i], float(scores[i])) for i in np.argsort(-scores)[:top_k]]

    def index(self, store: Any, model_id: str) -> None:
        return None

    def forget(self, ids: Any) -> None:
        pass


def rss_mb(field: str = "VmRSS") -> float:
    """This process's resident memory (``VmHWM``: its peak), in MB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return round(int(line.split()[1]) / 1024, 1)
    return 0.0


def pct(values: list[float], q: float) -> float:
    return round(float(np.percentile(values, q)), 3)


# -- fill ----------------------------------------------------------------------------------------------
def fill(where: str, n: int) -> dict[str, Any]:
    from voiceauth.store import open_store
    from voiceauth.store.base import Namespace, Voiceprint

    store = open_store(where)
    now = time.time()

    def voiceprints() -> Any:
        for start in range(0, n, 10_000):
            count = min(10_000, n - start)
            for i, v in enumerate(chunk_vectors(start, count)):
                yield Voiceprint(cid(start + i), Namespace.CUSTOMER, MODEL, v, 20.0, 2, True, now, now)

    started = time.perf_counter()
    result = store.bulk_insert(voiceprints(), actor="store_scale", batch_size=1000)  # type: ignore[attr-defined]
    seconds = time.perf_counter() - started
    from voiceauth.services.cohort import CohortCache

    started = time.perf_counter()
    version = CohortCache().refresh(store, MODEL)
    draw_s = time.perf_counter() - started
    store.close()
    return {"inserted": result.inserted, "fill_s": round(seconds, 1), "fill_per_s": round(result.inserted / seconds),
            "cohort_draw_s": round(draw_s, 3), "cohort_version": version}


# -- one fresh process: verify, then identify ---------------------------------------------------------
def child(where: str, n: int, probes_file: str, identify: bool, baseline: bool) -> dict[str, Any]:
    started = time.perf_counter()
    from voiceauth.client import VoiceAuth
    from voiceauth.results import Probe

    data = np.load(probes_file)
    targets, vectors = data["targets"], data["vectors"]
    rng = np.random.default_rng(7)
    imported = time.perf_counter()
    va = VoiceAuth(where, embedder=NoModel(), spoof=False, create=False)  # type: ignore[arg-type]
    if baseline:
        va.services.cohort = WholeStoreCohort()  # type: ignore[assignment]
        va.services.index = WholeStoreIdentify()  # type: ignore[assignment]
    opened = time.perf_counter()
    first = va.verify(cid(int(targets[0])), Probe(noisy(vectors[0], rng), MODEL, 8.0))
    first_s = time.perf_counter() - imported
    out: dict[str, Any] = {"first_verify_s": round(first_s, 3), "import_s": round(imported - started, 3),
                           "open_s": round(opened - imported, 3),
                           "first_call_s": round(first_s - (opened - imported), 3),
                           "first_decision": first.decision.value, "normalisation": first.normalisation.value}
    times, decisions = [], {"genuine": [], "impostor": []}
    for k in range(1, min(len(targets), 301)):
        genuine = k % 2 == 0
        vec = vectors[k] if genuine else vectors[k - 1]
        probe = Probe(noisy(vec, rng), MODEL, 8.0)
        t = time.perf_counter()
        result = va.verify(cid(int(targets[k])), probe)
        times.append((time.perf_counter() - t) * 1000)
        decisions["genuine" if genuine else "impostor"].append(result.decision.value)
    out |= {"warm_verify_p50_ms": pct(times, 50), "warm_verify_p99_ms": pct(times, 99), "verifications": len(times),
            "genuine_accepted": decisions["genuine"].count("accept") / len(decisions["genuine"]),
            "impostor_accepted": decisions["impostor"].count("accept") / len(decisions["impostor"]),
            "rss_after_verify_mb": rss_mb(), "cohort_rows": len(va.services.cohort_matrix())}
    if identify:
        out |= identify_phase(va, n, targets, vectors, rng, baseline)
    out["max_rss_mb"] = rss_mb("VmHWM")
    va.close()
    return out


def identify_phase(va: Any, n: int, targets: np.ndarray, vectors: np.ndarray, rng: np.random.Generator,
                   baseline: bool) -> dict[str, Any]:
    from voiceauth.results import Probe
    from voiceauth.store.base import Namespace

    count = 30 if baseline else 300  # 300: a p99 that is not just the second-slowest call
    probes = [noisy(vectors[k], rng, 0.3) for k in range(count)]  # far from their owner: a hard top-5
    out: dict[str, Any] = {}
    t = time.perf_counter()
    va.identify(Probe(probes[0], MODEL, 8.0), top_k=5)
    out["identify_first_s"] = round(time.perf_counter() - t, 2)  # includes building the index
    index = va.services.index.index(va.store, MODEL) if not baseline else None
    out["index_backend"] = index.backend if index is not None else "none (old path)"
    times, found = [], []
    for q in probes:
        t = time.perf_counter()
        result = va.identify(Probe(q, MODEL, 8.0), top_k=5)
        times.append((time.perf_counter() - t) * 1000)
        found.append([c.customer_id for c in result])
    out |= {"identify_p50_ms": pct(times, 50), "identify_p99_ms": pct(times, 99), "identifications": len(times),
            "rss_after_identify_mb": rss_mb()}
    # exact brute force over every voiceprint, streamed (float32), for recall@5
    q = np.stack(probes)
    best = np.full((len(q), 5), -np.inf, dtype=np.float32)
    best_ids = np.empty((len(q), 5), dtype=object)
    for ids, matrix in va.store.iter_embeddings(Namespace.CUSTOMER, MODEL, batch_size=20_000):
        scores = q @ matrix.T
        merged = np.concatenate([best, scores], axis=1)
        merged_ids = np.concatenate([best_ids, np.tile(np.array(ids, dtype=object), (len(q), 1))], axis=1)
        top = np.argsort(-merged, axis=1)[:, :5]
        best, best_ids = np.take_along_axis(merged, top, 1), np.take_along_axis(merged_ids, top, 1)
    hits = sum(len(set(f) & set(b)) for f, b in zip(found, best_ids.tolist(), strict=True))
    out["recall_at_5"] = round(hits / (5 * len(q)), 4)
    out["owner_in_top5"] = round(float(np.mean([cid(int(targets[k])) in found[k] for k in range(count)])), 3)
    return out


def run_child(where: str, n: int, probes_file: str, *, identify: bool, baseline: bool = False) -> dict[str, Any]:
    env = dict(os.environ)
    env.pop("PYTHONDONTWRITEBYTECODE", None)  # as installed: imports from compiled bytecode
    args = [sys.executable, str(Path(__file__).resolve()), "--child", where, str(n), probes_file,
            "1" if identify else "0", "1" if baseline else "0"]
    started = time.perf_counter()
    done = subprocess.run(args, capture_output=True, text=True, env=env, timeout=3600)
    wall = time.perf_counter() - started
    if done.returncode != 0:
        raise RuntimeError(f"child failed: {done.stderr[-3000:]}")
    result = json.loads(done.stdout.strip().splitlines()[-1])
    result["process_wall_s"] = round(wall, 2)
    result["load_average_1min"] = round(os.getloadavg()[0], 1)  # a shared machine: other jobs' load
    return result


# -- PostgreSQL: 4 processes verifying and enrolling -----------------------------------------------------
def worker(where: str, n: int, worker_id: int, seconds: float, queue: Any) -> None:
    from voiceauth.client import VoiceAuth
    from voiceauth.results import Probe
    from voiceauth.services.enrolment import EnrolMode, NewSpeech, write
    from voiceauth.store.base import Consent, Namespace

    rng = np.random.default_rng(100 + worker_id)
    errors: list[str] = []
    written: list[tuple[str, list[float]]] = []
    verified = 0
    va = VoiceAuth(where, embedder=NoModel(), spoof=False, create=False)  # type: ignore[arg-type]
    consent = Consent.now(channel="benchmark", notice_version="v1", captured_by="store_scale")
    end = time.monotonic() + seconds
    k = 0
    while time.monotonic() < end:
        k += 1
        try:
            if k % 5 == 0:
                new_id = f"new-{worker_id}-{k}"
                vec = unit(rng.standard_normal(DIM).astype(np.float32))
                write(va.services, Namespace.CUSTOMER, new_id, NewSpeech(vec, 20.0, 2), model_id=MODEL,
                      mode=EnrolMode.NEW, required_s=10.0, consent=consent)
                written.append((new_id, vec.tolist()))
            else:
                i = int(rng.integers(n))
                va.verify(cid(i), Probe(noisy(chunk_vectors(i - i % 10_000, 10_000)[i % 10_000], rng), MODEL, 8.0))
                verified += 1
        except Exception as exc:  # noqa: BLE001 - counted and reported
            errors.append(f"{type(exc).__name__}: {exc}"[:300])
    va.close()
    queue.put({"worker": worker_id, "verified": verified, "errors": errors, "written": written})


def concurrency(where: str, n: int, seconds: float) -> dict[str, Any]:
    from voiceauth.store import open_store
    from voiceauth.store.base import Namespace

    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    procs = [ctx.Process(target=worker, args=(where, n, w, seconds, queue)) for w in range(4)]
    for p in procs:
        p.start()
    reports = [queue.get(timeout=seconds + 600) for _ in procs]
    for p in procs:
        p.join()
    store = open_store(where, create=False)
    written = [w for r in reports for w in r["written"]]
    found = store.get_many(Namespace.CUSTOMER, [w[0] for w in written])  # type: ignore[attr-defined]
    lost = [w[0] for w in written if w[0] not in found
            or not np.allclose(found[w[0]].embedding, np.asarray(w[1], dtype=np.float32), atol=1e-6)]
    store.close()
    return {"processes": 4, "seconds": seconds, "verifications": sum(r["verified"] for r in reports),
            "enrolments": len(written), "errors": sum(len(r["errors"]) for r in reports),
            "error_samples": [e for r in reports for e in r["errors"]][:5], "lost_writes": len(lost)}


# -- driver ----------------------------------------------------------------------------------------------
def probes_for(n: int, folder: Path) -> str:
    rng = np.random.default_rng(n)
    targets = rng.choice(n, size=min(n, 301), replace=False)
    vectors = np.stack([chunk_vectors(t - t % 10_000, min(10_000, n - (t - t % 10_000)))[t % 10_000]
                        for t in targets])
    path = folder / f"probes-{n}.npz"
    np.savez(path, targets=targets, vectors=vectors)
    return str(path)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000, 1_000_000])
    parser.add_argument("--stores", nargs="+", default=["sqlite", "postgres"], choices=["sqlite", "postgres"])
    parser.add_argument("--concurrency-s", type=float, default=60.0)
    parser.add_argument("--out", default=str(RESULTS / "store_scale.json"))
    args = parser.parse_args(argv)
    os.environ.setdefault("VOICEAUTH_KEY", base64.b64encode(os.urandom(32)).decode())
    results: dict[str, Any] = {"targets_at_1m": TARGETS, "model_id": MODEL, "dim": DIM, "cpus": os.cpu_count(),
                               "runs": {}}
    out_path = Path(args.out)
    server = None
    with tempfile.TemporaryDirectory(prefix="store-scale-") as tmp:
        folder = Path(tmp)
        try:
            for kind in args.stores:
                if kind == "postgres" and server is None:
                    sys.path.insert(0, str(ROOT / "tests"))
                    from pg_server import PgServer, ensure_installed, fresh_database

                    server = PgServer(ensure_installed()).start()
                for n in args.sizes:
                    where = str(folder / f"vp-{n}.db") if kind == "sqlite" else fresh_database(server.url)
                    print(f"{kind} N={n}: filling", flush=True)
                    run: dict[str, Any] = {"store": kind, "n": n, **fill(where, n)}
                    print(f"  {run}", flush=True)
                    probes = probes_for(n, folder)
                    run["new"] = run_child(where, n, probes, identify=True)
                    print(f"  new: {run['new']}", flush=True)
                    if n == min(args.sizes):
                        run["baseline_old_paths"] = run_child(where, n, probes, identify=True, baseline=True)
                        print(f"  old: {run['baseline_old_paths']}", flush=True)
                    if kind == "postgres" and n == max(args.sizes):
                        run["concurrency"] = concurrency(where, n, args.concurrency_s)
                        print(f"  concurrency: {run['concurrency']}", flush=True)
                    results["runs"][f"{kind}-{n}"] = run
                    out_path.write_text(json.dumps(results, indent=2))
                    if kind == "sqlite":
                        for suffix in ("", "-wal", "-shm"):
                            Path(where + suffix).unlink(missing_ok=True)
        finally:
            if server is not None:
                server.stop()
    results["verdict_at_largest"] = verdict(results)
    out_path.write_text(json.dumps(results, indent=2))
    plot(results, out_path.with_suffix(".png"))
    print(json.dumps(results["verdict_at_largest"], indent=2))
    return 0


def verdict(results: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name, run in results["runs"].items():
        if run["n"] != max(r["n"] for r in results["runs"].values() if r["store"] == run["store"]):
            continue
        new = run["new"]
        checks = [("warm_verify_p99_ms", "warm_verify_p99_ms", 1), ("first_verify_s", "first_verify_s", 1),
                  ("identify_p99_ms", "identify_p99_ms", 1), ("recall_at_5", "recall_at_5", -1),
                  ("max_rss_mb", "rss_mb", 1)]
        out[name] = {key: [new[key], bool(sign * new[key] <= sign * TARGETS[target])]
                     for key, target, sign in checks}
        out[name]["load_average_1min"] = round(os.getloadavg()[0], 1)
    return out


def plot(results: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(14, 4))
    for kind in ("sqlite", "postgres"):
        runs = sorted((r for r in results["runs"].values() if r["store"] == kind), key=lambda r: r["n"])
        if not runs:
            continue
        ns = [r["n"] for r in runs]
        axes[0].plot(ns, [r["new"]["warm_verify_p99_ms"] for r in runs], "o-", label=f"{kind} warm verify p99")
        axes[0].plot(ns, [r["new"]["first_verify_s"] * 1000 for r in runs], "s--", label=f"{kind} first verify")
        axes[1].plot(ns, [r["new"]["identify_p99_ms"] for r in runs], "o-", label=f"{kind} identify p99")
        axes[2].plot(ns, [r["new"]["max_rss_mb"] for r in runs], "o-", label=f"{kind} max RSS")
    axes[0].axhline(TARGETS["warm_verify_p99_ms"], color="grey", ls=":")
    axes[1].axhline(TARGETS["identify_p99_ms"], color="grey", ls=":")
    axes[2].axhline(TARGETS["rss_mb"], color="grey", ls=":")
    for ax, label in zip(axes, ("ms", "ms", "MB"), strict=True):
        ax.set_xscale("log")
        ax.set_xlabel("enrolled customers")
        ax.set_ylabel(label)
        ax.legend(fontsize=7)
    fig.suptitle("voiceauth store scale (synthetic voiceprints, precomputed probes)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        where_, n_, probes_, ident_, base_ = sys.argv[2:7]
        print(json.dumps(child(where_, int(n_), probes_, ident_ == "1", base_ == "1")))
        raise SystemExit(0)
    raise SystemExit(main())
