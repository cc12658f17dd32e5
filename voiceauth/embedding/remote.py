"""The speaker model as a Ray Serve service, shared by many call sessions on many machines.

``deploy_embedding_service`` starts the Serve application ``voiceauth-embedder``: each
replica holds one :class:`~voiceauth.embedding.EcapaEmbedder` and batches requests from
all callers dynamically (``@serve.batch``: up to ``max_batch_size`` signals, or whatever
arrived within ``batch_wait_timeout_s``). :class:`RayEmbedder` implements the
:class:`~voiceauth.embedding.Embedder` protocol by calling it, so::

    VoiceAuth("postgresql://...", embedder="ray://head-node:10001")

scores with the cluster's replicas instead of a model in the process. Replicas are
stateless (model weights only): add or remove them freely. Ray is imported only here and
only when used, so the embedded default never needs it (install: ``voiceauth[scale]``).

Addresses: ``ray://HOST:PORT`` (a Ray Client server, port 10001 by default),
``ray://auto`` (the cluster this machine belongs to) or ``ray://local`` (start a local
single-machine cluster if none is running, and deploy the service if it is missing).

Trust boundary: Ray authenticates nothing by default. Customers' decoded audio goes to
the replicas and their voice embeddings come back as plain (pickled) Ray objects, and
anyone who can reach the cluster's ports can run code on every node, read that audio and
return forged embeddings. The whole cluster (every node and the network between them)
must therefore be as trusted as the process holding the voiceprint key. By default only
a cluster reached over loopback is used (``ray://local``, ``ray://localhost:PORT``,
``ray://127.0.0.1:PORT``, ``ray://[::1]:PORT``); any other address, ``ray://auto``
included, is refused unless the caller passes ``allow_remote=True`` or sets
``VOICEAUTH_RAY_ALLOW_REMOTE=1`` after putting the cluster on a private network (and,
ideally, enabling Ray's token authentication and TLS). See SECURITY.md.
"""

from __future__ import annotations

import asyncio
import ipaddress
import os
import urllib.parse
from collections.abc import Sequence
from typing import Any

import numpy as np

from voiceauth.embedding.base import l2_normalise
from voiceauth.embedding.ecapa import EcapaEmbedder
from voiceauth.errors import AudioError, ModelUnavailableError, VoiceAuthError

APP_NAME = "voiceauth-embedder"
PASSED_ENV = ("HF_HUB_OFFLINE", "VOICEAUTH_MODEL_SOURCES")
"""Settings a local driver hands to replicas (paths are not passed: they differ between machines)."""
ALLOW_REMOTE_ENV = "VOICEAUTH_RAY_ALLOW_REMOTE"
"""Set to 1 to allow a Ray cluster that is not reached over loopback (see the trust boundary above)."""


def _ray() -> Any:
    try:
        import ray
    except ImportError as exc:
        raise VoiceAuthError(
            f"the Ray embedding service needs Ray ({exc}); install it with: pip install 'voiceauth[scale]'"
        ) from exc
    return ray


def _is_loopback(target: str) -> bool:
    """Whether ``HOST[:PORT]`` names this machine over loopback."""
    try:
        host = urllib.parse.urlsplit("//" + target).hostname
        return host == "localhost" or (host is not None and ipaddress.ip_address(host).is_loopback)
    except ValueError:
        return False


def check_address(address: str, *, allow_remote: bool = False) -> None:
    """Refuse a malformed Ray address, and one beyond this machine unless the caller opted in.

    Opting in is ``allow_remote=True`` or ``VOICEAUTH_RAY_ALLOW_REMOTE=1``. ``ray://local``
    counts as remote when ``RAY_ADDRESS`` points Ray at another machine.
    """
    if not address.startswith("ray://"):
        raise VoiceAuthError(f"Ray address {address!r} must look like ray://HOST:PORT, ray://auto or ray://local")
    target = address.removeprefix("ray://")
    if target == "local":
        target = os.environ.get("RAY_ADDRESS", "").removeprefix("ray://") or "localhost"
    opted_in = allow_remote or os.environ.get(ALLOW_REMOTE_ENV, "").lower() in ("1", "true", "yes")
    if opted_in or target == "local" or _is_loopback(target):
        return
    raise VoiceAuthError(
        f"Ray address {address!r} is not on this machine: the Ray path carries customers' audio and voice "
        "embeddings unauthenticated, and anyone who can reach a Ray cluster can run code on it. Use a cluster "
        "only on a private, trusted network (see SECURITY.md, 'Ray cluster'), then pass allow_remote=True "
        f"or set {ALLOW_REMOTE_ENV}=1"
    )


def connect(address: str = "ray://local", *, num_cpus: int | None = None, allow_remote: bool = False) -> None:
    """Join the Ray cluster named by ``address`` unless this process already has (see :func:`check_address`)."""
    check_address(address, allow_remote=allow_remote)
    ray = _ray()
    if ray.is_initialized():
        return
    target = address.removeprefix("ray://")
    env = {k: os.environ[k] for k in PASSED_ENV if k in os.environ}
    try:
        if target == "local":
            ray.init(num_cpus=num_cpus, include_dashboard=False, runtime_env={"env_vars": env},
                     log_to_driver=False, configure_logging=False)
        elif target == "auto":
            ray.init(address="auto", log_to_driver=False, configure_logging=False)
        else:
            ray.init(address=address, log_to_driver=False, configure_logging=False)
    except (ConnectionError, RuntimeError, ValueError) as exc:
        raise ModelUnavailableError(
            f"cannot reach the Ray cluster at {address} ({exc}); start it (ray start --head) or use ray://local"
        ) from exc


