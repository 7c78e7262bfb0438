"""Media storage writes new uploads quickly and otherwise behaves exactly like Django's file system storage."""
import errno
import os
import stat
import sys

import pytest
from django.core.exceptions import SuspiciousFileOperation
from django.core.files.base import ContentFile
from django.core.files.storage import FileSystemStorage
from django.core.files.utils import validate_file_name

from mnistsite import storage as storage_module
from mnistsite.storage import MediaStorage


@pytest.fixture
def storage(tmp_path):
    return MediaStorage(location=tmp_path, file_permissions_mode=0o640)


def test_new_bytes_are_written_under_the_asked_name_with_the_configured_mode(storage, tmp_path):
    (tmp_path / "uploads").mkdir()
    name = storage.save("uploads/a.png", ContentFile(b"\x89PNG data"))
    assert name == "uploads/a.png"
    assert (tmp_path / "uploads" / "a.png").read_bytes() == b"\x89PNG data"
    assert stat.S_IMODE(os.stat(tmp_path / "uploads" / "a.png").st_mode) == 0o640


def test_a_missing_folder_is_created(storage, tmp_path):
    name = storage.save("uploads/2026/11/26/b.png", ContentFile(b"png"))
    assert (tmp_path / name).read_bytes() == b"png"


def _flushes_recorded(monkeypatch) -> list[str]:
    """The paths handed to fsync, in order (the flush itself is the kernel's, and still happens)."""
    flushed = []
    real_fsync = os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: (flushed.append(os.readlink(f"/proc/self/fd/{fd}")), real_fsync(fd)))
    return flushed


def test_a_file_in_new_folders_is_flushed_with_each_new_folders_entry(storage, tmp_path, monkeypatch, settings):
    settings.UPLOAD_FSYNC = True
    (tmp_path / "uploads").mkdir()
    flushed = _flushes_recorded(monkeypatch)
    storage.save("uploads/2026/11/26/d.png", ContentFile(b"png"))
    uploads = tmp_path / "uploads"
    assert sorted(flushed) == sorted(map(str, [
        uploads, uploads / "2026", uploads / "2026" / "11",  # each new folder's entry, in its parent
        uploads / "2026" / "11" / "26" / "d.png",  # the file's content
        uploads / "2026" / "11" / "26",  # the file's entry
    ]))


def test_a_batch_is_written_then_each_file_flushed_then_its_folder_once(storage, tmp_path, monkeypatch, settings):
    settings.UPLOAD_FSYNC = True
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    flushed = _flushes_recorded(monkeypatch)
    files = [("a/1.png", b"one"), ("b/2.png", b"two"), ("a/3.png", b"three")]

    assert storage.save_many(files) == ["a/1.png", "b/2.png", "a/3.png"]

    assert [(tmp_path / name).read_bytes() for name, _ in files] == [b"one", b"two", b"three"]
    assert all(stat.S_IMODE(os.stat(tmp_path / name).st_mode) == 0o640 for name, _ in files)
    # Every file before any folder: a folder's entry flushed before its file's content could name an empty file.
    assert flushed[:3] == [str(tmp_path / name) for name, _ in files]
    assert sorted(flushed[3:]) == [str(tmp_path / "a"), str(tmp_path / "b")]


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="sync_file_range is Linux's")
def test_every_file_of_a_batch_is_sent_to_the_disk_before_the_first_is_waited_for(
    storage, tmp_path, monkeypatch, settings
):
    # One pass of writeback and one journal commit for the batch, instead of one of each per file.
    settings.UPLOAD_FSYNC = True
    events = []
    real_start = storage_module._writeback_start
    monkeypatch.setattr(storage_module, "_writeback_start", lambda fd: (events.append("start"), real_start(fd)))
    real_fsync = os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: (events.append("flush"), real_fsync(fd)))

    storage.save_many([(f"{i}.png", b"png") for i in range(3)])

    assert events == ["start"] * 3 + ["flush"] * 4  # three files, then their folder


def test_a_batch_that_cannot_be_written_whole_leaves_no_file(storage, tmp_path):
    files = [("1.png", b"one"), ("2.png", b"two"), ("../escape.png", b"out")]
    with pytest.raises(SuspiciousFileOperation):
        storage.save_many(files)
    assert list(tmp_path.iterdir()) == []
    assert not (tmp_path.parent / "escape.png").exists()


@pytest.mark.parametrize("failing", [1, 2, 3], ids=["first file", "second file", "folder"])
def test_a_batch_whose_flush_fails_leaves_no_file(storage, tmp_path, monkeypatch, settings, failing):
    settings.UPLOAD_FSYNC = True
    real_fsync, calls = os.fsync, []

    def disk_lost_at_one_flush(fd):
        calls.append(fd)
        if len(calls) == failing:
            raise OSError(errno.EIO, "Input/output error")
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", disk_lost_at_one_flush)
    with pytest.raises(OSError):
        storage.save_many([("1.png", b"one"), ("2.png", b"two")])
    assert len(calls) == failing and list(tmp_path.iterdir()) == []


