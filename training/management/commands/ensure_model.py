"""Make sure an active checkpoint exists and loads, training the default model when there is none."""
from django.core.management import call_command
from django.core.management.base import BaseCommand

from training.loading import checkpoint_load_model
from training.ml.checkpoints import CheckpointError
from training.selectors import checkpoint_get_active


class Command(BaseCommand):
    help = "Train and activate the default model unless an active checkpoint loads."

    def add_arguments(self, parser):
        # For a quick model where accuracy does not matter (a smoke test, a demo on a slow machine).
        parser.add_argument("--epochs", type=int, help="train this many epochs instead of the recipe's")
        parser.add_argument("--subset", type=int, help="train on the first N training images only")

    def handle(self, *args, **options):
        active = checkpoint_get_active()
        if active is not None:
            try:
                checkpoint_load_model(checkpoint=active)
            except CheckpointError as exc:
                # Its file was deleted or changed (another CHECKPOINT_DIR?): every prediction would fail.
                self.stdout.write(f"The active model ({active}) cannot be loaded: {exc}")
            else:
                self.stdout.write(f"Active model: {active}")
                return
        else:
            self.stdout.write("No active checkpoint.")
        self.stdout.write("Training the default model (a few minutes on a CPU).")
        recipe = {name: options[name] for name in ("epochs", "subset") if options[name] is not None}
        call_command("train", sync=True, activate=True, **recipe, stdout=self.stdout, stderr=self.stderr)
        if recipe:
            # It stays active: later runs of this command keep any model that loads.
            self.stderr.write(
                "A quick model is now active; train the full recipe (`manage.py train --activate`) before real use."
            )