def _replica_class(max_batch_size: int, batch_wait_timeout_s: float) -> type:
    """The Serve deployment class, built here so that importing this module never imports Ray."""
    from ray import serve

    class EmbeddingReplica:
        """One loaded ECAPA model; requests from every caller are batched dynamically."""

        def __init__(self, model_dir: str | None, torch_threads: int) -> None:
            import torch

            torch.set_num_threads(torch_threads)
            self.embedder = EcapaEmbedder(model_dir).load()

        @serve.batch(max_batch_size=max_batch_size, batch_wait_timeout_s=batch_wait_timeout_s)
        async def _embed_batch(self, signals: list[np.ndarray]) -> list[np.ndarray]:
            embeddings = await asyncio.to_thread(self.embedder.embed, signals)
            return list(embeddings)

        async def __call__(self, signal: np.ndarray) -> np.ndarray:
            return await self._embed_batch(signal)

        def info(self) -> dict[str, Any]:
            return {"model_id": self.embedder.model_id, "dim": self.embedder.dim}

    return EmbeddingReplica


def deploy_embedding_service(
    address: str = "ray://local",
    *,
    replicas: int = 1,
    max_batch_size: int = 16,
    batch_wait_timeout_s: float = 0.01,
    num_cpus_per_replica: float = 1.0,
    torch_threads: int | None = None,
    model_dir: str | os.PathLike[str] | None = None,
    allow_remote: bool = False,
) -> Any:
    """Start (or update) the ``voiceauth-embedder`` application and return its handle.

    Args:
        replicas: model replicas; each reserves ``num_cpus_per_replica`` CPUs of the cluster.
        max_batch_size, batch_wait_timeout_s: dynamic batching of concurrent requests.
        torch_threads: intra-op threads per replica (default: ``num_cpus_per_replica``).
        model_dir: directory with the ECAPA files on the replicas' machines (else each
            replica resolves the weights itself: cache, hub, package index).
        allow_remote: allow a cluster not reached over loopback (see :func:`check_address`).
    """
    if replicas < 1 or max_batch_size < 1 or batch_wait_timeout_s < 0:
        raise VoiceAuthError("replicas and max_batch_size must be >= 1 and batch_wait_timeout_s >= 0")
    connect(address, allow_remote=allow_remote)
    from ray import serve

    serve.start(proxy_location="Disabled")
    threads = torch_threads or max(1, int(num_cpus_per_replica))
    deployment = serve.deployment(
        _replica_class(max_batch_size, batch_wait_timeout_s),
        name="EmbeddingReplica",
        num_replicas=replicas,
        ray_actor_options={"num_cpus": num_cpus_per_replica},
        max_ongoing_requests=max(2 * max_batch_size, 8),
    )
    app = deployment.bind(None if model_dir is None else os.fspath(model_dir), threads)
    return serve.run(app, name=APP_NAME, route_prefix=None)


def shutdown_embedding_service() -> None:
    """Delete the ``voiceauth-embedder`` application (the cluster keeps running)."""
    from ray import serve

    serve.delete(APP_NAME)


class RayEmbedder:
    """An :class:`~voiceauth.embedding.Embedder` backed by the ``voiceauth-embedder`` Serve application.

    Each signal is its own request, so the service batches signals from all concurrent
    callers together. Thread-safe. ``allow_remote``: allow a cluster not reached over
    loopback (see :func:`check_address` and the module's trust boundary).
    """

    def __init__(self, address: str = "ray://local", *, timeout_s: float = 120.0, allow_remote: bool = False) -> None:
        self.address = address
        self._timeout_s = timeout_s
        connect(address, allow_remote=allow_remote)
        self._handle = self._find_handle(address, allow_remote)
        info = self._handle.info.remote().result(timeout_s=timeout_s)
        self.model_id: str = str(info["model_id"])
        self.dim: int = int(info["dim"])

    @staticmethod
    def _find_handle(address: str, allow_remote: bool) -> Any:
        from ray import serve
        from ray.serve.exceptions import RayServeException

        try:
            return serve.get_app_handle(APP_NAME)
        except (RayServeException, ValueError) as exc:
            if address == "ray://local":
                return deploy_embedding_service(address, allow_remote=allow_remote)
            raise ModelUnavailableError(
                f"the embedding service {APP_NAME!r} is not running on the Ray cluster at {address} ({exc}); "
                "start it with voiceauth.embedding.remote.deploy_embedding_service()"
            ) from exc

    def embed(self, signals: Sequence[np.ndarray]) -> np.ndarray:
        if not signals:
            return np.zeros((0, self.dim), dtype=np.float32)
        checked = []
        for signal in signals:
            array = np.ascontiguousarray(signal, dtype=np.float32)
            if array.ndim != 1 or not np.all(np.isfinite(array)):
                raise AudioError("embedder input must be finite 1-D float32 audio at 16 kHz")
            checked.append(array)
        pending = [self._handle.remote(s) for s in checked]
        rows = [np.asarray(p.result(timeout_s=self._timeout_s), dtype=np.float32) for p in pending]
        return l2_normalise(np.stack(rows))

    def __repr__(self) -> str:
        return f"RayEmbedder({self.address!r})"
