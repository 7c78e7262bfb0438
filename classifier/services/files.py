"""Upload files on the media volume: writing, scaling and deleting them, and setting aside those no upload names."""
from __future__ import annotations

import contextlib
import datetime as dt
import logging
import math
import os
import tempfile
import time

from django.conf import settings
from django.core.files.base import ContentFile
from django.core.files.storage import default_storage
from django.db import connection, transaction
from django.utils import timezone

from classifier import thumbnails
from classifier.instances import instances_new
from classifier.models import Upload, upload_image_path
from classifier.validation import ValidatedImage

logger = logging.getLogger(__name__)


# An uploaded file no row names this long after it was written is an orphan (rows follow their files in seconds).
ORPHANED_AFTER = dt.timedelta(hours=1)
# Where the orphan sweep moves what it finds, under the same relative names, for ORPHANED_FILES_KEEP_DAYS.
ORPHANED_FOLDER = "orphaned"
# A sweep that finds this many at once more likely runs against the wrong database than after killed processes.
ORPHANED_MANY = 100
# Model inputs were files here until classifier/0003 moved them into their rows; nothing reads them since.
RETIRED_FOLDER = "derived"
# Smaller copies of stored pictures, made on first view (``upload_image_scaled_get``), under the picture's own name:
# ``scaled/<side>/<name>``. Each can be made again from its picture, so backups may leave the folder out.
SCALED_FOLDER = "scaled"
# How every PNG ends (its IEND chunk, with its CRC): a copy without it was cut short, by a crash as it was written.
_PNG_END = b"IEND\xaeB`\x82"


class UploadStorageError(Exception):
    """The image files could not be written (a full disk, an unmounted volume); nothing was stored."""


class StorageFullError(UploadStorageError):
    """Storing the images would leave less than UPLOAD_MIN_FREE_MB free on the media volume; nothing was stored."""


def _uploads_build(
    *, owner, images: list[ValidatedImage], source: str, sample_set: str = "", label: int | None = None
) -> list[Upload]:
    uploads = instances_new(
        Upload,
        rows=[
            {
                "original_name": image.original_name,
                "format": image.format,
                "size": image.size,
                "stored_size": len(image.content),
                "width": image.width,
                "height": image.height,
                "sha256": image.sha256,
                # Each upload's own moment, as when they were built one by one.
                "created_at": timezone.now(),
            }
            for image in images
        ],
        common={"owner": owner, "source": source, "sample_set": sample_set, "label": label},
    )
    for upload in uploads:
        # Written under a generated name; the client's name is kept only as text.
        upload.image.name = upload_image_path(upload, "upload.png")
    return uploads


def files_delete(names: list[str]) -> None:
    """Delete these stored pictures and their scaled copies."""
    for name in names:
        if name:
            try:
                default_storage.delete(name)
            except OSError:
                logger.warning("could not delete stored file %s", name, exc_info=True)
            _scaled_copies_delete(name)


def _scaled_copy_name(*, name: str, side: int) -> str:
    return f"{SCALED_FOLDER}/{side}/{name}"


def _scaled_copies_delete(name: str) -> None:
    for side in thumbnails.SIDES:
        try:
            os.remove(default_storage.path(_scaled_copy_name(name=name, side=side)))
        except FileNotFoundError:
            continue  # never made: the picture was never shown small, or is that small already
        except OSError:
            logger.warning("could not delete the scaled copy of %s", name, exc_info=True)


def upload_image_scaled_get(*, name: str, side: int) -> bytes | None:
    """The stored picture ``name`` as a PNG at most ``side`` pixels each way, or None when it is that small already.

    The first call makes the copy and keeps it (unless the media volume is short of space), as decoding a photo's
    stored copy takes tens of milliseconds; later ones read it. Raises FileNotFoundError when the picture is gone,
    and what ``thumbnails.picture_scaled_png`` raises for a picture it cannot read.
    """
    copy = default_storage.path(_scaled_copy_name(name=name, side=side))
    try:
        with open(copy, "rb") as kept:
            data = kept.read()
        if data.endswith(_PNG_END):
            return data
    except FileNotFoundError:
        pass
    with default_storage.open(name, "rb") as handle:
        scaled = thumbnails.picture_scaled_png(handle, side=side)
    if scaled is not None:
        _scaled_copy_keep(copy, scaled, name=name)
    return scaled


