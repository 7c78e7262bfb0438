"""Make sure an active checkpoint exists, training the default model when there is none."""
from django.core.management import call_command
from django.core.management.base import BaseCommand

from training.selectors import checkpoint_get_active


class Command(BaseCommand):
    help = "Train and activate the default model unless a checkpoint is already active."

    def handle(self, *args, **options):
        active = checkpoint_get_active()
        if active is not None:
            self.stdout.write(f"Active model: {active}")
            return
        self.stdout.write("No active checkpoint: training the default model (a few minutes on a CPU).")
        call_command("train", sync=True, activate=True, stdout=self.stdout, stderr=self.stderr)
