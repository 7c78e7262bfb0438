"""An upload's image file goes with its row, however the row goes: a deleted user's cascade as well."""
from __future__ import annotations

from django.db.models.signals import post_delete
from django.dispatch import receiver

from classifier import services
from classifier.models import Upload


@receiver(post_delete, sender=Upload, dispatch_uid="classifier.upload_file_delete")
def upload_file_delete(sender, instance: Upload, using: str, **kwargs) -> None:
    # Cascades (a user, a sample set cleared in the shell) reach no service; only this sees every deleted row.
    services.upload_files_delete_on_commit(names=[instance.image.name], using=using)
