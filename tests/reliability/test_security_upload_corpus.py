"""Hostile files through the real upload page: bombs, polyglots, non-images and nasty names."""
import io
import struct
import zipfile
import zlib

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from PIL import Image

from classifier.models import Prediction, Upload

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def png_bomb(width: int = 100_000, height: int = 100_000) -> bytes:
    """A few hundred bytes declaring ten billion pixels: a decompression bomb read from its header."""
    row = b"\x00" + b"\x00" * (width // 8 + 1)
    idat = zlib.compress(row * 64, 9)
    ihdr = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    return PNG_SIGNATURE + png_chunk(b"IHDR", ihdr) + png_chunk(b"IDAT", idat) + png_chunk(b"IEND", b"")


def gif_bomb() -> bytes:
    """A GIF whose screen and single frame claim 65535x65535 pixels."""
    header = b"GIF89a" + struct.pack("<HHBBB", 65535, 65535, 0, 0, 0)
    descriptor = b"," + struct.pack("<HHHHB", 0, 0, 65535, 65535, 0)
    return header + descriptor + b"\x02\x02\x4c\x01\x00;"


def image_bytes(size=(64, 64), fmt="PNG", **options) -> bytes:
    image = Image.new("L", size, 255)
    image.paste(0, (size[0] // 3, size[1] // 4, size[0] // 3 + max(2, size[0] // 10), size[1] * 3 // 4))
    out = io.BytesIO()
    image.save(out, format=fmt, **options)
    return out.getvalue()


def zip_bytes() -> bytes:
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as archive:
        archive.writestr("digit.png", image_bytes())
    return out.getvalue()


HUGE = image_bytes((7000, 7000))  # a real image with more pixels than UPLOAD_MAX_PIXELS (40 million)

REJECTED = {
    "png decompression bomb": ("bomb.png", png_bomb()),
    "gif decompression bomb": ("bomb.gif", gif_bomb()),
    "huge dimensions": ("huge.png", HUGE),
    "truncated png": ("cut.png", image_bytes()[:60]),
    "truncated jpeg": ("cut.jpg", image_bytes(fmt="JPEG")[:200]),
    "zero-size file": ("empty.png", b""),
    "pdf": ("doc.pdf", b"%PDF-1.4\n1 0 obj<</Type/Catalog>>endobj\ntrailer<</Root 1 0 R>>\n%%EOF"),
    "html": ("page.html", b"<!doctype html><html><script>alert(document.cookie)</script></html>"),
    "html named png": ("page.png", b"<html><body onload=alert(1)></body></html>"),
    "zip": ("archive.zip", zip_bytes()),
    "svg": ("digit.svg", b'<svg xmlns="http://www.w3.org/2000/svg"><script>alert(1)</script><rect/></svg>'),
}

POLYGLOT_PAYLOAD = b"<html><script>alert('polyglot')</script></html>"
ACCEPTED = {
    "polyglot png+html": ("poly.png", image_bytes() + POLYGLOT_PAYLOAD, "poly.png"),
    "path traversal name": ("../../etc/passwd.png", image_bytes(), "passwd.png"),
    "windows path name": ("..\\..\\boot.ini.png", image_bytes(), "boot.ini.png"),
    "1000-character name": ("a" * 996 + ".png", image_bytes(), None),
    "non-ascii name": ("Ziffer-ß-数字-🙂.png", image_bytes(), "Ziffer-ß-数字-🙂.png"),
    "jpeg": ("scan.jpeg", image_bytes(fmt="JPEG", quality=95), "scan.jpeg"),
}


def stored_files(root):
    return sorted(p for p in root.rglob("*") if p.is_file())


@pytest.fixture
def logged_in(client, user):
    client.force_login(user)
    return client


@pytest.mark.parametrize("case", sorted(REJECTED))
def test_a_hostile_upload_is_rejected_and_leaves_nothing_stored(logged_in, settings, case):
    name, data = REJECTED[case]
    response = logged_in.post("/", {"files": [SimpleUploadedFile(name, data, content_type="image/png")]})
    assert response.status_code == 400, response.content[:300]
    assert b'class="errors' in response.content or b"error" in response.content
    assert Upload.objects.count() == 0 and Prediction.objects.count() == 0
    assert stored_files(settings.MEDIA_ROOT) == []


@pytest.mark.parametrize("case", sorted(ACCEPTED))
def test_an_accepted_upload_is_reencoded_under_a_generated_name_and_served_safely(
    logged_in, settings, isolated_storage, case, django_capture_on_commit_callbacks
):
    name, data, expected_name = ACCEPTED[case]
    # Publishing is not under test here; the broker is never reached.
    with django_capture_on_commit_callbacks(execute=False):
        response = logged_in.post("/", {"files": [SimpleUploadedFile(name, data, content_type="image/png")]})
    assert response.status_code == 302, response.content[:300]
    upload = Upload.objects.get()
    if expected_name is not None:
        assert upload.original_name == expected_name
    assert len(upload.original_name) <= 255 and "/" not in upload.original_name

    media = settings.MEDIA_ROOT.resolve()
    (stored,) = stored_files(settings.MEDIA_ROOT)
    assert stored.resolve().is_relative_to(media)
    assert stored.name != name and stored.name.endswith(".png") and len(stored.stem) == 32  # a uuid4 hex
    # Nothing escaped into the folders around MEDIA_ROOT.
    assert sorted(p.name for p in isolated_storage.iterdir()) == ["checkpoints", "media"]
    content = stored.read_bytes()
    # A clean PNG: nothing after IEND, whatever trailed the original (a PNG of pixels alone is stored as sent).
    assert content.startswith(PNG_SIGNATURE) and content.endswith(png_chunk(b"IEND", b""))
    assert content != data or data.startswith(PNG_SIGNATURE) and data.endswith(png_chunk(b"IEND", b""))
    assert b"<script>" not in content and b"<html>" not in content
    assert Image.open(io.BytesIO(content)).format == "PNG"

    served = logged_in.get(f"/uploads/{upload.pk}/image")
    assert served.status_code == 200
    assert served["Content-Type"] == "image/png"
    assert served["X-Content-Type-Options"] == "nosniff"
    assert b"".join(served.streaming_content) == content
