"""Write a few real MNIST test images per digit as PNG files into media/samples/mnist/."""
from pathlib import Path

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError
from PIL import Image

from training.ml.idx import read_idx
from classifier.management.commands.load_samples import SHIPPED_SAMPLES
from training.ml.mnist_files import raw_dir


class Command(BaseCommand):
    help = "Extract the first N MNIST test images of each digit as <label>_mnist_<index>.png."

    def add_arguments(self, parser):
        parser.add_argument("--per-digit", type=int, default=5)
        parser.add_argument(
            "--output", type=Path, default=None, help=f"Folder to write to (default: {SHIPPED_SAMPLES / 'mnist'})."
        )

    def handle(self, *args, per_digit: int, output: Path | None, **options):
        output = output or SHIPPED_SAMPLES / "mnist"
        folder = raw_dir(Path(settings.DATA_DIR))
        try:
            images = read_idx(folder / "t10k-images-idx3-ubyte")
            labels = read_idx(folder / "t10k-labels-idx1-ubyte")
        except FileNotFoundError as exc:
            raise CommandError(f"MNIST test files are missing ({exc}); fetch MNIST into DATA_DIR first.") from exc
        output.mkdir(parents=True, exist_ok=True)
        written = 0
        for digit in range(10):
            # The first test images of each class: deterministic, so reruns rewrite the same files.
            indices = [i for i, label in enumerate(labels) if label == digit][:per_digit]
            for index in indices:
                path = output / f"{digit}_mnist_{index}.png"
                Image.fromarray(images[index]).save(path, format="PNG")
                written += 1
        self.stdout.write(self.style.SUCCESS(f"wrote {written} MNIST samples to {output}"))
