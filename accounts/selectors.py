"""Account reads: API tokens, the user behind a key, whether a name is taken, whether the site sends email, whether
an account's address is confirmed, who gets a reset link, and the mail owed."""
from __future__ import annotations

import dataclasses
import datetime as dt
import functools
import math

from django.conf import settings
from django.contrib.auth import get_user_model
from django.contrib.auth.forms import PasswordResetForm
from django.db import connection
from django.db.models import BooleanField, Case, Count, Exists, F, Min, Model, OuterRef, QuerySet, Value, When

from accounts.models import ApiToken, EmailAddressState, EmailChangeNotice, api_token_digest
from mnistsite.bound_statements import bound_cursor, field_converted, model_columns, model_rows
from mnistsite.env import rate_parse


def username_taken(*, username: str, other_than: Model | None = None) -> bool:
    """Whether an account (other than ``other_than``) has ``username`` in any case: the database's unique index on the
    upper-cased name (accounts/0009) refuses such a name, so every way of naming an account asks this first."""
    model = get_user_model()
    accounts = model._default_manager.filter(**{f"{model.USERNAME_FIELD}__iexact": username})
    return (accounts.exclude(pk=other_than.pk) if other_than is not None else accounts).exists()


def user_get_by_name(*, username: str):
    """The account a name typed in any case names, or None: no two accounts' names differ only in case (accounts/0009).

    Compared as the database compares names: on PostgreSQL "alıce" (a dotless i) names alice too.
    """
    model = get_user_model()
    return model._default_manager.filter(**{f"{model.USERNAME_FIELD}__iexact": username}).first()


def password_reset_by_email_available() -> bool:
    """Whether reset links can be sent: EMAIL_URL names a way to send mail (unset, the dummy backend drops it)."""
    return settings.EMAIL_BACKEND != "django.core.mail.backends.dummy.EmailBackend"


def password_reset_user_list(*, email: str, user_ids: list[int] | None = None) -> list:
    """The accounts a reset link for ``email`` goes to, as Django's reset form finds them: active, with a password
    that can be used, whose address is ``email`` in any case, and confirmed (user_email_confirmed); only those of
    ``user_ids`` when given."""
    users = [user for user in PasswordResetForm().get_users(email) if user_ids is None or user.pk in user_ids]
    # Only to a confirmed address: anyone may give an account someone else's, which must not receive links.
    confirmed = set(EmailAddressState.objects.filter(user_id__in=[user.pk for user in users])
                    .values_list("user_id", "confirmed_email"))
    return sorted((user for user in users if (user.pk, user.email) in confirmed), key=lambda user: user.pk)


def user_email_confirmed(*, user) -> bool:
    """Whether ``user``'s address, as it is now, is one its owner confirmed by following a link mailed to it."""
    return bool(user.email) and EmailAddressState.objects.filter(user_id=user.pk, confirmed_email=user.email).exists()


def email_address_state_get(*, user) -> EmailAddressState | None:
    return EmailAddressState.objects.filter(user_id=user.pk).first()


def email_confirmation_refused_at(*, user) -> dt.datetime | None:
    """When the mail server refused for good the last message carrying the link for ``user``'s address, as it is now
    and unconfirmed (no such mailbox, most often a typo); None when it did not."""
    if not user.email:
        return None
    return (EmailAddressState.objects.filter(user_id=user.pk).exclude(confirmed_email=user.email)
            .values_list("link_refused_at", flat=True).first())


def email_confirmation_waiting_list(*, email: str) -> list:
    """The active accounts whose address is ``email`` (this very spelling) and not confirmed, each with
    ``link_requested_at`` (None: no link owed) and ``link_claimed_at`` (when a sender took it, if one did): those
    owed a link first, the one that asked first first, then the others oldest first."""
    return list(get_user_model().objects.filter(email=email, is_active=True)
                .exclude(email_state__confirmed_email=email)
                .annotate(link_requested_at=F("email_state__link_requested_at"),
                          link_claimed_at=F("email_state__link_claimed_at"))
                .order_by(F("link_requested_at").asc(nulls_last=True), "pk"))


def email_address_state_queryset_owing_link() -> QuerySet:
    """The EmailAddressState rows owed a confirmation link that a sweep would still send: asked for and carried by
    no message yet (whether a sender holds it now or not), of an active account whose address is set and not
    confirmed. A row whose account was deactivated, or whose address was confirmed or removed since, keeps its
    request but is owed nothing: no message goes and the sweep leaves it."""
    return (EmailAddressState.objects.filter(link_requested_at__isnull=False, user__is_active=True)
            .exclude(user__email="").exclude(user__email=F("confirmed_email")))


def email_change_notice_queryset_owed() -> QuerySet:
    """The notices to a replaced or removed address neither sent nor given up yet."""
    return EmailChangeNotice.objects.filter(sent_at__isnull=True, given_up_at__isnull=True)


@dataclasses.dataclass(frozen=True)
class EmailOwed:
    count: int
    oldest_seconds: float  # 0 when none is owed


