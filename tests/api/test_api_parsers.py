"""The upload endpoint's multipart parser: the same data, files and errors as DRF's, on bodies clients really send."""
from __future__ import annotations

import hashlib
import io

import pytest
from django.core.files.uploadhandler import TemporaryFileUploadHandler
from django.test import RequestFactory
from django.test.client import encode_multipart
from PIL import Image
from rest_framework import parsers as drf_parsers
from rest_framework.request import Request

from api import parsers
from api.predictions import PredictionListCreateApi
from classifier.models import Upload
from tests.api.conftest import seven_png

PNG = seven_png(size=28)
BIG = bytes(range(256)) * 700  # larger than Django's 64 KiB read, with CR, LF and dashes at many offsets


def _parts(boundary: str, parts: list[tuple[list[str], bytes]], *, end: bytes = b"--\r\n") -> bytes:
    """A body of parts, each its header lines and its content, closed by ``end`` after the last boundary."""
    out = b""
    for headers, content in parts:
        out += f"--{boundary}\r\n".encode() + "".join(f"{h}\r\n" for h in headers).encode("utf-8") + b"\r\n"
        out += content + b"\r\n"
    return out + f"--{boundary}".encode() + end


def _file(name: str, filename: str, content: bytes = PNG, content_type: str | None = "image/png"):
    headers = [f'Content-Disposition: form-data; name="{name}"; filename="{filename}"']
    return headers + ([f"Content-Type: {content_type}"] if content_type else []), content


def _field(name: str, value: bytes):
    return [f'Content-Disposition: form-data; name="{name}"'], value


def _encoded(data: dict) -> tuple[bytes, str]:
    from django.test.client import BOUNDARY, MULTIPART_CONTENT

    return encode_multipart(BOUNDARY, data), MULTIPART_CONTENT


def _upload(name: str, content: bytes = PNG) -> io.BytesIO:
    file = io.BytesIO(content)
    file.name = name
    return file


WEBKIT = "----WebKitFormBoundary7MA4YWxkTrZu0gW"
CURL = "------------------------d74496d66958873e"
REQUESTS = "3e1d2f6b0c5a4b8f9e7d6c5b4a392817"
CT = "multipart/form-data; boundary="

