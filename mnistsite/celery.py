"""The Celery application; its configuration lives in settings under CELERY_*."""
import os
import warnings

from celery import Celery
from celery.exceptions import CPendingDeprecationWarning, WorkerShutdown
from celery.signals import (
    after_setup_logger,
    after_setup_task_logger,
    before_task_publish,
    task_postrun,
    task_prerun,
    worker_init,
    worker_ready,
)
from celery.utils.log import get_multiprocessing_logger

from mnistsite.heartbeat import WorkerHeartbeat
from mnistsite.redis_transport import transport_install
from mnistsite.request_id import (
    TASK_HEADER,
    RequestIdFilter,
    request_id_accept,
    request_id_get,
    request_id_reset,
    request_id_set,
)

# A server started without a settings module gets production's: no DEBUG pages, no committed key.
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "mnistsite.settings.production")

transport_install()
app = Celery("mnistsite")
# Lazy: settings are read when Celery first needs them, not at import time.
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()
# The liveness file of each worker (CELERY_HEARTBEAT_FILE), touched from its consumer's loop.
app.steps["consumer"].add(WorkerHeartbeat)
# Celery's own formats, with the id of the request that published the task (see _request_id_adopt) or "-" for the
# worker's own lines. Defaults, so that the settings read lazily can still replace them.
app.add_defaults({
    "worker_log_format": "[%(asctime)s: %(levelname)s/%(processName)s] [%(request_id)s] %(message)s",
    "worker_task_log_format": (
        "[%(asctime)s: %(levelname)s/%(processName)s] [%(request_id)s] %(task_name)s[%(task_id)s]: %(message)s"
    ),
})
_request_id_filter = RequestIdFilter()


@after_setup_logger.connect
@after_setup_task_logger.connect
def _request_id_log(logger=None, **kwargs) -> None:
    """Celery's handlers (which replace those of settings.LOGGING in a worker and beat) show each line's id too."""
    # The pool's own logger (billiard's: "Process ... exited with signal 9") gets handlers of the same format beside
    # the root's, and no signal of its own: without the filter, its every line became a logging error.
    for each in (logger, get_multiprocessing_logger()):
        for handler in each.handlers if each is not None else ():
            handler.addFilter(_request_id_filter)


@before_task_publish.connect
def _request_id_send(headers=None, **kwargs) -> None:
    """A task published while a request (or another task) is handled carries its id, read as the message leaves.

    Prediction tasks are published by ``transaction.on_commit`` callbacks, which run in the request's own thread
    once its transaction commits, so the id is still the request's then.
    """
    request_id = request_id_get()
    if request_id is not None and headers is not None:
        headers.setdefault(TASK_HEADER, request_id)


@task_prerun.connect
def _request_id_adopt(task=None, **kwargs) -> None:
    """The task's lines name the request that published it; one sent by beat (or by anyone else) gets its own id."""
    request = task.request
    if request.get("is_eager") and request.get(TASK_HEADER) is None and request_id_get() is not None:
        # Run inside its caller (no message was sent): its lines belong to the caller's request.
        request_id = request_id_get()
    else:
        request_id = request_id_accept(value=request.get(TASK_HEADER))
    request._request_id_token = request_id_set(value=request_id)


@task_postrun.connect
def _request_id_forget(task=None, **kwargs) -> None:
    token = getattr(task.request, "_request_id_token", None)
    if token is not None:
        request_id_reset(token=token)


@task_prerun.connect
def _database_connections_refresh(sender=None, **kwargs) -> None:
    """Drop connections that are broken or older than CONN_MAX_AGE, exactly as Django does before a request."""
    from django.db import close_old_connections

    # An eager task runs inside its caller's request or transaction, whose connection is not ours to close.
    if not getattr(sender.request, "is_eager", False):
        close_old_connections()


@worker_ready.connect
def _cancel_on_connection_loss_notice_silence(**kwargs) -> None:
    """Celery's notice, at every lost broker connection, that its next major version will cancel running tasks then.

    The settings choose not to (CELERY_WORKER_CANCEL_LONG_RUNNING_TASKS_ON_CONNECTION_LOSS), so each Redis restart
    logged a deprecation warning about a decision already made. Filtered once the worker is up: its logging set-up
    puts every Celery deprecation warning first in line, ahead of a filter set any earlier.
    """
    warnings.filterwarnings(
        "ignore", message=r"\s*In Celery 5\.1 we introduced an optional breaking change",
        category=CPendingDeprecationWarning,
    )


@worker_init.connect
def _torch_device_check(**kwargs) -> None:
    """Load PyTorch before the pool forks; a worker told to use a GPU it does not have stops at once.

    Imported here, PyTorch is in every pool process from its start, in pages they share, instead of being loaded
    by each one during its first task (seconds, which that task's upload waited). Importing it does not
    initialise CUDA, which would leave the forked processes unable to use the GPU.
    """
    from django.conf import settings

    from classifier.inference import TorchDeviceError, torch_device_check

    if settings.TORCH_DEVICE != "cuda":
        return

    try:
        torch_device_check()
    except TorchDeviceError as exc:
        # Celery logs and swallows an Exception from a signal handler; this one ends the worker.
        raise WorkerShutdown(str(exc)) from exc
