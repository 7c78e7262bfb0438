"""Training survives a killed worker, and checkpoint files survive a writer killed at any instant."""
import hashlib
import os
import random
import signal
import subprocess
import sys
import textwrap
import time
from datetime import timedelta
from pathlib import Path

import pytest
from django.conf import settings
from django.utils import timezone

from tests.processes import REPO, child_env
from tests.reliability.conftest import wait_until
from training import services
from training.loading import checkpoint_load_model
from training.ml.checkpoints import CheckpointError, load_checkpoint
from training.models import Checkpoint, TrainingRun

pytestmark = pytest.mark.worker


def test_a_training_run_whose_worker_is_killed_is_resumed_from_its_last_epoch_checkpoint(
    running_private_redis, workers, active_checkpoint, settings
):
    active_sha, active_file = active_checkpoint.sha256, Path(settings.CHECKPOINT_DIR) / active_checkpoint.path
    first = workers(queues="training")
    run = services.training_run_create(
        created_by=None, architecture="mlp", epochs=3, batch_size=64, learning_rate=1e-3,
        augment=False, train_subset=8000, device="cpu",
    )

    def first_epoch_saved():
        return Checkpoint.objects.filter(run=run, is_final=False, epoch=1).exists()

    wait_until(first_epoch_saved, timeout=120, interval=0.05, what="the first epoch checkpoint")
    first.kill()  # SIGKILL to the worker's process group, in the middle of epoch 2
    first.popen.wait(timeout=10)
    run.refresh_from_db()
    assert run.status == "running" and run.heartbeat_at is not None, "the kill came too late"
    assert not Checkpoint.objects.filter(run=run, is_final=True).exists()

    # The heartbeat stops; once it is stale the reaper re-queues the run for another attempt. Its clock (the
    # database's, which ``now`` stands in for) is set past that moment rather than waited for.
    assert services.training_runs_reap()["requeued"] == []  # fresh until then
    stale = timezone.now() + timedelta(seconds=settings.TRAINING_STALE_AFTER_SECONDS + 1)
    assert services.training_runs_reap(now=stale)["requeued"] == [run.pk]
    assert TrainingRun.objects.get(pk=run.pk).status == "queued"

    second = workers(queues="training")
    wait_until(lambda: TrainingRun.objects.get(pk=run.pk).status not in ("queued", "running"), timeout=180,
               interval=0.2, what=lambda: f"the resumed run to finish:\n{second.log()[-3000:]}")
    run.refresh_from_db()
    assert run.status == "succeeded", run.error
    assert run.attempts == 2
    assert f"resuming training run {run.pk} from epoch" in second.log()
    assert len(run.metrics) == 3  # history carried over: epochs 1..3, not epoch 1 twice
    final = Checkpoint.objects.get(run=run, is_final=True)
    assert final.epoch == 3
    # The model that was serving all along is untouched: same bytes, still active, still loads.
    active_checkpoint.refresh_from_db()
    assert active_checkpoint.is_active and active_checkpoint.sha256 == active_sha
    assert hashlib.sha256(active_file.read_bytes()).hexdigest() == active_sha
    checkpoint_load_model(checkpoint=active_checkpoint)


def test_a_trainer_stopped_as_docker_stops_it_queues_its_run_again_to_resume_without_losing_an_attempt(
    running_private_redis, workers
):
    # docker-compose.yml starts the trainer so: a redeploy's SIGTERM becomes Celery's cold shutdown, which stops
    # the running task. Without it, Celery would wait for a run of hours and Docker would kill it after 10 s.
    first = workers(queues="training", REMAP_SIGTERM="SIGQUIT")
    run = services.training_run_create(
        created_by=None, architecture="mlp", epochs=3, batch_size=64, learning_rate=1e-3,
        augment=False, train_subset=8000, device="cpu",
    )
    wait_until(lambda: Checkpoint.objects.filter(run=run, is_final=False, epoch=1).exists(), timeout=120,
               interval=0.05, what="the first epoch checkpoint")
    os.kill(first.popen.pid, signal.SIGTERM)  # `docker stop` signals the container's first process only
    first.popen.wait(timeout=60)
    run.refresh_from_db()
    assert run.status != "succeeded", "the stop came too late"
    assert (run.status, run.attempts) == ("queued", 0), f"{run.status}: {run.error}\n{first.log()[-3000:]}"

    second = workers(queues="training")
    wait_until(lambda: TrainingRun.objects.get(pk=run.pk).status not in ("queued", "running"), timeout=180,
               interval=0.2, what=lambda: f"the resumed run to finish:\n{second.log()[-3000:]}")
    run.refresh_from_db()
    assert (run.status, run.attempts, run.error) == ("succeeded", 1, "")
    assert f"resuming training run {run.pk} from epoch" in second.log()
    assert [row["epoch"] for row in run.metrics] == [1, 2, 3]