def test_nothing_is_flushed_with_upload_fsync_off(storage, tmp_path, monkeypatch, settings):
    settings.UPLOAD_FSYNC = False
    flushed = []
    monkeypatch.setattr(os, "fsync", flushed.append)
    storage.save_many([("uploads/2026/11/27/e.png", b"png"), ("uploads/2026/11/27/f.png", b"png")])
    assert flushed == [] and (tmp_path / "uploads/2026/11/27/e.png").read_bytes() == b"png"


def test_a_taken_name_in_a_batch_gets_a_free_one(storage, tmp_path):
    (tmp_path / "c.png").write_bytes(b"first")
    first, second = storage.save_many([("c.png", b"second"), ("d.png", b"third")])
    assert first != "c.png" and second == "d.png"
    assert (tmp_path / "c.png").read_bytes() == b"first" and (tmp_path / first).read_bytes() == b"second"


def test_a_taken_name_is_never_overwritten(storage, tmp_path):
    first = storage.save("c.png", ContentFile(b"first"))
    second = storage.save("c.png", ContentFile(b"second"))
    assert first == "c.png" and second != first
    assert (tmp_path / first).read_bytes() == b"first"
    assert (tmp_path / second).read_bytes() == b"second"


@pytest.mark.parametrize("name", ["../escape.png", "/etc/escape.png", "a/../../escape.png"])
def test_a_name_escaping_the_storage_root_is_refused(storage, tmp_path, name):
    with pytest.raises(SuspiciousFileOperation):
        storage.save(name, ContentFile(b"x"))
    assert not (tmp_path.parent / "escape.png").exists()


def test_text_content_takes_the_generic_path(storage, tmp_path):
    name = storage.save("d.txt", ContentFile("text"))
    assert (tmp_path / name).read_text() == "text"


def test_free_space_is_read_from_the_nearest_existing_folder(tmp_path):
    stats = os.statvfs(tmp_path)
    free = MediaStorage(location=tmp_path / "not" / "made" / "yet").free_bytes()

    # Other writers share the disk: the two readings are close, not equal.
    assert abs(free - stats.f_bavail * stats.f_frsize) < 256 * 2**20


_NAMES = [
    "a.png", "uploads/2026/12/06/0f3c.png", "a.b.c", "_x/-y/z.png", "a/.hidden", ".hidden", "a/..", "a/../b",
    "../a", "/a", "a//b", "a/./b", "./a", "a/", "", ".", "..", "a\\b", "a/b\\..\\..\\c", "é.png", "a b.png",
    "a/b/", "uploads/2026/../../../etc/passwd", "-", "_", "a..b", "a/...", "a/b.", "C:/a", "a\nb", "a\0b",
]


@pytest.mark.parametrize("root", ["media", "media/", "media/./x/.."])
def test_every_name_gets_the_path_or_the_refusal_djangos_storage_gives(tmp_path, root):
    location = os.path.join(str(tmp_path), root)
    ours, django = MediaStorage(location=location), FileSystemStorage(location=location)
    for name in _NAMES:
        try:
            expected = django.path(name)
        except (SuspiciousFileOperation, ValueError) as exc:
            with pytest.raises(type(exc)):
                ours.path(name)
        else:
            assert ours.path(name) == expected, name


@pytest.mark.parametrize("name", [name for name in _NAMES if name])
def test_a_batch_refuses_or_stores_every_name_as_djangos_checks_say(storage, tmp_path, name):
    try:
        validate_file_name(name, allow_relative_path=True)
        FileSystemStorage(location=tmp_path).path(name)
    except (SuspiciousFileOperation, ValueError) as exc:
        with pytest.raises(type(exc)):
            storage.save_many([(name, b"x")])
    else:
        try:
            (stored,) = storage.save_many([(name, b"x")])
        except (OSError, ValueError):
            return  # a name the file system itself refuses (a folder's name, a NUL): Django's would be refused too
        assert (tmp_path / stored).read_bytes() == b"x"


def test_every_file_of_a_batch_is_closed_when_one_close_fails(storage, monkeypatch):
    real_close, closed = os.close, []

    def close(fd):
        closed.append(fd)
        real_close(fd)
        if len(closed) == 1:
            raise OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr(os, "close", close)
    with pytest.raises(OSError, match="Input/output"):
        storage.save_many([("1.png", b"one"), ("2.png", b"two"), ("3.png", b"three")])
    assert len(closed) == 3