def _scaled_copy_keep(path: str, data: bytes, *, name: str) -> None:
    # Only a saving: a copy that cannot be kept is made again next time, and the answer goes out all the same.
    try:
        # What space is left is the uploads'.
        if _storage_short(needed=len(data), files=1) is not None:
            return
        os.makedirs(os.path.dirname(path), exist_ok=True)
        # Written whole under a temporary name, then renamed: a reader finds the whole copy or none.
        descriptor, temporary = tempfile.mkstemp(dir=os.path.dirname(path), prefix=".", suffix=".part")
        try:
            # mkstemp's owner-only mode otherwise: the copy is readable by whoever may read its picture.
            if settings.FILE_UPLOAD_PERMISSIONS is not None:
                os.fchmod(descriptor, settings.FILE_UPLOAD_PERMISSIONS)
            with os.fdopen(descriptor, "wb") as out:
                out.write(data)
            os.replace(temporary, path)
        except BaseException:
            with contextlib.suppress(OSError):
                os.remove(temporary)
            raise
    except OSError:
        logger.warning("could not keep the scaled copy of %s", name, exc_info=True)
        return
    # The picture deleted while its copy was made: the deletion passed the copy by, so it goes now. (A deletion
    # between this look and the rename above is what the daily sweep's look at the copies is for.)
    if not os.path.exists(default_storage.path(name)):
        _scaled_copies_delete(name)


def upload_files_write(
    *,
    owner,
    images: list[ValidatedImage],
    source: str,
    sample_set: str = "",
    label: int | None = None,
) -> list[Upload]:
    """Unsaved uploads whose files are written (and durable); if one cannot be written, none stays on disk."""
    _storage_headroom_check(needed=sum(len(image.content) for image in images), files=len(images))
    uploads = _uploads_build(owner=owner, images=images, source=source, sample_set=sample_set, label=label)
    try:
        names = _files_save([(upload.image.name, image.content) for upload, image in zip(uploads, images, strict=True)])
    except OSError as exc:
        logger.error("could not write uploaded images", exc_info=True)
        raise UploadStorageError("The images could not be stored.") from exc
    for upload, name in zip(uploads, names, strict=True):
        upload.image.name = name
    return uploads


def _files_save(files: list[tuple[str, bytes]]) -> list[str]:
    """Write new files; each is on disk on return, or none is left."""
    if hasattr(default_storage, "save_many"):
        return default_storage.save_many(files)
    names: list[str] = []
    try:
        for name, content in files:
            names.append(default_storage.save(name, ContentFile(content)))
    except BaseException:
        files_delete(names)
        raise
    return names


# A full disk refuses every upload until someone makes room: said in the log once a minute, not once an upload.
STORAGE_FULL_LOG_EVERY_S = 60.0
_storage_full_logged = [-math.inf]


def _storage_headroom_check(*, needed: int, files: int) -> None:
    try:
        short = _storage_short(needed=needed, files=files)
    except OSError as exc:
        # A volume that cannot say how full it is (a stale network mount) would not take the files either.
        logger.error("could not read the media volume's free space", exc_info=True)
        raise UploadStorageError("The images could not be stored.") from exc
    if short is None:
        return
    left, files_left = short
    if time.monotonic() - _storage_full_logged[0] >= STORAGE_FULL_LOG_EVERY_S:
        _storage_full_logged[0] = time.monotonic()
        logger.error(
            "uploads refused: storing them would leave %.0f MB and %s files free on the media volume, under "
            "UPLOAD_MIN_FREE_MB=%s or UPLOAD_MIN_FREE_FILES=%s",
            left / 2**20, "unlimited" if files_left is None else files_left, settings.UPLOAD_MIN_FREE_MB,
            settings.UPLOAD_MIN_FREE_FILES,
        )
    raise StorageFullError("The server is short of storage space.")


def _storage_short(*, needed: int, files: int) -> tuple[int, int | None] | None:
    """The bytes and files the media volume would have left after these, when under UPLOAD_MIN_FREE_MB or
    UPLOAD_MIN_FREE_FILES; None when it would not be (or the storage cannot say). Raises OSError when it cannot be
    read."""
    free_bytes = getattr(default_storage, "free_bytes", None)
    if free_bytes is None:
        return None
    free_files = getattr(default_storage, "free_files", lambda: None)
    left, files_left = free_bytes() - needed, free_files()
    if files_left is not None:
        files_left -= files
    if left >= settings.UPLOAD_MIN_FREE_MB * 1024 * 1024 and (
        files_left is None or files_left >= settings.UPLOAD_MIN_FREE_FILES
    ):
        return None
    return left, files_left


