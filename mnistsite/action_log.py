"""Staff actions that the admin's own forms do not record, written to the admin's history of the object."""
from __future__ import annotations

from django.contrib.admin.models import ADDITION, CHANGE, LogEntry
from django.contrib.auth.base_user import AbstractBaseUser
from django.db.models import Model


def staff_action_record(*, user: AbstractBaseUser, obj: Model, message: str, added: bool = False) -> None:
    """Record that ``user`` did ``message`` to ``obj``, whether through the admin, the API or a run they started.

    The object's History page lists it for every staff member, and the admin's "Recent actions" for ``user``:
    when a model is replaced or a run cancelled, that is where staff look for who did it.
    """
    LogEntry.objects.log_actions(user.pk, [obj], ADDITION if added else CHANGE, message, single_object=True)
