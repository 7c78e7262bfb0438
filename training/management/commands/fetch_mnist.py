"""Download (or verify) the four MNIST IDX files into DATA_DIR."""
from django.conf import settings
from django.core.management.base import BaseCommand, CommandError


class Command(BaseCommand):
    help = "Fetch the MNIST IDX files into DATA_DIR/MNIST/raw, verifying their sha256."

    def handle(self, *args, **options):
        from training.ml.mnist_files import MnistFetchError, fetch_mnist

        try:
            fetch_mnist(settings.DATA_DIR, log=self.stdout.write)
        except MnistFetchError as exc:
            raise CommandError(str(exc)) from exc
