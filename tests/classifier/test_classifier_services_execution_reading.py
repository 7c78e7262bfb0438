"""The worker reads a stored upload's picture as Django's storage and Pillow would give it, errors included."""
import io
import zlib
from pathlib import Path

import pytest
from django.core.exceptions import SuspiciousFileOperation
from django.core.files.storage import FileSystemStorage, default_storage
from PIL import Image, PngImagePlugin

from classifier import services
from classifier.services.execution import _open_upload_image
from mnistsite.storage import MediaStorage
from tests.classifier.fixtures import png_bytes

pytestmark = pytest.mark.django_db


def _read_as_before(name: str) -> Image.Image:
    with default_storage.open(name, "rb") as stored:
        data = stored.read()
    image = Image.open(io.BytesIO(data), formats=["PNG"])
    image.load()
    return image


def _picture(image: Image.Image):
    return image.mode, image.size, image.info, image.tobytes()


def _stored(name: str, data: bytes) -> str:
    return default_storage.save(name, io.BytesIO(data))


def test_a_stored_upload_is_read_to_the_same_picture_without_djangos_file_wrapper(user, digit_png, monkeypatch):
    uploads = [services.upload_create(owner=user, file=io.BytesIO(digit_png(index)), source="file") for index in range(8)]
    expected = [_picture(_read_as_before(upload.image.name)) for upload in uploads]

    def not_used(*args, **kwargs):
        raise AssertionError("the media storage's files are read from their paths")

    monkeypatch.setattr(MediaStorage, "open", not_used)
    assert [_picture(_open_upload_image(upload.image.name)) for upload in uploads] == expected


def test_a_stored_png_with_more_than_pixels_is_read_by_pillow_as_before(mnist_image):
    image, _label = mnist_image(3)
    info = PngImagePlugin.PngInfo()
    info.add_text("Comment", "scanned")
    for data in (png_bytes(image, pnginfo=info), png_bytes(image.convert("P")), png_bytes(image) + b"tail"):
        name = _stored("uploads/odd.png", data)
        read = _open_upload_image(name)
        assert type(read) is PngImagePlugin.PngImageFile
        assert _picture(read) == _picture(_read_as_before(name))


def test_a_missing_or_damaged_stored_file_raises_as_it_did(digit_png):
    with pytest.raises(FileNotFoundError):
        _open_upload_image("uploads/gone.png")
    with pytest.raises(SuspiciousFileOperation):
        _open_upload_image("../outside.png")
    name = _stored("uploads/cut.png", digit_png(0)[:300])
    with pytest.raises(OSError) as before:
        _read_as_before(name)
    with pytest.raises(type(before.value), match="truncated"):
        _open_upload_image(name)


def test_another_storage_is_read_through_its_own_open(settings, tmp_path, digit_png, monkeypatch):
    settings.STORAGES = {**settings.STORAGES, "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"}}
    assert default_storage.__class__ is FileSystemStorage
    name = _stored("uploads/digit.png", png_bytes(Image.open(io.BytesIO(digit_png(2))), compress_type=zlib.Z_RLE))
    opened = []
    real_open = FileSystemStorage.open

    def recorded(self, name, mode="rb"):
        opened.append(name)
        return real_open(self, name, mode)

    monkeypatch.setattr(FileSystemStorage, "open", recorded)
    assert _picture(_open_upload_image(name)) == _picture(_read_as_before(name))
    assert opened == [name, name]
    assert Path(default_storage.path(name)).is_file()
