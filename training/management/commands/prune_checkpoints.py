"""Delete the epoch checkpoints nothing needs any more, and their files."""
from django.core.management.base import BaseCommand

from training import services


def _size(size: int) -> str:
    for unit, factor in (("GB", 10**9), ("MB", 10**6), ("kB", 10**3)):
        if size >= factor:
            return f"{size / factor:.1f} {unit}"
    return f"{size} bytes"


class Command(BaseCommand):
    help = (
        "Delete the epoch checkpoints of finished runs, and those whose run is gone, that are not active and that no "
        "prediction was made with, with their files. Final checkpoints, those of queued or running runs, and the "
        "last epoch checkpoint of a run that ended without a final one are kept, as is every file that no checkpoint "
        "names."
    )

    def add_arguments(self, parser):
        parser.add_argument("--dry-run", action="store_true", help="list what would be deleted, delete nothing")

    def handle(self, *args, **options):
        dry_run = options["dry_run"]
        result = services.checkpoints_prune(dry_run=dry_run)
        verb = "would delete" if dry_run else "deleted"
        for checkpoint in result.checkpoints:
            run = f"run {checkpoint.run_id}" if checkpoint.run_id is not None else "no run"
            self.stdout.write(
                f"{verb} checkpoint {checkpoint.id} ({run}, epoch {checkpoint.epoch}, {_size(checkpoint.size)}): "
                f"{checkpoint.path}"
            )
        if not result.count:
            self.stdout.write("No checkpoint to delete.")
        elif dry_run:
            self.stdout.write(
                f"Dry run: {result.count} checkpoint(s) would be deleted, freeing {_size(result.bytes_freed)}; "
                "nothing was deleted."
            )
        else:
            self.stdout.write(f"Deleted {result.count} checkpoint(s), freeing {_size(result.bytes_freed)}.")