def upload_files_orphaned_delete(*, now: dt.datetime | None = None, everything: bool = False) -> int:
    """Set aside uploaded files that no row names, written ORPHANED_AFTER to ORPHANED_AFTER x 4 ago; returns how many.

    They come from a process killed between writing an upload's files and
    inserting its rows, or from an insert whose connection was lost.
    Run every ORPHANED_AFTER, the sweep sees each file about three times, and
    only the folders of those hours (``uploads/<day>``) are listed.

    ``everything``: every folder, one at a time, and files of any age over
    ORPHANED_AFTER. A deleted upload's file whose removal failed (a volume gone
    read-only, a process killed while deleting an account's files) is found
    only this way. It also deletes the files set aside ORPHANED_FILES_KEEP_DAYS
    ago or more, and sets aside the files of RETIRED_FOLDER.

    The files are moved under ORPHANED_FOLDER rather than deleted: against a
    database restored from an older backup, or an empty one, every newer file
    looks orphaned, and moving them back is the way out.
    """
    now = now or timezone.now()
    newest, oldest = now - ORPHANED_AFTER, now - ORPHANED_AFTER * 4
    if everything:
        folders, oldest = _upload_folders(), None
    else:
        folders = sorted({f"uploads/{moment:%Y/%m/%d}" for moment in (oldest, newest)})
    set_aside = []
    for folder in folders:
        set_aside += _files_set_aside(_orphans_in(folder=folder, oldest=oldest, newest=newest))
    if len(set_aside) >= ORPHANED_MANY:
        logger.error(
            "moved %s uploaded files that no upload names to %s/ in MEDIA_ROOT; if the database was restored from an "
            "older backup, or replaced, move them back to where they were", len(set_aside), ORPHANED_FOLDER,
        )
    elif set_aside:
        logger.warning("moved %s uploaded files that no upload names to %s/: %s", len(set_aside), ORPHANED_FOLDER,
                       set_aside[:20])
    if everything:
        _scaled_copies_orphaned_delete(newest=newest)
        _files_set_aside_expired_delete(before=now - dt.timedelta(days=settings.ORPHANED_FILES_KEEP_DAYS))
        retired = _files_set_aside(_files_under(RETIRED_FOLDER)) if _model_inputs_moved_into_rows() else []
        if retired:
            logger.info("moved %s model input files of the release before classifier/0003 to %s/",
                        len(retired), ORPHANED_FOLDER)
        _empty_folders_delete(now=now)
    return len(set_aside)


def _empty_folders_delete(*, now: dt.datetime) -> None:
    """Remove the folders that deletions left empty under the uploads, their scaled copies and those set aside.

    Only those last changed ORPHANED_AFTER before ``now`` or earlier (a folder above one removed is changed by that,
    and goes at a later sweep), and no upload folder of the last two days, nor one above them: an upload is written
    into its day's folder, and one removed between a save's making it and writing there would fail the upload. A
    scaled copy or a set-aside file that meets its folder removed is only not kept this time.
    """
    cutoff, root = (now - ORPHANED_AFTER).timestamp(), default_storage.path("")
    days = [f"uploads/{moment:%Y/%m/%d}" for moment in (now, now - dt.timedelta(days=1))]
    live = {folder.rsplit("/", depth)[0] for folder in days for depth in range(3)}
    for top in ("uploads", RETIRED_FOLDER, SCALED_FOLDER, ORPHANED_FOLDER):
        for folder, _, _ in os.walk(default_storage.path(top), topdown=False):
            name = os.path.relpath(folder, root).replace(os.sep, "/")
            if name == top or name in live:
                continue
            try:
                if not os.listdir(folder) and os.stat(folder).st_mtime < cutoff:
                    os.rmdir(folder)
            except FileNotFoundError:
                continue
            except OSError:  # written to meanwhile
                logger.debug("left the folder %s", name, exc_info=True)


def _model_inputs_moved_into_rows() -> bool:
    """Whether classifier/0003 ran: before it, the files under RETIRED_FOLDER are the only copy of the model inputs."""
    from django.db.migrations.recorder import MigrationRecorder

    return MigrationRecorder(connection).migration_qs.filter(app="classifier", name__startswith="0003_").exists()


def _files_under(folder: str) -> list[str]:
    """Every file under ``folder`` of the media storage, by storage name."""
    root = default_storage.path(folder)
    return [
        os.path.relpath(os.path.join(path, file), default_storage.path("")).replace(os.sep, "/")
        for path, _, files in os.walk(root)
        for file in files
    ]


def _files_set_aside(names: list[str]) -> list[str]:
    """Move ``names`` to the same names under ORPHANED_FOLDER, dated now; returns those moved."""
    moved = []
    for name in names:
        target = default_storage.path(f"{ORPHANED_FOLDER}/{name}")
        try:
            os.makedirs(os.path.dirname(target), exist_ok=True)
            os.replace(default_storage.path(name), target)
            # The keep period counts from the move, not from the upload.
            os.utime(target)
        except FileNotFoundError:
            continue  # deleted meanwhile
        except OSError:
            logger.warning("could not set aside orphaned file %s", name, exc_info=True)
            continue
        moved.append(name)
    return moved