# name: (body, content type, read by the fast path)
SIMPLE = {
    "django test client, one file": (*_encoded({"image": _upload("digit.png")}), True),
    "django test client, files and fields": (
        *_encoded({"images": [_upload("a.png"), _upload("b.png", b"")], "note": "héllo", "wait": "3"}), True),
    "django test client, a text field named image": (*_encoded({"image": "not a file"}), True),
    "browser, several files": (_parts(WEBKIT, [_file("images", f"d{i}.png") for i in range(5)]), CT + WEBKIT, True),
    "browser, empty file input": (
        _parts(WEBKIT, [_file("images", "", b"", "application/octet-stream")]), CT + WEBKIT, True),
    "browser, empty file": (_parts(WEBKIT, [_file("image", "empty.png", b"")]), CT + WEBKIT, True),
    "browser, quoted name with spaces": (
        _parts(WEBKIT, [_file("my images", "a digit.png"), _field(" padded ", b"x")]), CT + WEBKIT, True),
    "browser, name with separators": (
        _parts(WEBKIT, [_file("a;b=c", "x;y=z's <p>.png"), _field("<k>", b"v")]), CT + WEBKIT, True),
    "browser, file name with a path": (_parts(WEBKIT, [_file("image", "dir/sub/a.png")]), CT + WEBKIT, True),
    "browser, file name with entities": (_parts(WEBKIT, [_file("image", "a&amp;b&#47;c.png")]), CT + WEBKIT, True),
    "browser, file name of spaces": (_parts(WEBKIT, [_file("image", "  ")]), CT + WEBKIT, True),
    "browser, no content type": (_parts(WEBKIT, [_file("image", "a.png", content_type=None)]), CT + WEBKIT, True),
    "browser, upper-case content type": (
        _parts(WEBKIT, [_file("image", "a.png", content_type="Image/PNG")]), CT + WEBKIT, True),
    "curl, file and field": (
        _parts(CURL, [_file("image", "seven.png"), _field("wait", b"5")]), CT + CURL, True),
    "curl, content ending in CR and LF": (
        _parts(CURL, [_file("image", "a.png", PNG + b"\r"), _file("image", "b.png", b"\n\r\n")]), CT + CURL, True),
    "requests, many files": (
        _parts(REQUESTS, [_file("images", f"{i}.png", PNG, "application/octet-stream") for i in range(32)]),
        CT + REQUESTS, True),
    "requests, no trailing CRLF": (_parts(REQUESTS, [_file("image", "a.png")], end=b"--"), CT + REQUESTS, True),
    "a file larger than a read": (_parts(CURL, [_file("image", "big.bin", BIG), _field("f", BIG[:70000])]),
                                  CT + CURL, True),
    "lower-case headers without spaces": (
        _parts(CURL, [(['content-disposition:form-data;name="image";filename="a.png"', "content-type:image/png"],
                       PNG)]), CT + CURL, True),
    "a text field with binary bytes": (_parts(CURL, [_field("note", b"\xff\xfe\x00abc")]), CT + CURL, True),
    "a quoted boundary": (_parts("a b:c", [_file("image", "a.png")]), CT + '"a b:c"', True),
    "latin-1 request": (
        _parts(CURL, [_field("note", "é".encode("latin-1")), _file("image", "a.png")]),
        CT + CURL + "; charset=latin-1", True),
    "utf-16 request": (_parts(CURL, [_field("note", "x".encode("utf-16")), _file("image", "a.png")]),
                       CT + CURL + "; charset=utf-16", True),
    # Read by Django's parser.
    "unicode file name, raw": (_parts(WEBKIT, [_file("image", "çiffre 7.png")]), CT + WEBKIT, False),
    "unicode file name, RFC 2231": (
        _parts(CURL, [(["Content-Disposition: form-data; name=\"image\"; filename*=utf-8''%C3%A7.png",
                        "Content-Type: image/png"], PNG)]), CT + CURL, False),
    "unicode field name": (_parts(WEBKIT, [_field("nøte", b"v")]), CT + WEBKIT, False),
    "escaped quote in a name": (
        _parts(WEBKIT, [(['Content-Disposition: form-data; name="image"; filename="a\\"b.png"'], PNG)]),
        CT + WEBKIT, False),
    "windows path in a name": (_parts(WEBKIT, [_file("image", "C:\\Users\\me\\a.png")]), CT + WEBKIT, False),
    "file name that sanitises away": (_parts(WEBKIT, [_file("image", ".."), _file("image", "b.png")]),
                                      CT + WEBKIT, False),
    "base64 transfer encoding": (
        _parts(CURL, [(['Content-Disposition: form-data; name="image"; filename="a.png"',
                        "Content-Transfer-Encoding: base64"], b"iVBORw0KGgo=")]), CT + CURL, False),
    "base64 text field": (
        _parts(CURL, [(['Content-Disposition: form-data; name="note"', "Content-Transfer-Encoding: base64"],
                       b"aGVsbG8=")]), CT + CURL, False),
    "folded header": (
        _parts(CURL, [(['Content-Disposition: form-data;', ' name="image"; filename="a.png"'], PNG)]),
        CT + CURL, False),
    "content type with a charset": (
        _parts(CURL, [_file("image", "a.txt", b"hi", "text/plain; charset=utf-8")]), CT + CURL, False),
    "part content length": (
        _parts(CURL, [(['Content-Disposition: form-data; name="image"; filename="a.png"', "Content-Length: 3"],
                       PNG)]), CT + CURL, False),
    "attachment, not form-data": (
        _parts(CURL, [(['Content-Disposition: attachment; name="image"; filename="a.png"'], PNG)]), CT + CURL, False),
    "filename before name": (
        _parts(CURL, [(['Content-Disposition: form-data; filename="a.png"; name="image"'], PNG)]), CT + CURL, False),
    "no name": (_parts(CURL, [(['Content-Disposition: form-data; filename="a.png"'], PNG)]), CT + CURL, False),
    "no disposition": (_parts(CURL, [(["Content-Type: image/png"], PNG)]), CT + CURL, False),
    "two dispositions": (
        _parts(CURL, [(['Content-Disposition: form-data; name="a"', 'Content-Disposition: form-data; name="b"'],
                       b"v")]), CT + CURL, False),
    "missing closing boundary": (_parts(CURL, [_file("image", "a.png")])[: -len(CURL) - 6], CT + CURL, False),
    "truncated body": (_parts(CURL, [_file("image", "a.png")])[:150], CT + CURL, False),
    "preamble": (b"hello\r\n" + _parts(CURL, [_file("image", "a.png")]), CT + CURL, False),
    "epilogue": (_parts(CURL, [_file("image", "a.png")]) + b"bye\r\n\r\n", CT + CURL, False),
    "LF line ends": (_parts(CURL, [_file("image", "a.png")]).replace(b"\r\n", b"\n"), CT + CURL, False),
    "boundary inside content": (
        _parts(CURL, [_file("image", "a.png", b"x--" + CURL.encode() + b"y")]), CT + CURL, False),
    "padding after a boundary": (_parts(CURL, [_file("image", "a.png")]).replace(
        CURL.encode() + b"\r\n", CURL.encode() + b"  \r\n", 1), CT + CURL, False),
    "headers over 1024 bytes": (_parts(CURL, [_file("image", "a" * 1100 + ".png")]), CT + CURL, False),
    "an empty part": (f"--{CURL}\r\n\r\n--{CURL}--\r\n".encode(), CT + CURL, False),
    "too many files": (_parts(CURL, [_file("images", f"{i}.png") for i in range(33)]), CT + CURL, False),
    "too many fields": (_parts(CURL, [_field(f"f{i}", b"v") for i in range(1001)]), CT + CURL, False),
    "as many fields as allowed": (_parts(CURL, [_field(f"f{i}", b"v") for i in range(1000)]), CT + CURL, True),
    "fields too large": (_parts(CURL, [_field("f", b"v" * 2_621_440)]), CT + CURL, None),
    "invalid boundary": (_parts(CURL, [_file("image", "a.png")]), CT + CURL + "\x7f", None),
    "no boundary": (_parts(CURL, [_file("image", "a.png")]), "multipart/form-data", None),
    "unknown charset": (_parts(CURL, [_file("image", "a.png")]), CT + CURL + "; charset=nope", None),
    "bytes-to-bytes charset": (_parts(CURL, [_file("image", "a.png")]), CT + CURL + "; charset=bz2_codec", None),
    "empty body": (b"", CT + CURL, None),
    "larger than memory uploads": (_parts(CURL, [_file("image", "big.bin", BIG * 16)]), CT + CURL, None),
}


