"""Start a training run from the command line: queued for a worker, or trained here with --sync."""
import json
import sys
import time

from django.core.exceptions import ValidationError
from django.core.management.base import BaseCommand, CommandError

from training import services
from training.ml.config import TrainConfig
from training.models import TrainingRun


class Command(BaseCommand):
    help = "Create a training run (recipe defaults per architecture); --sync trains it in this process."

    def add_arguments(self, parser):
        parser.add_argument("--arch", choices=services.ARCHITECTURE_CHOICES, default="cnn")
        parser.add_argument("--epochs", type=int)
        parser.add_argument("--batch-size", type=int)
        parser.add_argument("--lr", type=float)
        parser.add_argument("--seed", type=int, default=0)
        parser.add_argument("--device", choices=services.DEVICE_CHOICES, default="auto")
        parser.add_argument("--subset", type=int, help="train on the first N training images only")
        parser.add_argument("--no-augment", action="store_true", help="turn augmentation off")
        parser.add_argument("--sync", action="store_true", help="train in this process instead of a worker")
        parser.add_argument(
            "--activate", action="store_true",
            help="activate the checkpoint if the run succeeds and tests at least as well as the active one",
        )

    def handle(self, *args, **options):
        recipe = TrainConfig.default_for(options["arch"])
        started = time.monotonic()
        try:
            run = services.training_run_create(
                created_by=None,
                architecture=options["arch"],
                epochs=recipe.epochs if options["epochs"] is None else options["epochs"],
                batch_size=recipe.batch_size if options["batch_size"] is None else options["batch_size"],
                learning_rate=recipe.lr if options["lr"] is None else options["lr"],
                seed=options["seed"],
                augment=recipe.augment and not options["no_augment"],
                device=options["device"],
                activate_on_success=options["activate"],
                train_subset=options["subset"],
                enqueue=not options["sync"],
            )
        except ValidationError as exc:
            raise CommandError("; ".join(f"{k}: {' '.join(v)}" for k, v in exc.message_dict.items())) from exc

        checkpoint_id = accuracy = validation_accuracy = None
        if options["sync"]:
            run = self._train_here(run)
            if run.status != TrainingRun.Status.SUCCEEDED:
                raise CommandError(f"run {run.pk} {run.status}: {run.error or 'no error recorded'}")
            final = run.checkpoints.filter(is_final=True).first()
            checkpoint_id, accuracy, validation_accuracy = final.pk, run.test_accuracy, run.validation_accuracy
            self.stderr.write(
                f"run {run.pk} succeeded: validation accuracy {validation_accuracy:.4f}, test accuracy "
                f"{accuracy:.4f}, checkpoint {checkpoint_id}"
            )
            if run.error:
                # Such as why --activate left a better active checkpoint in place.
                self.stderr.write(run.error)
        else:
            self.stderr.write(f"run {run.pk} queued for a training worker")
        # The last line is machine-readable so scripts can pick the result up.
        self.stdout.write(json.dumps({
            "run": run.pk,
            "checkpoint": checkpoint_id,
            "validation_accuracy": validation_accuracy,
            "test_accuracy": accuracy,
            "seconds": round(time.monotonic() - started, 2),
        }))

    def _train_here(self, run: TrainingRun) -> TrainingRun:
        from tqdm import tqdm

        bar = tqdm(total=1000, desc=f"run {run.pk}", unit="‰", file=sys.stderr, dynamic_ncols=True)

        def on_progress(fraction: float, epoch: int, step: int, eta_seconds: float) -> None:
            bar.set_postfix_str(f"epoch {epoch}/{run.epochs} step {step}", refresh=False)
            bar.update(int(fraction * 1000) - bar.n)

        try:
            services.training_run_execute(run_id=run.pk, on_progress=on_progress)
        except KeyboardInterrupt:
            # The run has already recorded itself as failed; a traceback would add nothing.
            raise CommandError(f"interrupted: training run {run.pk} is marked failed") from None
        finally:
            bar.close()
        run.refresh_from_db()
        return run
