"""Delete the uploads that match filters, more than the admin takes at once, recorded in the admin's history."""
import datetime as dt

from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandError
from django.utils import timezone

from classifier import services
from classifier.services import staff_deletion
from classifier.models import Upload


def _day(value: str) -> dt.date:
    try:
        return dt.date.fromisoformat(value)
    except ValueError as exc:
        raise CommandError(f"{value!r} is not a day written YYYY-MM-DD.") from exc


def _start_of(day: dt.date) -> dt.datetime:
    # Days begin in TIME_ZONE, as the pages write times.
    return timezone.make_aware(dt.datetime.combine(day, dt.time.min))


class Command(BaseCommand):
    help = (
        "Delete the uploads matching every filter given, with their predictions and files, in transactions of at "
        "most the admin's limit each, every one recorded in the admin's history as deleted by --by. Without --yes, "
        "only says how many match."
    )

    def add_arguments(self, parser):
        parser.add_argument("--by", required=True, metavar="USERNAME",
                            help="the staff account the admin's history names as having deleted them")
        parser.add_argument("--owner", metavar="USERNAME", help="only this account's uploads")
        parser.add_argument("--sample-set", metavar="NAME", help="only this sample set's uploads")
        parser.add_argument("--before", type=_day, metavar="YYYY-MM-DD", help="only those uploaded before this day")
        parser.add_argument("--since", type=_day, metavar="YYYY-MM-DD", help="only those uploaded on this day or after")
        parser.add_argument("--yes", action="store_true", help="delete them; without it nothing is deleted")

    def handle(self, *args, by, owner, sample_set, before, since, yes, **options):
        if (owner, sample_set, before, since) == (None, None, None, None):
            raise CommandError("Give at least one filter (--owner, --sample-set, --before, --since).")
        users = get_user_model().objects
        staff = users.filter(username=by, is_staff=True, is_active=True).first()
        if staff is None:
            raise CommandError(f"No active staff account is named {by!r}.")
        matching = Upload.objects.all()
        if owner is not None:
            if not users.filter(username=owner).exists():
                raise CommandError(f"No account is named {owner!r}.")
            matching = matching.filter(owner__username=owner)
        if sample_set is not None:
            matching = matching.filter(sample_set=sample_set)
        if before is not None:
            matching = matching.filter(created_at__lt=_start_of(before))
        if since is not None:
            matching = matching.filter(created_at__gte=_start_of(since))
        # Uploads stored after the count are left alone, as the admin's "select all" leaves them.
        newest = matching.order_by("-pk").values_list("pk", flat=True).first()
        if newest is None:
            self.stdout.write("No upload matches.")
            return
        matching = matching.filter(pk__lte=newest)
        total = matching.count()
        if not yes:
            self.stdout.write(f"{total:,} uploads match; add --yes to delete them.")
            return
        deleted = 0
        # Each batch all or nothing; a run stopped midway keeps what it committed, and running it again goes on.
        while ids := list(matching.order_by("-pk").values_list("pk", flat=True)[: staff_deletion.STAFF_DELETE_MAX]):
            deleted += services.uploads_delete_by_staff(user=staff, uploads=Upload.objects.filter(pk__in=ids))
            self.stdout.write(f"deleted {deleted:,} of {total:,}")
        self.stdout.write(self.style.SUCCESS(f"Deleted {deleted:,} uploads."))
