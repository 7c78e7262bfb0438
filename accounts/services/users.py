"""Accounts: sign-up and its allowance, renaming, the demo account, the lock a change takes, log-ins, deletion."""
import logging
import time

from django.conf import settings
from django.contrib.auth import get_user_model
from django.db import IntegrityError, transaction
from django.utils import timezone

from accounts.selectors import username_taken
from accounts.services.email_change_notices import email_change_notices_finished
from accounts.services.login_lockout import address_key
from classifier.services import uploads_delete_all, uploads_lock_for_owners
from classifier.throttling import TOLERANCE_S, allowance_take
from mnistsite.env import rate_parse

logger = logging.getLogger(__name__)


class UsernameTaken(Exception):
    """Another account has the name, in this case or another: stored after the sign-up form checked it (the same
    form sent twice at once, by a double click, or two people choosing one name at once); nothing was stored."""


def user_sign_up(*, username: str, password: str, email: str = ""):
    """Store a new account, its name and email address normalized as Django's sign-up form stores them, with where
    its address stands (email_address_state_ensure); returns it.

    Raises UsernameTaken when the database refuses the name as taken: the form's check, in any case, comes before
    another sign-up's account is stored, and the database's unique index (accounts/0009), in any case too, is what
    refuses the second of two sign-ups at once.
    """
    # Here, not at the top: that module takes its lock on an account from this one.
    from accounts.services.email_addresses import email_address_state_ensure

    model = get_user_model()
    try:
        with transaction.atomic():
            user = model.objects.create_user(username=username, email=email, password=password)
            email_address_state_ensure(user=user)
    except IntegrityError:
        # Compared as the index and the form compare names; any other refusal is no name taken, and is raised.
        if not username_taken(username=model.normalize_username(username)):
            raise
        raise UsernameTaken() from None
    return user


def user_rename(*, user, username: str) -> None:
    """Give ``user`` the name ``username``, normalized and checked as a sign-up's name is.

    Raises ValidationError for a name the account's field refuses (its characters, its length), UsernameTaken for one
    another account has in any case. For ``manage.py rename_user``: where the admin cannot be reached, as while
    accounts/0009 waits for names that differ only in case to be renamed.
    """
    model = get_user_model()
    username = model.normalize_username(username)
    model._meta.get_field(model.USERNAME_FIELD).clean(username, user)
    if username_taken(username=username, other_than=user):
        raise UsernameTaken()
    try:
        with transaction.atomic():
            model._default_manager.filter(pk=user.pk).update(**{model.USERNAME_FIELD: username})
    except IntegrityError:
        if not username_taken(username=username, other_than=user):
            raise
        raise UsernameTaken() from None
    setattr(user, model.USERNAME_FIELD, username)


# A refused sign-up (a name taken, passwords that differ) costs this share of an account: people mistype, but
# each refusal also tells whether a user name exists.
FAILED_SIGNUP_SHARE = 0.1


def signup_allowance_take(*, ip: str, share: float) -> float | None:
    """Spend ``share`` of one sign-up of the allowance of client address ``ip`` (SIGNUP_THROTTLE_RATE; a negative
    share gives some back); the seconds to wait instead when it is spent.

    Every account gets its own upload allowance, so accounts made by the hundred would multiply it. An IPv6
    client counts by its /64, as for the log-in lockout: it can pick any address in it.
    """
    rate = rate_parse(settings.SIGNUP_THROTTLE_RATE)
    if rate is None:
        return None
    count, period = rate
    try:
        retry_after = allowance_take(key=f"throttle_signups_{address_key(ip)}", now=time.time(),
                                     cost=share * period / count, period=period)
    except Exception:  # noqa: BLE001 - as for uploads: an unreachable cache must not stop people signing up
        logger.warning("sign-up throttle skipped: the cache is unavailable", exc_info=True)
        return None
    return retry_after if retry_after > TOLERANCE_S else None


class DemoUserError(ValueError):
    """The name belongs to an account that is not a demo account."""


