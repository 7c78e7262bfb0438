"""Uploaded images and the predictions made for them."""
import uuid

from django.conf import settings
from django.core.validators import MaxValueValidator, MinValueValidator
from django.db import models
from django.db.models import Q
from django.db.models.functions import Coalesce
from django.utils import timezone

from mnistsite.database_now import Now


# Width and height of the picture the model sees (training.ml.preprocess.SIDE, without importing torch here).
INPUT_SIDE = 28


def upload_image_path(instance: "Upload", filename: str) -> str:
    # The client's file name never reaches the file system.
    return f"uploads/{instance.created_at:%Y/%m/%d}/{uuid.uuid4().hex}.png"


def prediction_input_path(instance: "Prediction", filename: str) -> str:
    # Only migration 0001 still refers to this: model inputs now live in the row (input_pixels).
    return f"derived/inputs/{uuid.uuid4().hex}.png"


class Upload(models.Model):
    class Source(models.TextChoices):
        FILE = "file"
        CANVAS = "canvas"
        API = "api"
        SAMPLE = "sample"

    # Every index is written on each upload: owner is served by (owner, -created_at), sha256 and sample_set by
    # the unique sample constraint, so none of them has an index of its own.
    owner = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="uploads", db_index=False
    )
    # No width_field/height_field: width and height are the picture's as sent and shown (a photo is stored smaller),
    # written by validation, and Django would read each file whose row says 0 every time the row is loaded.
    image = models.ImageField(upload_to=upload_image_path)
    original_name = models.CharField(max_length=255, blank=True)
    format = models.CharField(max_length=16)
    size = models.PositiveIntegerField(help_text="Size in bytes of the file as uploaded.")
    stored_size = models.PositiveIntegerField(
        null=True, blank=True, help_text="Size in bytes of the stored PNG; empty for uploads stored before it was kept."
    )
    width = models.PositiveIntegerField(default=0)
    height = models.PositiveIntegerField(default=0)
    sha256 = models.CharField(max_length=64)
    source = models.CharField(max_length=8, choices=Source.choices, default=Source.FILE)
    # The sample set a shipped image belongs to ("mnist", "other"), and its known label.
    sample_set = models.CharField(max_length=16, blank=True)
    label = models.PositiveSmallIntegerField(null=True, blank=True, validators=[MaxValueValidator(9)])
    created_at = models.DateTimeField(default=timezone.now, db_index=True)

    class Meta:
        ordering = ["-created_at", "-id"]
        indexes = [models.Index(fields=["owner", "-created_at"])]
        constraints = [
            # Loading the sample sets twice must not register an image twice.
            models.UniqueConstraint(
                fields=["sample_set", "sha256"], condition=~Q(sample_set=""), name="unique_sample_image"
            ),
        ]

    def __str__(self) -> str:
        return f"Upload {self.pk} ({self.original_name or self.source})"

    @property
    def stored_bytes(self) -> int:
        """What it takes on the media volume, as its owner's quota counts it (older uploads: as uploaded)."""
        return self.size if self.stored_size is None else self.stored_size


# The SQL of Upload.stored_bytes, for sums over many uploads.
UPLOAD_STORED_BYTES = Coalesce("stored_size", "size")


class StorageUse(models.Model):
    """The bytes of one owner's uploads, kept beside them: the quota check reads one row, not a sum over all of them."""

    owner = models.OneToOneField(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, primary_key=True, related_name="storage_use"
    )
    bytes = models.BigIntegerField(default=0, help_text="What the owner's uploads take on the media volume.")

    def __str__(self) -> str:
        return f"{self.owner_id}: {self.bytes} bytes"


