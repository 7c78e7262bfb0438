"""Deleting expired sessions: Django stores one row a log-in and never deletes it by itself."""
from __future__ import annotations

from django.contrib.sessions.models import Session
from django.utils import timezone


def sessions_expired_delete() -> int:
    """Delete the sessions past their expiry date, which no request can use any more; returns how many went.

    What ``manage.py clearsessions`` does for the database's sessions, counted, so the log says what it freed.
    """
    deleted, _ = Session.objects.filter(expire_date__lt=timezone.now()).delete()
    return deleted
