"""Crash-safe writes: the data lands whole under its name, a write told not to overwrite keeps what is there, and
what a killed write left is cleared."""
import errno
import os
import stat

import pytest

from training.ml.atomic import abandoned_temp_files_remove, atomic_write_bytes, sha256_file


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


def test_a_file_written_into_new_folders_is_flushed_with_each_new_folders_entry(tmp_path, monkeypatch):
    (tmp_path / "runs").mkdir()
    flushed = []
    real_fsync = os.fsync
    # Recorded, then flushed as usual: the flush itself is the kernel's.
    monkeypatch.setattr(os, "fsync", lambda fd: (flushed.append(os.readlink(f"/proc/self/fd/{fd}")), real_fsync(fd)))
    run = tmp_path / "runs" / "7-20261207T000000000000Z"
    atomic_write_bytes(run / "attempt-1" / "epoch-1.pt", b"weights")
    assert (run / "attempt-1" / "epoch-1.pt").read_bytes() == b"weights"
    # Each new folder's entry in its parent, then the file's content (under its temp name) and its own entry.
    assert flushed[:2] == [str(tmp_path / "runs"), str(run)]
    assert flushed[-1] == str(run / "attempt-1")
    assert len(flushed) == 4 and flushed[2].startswith(str(run / "attempt-1" / ".epoch-1.pt."))


def test_the_temp_file_of_a_write_killed_midway_is_removed_once_old_and_nothing_else_is(tmp_path, killed_write):
    folder = tmp_path / "attempt-1"
    atomic_write_bytes(folder / "epoch-1.pt", b"a real checkpoint")
    old = killed_write(folder / "epoch-2.pt", age_s=120)
    deeper = killed_write(folder / "nested" / "final.pt", age_s=120)
    fresh = killed_write(folder / "epoch-3.pt")
    # Names of other forms, however old: a file of the operator's, and a link named like a temp file.
    (folder / "notes.part").write_bytes(b"mine")
    (folder / ".epoch-1.pt.abcdefgh.part.bak").write_bytes(b"mine too")
    (folder / ".epoch-1.pt.abcdefgh.part").symlink_to(folder / "epoch-1.pt")
    for name in ("epoch-1.pt", "notes.part", ".epoch-1.pt.abcdefgh.part.bak"):
        os.utime(folder / name, (0, 0), follow_symlinks=False)
    os.utime(folder / ".epoch-1.pt.abcdefgh.part", (0, 0), follow_symlinks=False)

    assert sorted(abandoned_temp_files_remove(tmp_path, older_than_s=60)) == sorted([old, deeper])
    assert not old.exists() and not deeper.exists()
    assert fresh.exists() and (folder / "epoch-1.pt").read_bytes() == b"a real checkpoint"
    assert (folder / "notes.part").exists() and (folder / ".epoch-1.pt.abcdefgh.part.bak").exists()
    assert (folder / ".epoch-1.pt.abcdefgh.part").is_symlink()
    assert abandoned_temp_files_remove(tmp_path / "no-such-folder", older_than_s=60) == []


def _folder_fsync_failing(monkeypatch, code: int) -> None:
    real_fsync = os.fsync

    def fsync(fd):
        if stat.S_ISDIR(os.fstat(fd).st_mode):
            raise OSError(code, os.strerror(code))
        return real_fsync(fd)

    monkeypatch.setattr(os, "fsync", fsync)


def test_a_write_whose_folder_cannot_be_flushed_for_a_disk_error_says_so(tmp_path, monkeypatch):
    _folder_fsync_failing(monkeypatch, errno.EIO)
    with pytest.raises(OSError) as failed:
        atomic_write_bytes(tmp_path / "final.pt", b"weights")
    # Its entry may never reach the disk: a checkpoint registered on it could be gone after a power cut.
    assert failed.value.errno == errno.EIO


def test_a_write_on_a_file_system_that_cannot_flush_folders_goes_through(tmp_path, monkeypatch):
    _folder_fsync_failing(monkeypatch, errno.EINVAL)
    atomic_write_bytes(tmp_path / "final.pt", b"weights")
    assert (tmp_path / "final.pt").read_bytes() == b"weights"
