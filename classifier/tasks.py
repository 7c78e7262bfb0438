"""Celery tasks for predictions: thin wrappers that take ids and call services."""
from celery import shared_task
from django.db import InterfaceError, OperationalError

from classifier import services

# Database hiccups are worth retrying; anything else is a bug or a bad image, recorded on the prediction.
TRANSIENT_ERRORS = (OperationalError, InterfaceError)
# A worker that cannot load the model handed its claims back; healthy workers take them meanwhile, and once its
# retries run out the sweeper sends them again.
WORKER_ERRORS = (services.ModelUnavailableError,)
# The daily and hourly sweeps over files and counts: long, and safe to run again. A retry waits a minute or two (drawn
# at random), well inside the hour before its message expires (CELERY_BEAT_SCHEDULE).
HOUSEKEEPING = dict(
    acks_late=True, soft_time_limit=600, time_limit=900, autoretry_for=TRANSIENT_ERRORS, max_retries=2,
    retry_backoff=60, retry_backoff_max=600, ignore_result=True,
)


@shared_task(
    name="classifier.tasks.predictions_execute",
    acks_late=True,
    reject_on_worker_lost=True,
    soft_time_limit=30,
    time_limit=60,
    autoretry_for=TRANSIENT_ERRORS + WORKER_ERRORS,
    retry_backoff=True,
    retry_backoff_max=30,
    max_retries=5,
    ignore_result=True,
)
def predictions_execute(prediction_ids: list[int]) -> None:
    services.predictions_execute(prediction_ids=[int(pk) for pk in prediction_ids])


@shared_task(
    name="classifier.tasks.predictions_sweep",
    acks_late=True,
    # Ended before the next sweep is due (every 30 s), so slow sweeps never add up. Not retried: the next sweep is
    # its retry, and a retry's message would expire before it was due.
    soft_time_limit=20,
    time_limit=25,
    ignore_result=True,
)
def predictions_sweep() -> int:
    return services.predictions_sweep()


@shared_task(
    name="classifier.tasks.upload_files_orphaned_delete",
    **HOUSEKEEPING,
)
def upload_files_orphaned_delete(everything: bool = False) -> int:
    return services.upload_files_orphaned_delete(everything=everything)


@shared_task(
    name="classifier.tasks.upload_files_delete",
    acks_late=True,
    # FILES_DELETE_HERE_MAX files: about 0.05 s, a second or two on a volume as slow as any seen.
    soft_time_limit=60,
    time_limit=90,
    ignore_result=True,
)
def upload_files_delete(names: list[str]) -> None:
    # The files of rows deleted for good: deleting them again, after a lost worker, finds them gone.
    services.upload_files_delete(names=[str(name) for name in names])


@shared_task(
    name="classifier.tasks.storage_use_recount",
    **HOUSEKEEPING,
)
def storage_use_recount() -> int:
    return services.storage_use_recount()


@shared_task(
    name="classifier.tasks.idempotency_keys_expired_delete",
    **HOUSEKEEPING,
)
def idempotency_keys_expired_delete() -> int:
    return services.idempotency_keys_expired_delete()
