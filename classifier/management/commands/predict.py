"""Predict digits for image files or folders in this process, without a broker or database writes."""
import io
import json
from pathlib import Path

from django.core.exceptions import ValidationError
from django.core.management.base import BaseCommand, CommandError
from PIL import Image

from classifier import inference
from classifier.validation import validate_image
from training.ml.checkpoints import CheckpointError
from training.models import Checkpoint

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".jpe", ".jfif", ".gif", ".webp", ".bmp", ".dib"}


def _expand(paths: list[str]) -> list[Path]:
    found: list[Path] = []
    for raw in paths:
        path = Path(raw)
        if path.is_dir():
            # Folders recurse, picking image files only; explicit file arguments are always tried.
            found.extend(sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES))
        else:
            found.append(path)
    return found


class Command(BaseCommand):
    help = "Predict the digit in each image (folders recurse). Exits 1 if any file could not be predicted."

    def add_arguments(self, parser):
        parser.add_argument("paths", nargs="+")
        parser.add_argument("--json", action="store_true", help="One JSON object per line.")
        parser.add_argument("--checkpoint", type=int, default=None, help="Checkpoint id (default: the active one).")

    def handle(self, *args, paths: list[str], json: bool, checkpoint: int | None, **options):
        try:
            if checkpoint is not None:
                chosen = Checkpoint.objects.filter(pk=checkpoint).first()
                if chosen is None:
                    raise CommandError(f"no checkpoint with id {checkpoint}")
                loaded = inference.model_for_checkpoint(checkpoint=chosen)
            else:
                _chosen, loaded = inference.model_for_active_checkpoint()
        except inference.NoActiveCheckpointError as exc:
            raise CommandError(str(exc)) from exc
        except CheckpointError as exc:
            # Its file missing or changed (another CHECKPOINT_DIR, a damaged copy): one line, as `evaluate` says it.
            raise CommandError(f"the checkpoint cannot be loaded: {exc}") from exc

        failures = 0
        if not json:
            self.stdout.write(f"{'digit':>5}  {'confidence':>10}  path")
        for path in _expand(paths):
            row = self._predict(path, loaded)
            if "error" in row:
                failures += 1
            self._emit(row, as_json=json)
        if failures:
            self.stderr.write(f"{failures} file(s) could not be predicted")
            raise SystemExit(1)

    def _predict(self, path: Path, loaded) -> dict:
        try:
            with path.open("rb") as handle:
                # The same checks and re-encoding as a web upload, so both paths predict the same pixels.
                accepted = validate_image(handle, name=path.name)
        except OSError as exc:
            return {"path": str(path), "error": f"cannot read file: {exc.strerror or exc}"}
        except ValidationError as exc:
            return {"path": str(path), "error": " ".join(exc.messages)}
        image = Image.open(io.BytesIO(accepted.content), formats=["PNG"])
        (result,) = inference.predict_images(loaded=loaded, images=[image])
        if isinstance(result, inference.EmptyImageError):
            return {"path": str(path), "error": f"no digit found: {result}"}
        if isinstance(result, Exception):
            return {"path": str(path), "error": f"could not prepare the image: {result}"}
        return {
            "path": str(path),
            "digit": result.digit,
            "confidence": round(result.confidence, 6),
            "probabilities": [round(p, 6) for p in result.probabilities],
        }

    def _emit(self, row: dict, *, as_json: bool) -> None:
        if as_json:
            self.stdout.write(json_dumps(row))
        elif "error" in row:
            self.stdout.write(f"{'ERR':>5}  {'':>10}  {row['path']}: {row['error']}")
        else:
            self.stdout.write(f"{row['digit']:>5}  {row['confidence']:>10.1%}  {row['path']}")


def json_dumps(row: dict) -> str:
    return json.dumps(row, ensure_ascii=False)
