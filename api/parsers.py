"""The API's parsers: JSON whose deep nesting is a 400, and multipart reading simple uploads without Django's loop."""
from __future__ import annotations

import io
import re

from django.conf import settings
from django.core.files.uploadedfile import InMemoryUploadedFile
from django.core.files.uploadhandler import MemoryFileUploadHandler, TemporaryFileUploadHandler
from django.http import QueryDict
from django.http.multipartparser import MultiPartParser as DjangoMultiPartParser
from django.utils.datastructures import MultiValueDict
from django.utils.http import parse_header_parameters
from rest_framework import exceptions, parsers

# Django reads a part's headers from its first 1024 bytes (multipartparser.MAX_TOTAL_HEADER_SIZE) and refuses more.
_HEADERS_MAX = 1024
# The only header lines read here: what browsers, curl, python-requests and Django's test client send. Quoted values
# hold printable ASCII without quotes or backslashes, so the email module's unquoting, which Django uses, leaves
# them as they are; a parameter with `*` (RFC 2231), any other header, parameters on the part's Content-Type, or
# other spacing goes to Django's parser.
_DISPOSITION = re.compile(
    rb'content-disposition: ?form-data; ?name="([ !#-\[\]-~]*)"(?:; ?filename="([ !#-\[\]-~]*)")?', re.IGNORECASE
)
_CONTENT_TYPE = re.compile(rb"content-type: ?([A-Za-z0-9!#$&^_.+-]+/[A-Za-z0-9!#$&^_.+-]+)", re.IGNORECASE)
_DEFAULT_HANDLERS = (MemoryFileUploadHandler, TemporaryFileUploadHandler)


class JSONParser(parsers.JSONParser):
    """DRF's JSON parser, which catches only ValueError: the decoder's RecursionError on deep nesting became a 500."""

    def parse(self, stream, media_type=None, parser_context=None):
        try:
            return super().parse(stream, media_type=media_type, parser_context=parser_context)
        except RecursionError:
            raise exceptions.ParseError("JSON parse error - the document is nested too deeply.") from None


class _NotSimple(Exception):
    """The body is not one the fast path reads exactly as Django would: Django's parser reads it."""


class MultiPartParser(parsers.MultiPartParser):
    """DRF's multipart parser, with the same data and files read faster from a simple body held in memory.

    Django's parser feeds each part through lazy streams and upload handlers, about 50 us of CPU a file. A body
    small enough for Django's MemoryFileUploadHandler, with only the default handlers, is read here at once and
    split on its boundary when every part is plain (see _DISPOSITION and _CONTENT_TYPE) and no limit of Django's is
    reached; the result is built as Django builds it. Anything else, errors included, is Django's parser's work,
    on the same bytes.
    """

    def parse(self, stream, media_type=None, parser_context=None):
        try:
            request = parser_context["request"]
            encoding = parsers.get_encoding(parser_context)
            boundary = self._boundary(media_type)
            handlers = request.upload_handlers
            simple = tuple(type(handler) for handler in handlers) == _DEFAULT_HANDLERS and boundary is not None
            if simple:
                content_length = int(request.META.get("CONTENT_LENGTH", 0))
                simple = content_length > 0
            if simple:
                # The handler's own choice (it may look at the stream's real size): held in memory, or on disk.
                handlers[0].handle_raw_input(stream, request.META, content_length, boundary, encoding)
                simple = handlers[0].activated
        except Exception:
            # Whatever it is, DRF's parser meets it too, before reading anything, and answers it its own way.
            simple = False
        if not simple:
            return super().parse(stream, media_type, parser_context)
        body = stream.read()
        try:
            return _parsed(body, boundary=boundary, encoding=encoding)
        except Exception:
            # Not simple (or something unforeseen): Django's parser reads the same bytes, and raises what it raises.
            return super().parse(io.BytesIO(body), media_type, parser_context)

    @staticmethod
    def _boundary(media_type: str | None) -> bytes | None:
        """The boundary as Django reads it from the Content-Type, or None where Django would refuse it."""
        if not media_type or not media_type.startswith("multipart/") or not media_type.isascii():
            return None
        _, options = parse_header_parameters(media_type)
        boundary = options.get("boundary")
        if not boundary or not DjangoMultiPartParser.boundary_re.fullmatch(boundary):
            return None
        return boundary.encode("ascii")


def _parsed(body: bytes, *, boundary: bytes, encoding: str) -> parsers.DataAndFiles:
    """The fields and files of a simple body, as Django's MultiPartParser with the memory handler finds them.

    Raises _NotSimple where the body is anything else.
    """
    separator = b"--" + boundary
    delimiter = b"\r\n" + separator
    if not body.startswith(separator + b"\r\n"):
        raise _NotSimple
    if body.endswith(delimiter + b"--\r\n"):
        end = len(body) - len(delimiter) - 4
    elif body.endswith(delimiter + b"--"):
        end = len(body) - len(delimiter) - 2
    else:
        raise _NotSimple
    parts = body[len(separator):end].split(delimiter)
    # Django cuts at the separator wherever it is, CRLF before it or not: any more of them and it reads other parts.
    if body.count(separator) != len(parts) + 1:
        raise _NotSimple

    data_max = settings.DATA_UPLOAD_MAX_MEMORY_SIZE
    fields_max = settings.DATA_UPLOAD_MAX_NUMBER_FIELDS
    files_max = settings.DATA_UPLOAD_MAX_NUMBER_FILES
    post = QueryDict(mutable=True)
    files = MultiValueDict()
    data_read = fields = file_count = 0
    for part in parts:
        header_end = part.find(b"\r\n\r\n", 0, _HEADERS_MAX)
        if header_end < 2 or part[:2] != b"\r\n":
            raise _NotSimple
        disposition = content_type = None
        for line in part[2:header_end].split(b"\r\n"):
            if disposition is None and (match := _DISPOSITION.fullmatch(line)):
                disposition = match
            elif content_type is None and (match := _CONTENT_TYPE.fullmatch(line)):
                content_type = match
            else:
                raise _NotSimple
        if disposition is None:
            raise _NotSimple
        # As Django: the name's bytes stripped, then decoded with the request's encoding.
        field_name = str(disposition[1].strip(), encoding, "replace")
        data = part[header_end + 4:]
        raw_file_name = disposition[2]
        if not raw_file_name:
            # A text field, or a file input left empty (filename=""), which Django keeps as text too.
            fields += 1
            data_read += len(data) + len(field_name) + 2
            if (fields_max is not None and fields > fields_max) or (data_max is not None and data_read > data_max):
                raise _NotSimple
            post.appendlist(field_name, str(data, encoding, "replace"))
            continue
        if not field_name:
            # Django drops a file with no name to file it under (it tests the name's truth to finish a file).
            raise _NotSimple
        file_count += 1
        if files_max is not None and file_count > files_max:
            raise _NotSimple
        # Django's own cleaning, which uses nothing of the parser instance.
        file_name = DjangoMultiPartParser.sanitize_file_name(None, str(raw_file_name, encoding, "replace"))
        if not file_name:
            # Django skips the file, but where its parser resumes then depends on its chunking.
            raise _NotSimple
        files.appendlist(field_name, InMemoryUploadedFile(
            file=io.BytesIO(data),
            field_name=field_name,
            name=file_name,
            content_type=content_type[1].decode("ascii").lower() if content_type is not None else "",
            size=len(data),
            charset=None,
            content_type_extra={},
        ))
    post._mutable = False
    return parsers.DataAndFiles(post, files)