def _request(body: bytes, content_type: str, parser, *, meta: dict | None = None) -> Request:
    django_request = RequestFactory().generic("POST", "/api/v1/predictions/", data=body, content_type=content_type,
                                              **(meta or {}))
    return Request(django_request, parsers=[parser])


def _outcome(request: Request):
    """What the request's body became: its data and files in full, or the error raised."""
    try:
        data, files, full = request.POST, request.FILES, request.data
    except Exception as exc:  # noqa: BLE001 - every error must be the same one
        return ("error", type(exc), str(exc))
    data_seen = (type(data), getattr(data, "encoding", None), getattr(data, "_mutable", None), list(data.lists()),
                 list(full))
    files_seen = [
        (key, [(type(f), getattr(f, "field_name", None), f.name, f.content_type, f.charset, f.content_type_extra,
                f.size, f.tell(), f.read()) for f in found])
        for key, found in files.lists()
    ]
    return data_seen, files_seen


def _both(body: bytes, content_type: str, **kwargs):
    return (_outcome(_request(body, content_type, parsers.MultiPartParser(), **kwargs)),
            _outcome(_request(body, content_type, drf_parsers.MultiPartParser(), **kwargs)))


@pytest.mark.parametrize("case", SIMPLE)
def test_every_body_reads_as_drfs_multipart_parser_reads_it(case):
    body, content_type, fast = SIMPLE[case]

    ours, drfs = _both(body, content_type)

    assert ours == drfs


