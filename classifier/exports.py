"""Downloads: a user's history as a CSV or a ZIP with the stored images, and the admin's CSV of any uploads' results."""
from __future__ import annotations

import csv
import datetime as dt
import io
import logging
import re
import tempfile
import zipfile
from collections.abc import Iterable, Iterator

from django.utils import timezone

from classifier.models import Prediction
from classifier.selectors import UploadExportRow

logger = logging.getLogger(__name__)

COLUMNS = (
    "upload_id",
    "file_name",
    "source",
    "uploaded_at",
    "width",
    "height",
    "status",
    "digit",
    "confidence",
    "several_digits",
    "your_answer",
    *(f"p{digit}" for digit in range(10)),
    "checkpoint_id",
    "predicted_at",
    "error",
    "image_file",
)
# The status of an upload with no prediction (an administrator deleted them), worded as the history list's badge:
# a blank would read as a value missing from the file.
NOT_READ = "not read"
# A spreadsheet runs a cell that starts with one of these as a formula: a file name such as "=HYPERLINK(...)"
# must stay text (OWASP's CSV injection advice).
_FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")
# The archive's CSV is written to disk past this size instead of being held in memory.
_SPOOL_BYTES = 4 * 2**20
# Spreadsheets take a CSV without it for their locale's legacy encoding and garble names in other scripts.
_BOM = "\ufeff"


# A spreadsheet whose locale separates with semicolons (or one told to split at commas or tabs) cuts "x;=1+1.png"
# there, quotes or not, and runs the second cell as a formula: a formula's start after a separator is kept text too.
_FORMULA_AFTER_SEPARATOR = re.compile(r"([;,\t])(?=[=+\-@\t\r])")


def _text(value: str) -> str:
    value = _FORMULA_AFTER_SEPARATOR.sub(r"\1'", value)
    return "'" + value if value.startswith(_FORMULA_STARTS) else value


def _moment(value: dt.datetime | None) -> str:
    return value.astimezone(dt.UTC).isoformat(timespec="seconds").replace("+00:00", "Z") if value else ""


def _csv_row(row: UploadExportRow, *, image_file: str = "") -> list[str | int | float]:
    """One upload as the CSV's cells, in COLUMNS' order."""
    upload, prediction = row.upload, row.prediction
    cells: list[str | int | float] = [
        upload.pk,
        _text(upload.original_name),
        upload.source,
        _moment(upload.created_at),
        upload.width,
        upload.height,
    ]
    if prediction is None:
        return cells + [NOT_READ] + [""] * (len(COLUMNS) - len(cells) - 2) + [image_file]
    probabilities = prediction.probabilities or [""] * 10
    return cells + [
        # As the pages' badges word it.
        Prediction.PENDING_WORD if prediction.status == Prediction.Status.PENDING else prediction.status,
        "" if prediction.digit is None else prediction.digit,
        "" if prediction.confidence is None else round(prediction.confidence, 6),
        "yes" if prediction.several_digits else "",
        "" if prediction.feedback is None else prediction.feedback,
        *(p if p == "" else round(p, 6) for p in probabilities),
        prediction.checkpoint_id or "",
        _moment(prediction.finished_at),
        _text(prediction.error),
        image_file,
    ]


class _Chunks(io.RawIOBase):
    """A write-only stream whose bytes are collected until taken: lets csv and zipfile feed a streamed response."""

    def __init__(self) -> None:
        self._parts: list[bytes] = []

    def writable(self) -> bool:
        return True

    def write(self, data) -> int:
        self._parts.append(bytes(data))
        return len(data)

    def take(self) -> bytes:
        data, self._parts = b"".join(self._parts), []
        return data


def history_csv(rows: Iterable[UploadExportRow]) -> Iterator[bytes]:
    """The CSV, UTF-8 with a byte order mark, a row at a time."""
    return _csv_stream(COLUMNS, map(_csv_row, rows))


def _csv_stream(columns: Iterable[str], rows: Iterable[list]) -> Iterator[bytes]:
    out = _Chunks()
    text = io.TextIOWrapper(out, encoding="utf-8", newline="", write_through=True)
    text.write(_BOM)
    writer = csv.writer(text)
    writer.writerow(columns)
    yield out.take()
    for row in rows:
        writer.writerow(row)
        yield out.take()