def test_a_broker_restart_does_not_kill_a_training_run_in_progress(running_private_redis, workers):
    # A run can take hours; losing an attempt (of three) to every Redis restart or network blip is not acceptable.
    worker = workers(queues="training")
    run = services.training_run_create(
        created_by=None, architecture="mlp", epochs=4, batch_size=64, learning_rate=1e-3,
        augment=False, train_subset=20000, device="cpu",
    )
    wait_until(lambda: Checkpoint.objects.filter(run=run, epoch=1).exists(), timeout=120, interval=0.05,
               what="the first epoch checkpoint")
    running_private_redis.stop()
    worker.wait_for_output("Connection to broker lost", timeout=60)
    assert TrainingRun.objects.get(pk=run.pk).status == "running", "the run ended before the broker went"
    running_private_redis.start()
    wait_until(lambda: TrainingRun.objects.get(pk=run.pk).status not in ("queued", "running"), timeout=180,
               interval=0.2, what=lambda: f"the run to finish:\n{worker.log()[-3000:]}")
    run.refresh_from_db()
    assert (run.status, run.attempts) == ("succeeded", 1), run.error
    # Not cancelling running tasks on a lost connection is the settings' choice, not news to log at every loss.
    assert "In Celery 5.1" not in worker.log()


# The writers: each registers every version in the database only after save_checkpoint returned. Each line read
# forks one from this process, everything imported already (seconds a process, ten times over); the test kills
# writers, never this one, which then says how each ended.
WRITERS = textwrap.dedent(
    """
    import os, sys
    import django
    django.setup()
    import torch
    from training.ml.architectures import build_model
    from training.ml.checkpoints import save_checkpoint
    from training.services import checkpoint_register

    def write_versions(target, journal, version):
        with open(journal, "a") as log:
            # One write a line: print's text and newline are two writes unbuffered (PYTHONUNBUFFERED), and a kill
            # between them left "written" to run into "ended", which the test then never found.
            os.write(1, f"ready {os.getpid()}\\n".encode())
            while True:
                version += 1
                torch.manual_seed(version)
                model = build_model("mlp", {"hidden": 512})
                payload_args = dict(model=model, config=None, epoch=version, metrics={"version": version})
                # Journal the digest *before* writing, so a version killed after the rename is still known.
                digest, _size = save_checkpoint(target + ".probe", **payload_args)
                os.unlink(target + ".probe")
                log.write(digest + "\\n"); log.flush(); os.fsync(log.fileno())
                written, _size = save_checkpoint(target, **payload_args)
                assert written == digest, "torch.save is not deterministic; the journal would be wrong"
                checkpoint_register(path=target, run=None, epoch=version, test_accuracy=None, architecture="mlp")
                os.write(1, b"written\\n")

    target, journal = sys.argv[1], sys.argv[2]
    for line in sys.stdin:
        pid = os.fork()
        if pid == 0:
            try:
                write_versions(target, journal, int(line))
            finally:
                os._exit(1)
        _pid, status = os.waitpid(pid, 0)
        os.write(1, f"ended {os.waitstatus_to_exitcode(status)}\\n".encode())
    """
)


def test_a_checkpoint_write_killed_at_random_moments_leaves_the_old_or_the_new_file_never_a_torn_one(
    transactional_db, tmp_path
):
    target = Path(settings.CHECKPOINT_DIR) / "model.pt"
    journal = tmp_path / "journal.txt"
    script = tmp_path / "writers.py"
    script.write_text(WRITERS)
    rng = random.Random(20240601)
    log_path = tmp_path / "writers.log"
    log = open(log_path, "w")
    writers = subprocess.Popen(
        [sys.executable, str(script), str(target), str(journal)], cwd=REPO, env=child_env(PYTHONPATH=str(REPO)),
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=log, start_new_session=True, text=True,
    )
    try:
        for iteration in range(10):
            writers.stdin.write(f"{iteration * 1000}\n")
            writers.stdin.flush()
            said, pid = writers.stdout.readline().split()
            assert said == "ready", log_path.read_text()
            # The kill lands while a later version replaces a complete one, however long the first write took here.
            assert writers.stdout.readline().strip() == "written", log_path.read_text()
            time.sleep(rng.uniform(0.0, 1.5))
            os.kill(int(pid), signal.SIGKILL)
            # Past the versions it wrote meanwhile, how it ended.
            ended = next((line.split() for line in iter(writers.stdout.readline, "") if line.startswith("ended")), None)
            assert ended == ["ended", str(-signal.SIGKILL)], log_path.read_text()

            journaled = set(journal.read_text().split()) if journal.exists() else set()
            assert target.exists(), f"iteration {iteration}: a completed checkpoint disappeared"
            actual = hashlib.sha256(target.read_bytes()).hexdigest()
            assert actual in journaled, f"iteration {iteration}: the file at the path is no version that was written"
            _model, payload = load_checkpoint(target, expected_sha256=actual)
            assert payload["metrics"]["version"] == payload["epoch"]
            # Only completed writes are registered, and only ever under the real name.
            rows = list(Checkpoint.objects.values_list("path", "sha256"))
            assert all(path == "model.pt" for path, _sha in rows), rows
            for _path, sha in rows:
                assert sha in journaled
                if sha != actual:
                    # Killed between the rename and the registration: the loader refuses rather than mixing versions.
                    with pytest.raises(CheckpointError):
                        checkpoint_load_model(checkpoint=Checkpoint.objects.get(path="model.pt"))
                else:
                    checkpoint_load_model(checkpoint=Checkpoint.objects.get(path="model.pt"))
    finally:
        os.killpg(writers.pid, signal.SIGKILL)
        writers.wait(timeout=10)
        log.close()

    # Temp files a killed writer left behind never replace or shadow the real file.
    leftovers = [p for p in Path(settings.CHECKPOINT_DIR).iterdir() if p.name != "model.pt"]
    assert all(p.name.startswith(".model.pt.") and p.suffix == ".part" or ".probe" in p.name for p in leftovers), leftovers
