"""Celery tasks for training: thin, id-taking wrappers around the training services."""
from celery import shared_task

from training import services

# Generous: a full CNN recipe on a slow CPU takes well over an hour.
EXECUTE_SOFT_TIME_LIMIT_S = 3 * 60 * 60
EXECUTE_TIME_LIMIT_S = EXECUTE_SOFT_TIME_LIMIT_S + 300


@shared_task(
    name="training.tasks.training_run_execute",
    # Acknowledged as it starts: a message still unacknowledged after CELERY_VISIBILITY_TIMEOUT (an hour) is handed
    # to another trainer, and a run takes up to 3 h. Nothing is lost so: the run's state is in the database, and the
    # reaper resumes a run whose trainer died and sends again the message of one still queued.
    acks_late=False,
    soft_time_limit=EXECUTE_SOFT_TIME_LIMIT_S,
    time_limit=EXECUTE_TIME_LIMIT_S,
    ignore_result=True,
)
def training_run_execute(run_id: int) -> None:
    # The service claims the run atomically, so a redelivered message is a no-op.
    services.training_run_execute(run_id=run_id)


# Ended before the next reap is due (every minute), so slow ones never add up; the next one is its retry.
@shared_task(name="training.tasks.training_runs_reap", soft_time_limit=40, time_limit=50, ignore_result=True)
def training_runs_reap() -> dict:
    return services.training_runs_reap()
