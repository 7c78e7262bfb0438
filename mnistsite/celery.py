"""The Celery application; its configuration lives in settings under CELERY_*."""
import os

from celery import Celery
from celery.exceptions import WorkerShutdown
from celery.signals import task_prerun, worker_init

from mnistsite.heartbeat import WorkerHeartbeat

# A server started without a settings module gets production's: no DEBUG pages, no committed key.
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "mnistsite.settings.production")

app = Celery("mnistsite")
# Lazy: settings are read when Celery first needs them, not at import time.
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()
# The liveness file of each worker (CELERY_HEARTBEAT_FILE), touched from its consumer's loop.
app.steps["consumer"].add(WorkerHeartbeat)


@task_prerun.connect
def _database_connections_refresh(sender=None, **kwargs) -> None:
    """Drop connections that are broken or older than CONN_MAX_AGE, exactly as Django does before a request."""
    from django.db import close_old_connections

    # An eager task runs inside its caller's request or transaction, whose connection is not ours to close.
    if not getattr(sender.request, "is_eager", False):
        close_old_connections()


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
