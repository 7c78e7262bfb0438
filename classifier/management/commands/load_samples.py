"""Register the shipped sample images as uploads of a `samples` user and predict them."""
from pathlib import Path

from django.conf import settings
from django.core.exceptions import ValidationError
from django.core.management.base import BaseCommand, CommandError

from classifier import services
from classifier.models import Prediction
from training.selectors import checkpoint_get_active

SAMPLE_SETS = ("mnist", "other")
# The sets shipped with the code, not a copy under MEDIA_ROOT: a media volume kept across upgrades would hold the
# first release's sets for ever.
SHIPPED_SAMPLES = Path(settings.BASE_DIR) / "media" / "samples"
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".gif", ".webp", ".bmp"}


def label_from_name(name: str) -> int | None:
    return int(name[0]) if name[:1].isdigit() else None


class Command(BaseCommand):
    help = "Load media/samples/<set>/ images as sample uploads (idempotent) and predict them."

    def add_arguments(self, parser):
        parser.add_argument("--root", type=Path, default=None, help=f"Folder holding mnist/ and other/ (default: {SHIPPED_SAMPLES}).")
        parser.add_argument("--sync", action="store_true", help="Predict in this process instead of via the workers.")

    def handle(self, *args, root: Path | None, sync: bool, **options):
        root = root or SHIPPED_SAMPLES
        try:
            owner = services.samples_user_get_or_create()
        except services.SamplesOwnerError as exc:
            raise CommandError(str(exc)) from exc
        created = skipped = rejected = waiting = 0
        to_predict = []
        for sample_set in SAMPLE_SETS:
            folder = root / sample_set
            if not folder.is_dir():
                self.stderr.write(f"no folder {folder}; skipping the {sample_set} set")
                continue
            for path in sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES):
                try:
                    upload, is_new = services.sample_upload_get_or_create(
                        owner=owner, path=path, sample_set=sample_set, label=label_from_name(path.name)
                    )
                except ValidationError as exc:
                    rejected += 1
                    self.stderr.write(f"{path}: {' '.join(exc.messages)}")
                    continue
                if is_new:
                    created += 1
                else:
                    skipped += 1
                # New images, and old ones never predicted successfully, get a prediction; one still waiting for a
                # worker (queued by an earlier run) gets no second one, which each run would add again.
                if is_new:
                    to_predict.append(upload)
                    continue
                statuses = set(upload.predictions.values_list("status", flat=True))
                if statuses & {Prediction.Status.PENDING, Prediction.Status.RUNNING}:
                    waiting += 1
                elif Prediction.Status.DONE not in statuses:
                    to_predict.append(upload)
        loaded = f"{created} new, {skipped} already loaded, {rejected} rejected"
        if waiting:
            loaded += f", {waiting} still waiting for a worker"
        if to_predict and checkpoint_get_active() is None:
            # Their predictions would only fail, saying so; a later run of this command predicts them.
            self.stdout.write(
                self.style.WARNING(
                    f"{loaded}; no model is active yet, so {len(to_predict)} image(s) wait unread: run load_samples "
                    "again once a checkpoint is active"
                )
            )
            return
        pending = (services.predictions_rerun(uploads=to_predict, priority=services.PRIORITY_BULK) if not sync
                   else self._predict_now(to_predict))
        self.stdout.write(
            self.style.SUCCESS(f"{loaded}; {len(pending)} prediction(s) {'made' if sync else 'queued'}")
        )

    def _predict_now(self, uploads):
        # Running here, not on a worker: nothing is published, so no broker is needed.
        predictions = services.predictions_rerun(uploads=uploads, publish=False)
        try:
            services.predictions_execute(prediction_ids=[prediction.pk for prediction in predictions])
        except services.ModelUnavailableError as exc:
            raise CommandError(
                f"The active model could not be loaded ({exc}; the log above says why). The samples are stored, "
                "their predictions waiting: a worker computes them once a model loads."
            ) from exc
        return predictions