def email_owed_stats(*, now: dt.datetime) -> dict[str, EmailOwed]:
    """The mail owed now, for monitoring: confirmation links (``confirmation_link``, aged from their first request)
    and change notices (``change_notice``, aged from the change). Each is one range of its partial index of the rows
    owed (email_address_state_link_owed, email_change_notice_unsent), never a scan of every account."""
    def owed(queryset: QuerySet, since: str) -> EmailOwed:
        found = queryset.aggregate(count=Count("pk"), oldest=Min(since))
        oldest = found["oldest"]
        return EmailOwed(count=found["count"],
                         oldest_seconds=max(0.0, (now - oldest).total_seconds()) if oldest is not None else 0.0)

    return {
        "confirmation_link": owed(email_address_state_queryset_owing_link(), "link_requested_at"),
        # Its partial index is on queued_at: the planner reads the few rows it holds, whatever the order asked.
        "change_notice": owed(email_change_notice_queryset_owed(), "created_at"),
    }


EMAIL_CONFIRMATIONS_SWEEP_TASK = "accounts.tasks.email_confirmations_sweep"


def email_confirmation_sweep_interval() -> float:
    """The seconds between two sweeps of the links owed (its CELERY_BEAT_SCHEDULE entry)."""
    return min(float(entry["schedule"]) for entry in settings.CELERY_BEAT_SCHEDULE.values()
               if entry["task"] == EMAIL_CONFIRMATIONS_SWEEP_TASK)


def email_confirmation_delay_minutes() -> int:
    """The minutes a link asked for may take to be sent, working mail server and broker given: the address's
    allowance may be spent (one message refills in a period of EMAIL_CONFIRMATION_THROTTLE_RATE over its count),
    and the sweep then sends it when it next runs."""
    rate = rate_parse(settings.EMAIL_CONFIRMATION_THROTTLE_RATE)
    refill = rate[1] / rate[0] if rate is not None else 0
    return max(1, math.ceil((refill + email_confirmation_sweep_interval()) / 60))


@dataclasses.dataclass(frozen=True)
class EmailConfirmationStatus:
    address: str  # "" for none
    confirmed: bool
    # When it was confirmed, or since when it waits (set at sign-up, on the Account page or in the admin); None when
    # not known (an address set before that was recorded).
    since: dt.datetime | None


def email_confirmation_status_get(*, user) -> EmailConfirmationStatus:
    """Whether ``user``'s address is confirmed, and since when (or since when it waits), for staff."""
    state = email_address_state_get(user=user)
    confirmed = bool(user.email) and state is not None and state.confirmed_email == user.email
    since = (state.confirmed_at if confirmed else state.set_at) if state is not None else None
    return EmailConfirmationStatus(address=user.email, confirmed=confirmed, since=since if user.email else None)


def user_queryset_with_email_confirmed(*, queryset: QuerySet) -> QuerySet:
    """``queryset`` of users, each with ``email_confirmed``: whether its address is one its owner confirmed (as
    user_email_confirmed), in the same query."""
    confirmed = EmailAddressState.objects.filter(user_id=OuterRef("pk"), confirmed_email=OuterRef("email"))
    return queryset.annotate(email_confirmed=Case(When(email="", then=Value(False)), default=Exists(confirmed),
                                                  output_field=BooleanField()))


def api_token_list_for_user(*, user) -> list[ApiToken]:
    return list(ApiToken.objects.filter(user=user).order_by("-created_at", "-id"))


# The token's columns the lookup reads after the user's.
_TOKEN_COLUMNS = ("id", "name", "prefix", "created_at", "last_used_at", "read_only")


@functools.cache
def _token_user_sql() -> str:
    quote = connection.ops.quote_name
    user_model = get_user_model()
    user_table, token_table = quote(user_model._meta.db_table), quote(ApiToken._meta.db_table)
    token_columns = ", ".join(f"t.{quote(ApiToken._meta.get_field(name).column)}" for name in _TOKEN_COLUMNS)
    return (
        f"SELECT {model_columns(user_model, alias='u')}, {token_columns} FROM {user_table} u "
        f"JOIN {token_table} t ON t.{quote(ApiToken._meta.get_field('user').column)} = "
        f"u.{quote(user_model._meta.pk.column)} "
        f"WHERE t.{quote(ApiToken._meta.get_field('digest').column)} = %s"
    )


def api_token_with_user_get(*, key: str) -> ApiToken | None:
    """The API token with this key and its user (active or not, expired or not), or None.

    Every API request asks this. A hand-written statement costs half of what
    the ORM's ``select_related`` lookup does, nearly all of that in compiling it,
    and prepared (see mnistsite.bound_statements) the server plans it once a connection.
    """
    digest = api_token_digest(key)
    with bound_cursor() as cursor:
        cursor.execute(_token_user_sql(), [digest])
        rows = cursor.fetchall()
    found = model_rows(get_user_model(), rows, extra=[f"token_{name}" for name in _TOKEN_COLUMNS])
    if not found:
        return None
    user = found[0]
    token = ApiToken(
        user=user,
        digest=digest,
        **{name: field_converted(ApiToken._meta.get_field(name), getattr(user, f"token_{name}"))
           for name in _TOKEN_COLUMNS},
    )
    # Loaded, not new: saving it would update the stored row.
    token._state.adding, token._state.db = False, user._state.db
    return token
