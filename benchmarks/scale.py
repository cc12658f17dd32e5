"""Scale-out benchmark: embeddings per second in-process vs a Ray Serve service, and bulk enrolment.

On this machine (all CPUs), on the same 3 s segments of net speech (LibriSpeech test-other):

- in-process ``EcapaEmbedder``: one segment per call (a call session), and batched;
- the ``voiceauth-embedder`` Ray Serve application with 1 and 2 replicas (1 CPU, 1 torch
  thread each; plus 1 replica with 2 threads), called by concurrent clients, one segment
  per request, so that the service's dynamic batching groups them;
- bulk enrolment of a manifest: in-process vs a Ray Data job with 2 model actors.

    python benchmarks/scale.py            # writes benchmarks/results/scale.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "corpora" / "librispeech-samples"
RESULTS = ROOT / "benchmarks" / "results"
SEGMENT_S = 3.0


def speech_segments(count: int) -> list[np.ndarray]:
    """``count`` segments of 3 s of net speech, round-robin over the test-other speakers."""
    from voiceauth.audio.decode import MODEL_RATE, load_audio
    from voiceauth.speech.activity import analyse

    length = int(SEGMENT_S * MODEL_RATE)
    per_speaker: list[list[np.ndarray]] = []
    for speaker in sorted(d for d in (SHARED / "test-other").iterdir() if d.is_dir()):
        chunks = []
        for flac in sorted(speaker.glob("*.flac")):
            speech = analyse(load_audio(flac)).speech.samples
            chunks += [speech[i : i + length] for i in range(0, len(speech) - length + 1, length)]
        per_speaker.append(chunks)
    out: list[np.ndarray] = []
    for i in range(max(len(c) for c in per_speaker)):
        out += [c[i] for c in per_speaker if i < len(c)]
    if len(out) < count:
        sys.exit(f"only {len(out)} segments of {SEGMENT_S} s in {SHARED}; pass --segments {len(out)}")
    return out[:count]


def rate(count: int, seconds: float) -> float:
    return round(count / seconds, 2)


def in_process(segments: list[np.ndarray]) -> tuple[dict[str, Any], np.ndarray]:
    import torch

    from voiceauth.embedding.ecapa import EcapaEmbedder

    embedder = EcapaEmbedder().load()
    embedder.embed(segments[:4])  # warm-up
    threads = torch.get_num_threads()
    out: dict[str, Any] = {"torch_threads": threads}
    for n in sorted({threads, 1}, reverse=True):
        torch.set_num_threads(n)
        start = time.perf_counter()
        single = np.stack([embedder.embed([s])[0] for s in segments])
        out[f"one_per_call_{n}_threads"] = rate(len(segments), time.perf_counter() - start)
        start = time.perf_counter()
        embedder.embed(segments)
        out[f"batched_4_{n}_threads"] = rate(len(segments), time.perf_counter() - start)
    torch.set_num_threads(threads)
    return out, single


def ray_service(segments: list[np.ndarray], reference: np.ndarray, replicas: int, threads: int,
                clients: int) -> dict[str, Any]:
    from voiceauth.embedding.remote import RayEmbedder, deploy_embedding_service, shutdown_embedding_service

    start = time.perf_counter()
    deploy_embedding_service(replicas=replicas, num_cpus_per_replica=threads, torch_threads=threads,
                             max_batch_size=8, batch_wait_timeout_s=0.005)
    remote = RayEmbedder("ray://local")
    deploy_s = time.perf_counter() - start
    with ThreadPoolExecutor(clients) as pool:
        list(pool.map(lambda s: remote.embed([s]), segments[: 4 * clients]))  # warm every replica
        start = time.perf_counter()
        rows = list(pool.map(lambda s: remote.embed([s])[0], segments))
        elapsed = time.perf_counter() - start
    shutdown_embedding_service()
    cosine = np.sum(np.stack(rows) * reference, axis=1)
    return {"replicas": replicas, "threads_per_replica": threads, "clients": clients,
            "embeddings_per_s": rate(len(segments), elapsed), "deploy_s": round(deploy_s, 1),
            "min_cosine_vs_in_process": round(float(cosine.min()), 6)}


def bulk(files_per_speaker: int, speakers: int, workers: int, workdir: Path) -> dict[str, Any]:
    from voiceauth.audio.decode import load_audio
    from voiceauth.client import VoiceAuth
    from voiceauth.services.bulk import ManifestRow, enroll_manifest

    rows = [ManifestRow(f"spk-{d.name}", str(f), "benchmark", "v1", "scale.py")
            for d in sorted(p for p in (SHARED / "test-other").iterdir() if p.is_dir())[:speakers]
            for f in sorted(d.glob("*.flac"))[:files_per_speaker]]
    audio_s = sum(load_audio(r.path).duration_s for r in rows)
    out: dict[str, Any] = {"files": len(rows), "audio_s": round(audio_s, 1), "workers": workers}
    for engine, address in (("in_process", None), ("ray_data", "ray://local")):
        with VoiceAuth(workdir / f"bulk-{engine}.db", actor="benchmark") as va:
            if address is None:
                va.embedder.embed([np.zeros(16000, dtype=np.float32)])  # load the model outside the timing
            report = enroll_manifest(va.services, rows, ray_address=address, workers=workers)
        if report.failed:
            sys.exit(f"bulk enrolment ({engine}) failed: {report.failed}")
        out[engine] = {"seconds": round(report.seconds, 2), "files_per_s": round(report.files_per_s, 2),
                       "audio_s_per_s": round(audio_s / report.seconds, 1)}
    out["ray_data"]["note"] = "includes starting the job and loading a model in each actor"
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--segments", type=int, default=96)
    parser.add_argument("--clients", type=int, default=8, help="concurrent callers of the Ray service")
    parser.add_argument("--bulk-speakers", type=int, default=10)
    parser.add_argument("--bulk-files", type=int, default=4, help="recordings per speaker in the bulk manifest")
    parser.add_argument("--out", type=Path, default=RESULTS / "scale.json")
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    workdir = Path(tempfile.mkdtemp(prefix="voiceauth-scale-"))
    os.environ["VOICEAUTH_KEY_FILE"] = str(workdir / "keyring.json")  # never touch the user's keys

    import ray

    load_before = [round(x, 2) for x in os.getloadavg()]
    segments = speech_segments(args.segments)
    print(f"{len(segments)} segments of {SEGMENT_S} s", file=sys.stderr)
    local, reference = in_process(segments)
    print(f"in-process: {local}", file=sys.stderr)
    cpus = os.cpu_count() or 1
    start = time.perf_counter()
    ray.init(num_cpus=cpus, include_dashboard=False, log_to_driver=False, configure_logging=False,
             runtime_env={"env_vars": {"HF_HUB_OFFLINE": os.environ["HF_HUB_OFFLINE"]}})
    ray_start_s = time.perf_counter() - start
    served = []
    for replicas, threads in ((1, 1), (2, 1), (1, 2)):
        if replicas * threads <= cpus:
            served.append(ray_service(segments, reference, replicas, threads, args.clients))
            print(f"ray serve: {served[-1]}", file=sys.stderr)
    bulk_result = bulk(args.bulk_files, args.bulk_speakers, min(2, cpus), workdir)
    print(f"bulk: {bulk_result}", file=sys.stderr)
    ray.shutdown()

    result = {
        "machine": {"cpus": cpus, "platform": platform.platform(), "python": platform.python_version(),
                    "ray": ray.__version__, "load_average_before": load_before,
                    "load_average_after": [round(x, 2) for x in os.getloadavg()]},
        "segments": {"count": len(segments), "seconds_each": SEGMENT_S, "source": "LibriSpeech test-other"},
        "embeddings_per_s": {
            "in_process": local,
            "ray_serve": served,
            "ray_cluster_start_s": round(ray_start_s, 1),
        },
        "bulk_enrolment": bulk_result,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