@pytest.mark.parametrize("case", [name for name, (_, _, fast) in SIMPLE.items() if fast is not None])
def test_only_simple_bodies_are_read_by_the_fast_path(case):
    body, content_type, fast = SIMPLE[case]
    request = _request(body, content_type, parsers.MultiPartParser())
    boundary = parsers.MultiPartParser._boundary(request.content_type)

    if fast:
        parsers._parsed(body, boundary=boundary, encoding=request._request.encoding or "utf-8")
    else:
        with pytest.raises(Exception):  # noqa: B017 - any, and the body goes to Django's parser
            parsers._parsed(body, boundary=boundary, encoding=request._request.encoding or "utf-8")


def test_a_simple_body_gives_each_file_in_memory_with_its_name_and_bytes():
    body, content_type, _ = SIMPLE["browser, several files"]

    files = _request(body, content_type, parsers.MultiPartParser()).FILES

    assert [f.name for f in files.getlist("images")] == [f"d{i}.png" for i in range(5)]
    assert all(type(f).__name__ == "InMemoryUploadedFile" and f.read() == PNG for f in files.getlist("images"))


def test_limits_set_lower_are_met_with_djangos_own_errors(settings):
    settings.DATA_UPLOAD_MAX_NUMBER_FILES = 2
    settings.DATA_UPLOAD_MAX_NUMBER_FIELDS = 2
    settings.DATA_UPLOAD_MAX_MEMORY_SIZE = 10

    for body in (_parts(CURL, [_file("images", f"{i}.png") for i in range(3)]),
                 _parts(CURL, [_field(f"f{i}", b"v") for i in range(3)]),
                 _parts(CURL, [_field("f", b"0123456")]),
                 _parts(CURL, [_field("f", b"012345")])):
        ours, drfs = _both(body, CT + CURL)
        assert ours == drfs


def test_a_body_over_the_memory_limit_is_spooled_to_disk_as_drfs_parser_does(settings):
    settings.FILE_UPLOAD_MAX_MEMORY_SIZE = 1000
    body = _parts(CURL, [_file("image", "a.png", PNG * 10)])

    ours, drfs = _both(body, CT + CURL)

    assert ours == drfs
    assert ours[1][0][1][0][0].__name__ == "TemporaryUploadedFile"


def test_other_upload_handlers_are_left_to_drfs_parser():
    body, content_type, _ = SIMPLE["browser, several files"]
    outcomes = []
    for parser in (parsers.MultiPartParser(), drf_parsers.MultiPartParser()):
        request = _request(body, content_type, parser)
        request._request.upload_handlers = [TemporaryFileUploadHandler(request._request)]
        outcomes.append(_outcome(request))

    assert outcomes[0] == outcomes[1]
    assert outcomes[0][1][0][1][0][0].__name__ == "TemporaryUploadedFile"


@pytest.mark.parametrize("length", ["", "abc", "-5", "0"])
def test_a_missing_or_odd_content_length_is_left_to_drfs_parser(length):
    body, content_type, _ = SIMPLE["curl, file and field"]
    outcomes = []
    for parser in (parsers.MultiPartParser(), drf_parsers.MultiPartParser()):
        request = _request(body, content_type, parser)
        request._request.META["CONTENT_LENGTH"] = length
        request._request.META["HTTP_CONTENT_LENGTH"] = str(len(body))
        outcomes.append(_outcome(request))

    assert outcomes[0] == outcomes[1]