def _entry(name: str, *, stamp: tuple[int, ...]) -> zipfile.ZipInfo:
    # Deflated, the images at level 0: a streamed entry's sizes follow its data, which streaming readers (Java's
    # ZipInputStream) accept for deflated entries only.
    entry = zipfile.ZipInfo(name, date_time=stamp)
    entry.compress_type = zipfile.ZIP_DEFLATED
    return entry


def history_zip(rows: Iterable[UploadExportRow]) -> Iterator[bytes]:
    """A ZIP of every upload's stored image and, last, history.csv naming each one's file; streamed as written.

    An image that cannot be read (gone from the media volume) is left out, and its row says "missing" instead of
    a file name: the download goes on, and says what it lacks.
    """
    out = _Chunks()
    stamp = timezone.now().astimezone(dt.UTC).timetuple()[:6]
    with tempfile.SpooledTemporaryFile(max_size=_SPOOL_BYTES, mode="w+", encoding="utf-8", newline="") as table:
        table.write(_BOM)
        writer = csv.writer(table)
        writer.writerow(COLUMNS)
        with zipfile.ZipFile(out, mode="w", allowZip64=True) as archive:
            for row in rows:
                name = f"images/upload-{row.upload.pk}.png"
                try:
                    with row.upload.image.open("rb") as image:
                        content = image.read()
                except OSError:
                    logger.warning("upload %s's stored image is missing from its export", row.upload.pk)
                    name = "missing"
                else:
                    # The stored images are PNGs already: compressing them again would cost CPU for nothing.
                    archive.writestr(_entry(name, stamp=stamp), content, compresslevel=0)
                writer.writerow(_csv_row(row, image_file=name))
                yield out.take()
            table.seek(0)
            csv_entry = _entry("history.csv", stamp=stamp)
            # Not forced to ZIP64, whose streamed sizes Java's ZipInputStream misreads: 2 GB of CSV is millions of
            # uploads more than a quota holds.
            with archive.open(csv_entry, mode="w") as entry:
                while block := table.read(2**16):
                    entry.write(block.encode("utf-8"))
                    yield out.take()
        yield out.take()


STAFF_COLUMNS = (
    "upload_id",
    "prediction_id",
    "owner",
    "source",
    "sample_set",
    "file_name",
    "uploaded_at",
    "label",
    "feedback",
    "status",
    "digit",
    "correct",
    "confidence",
    "several_digits",
    *(f"p{digit}" for digit in range(10)),
    "checkpoint_id",
    "predicted_at",
    "error",
)
def verdict(*, label: int | None, prediction: Prediction | None) -> str:
    """"yes" or "no": whether a finished prediction gave the true digit (a sample's label, else its owner's answer)."""
    truth = label if label is not None else (prediction.feedback if prediction is not None else None)
    if prediction is None or prediction.status != Prediction.Status.DONE or truth is None or prediction.digit is None:
        return ""
    return "yes" if prediction.digit == truth else "no"


def _staff_row(row: UploadExportRow) -> list[str | int | float]:
    upload, prediction = row.upload, row.prediction
    cells: list[str | int | float] = [
        upload.pk,
        "" if prediction is None else prediction.pk,
        _text(upload.owner.get_username()),
        upload.source,
        _text(upload.sample_set),
        _text(upload.original_name),
        _moment(upload.created_at),
        "" if upload.label is None else upload.label,
    ]
    if prediction is None:
        return cells + [""] * (len(STAFF_COLUMNS) - len(cells))
    probabilities = prediction.probabilities or [""] * 10
    return cells + [
        "" if prediction.feedback is None else prediction.feedback,
        prediction.status,
        "" if prediction.digit is None else prediction.digit,
        verdict(label=upload.label, prediction=prediction),
        "" if prediction.confidence is None else round(prediction.confidence, 6),
        "yes" if prediction.several_digits else "",
        *(p if p == "" else round(p, 6) for p in probabilities),
        prediction.checkpoint_id or "",
        _moment(prediction.finished_at),
        _text(prediction.error),
    ]


def staff_results_csv(rows: Iterable[UploadExportRow]) -> Iterator[bytes]:
    """The admin's CSV of results, UTF-8 with a byte order mark, a row at a time."""
    return _csv_stream(STAFF_COLUMNS, map(_staff_row, rows))
