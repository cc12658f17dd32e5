"""Scale-out: the Ray Serve embedder and bulk enrolment as a Ray Data job, on a local cluster."""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from voiceauth.cli.admin import enroll_batch_command
from voiceauth.errors import CorpusError
from voiceauth.services.bulk import ManifestRow, enroll_manifest, read_manifest

pytestmark = [
    # Ray's own modules warn about their internals; our code must stay warning-free
    pytest.mark.filterwarnings("ignore::DeprecationWarning"),
    pytest.mark.filterwarnings("ignore::FutureWarning:ray.*"),
    pytest.mark.filterwarnings("ignore::UserWarning:ray.*"),
    pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning"),
    pytest.mark.filterwarnings("ignore::ResourceWarning"),
]


def _manifest(path: Path, speakers: dict[str, list[Path]], count: int, files: int, consent: bool = True) -> Path:
    lines = ["customer_id,path,consent_channel,consent_notice,consent_by"] if consent else []
    for speaker in sorted(speakers)[:count]:
        for flac in speakers[speaker][:files]:
            lines.append(f"spk-{speaker},{flac}" + (",ivr,notice-v1,tests" if consent else ""))
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.fixture(scope="module")
def ray_cluster() -> Iterator[None]:
    """A two-CPU Ray cluster on this machine (loopback only), for the whole module."""
    if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
        import ray  # CI installs [scale]: a missing Ray is a failure there
    else:
        ray = pytest.importorskip("ray", reason="Ray is not installed; pip install 'voiceauth[scale]'")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False,
             runtime_env={"env_vars": {"HF_HUB_OFFLINE": "1"}})
    try:
        yield
    finally:
        from ray import serve

        serve.shutdown()
        ray.shutdown()


def test_ray_embedder_matches_in_process_model(ray_cluster: None, embedder, speakers) -> None:  # noqa: ANN001
    from voiceauth.audio.decode import load_audio
    from voiceauth.embedding.remote import RayEmbedder, deploy_embedding_service

    deploy_embedding_service(replicas=1, max_batch_size=4, batch_wait_timeout_s=0.05)
    remote = RayEmbedder("ray://local")
    assert remote.model_id == embedder.model_id and remote.dim == embedder.dim

    files = speakers[sorted(speakers)[0]][:3]
    signals = [load_audio(f).samples[: 3 * 16000] for f in files]
    local = np.stack([embedder.embed([s])[0] for s in signals])
    served = remote.embed(signals)
    assert served.shape == (3, 192) and served.dtype == np.float32
    assert np.all(np.sum(local * served, axis=1) > 0.999)

    # concurrent callers are batched together by the service and still get their own answers
    results: dict[int, np.ndarray] = {}

    def call(i: int) -> None:
        results[i] = remote.embed([signals[i]])[0]

    threads = [threading.Thread(target=call, args=(i,)) for i in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert all(float(results[i] @ local[i]) > 0.999 for i in range(3))


def test_facade_scores_through_the_ray_service(ray_cluster: None, tmp_path: Path, speakers, consent) -> None:  # noqa: ANN001
    from voiceauth.client import VoiceAuth
    from voiceauth.decision import Decision

    speaker = sorted(speakers)[1]
    with VoiceAuth(tmp_path / "vp.db", embedder="ray://local") as va:
        assert type(va.embedder).__name__ == "RayEmbedder"
        va.enroll("c1", speakers[speaker][:3], consent=consent)
        result = va.verify("c1", speakers[speaker][5])
    assert result.decision is not Decision.REJECT


def test_bulk_enrolment_as_ray_data_job(ray_cluster: None, tmp_path: Path, speakers, embedder) -> None:  # noqa: ANN001
    from voiceauth.client import VoiceAuth
    from voiceauth.store.base import Namespace

    manifest = _manifest(tmp_path / "manifest.csv", speakers, count=3, files=3)
    seen: list[int] = []
    with VoiceAuth(tmp_path / "ray.db", embedder=embedder) as va:
        report = enroll_manifest(va.services, manifest, ray_address="ray://local", workers=2,
                                 on_file=seen.append)
        assert report.engine == "ray-data" and report.files == 9 and sum(seen) == 9
        assert [c.status for c in report.customers] == ["complete"] * 3, report.as_dict()
        assert len(va.list()) == 3
        assert va.store.verify_audit().ok
        assert va.consent(report.customers[0].customer_id) is not None
        ray_ids, ray_matrix = va.store.embeddings(Namespace.CUSTOMER, embedder.model_id)
    with VoiceAuth(tmp_path / "local.db", embedder=embedder) as va:
        local = enroll_manifest(va.services, manifest)
        assert local.engine == "in-process"
        ids, matrix = va.store.embeddings(Namespace.CUSTOMER, embedder.model_id)
    assert ids == ray_ids
    assert np.all(np.sum(matrix * ray_matrix, axis=1) > 0.999)


def test_enroll_batch_command_reports_json_and_failures(tmp_path: Path, speakers, embedder) -> None:  # noqa: ANN001
    from click.testing import CliRunner

    manifest = _manifest(tmp_path / "m.csv", speakers, count=2, files=3)
    with manifest.open("a") as fh:
        fh.write(f"broken,{tmp_path / 'missing.flac'},ivr,notice-v1,tests\n")
    store = tmp_path / "vp.db"
    result = CliRunner().invoke(enroll_batch_command, [str(manifest), "--store", str(store), "--json"])
    assert result.exit_code == 2, result.output
    payload = json.loads(result.stdout)
    status = {c["customer_id"]: c["status"] for c in payload["customers"]}
    assert status.pop("broken") == "failed"
    assert set(status.values()) == {"complete"} and payload["engine"] == "in-process" and payload["files"] == 7


def test_manifest_parsing(tmp_path: Path) -> None:
    (tmp_path / "a.flac").write_bytes(b"")
    manifest = tmp_path / "m.csv"
    manifest.write_text("c1,a.flac\n\nc2,/abs/b.flac,agent,v2,agent-7\n")
    rows = read_manifest(manifest)
    assert rows == [ManifestRow("c1", str(tmp_path / "a.flac")),
                    ManifestRow("c2", "/abs/b.flac", "agent", "v2", "agent-7")]
    manifest.write_text("customer_id,path\nc1\n")
    with pytest.raises(CorpusError, match="data row 1"):
        read_manifest(manifest)
    manifest.write_text("customer_id,path\n")
    with pytest.raises(CorpusError, match="no recordings"):
        read_manifest(manifest)


def test_bulk_needs_consent_unless_legacy_migration(tmp_path: Path, speakers, embedder) -> None:  # noqa: ANN001
    from voiceauth.client import VoiceAuth

    manifest = _manifest(tmp_path / "m.csv", speakers, count=1, files=3, consent=False)
    with VoiceAuth(tmp_path / "vp.db", embedder=embedder) as va:
        refused = enroll_manifest(va.services, manifest)
        assert refused.customers[0].status == "failed" and "consent" in (refused.customers[0].error or "")
        assert va.list() == []
        migrated = enroll_manifest(va.services, manifest, legacy_migration=True)
        assert migrated.customers[0].status == "complete"
        va.opt_out(migrated.customers[0].customer_id)
        again = enroll_manifest(va.services, manifest, legacy_migration=True)
        assert again.customers[0].status == "skipped" and va.list() == []