class Prediction(models.Model):
    class Status(models.TextChoices):
        PENDING = "pending"
        RUNNING = "running"
        DONE = "done"
        FAILED = "failed"

    FINISHED = (Status.DONE, Status.FAILED)
    # How the pages, their filter and the history's CSV word a pending prediction (the API keeps the value).
    PENDING_WORD = "queued"
    # How the error of a picture with no digit in it begins: trying again reads it the same way, so the pages ask
    # for another picture instead.
    NO_DIGIT_ERROR = "No digit was found in this image:"

    # Served by the (upload, newest first) index in Meta.indexes.
    upload = models.ForeignKey(Upload, on_delete=models.CASCADE, related_name="predictions", db_index=False)
    # Which model gave each answer is history: a checkpoint that made predictions cannot be deleted.
    checkpoint = models.ForeignKey(
        "training.Checkpoint", null=True, blank=True, on_delete=models.PROTECT, related_name="predictions"
    )
    # Indexed only with created_at (Meta.indexes): each status change rewrites the row's entry in every index.
    status = models.CharField(max_length=8, choices=Status.choices, default=Status.PENDING)
    digit = models.PositiveSmallIntegerField(null=True, blank=True)
    confidence = models.FloatField(null=True, blank=True)
    probabilities = models.JSONField(null=True, blank=True)
    # The 28x28 uint8 picture the model saw, row by row (784 bytes); rendered as PNG when asked for.
    input_pixels = models.BinaryField(null=True, blank=True, editable=False)
    device = models.CharField(max_length=32, blank=True)
    queue_ms = models.FloatField(null=True, blank=True)
    compute_ms = models.FloatField(null=True, blank=True)
    error = models.TextField(blank=True)
    several_digits = models.BooleanField(
        default=False,
        db_default=False,
        help_text="The picture seemed to hold more than one digit, read as one: the one with the most ink, or, written "
        "close together, the digits as one.",
    )
    feedback = models.PositiveSmallIntegerField(
        null=True, blank=True, validators=[MinValueValidator(0), MaxValueValidator(9)]
    )
    publish_attempts = models.PositiveIntegerField(default=0)
    # The broker priority its message was sent with (services.PRIORITY_UPLOADS or PRIORITY_BULK), so that the sweeper
    # sends a message again at the same one: a staff re-run's backlog re-sent at the uploads' priority went ahead of
    # people's uploads.
    priority = models.PositiveSmallIntegerField(default=3, db_default=3)
    # Times a worker claimed it and did not hand it back before working on the image. One that keeps killing its
    # worker (or running past the time limit) is failed after PREDICTION_MAX_ATTEMPTS instead of being handed to a
    # worker forever.
    attempts = models.PositiveSmallIntegerField(default=0, db_default=0)
    # Times a worker that could not run the model (could not load it, or its device failed on the whole batch) handed
    # it back: apart from attempts, or a good image would be failed as one that kills its worker. After
    # PREDICTION_MAX_ATTEMPTS of them it fails with a message instead of waiting for ever on a model no worker loads.
    model_hand_backs = models.PositiveSmallIntegerField(default=0, db_default=0)
    # Every time of a prediction is the database's clock, never a host's: the sweeper and the workers compare them
    # with the database's now, and a web host or worker whose clock ran minutes off would otherwise have live claims
    # taken over (computed twice) or dead ones waited on, and the queue served out of order.
    published_at = models.DateTimeField(null=True, blank=True)
    created_at = models.DateTimeField(db_default=Now(), db_index=True)
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)
    # Chosen by the worker for each claim, and written by it: how a claim whose answer the lost connection took
    # finds its rows again, since the worker cannot know the time the database stamped on them.
    claim_token = models.UUIDField(null=True, blank=True, editable=False)

    class Meta:
        ordering = ["-created_at", "-id"]
        indexes = [
            models.Index(fields=["status", "created_at"]),
            # An upload's newest prediction, which every history row and filter looks up, is the index's first entry
            # for it. With the upload's id alone, a database without fresh statistics would walk created_at instead,
            # through every prediction of the site for each upload (minutes for a long history).
            models.Index(fields=["upload", "-created_at", "-id"], name="prediction_upload_newest"),
        ]

    def __str__(self) -> str:
        return f"Prediction {self.pk} ({self.status})"

    @classmethod
    def failed_for_want_of_a_digit(cls, *, status: str, error: str | None) -> bool:
        """Whether a prediction in ``status`` with ``error`` failed because its picture holds no digit: trying again
        reads it the same way, and only another picture mends it."""
        return status == cls.Status.FAILED and (error or "").startswith(cls.NO_DIGIT_ERROR)


class IdempotencyKey(models.Model):
    """An API upload's ``Idempotency-Key``, stored with its uploads: the same request sent again answers with them.

    Kept for IDEMPOTENCY_KEY_TTL_HOURS after ``created_at``; older ones count as never sent and are swept.
    """

    # Served by the unique constraint, which leads with it.
    owner = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="idempotency_keys", db_index=False
    )
    key = models.CharField(max_length=255)
    # What made the request the one it was (classifier.idempotency.upload_fingerprint): a repeat must match it.
    fingerprint = models.CharField(max_length=64)
    # The predictions the request made, in the order of its files. Ids rather than foreign keys: a key outlives
    # a deletion of its uploads, so that a repeat can say they are gone instead of storing them again.
    prediction_ids = models.JSONField()
    # Their uploads, likewise: a repeat answers for an upload whose predictions staff deleted while it stayed. Null
    # in keys stored before it was kept (and by a release before it, still serving while the migration runs).
    upload_ids = models.JSONField(null=True, blank=True)
    created_at = models.DateTimeField(default=timezone.now, db_index=True)

    class Meta:
        constraints = [
            # The arbiter between two requests sent at once with one key: only one of them can store.
            models.UniqueConstraint(fields=["owner", "key"], name="unique_idempotency_key_per_owner"),
        ]

    def __str__(self) -> str:
        return f"{self.owner_id}: {self.key}"
