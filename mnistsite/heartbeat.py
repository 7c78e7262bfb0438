"""Liveness files of Celery workers and beat, touched from their own loops, for health checks that only stat them."""
from __future__ import annotations

import logging
from pathlib import Path

from celery import bootsteps
from celery.beat import PersistentScheduler
from django.conf import settings
from django.core.exceptions import ImproperlyConfigured

logger = logging.getLogger(__name__)

# One file per process: a failure is logged when it starts, not at every touch that follows it.
_touch_failing = False
# Set in a worker, and so in the beat it may run inside itself (`worker --beat`, a thread or a child forked from it):
# the file is the worker's, and that beat leaves it alone.
_in_worker = False


def heartbeat_file() -> Path | None:
    """The configured heartbeat file (None: heartbeats are off), refused at start when it could never be written."""
    if not settings.CELERY_HEARTBEAT_FILE:
        return None
    path = Path(settings.CELERY_HEARTBEAT_FILE)
    if not path.parent.is_dir():
        raise ImproperlyConfigured(f"CELERY_HEARTBEAT_FILE: the folder {path.parent} does not exist.")
    return path


def heartbeat_clear(*, path: Path) -> None:
    """Remove a file left by an earlier process, so that a fresh one always means this one is alive."""
    path.unlink(missing_ok=True)


def heartbeat_touch(*, path: Path) -> None:
    """Set the file's time to now, creating it; a failure leaves the file stale, which is what checks then report."""
    global _touch_failing
    try:
        path.touch()
    except OSError as exc:
        if not _touch_failing:
            logger.error("Cannot touch the heartbeat file %s, so health checks will call this process dead: %s",
                         path, exc)
        _touch_failing = True
    else:
        if _touch_failing:
            logger.info("The heartbeat file %s is touched again.", path)
        _touch_failing = False


class WorkerHeartbeat(bootsteps.StartStopStep):
    """Touches the heartbeat file from the consumer's timer while the consumer is connected to the broker.

    Celery starts the consumer's steps once its broker connection is up and stops them whenever it loses it; with
    the Redis broker the timer is fired by the consumer's event loop itself, in the worker's main process. So the
    file stays fresh only while the worker is connected and its loop turns, and a task, which runs in a pool
    process, does not hold it up however long it takes. (With the filesystem broker the timer has a thread of its
    own, and the file says only that the consumer is started.)
    """

    requires = ("celery.worker.consumer.tasks:Tasks",)
    label = "Heartbeat file"

    def __init__(self, parent, **kwargs):
        global _in_worker
        super().__init__(parent, **kwargs)
        _in_worker = True
        self.path = heartbeat_file()
        self.enabled = self.path is not None
        self.tref = None
        if self.path is not None:
            heartbeat_clear(path=self.path)

    def start(self, c) -> None:
        self.tref = c.timer.call_repeatedly(
            settings.CELERY_HEARTBEAT_INTERVAL, heartbeat_touch, kwargs={"path": self.path}
        )

    def stop(self, c) -> None:
        if self.tref is not None:
            c.timer.cancel(self.tref)
            self.tref = None

    def shutdown(self, c) -> None:
        self.stop(c)
        heartbeat_clear(path=self.path)


class HeartbeatScheduler(PersistentScheduler):
    """Celery's default scheduler, touching the heartbeat file after each pass while its last send reached the broker.

    Beat passes at least once per CELERY_HEARTBEAT_INTERVAL then, instead of sleeping until the next task is due.
    A send that fails (the broker is down) stops the touches until one succeeds; while beat cannot connect at all
    it does not pass.
    """

    _sends_failing = False

    def __init__(self, *args, **kwargs):
        self._heartbeat_path = None if _in_worker else heartbeat_file()
        if self._heartbeat_path is not None:
            heartbeat_clear(path=self._heartbeat_path)
        super().__init__(*args, **kwargs)

    def apply_async(self, entry, producer=None, advance=True, **kwargs):
        try:
            result = super().apply_async(entry, producer=producer, advance=advance, **kwargs)
        except Exception:
            self._sends_failing = True
            raise
        self._sends_failing = False
        return result

    def close(self) -> None:
        super().close()
        if self._heartbeat_path is not None:
            heartbeat_clear(path=self._heartbeat_path)

    def tick(self, *args, **kwargs):
        interval = super().tick(*args, **kwargs)
        if self._heartbeat_path is None:
            return interval
        if not self._sends_failing:
            heartbeat_touch(path=self._heartbeat_path)
        return min(interval, settings.CELERY_HEARTBEAT_INTERVAL)
