"""Media storage writes new uploads quickly and otherwise behaves exactly like Django's file system storage."""
import os
import stat

import pytest
from django.core.exceptions import SuspiciousFileOperation
from django.core.files.base import ContentFile

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


def test_a_file_in_new_folders_is_flushed_with_each_new_folders_entry(storage, tmp_path, monkeypatch, settings):
    # What is flushed, read from the descriptors handed to fsync (the flush itself is the kernel's).
    settings.UPLOAD_FSYNC = True
    (tmp_path / "uploads").mkdir()
    flushed = []
    real_fsync = os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: (flushed.append(os.readlink(f"/proc/self/fd/{fd}")), real_fsync(fd)))
    name = storage.save("uploads/2026/11/26/d.png", ContentFile(b"png"))
    storage.folders_sync([name])
    uploads = tmp_path / "uploads"
    assert sorted(flushed) == sorted(map(str, [
        uploads, uploads / "2026", uploads / "2026" / "11",  # each new folder's entry, in its parent
        uploads / "2026" / "11" / "26" / "d.png",  # the file's content
        uploads / "2026" / "11" / "26",  # the file's entry
    ]))


def test_nothing_is_flushed_with_upload_fsync_off(storage, tmp_path, monkeypatch, settings):
    settings.UPLOAD_FSYNC = False
    flushed = []
    monkeypatch.setattr(os, "fsync", flushed.append)
    storage.folders_sync([storage.save("uploads/2026/11/27/e.png", ContentFile(b"png"))])
    assert flushed == [] and (tmp_path / "uploads/2026/11/27/e.png").read_bytes() == b"png"


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