def _scaled_copies_orphaned_delete(*, newest: dt.datetime) -> None:
    """Delete the scaled copies, written before ``newest``, whose picture is gone (or left a copy being written)."""
    cutoff, deleted = newest.timestamp(), 0
    for folder, _, files in os.walk(default_storage.path(SCALED_FOLDER)):
        for file in files:
            path = os.path.join(folder, file)
            # scaled/<side>/<the picture's name>
            name = os.path.relpath(path, default_storage.path(SCALED_FOLDER)).replace(os.sep, "/").partition("/")[2]
            try:
                if os.stat(path).st_mtime < cutoff and (file.endswith(".part") or not default_storage.exists(name)):
                    os.remove(path)
                    deleted += 1
            except FileNotFoundError:
                continue
            except OSError:
                logger.warning("could not delete the scaled copy %s", path, exc_info=True)
    if deleted:
        logger.info("deleted %s scaled copies of pictures no longer stored", deleted)


def _files_set_aside_expired_delete(*, before: dt.datetime) -> None:
    cutoff = before.timestamp()
    for folder, _, files in os.walk(default_storage.path(ORPHANED_FOLDER)):
        for file in files:
            path = os.path.join(folder, file)
            try:
                if os.stat(path).st_mtime < cutoff:
                    os.remove(path)
            except FileNotFoundError:
                continue
            except OSError:
                logger.warning("could not delete orphaned file %s", path, exc_info=True)


def _orphans_in(*, folder: str, oldest: dt.datetime | None, newest: dt.datetime) -> list[str]:
    """The files of ``folder`` last written between ``oldest`` (None: any time) and ``newest`` that no upload names."""
    try:
        _, files = default_storage.listdir(folder)
    except FileNotFoundError:
        return []
    written: dict[str, dt.datetime] = {}
    for file in files:
        name = f"{folder}/{file}"
        try:
            modified = default_storage.get_modified_time(name)
        except FileNotFoundError:
            continue  # deleted meanwhile
        if (oldest is None or oldest <= modified) and modified < newest:
            written[name] = modified
    if not written:
        return []
    # A file is written just after its row's created_at is set: one range of the created_at index rules out nearly
    # every stored name at once. The rest, few, are looked up by name, which has no index of its own.
    earliest, latest = min(written.values()), max(written.values())
    stored = set(
        Upload.objects.filter(created_at__gte=earliest - ORPHANED_AFTER, created_at__lt=latest + ORPHANED_AFTER)
        .values_list("image", flat=True)
    )
    unknown = [name for name in written if name not in stored]
    for start in range(0, len(unknown), 1000):
        chunk = unknown[start : start + 1000]
        stored |= set(Upload.objects.filter(image__in=chunk).values_list("image", flat=True))
    return [name for name in unknown if name not in stored]


def _upload_folders() -> list[str]:
    """Every day folder of uploads (``uploads/<year>/<month>/<day>``)."""
    folders = ["uploads"]
    for _ in range(3):
        deeper = []
        for folder in folders:
            try:
                names, _ = default_storage.listdir(folder)
            except FileNotFoundError:
                continue
            deeper += [f"{folder}/{name}" for name in sorted(names)]
        folders = deeper
    return folders


def upload_files_delete_on_commit(*, names: list[str], using: str | None = None) -> None:
    """Delete these stored files once the current transaction commits: only when their rows are gone for good."""
    transaction.on_commit(lambda: upload_files_delete(names=names), using=using)


# Past this many files, a deletion's files are removed by the workers, this many a message: an account of a million
# uploads took 45 s to remove, more on a busy volume, which the request deleting it would spend after its answer.
# A message takes a worker process for about 0.05 s, over a second on a volume as slow as any seen (50,000 files
# took 5 s, and 114 s while others wrote files too): an upload's longest wait, as the messages wait behind uploads.
FILES_DELETE_HERE_MAX = 500


def upload_files_delete(*, names: list[str]) -> None:
    """Delete these stored files, of rows deleted for good: a few here, more by the workers, after people's uploads.

    Any a broker refuses are deleted here; any a message lost are left for the daily sweep of every folder.
    """
    if len(names) <= FILES_DELETE_HERE_MAX:
        files_delete(names)
        return
    from classifier.services.predictions import PRIORITY_BULK
    from classifier.tasks import upload_files_delete as upload_files_delete_task

    for start in range(0, len(names), FILES_DELETE_HERE_MAX):
        try:
            upload_files_delete_task.apply_async(args=[names[start : start + FILES_DELETE_HERE_MAX]],
                                                 priority=PRIORITY_BULK)
        except Exception:  # noqa: BLE001 - any broker error: the workers will not hear of them
            logger.warning("could not queue the removal of %s deleted uploads' files; removing them here",
                           len(names) - start, exc_info=True)
            files_delete(names[start:])
            return
