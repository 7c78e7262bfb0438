"""Crash-safe writes: the data lands whole under its name, and a write told not to overwrite keeps what is there."""
import pytest

from training.ml.atomic import atomic_write_bytes, sha256_file


def test_a_write_that_may_not_overwrite_keeps_the_file_already_there_and_says_so(tmp_path):
    target = tmp_path / "model.pt"
    target.write_bytes(b"someone else's")
    with pytest.raises(FileExistsError):
        atomic_write_bytes(target, b"ours", overwrite=False)
    assert target.read_bytes() == b"someone else's"
    assert [p.name for p in tmp_path.iterdir()] == ["model.pt"]


def test_a_write_that_may_not_overwrite_creates_a_new_file_whole(tmp_path):
    target = tmp_path / "runs" / "model.pt"
    digest = atomic_write_bytes(target, b"ours", overwrite=False)
    assert target.read_bytes() == b"ours" and sha256_file(target) == digest
    assert [p.name for p in target.parent.iterdir()] == ["model.pt"]
    assert target.stat().st_nlink == 1  # the temporary name is gone, not left as a second link
