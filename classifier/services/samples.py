"""The shipped sample sets: their owner's account and their uploads."""
from __future__ import annotations

import io

from django.db import IntegrityError

from classifier.models import Upload
from classifier.services.uploads import upload_create


class SamplesOwnerError(Exception):
    """The sample sets' owner name belongs to an account someone can log in to."""


def samples_user_get_or_create():
    """The account that owns the shipped sample sets: nobody can log in to it."""
    from django.contrib.auth import get_user_model

    user_model = get_user_model()
    try:
        user, created = user_model.objects.get_or_create(username="samples", defaults={"is_active": True})
    except IntegrityError:
        # Names are unique in any case (accounts/0009): "Samples", say, made in the admin, holds the name.
        taken = user_model.objects.filter(username__iexact="samples").values_list("username", flat=True).first()
        if taken is None:
            raise
        raise SamplesOwnerError(
            f"The account \"{taken}\" holds the sample sets' owner name in another case; rename it in the admin "
            "(Users), then load the samples again."
        ) from None
    if created:
        user.set_unusable_password()
        user.save(update_fields=["password"])
    elif user.has_usable_password():
        # Signed up under that name before sign-up reserved it: whoever did would own, and could delete, the samples.
        raise SamplesOwnerError(
            "The account \"samples\" has a password, so it is not the site's own; rename it in the admin "
            "(Users), then load the samples again."
        )
    return user


def sample_upload_get_or_create(*, owner, path, sample_set: str, label: int | None) -> tuple[Upload, bool]:
    """Register one shipped sample image once per (sample set, sha256)."""
    import hashlib

    data = path.read_bytes()
    digest = hashlib.sha256(data).hexdigest()
    existing = Upload.objects.filter(sample_set=sample_set, sha256=digest).first()
    if existing is not None:
        return existing, False
    upload = upload_create(
        owner=owner,
        file=io.BytesIO(data),
        name=path.name,
        source=Upload.Source.SAMPLE,
        sample_set=sample_set,
        label=label,
    )
    return upload, True
