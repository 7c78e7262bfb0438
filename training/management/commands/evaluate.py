"""Measure a checkpoint's accuracy on the MNIST test set or on a folder of labelled images."""
import json
from pathlib import Path

from django.core.management.base import BaseCommand, CommandError

from training import selectors


class Command(BaseCommand):
    help = (
        "Evaluate a checkpoint (default: the active one) on the MNIST test set, or on DIR: images labelled by "
        "their one-digit folder's name, else their file name's first digit."
    )

    def add_arguments(self, parser):
        parser.add_argument("directory", nargs="?", type=Path, help="folder of labelled images (searched recursively)")
        parser.add_argument("--checkpoint", type=int, help="checkpoint id (default: the active checkpoint)")
        parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")

    def handle(self, *args, **options):
        from training.ml.checkpoints import CheckpointError

        checkpoint = self._checkpoint(options["checkpoint"])
        try:
            if options["directory"] is None:
                result = selectors.checkpoint_evaluate_mnist(checkpoint=checkpoint, device=options["device"])
            else:
                result = selectors.checkpoint_evaluate_folder(
                    checkpoint=checkpoint, directory=options["directory"], device=options["device"]
                )
        except (CheckpointError, FileNotFoundError, ValueError) as exc:
            raise CommandError(str(exc)) from exc

        for path, reason in result.skipped:
            self.stderr.write(f"skipped {path}: {reason}")
        self.stdout.write(f"checkpoint {checkpoint.pk} ({checkpoint.architecture}, epoch {checkpoint.epoch})")
        self.stdout.write("class  correct/total  accuracy")
        for digit, (correct, total) in result.per_class.items():
            share = f"{correct / total:.2%}" if total else "—"
            self.stdout.write(f"{digit:>5}  {correct:>7}/{total:<5}  {share:>8}")
        self.stdout.write("confusion matrix (rows: true, columns: predicted)")
        self.stdout.write("     " + "".join(f"{d:>6}" for d in range(10)))
        for digit, row in enumerate(result.confusion):
            self.stdout.write(f"{digit:>5}" + "".join(f"{count:>6}" for count in row))
        self.stdout.write(json.dumps({"accuracy": result.accuracy, "n": result.n, "checkpoint": checkpoint.pk}))

    def _checkpoint(self, checkpoint_id: int | None):
        if checkpoint_id is None:
            checkpoint = selectors.checkpoint_get_active()
            if checkpoint is None:
                raise CommandError("No checkpoint is active: train one with `manage.py train --activate` or pass --checkpoint ID.")
            return checkpoint
        try:
            return selectors.checkpoint_get(checkpoint_id=checkpoint_id)
        except selectors.Checkpoint.DoesNotExist:
            raise CommandError(f"Checkpoint {checkpoint_id} does not exist.") from None