def test_a_body_already_read_is_parsed_from_its_bytes_alike():
    body, content_type, _ = SIMPLE["curl, file and field"]
    outcomes = []
    for parser in (parsers.MultiPartParser(), drf_parsers.MultiPartParser()):
        request = _request(body, content_type, parser)
        assert request._request.body == body
        outcomes.append(_outcome(request))

    assert outcomes[0] == outcomes[1]
    assert outcomes[0][0][3] == [("wait", ["5"])]


def test_the_upload_view_reads_its_body_with_the_fast_multipart_parser():
    assert PredictionListCreateApi.parser_classes == [parsers.MultiPartParser]


@pytest.mark.django_db
def test_an_upload_of_32_mnist_digits_is_accepted_and_stored_as_sent(user_client, mnist_test_split):
    pngs = []
    for pixels in mnist_test_split.images[:32].numpy():
        out = io.BytesIO()
        Image.fromarray(pixels).save(out, format="PNG")
        pngs.append(out.getvalue())
    body = _parts(REQUESTS, [_file("images", f"digit-{i}.png", png) for i, png in enumerate(pngs)])

    response = user_client.generic("POST", "/api/v1/predictions/", body, content_type=CT + REQUESTS)

    assert response.status_code == 202, response.json()
    items = response.json()["predictions"]
    assert [item["original_name"] for item in items] == [f"digit-{i}.png" for i in range(32)]
    uploads = Upload.objects.in_bulk([item["upload"] for item in items])
    assert [uploads[item["upload"]].sha256 for item in items] == [hashlib.sha256(png).hexdigest() for png in pngs]


def _random_body(rng) -> tuple[bytes, str]:
    """A body of random plain parts, then perhaps one byte changed, dropped or doubled."""
    plain = " !#$%&'()*+,-./:;<=>?@[]^_`{|}~aZ09"
    boundary = rng.choice([CURL, WEBKIT, REQUESTS, "x", "-", "a b"])
    parts = []
    for _ in range(rng.randint(1, 5)):
        alphabet = plain if rng.random() < 0.8 else plain + '"\\é\t'
        name = "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 6)))
        filename = "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 6)))
        sep = rng.choice(["; ", "; ", ";", " ; "])
        disposition = rng.choice(["Content-Disposition: form-data", "content-disposition:form-data"])
        disposition += f'{sep}name="{name}"' + (f'{sep}filename="{filename}"' if rng.random() < 0.6 else "")
        headers = [disposition] + ([rng.choice(["Content-Type: image/png", "content-type:TEXT/plain",
                                                "Content-Type: a/b;c=d"])] if rng.random() < 0.5 else [])
        content = bytes(rng.choice(b"ab\r\n-x") for _ in range(rng.randint(0, 12)))
        parts.append((headers, content))
    body = _parts(boundary, parts, end=rng.choice([b"--\r\n", b"--"]))
    if rng.random() < 0.3:
        at = rng.randrange(len(body))
        body = rng.choice([body[:at] + body[at + 1:], body[:at] + body[at:at + 1] * 2 + body[at + 1:],
                           body[:at] + bytes([rng.randrange(256)]) + body[at + 1:]])
    return body, CT + (f'"{boundary}"' if " " in boundary else boundary)


def test_random_bodies_read_as_drfs_multipart_parser_reads_them():
    import random

    rng = random.Random(7)
    fast = 0
    for _ in range(2000):
        body, content_type = _random_body(rng)
        ours, drfs = _both(body, content_type)
        assert ours == drfs, (body, content_type)
        try:
            parsers._parsed(body, boundary=parsers.MultiPartParser._boundary(content_type), encoding="utf-8")
            fast += 1
        except Exception:  # noqa: BLE001 - left to Django's parser
            pass
    # Enough of them simple for the fast path to have been compared.
    assert fast > 250