def demo_user_ensure(*, username: str, password: str):
    """The demo account for a local install: staff, so the admin works; its password is reset each time.

    Raises DemoUserError for an existing account that is not staff, or for one whose name differs only in case: a
    mistyped name must not make someone's account an administrator with a password printed on the screen.
    """
    refusal = f"{username!r} is someone's account, not a demo account; choose another --username."
    try:
        user, created = get_user_model().objects.get_or_create(username=username)
    except IntegrityError:
        # Someone's name in another case (names are unique in any case): never theirs, whatever they are.
        raise DemoUserError(refusal) from None
    if not created and not (user.is_staff and user.is_superuser):
        raise DemoUserError(refusal)
    user.is_staff = True
    user.is_superuser = True
    # Set afresh only when it differs: a new hash (a new salt) would end every session the account has open, and
    # `make run` ensures the account at every start.
    if created or not user.check_password(password):
        user.set_password(password)
    user.save()
    return user, created


class AccountDeleteError(Exception):
    """This account cannot be deleted from its own page."""


class AccountGone(Exception):
    """The account was deleted meanwhile (from another tab of it, or by staff): nothing was changed."""


def user_lock(*, user):
    """Lock ``user``'s row until the caller's transaction ends, and return it as stored now; raises AccountGone when
    it was deleted meanwhile.

    For every change a signed-in tab makes to its own account: a deletion committed between the request reading the
    account and writing it would otherwise make that write a 500, or worse, make a save of the whole user insert the
    deleted account back. Locked, a deletion in another tab waits for the change (and deletes it with the account).
    Not a key lock: rows that refer to the account (its uploads in other tabs) are stored meanwhile, where a
    password change would hold them for as long as the new password is hashed.
    """
    locked = get_user_model().objects.select_for_update(no_key=True).filter(pk=user.pk).first()
    if locked is None:
        raise AccountGone()
    return locked


def user_login_record(*, user) -> None:
    """Record that ``user`` logged in just now (``last_login``), as Django's own receiver of ``user_logged_in`` does,
    but on the row as it is: an account deleted since its password was checked is left deleted, its session then
    signing nobody in, where Django's save would fail the log-in with a server error.

    The site's log-in page locks the account first and refuses such a log-in (accounts.views.ThrottledLoginView);
    this is for every other log-in form (the admin's).
    """
    now = timezone.now()
    get_user_model().objects.filter(pk=user.pk).update(last_login=now)
    user.last_login = now


def account_delete(*, user) -> None:
    """Delete the account with its uploads, predictions and token; the image files go once that commits.

    Staff cannot: a superuser's would risk the site's last administrator, and any staff account's deletion takes the
    admin's record of what it did with it (Django's history goes with its user), so another administrator decides,
    in the admin (or deactivates it, which keeps the record).
    """
    if user.is_staff or user.is_superuser:
        raise AccountDeleteError("A staff account is deleted by an administrator, in the admin: the record of what it "
                                 "did there goes with it.")
    users_delete(users=[user])


def users_delete(*, users) -> None:
    """Delete ``users`` (any accounts, administrators' included: the admin's deletion) with their uploads,
    predictions, tokens and the address change notices they no longer owe, in one transaction; the image files go
    once that commits."""
    users = sorted(users, key=lambda user: user.pk)
    with transaction.atomic():
        # Their predictions are deleted before their uploads (uploads_delete_all, as Django's cascade would); every
        # deletion of uploads locks the uploads first. Locked here as those deletions lock them, all by id, a
        # "Delete all" running in another tab, staff's deletion of some of them, or another deletion of several
        # accounts waits for this one (or this one for it) instead of the two deadlocking.
        uploads_lock_for_owners(owners=users)
        # Then the accounts themselves, before the cascade deletes any row of theirs: a change from one of their
        # tabs (user_lock, then their tokens or address) is waited for, or waits, whole. Locked only by the cascade's
        # last step, an account would be open to such a change while its tokens were gone already: the change
        # would wait for the tokens, the deletion for the account, a deadlock.
        list(get_user_model().objects.filter(pk__in=[user.pk for user in users]).order_by("pk").select_for_update()
             .values_list("pk", flat=True))
        # Their notices go too, but those still owed to an old address (email_change_notices_forget).
        email_change_notices_finished().filter(user__in=[user.pk for user in users]).delete()
        for user in users:
            uploads_delete_all(owner=user)
        get_user_model().objects.filter(pk__in=[user.pk for user in users]).delete()
