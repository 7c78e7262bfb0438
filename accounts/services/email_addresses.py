"""An account's email address: set, its confirmation link asked for and made, and confirmed."""
import dataclasses
import enum
import hashlib

from django.conf import settings
from django.contrib.auth import get_user_model
from django.core import signing
from django.db import transaction
from django.db.models import F, Value
from django.db.models.functions import Coalesce
from django.utils import timezone

from accounts import selectors
from accounts.mail import wait_words
from accounts.models import EmailAddressState, EmailChangeNotice
from accounts.services.mail_allowances import Limits, MailThrottled, allowances_give_back, allowances_take, email_key
from accounts.services.mail_sending import task_publish
from accounts.services.users import user_lock
from mnistsite.env import rate_parse


class ConfirmationLink(enum.Enum):
    """What became of a link confirming an account's address."""

    # Owed (recorded on the account) and on its way: queued at once when the address's allowance has room, else sent
    # by the sweep once it refills, or once the broker is back. Said alike either way: whether an address was sent
    # links lately, by whichever account, is nobody else's business.
    QUEUED = "queued"
    THROTTLED = "throttled"  # asked for too often for the account lately: nothing is owed
    NO_MAIL = "no_mail"  # this site sends no email
    NOT_NEEDED = "not_needed"  # no address, or one confirmed already
    # A deactivated account: nothing sends its links (the sweep and the messages skip it), so none is owed.
    INACTIVE = "inactive"


@dataclasses.dataclass(frozen=True)
class EmailConfirmationRequest:
    link: ConfirmationLink
    refusal: str = ""  # for THROTTLED: why, and when to ask again
    retry_after: float = 0  # for THROTTLED: the seconds until "Send the link again" sends one


@dataclasses.dataclass(frozen=True)
class EmailSetResult:
    changed: bool
    confirmation: EmailConfirmationRequest
    # The confirmed address replaced or removed, owed a notice (sent by a worker, or by the sweep); "" for none.
    notice_to: str


class EmailConfirmationThrottled(MailThrottled):
    """A confirmation link asked for too often for one account; nothing was sent."""


class EmailConfirmationError(Exception):
    """A confirmation link that does not work (any more); ``reason`` says why: EXPIRED, BROKEN or CHANGED."""

    EXPIRED, BROKEN, CHANGED = "expired", "broken", "changed"

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class EmailConfirmedAlready(Exception):
    """A confirmation link for the address its account has confirmed already: it has nothing left to do."""


def _email_confirmation_account_limits(*, user_id: int) -> Limits:
    rate = rate_parse(settings.EMAIL_CONFIRMATION_THROTTLE_RATE)
    return [] if rate is None else [
        (f"throttle_email_confirmation_user_{user_id}", rate,
         "Too many confirmation links were sent for your account lately; send one again in {wait}."),
    ]


def _email_change_limits(*, user_id: int) -> Limits:
    # Apart from the links sent again: fixing a typo must not wait for the presses that sent links to the typo.
    rate = rate_parse(settings.EMAIL_CONFIRMATION_THROTTLE_RATE)
    return [] if rate is None else [(f"throttle_email_change_user_{user_id}", rate, "")]


def email_confirmation_address_limits(*, email: str) -> Limits:
    rate = rate_parse(settings.EMAIL_CONFIRMATION_THROTTLE_RATE)
    return [] if rate is None else [(f"throttle_email_confirmation_email_{email_key(email)}", rate, "")]


def allowances_wait(*, limits: Limits) -> float:
    """The seconds until ``limits`` let one more message through; 0 for now. Spends nothing."""
    try:
        allowances_take(limits=limits, refused=EmailConfirmationThrottled, what="email confirmation")
    except EmailConfirmationThrottled as exc:
        return exc.retry_after
    allowances_give_back(limits=limits, what="email confirmation")
    return 0


def email_confirmation_request(*, user, first: bool = False) -> EmailConfirmationRequest:
    """Ask for a link confirming ``user``'s address, to that address; ``first``: for an address just saved.

    Nothing is sent for no address, one confirmed already, or on a site that sends no email (the address then waits
    until the site does and its owner asks for a link). The link is owed (recorded on the account) until a message
    carries it: one message to the address lists a link for every account waiting on it (email_confirmation_send).
    It is queued once the transaction commits when the address's allowance (EMAIL_CONFIRMATION_THROTTLE_RATE) has
    room; else, or should the broker fail, the sweep (email_confirmations_sweep) sends it, with every link owed
    there by then, once it has. A link asked for while the address's allowance is spent is not refused: a stranger
    could then keep its owner from ever confirming it.

    The account's allowances bound what one account can have mailed: one for addresses saved (``first``), one for
    links sent again, counted apart, so that fixing a typo is not held up by links sent to the typo. Over either,
    nothing is owed (THROTTLED); an address saved stays saved, waiting, and its refusal says when "Send the link
    again" sends one. A deactivated account is owed none and spends nothing (INACTIVE): nothing would send it.
    Raises AccountGone, having changed and spent nothing, for an account deleted meanwhile.
    """
    with transaction.atomic():
        # The account as it is under the lock: deleted meanwhile (another tab, staff), its link would be recorded
        # for a row no longer there, which the database refuses; changed meanwhile, for an address it no longer has.
        return _email_confirmation_request(user=user_lock(user=user), first=first)


def _email_confirmation_request(*, user, first: bool) -> EmailConfirmationRequest:
    if not user.email or selectors.user_email_confirmed(user=user):
        return EmailConfirmationRequest(ConfirmationLink.NOT_NEEDED)
    if not user.is_active:
        return EmailConfirmationRequest(ConfirmationLink.INACTIVE)
    if not selectors.password_reset_by_email_available():
        return EmailConfirmationRequest(ConfirmationLink.NO_MAIL)
    from accounts.tasks import email_confirmation_send as send_task

    if first:
        try:
            allowances_take(limits=_email_change_limits(user_id=user.pk), refused=EmailConfirmationThrottled,
                             what="email address change")
        except EmailConfirmationThrottled:
            wait = allowances_wait(limits=_email_confirmation_account_limits(user_id=user.pk))
            when = f"in {wait_words(seconds=wait)}" if wait else "to have it sent"
            return EmailConfirmationRequest(
                ConfirmationLink.THROTTLED, retry_after=wait,
                refusal=f"too many addresses were saved for your account lately. Press “Send the link again” {when}.")
    else:
        try:
            allowances_take(limits=_email_confirmation_account_limits(user_id=user.pk),
                             refused=EmailConfirmationThrottled, what="email confirmation")
        except EmailConfirmationThrottled as exc:
            return EmailConfirmationRequest(ConfirmationLink.THROTTLED, refusal=str(exc), retry_after=exc.retry_after)
    EmailAddressState.objects.get_or_create(user_id=user.pk, defaults={"set_at": None})
    # The first request still owed is kept: the accounts that asked first are listed first. The last one counts
    # for giving up: each press gets its full EMAIL_CONFIRMATION_GIVE_UP_AFTER.
    now = timezone.now()
    EmailAddressState.objects.filter(user_id=user.pk).update(
        link_requested_at=Coalesce(F("link_requested_at"), Value(now)), link_last_requested_at=now)
    if not allowances_wait(limits=email_confirmation_address_limits(email=user.email)):
        kwargs = {"email": user.email}
        transaction.on_commit(lambda: task_publish(task=send_task, kwargs=kwargs,
                                                    what="an email confirmation link"))
    return EmailConfirmationRequest(ConfirmationLink.QUEUED)


def email_address_state_ensure(*, user) -> None:
    """Record when ``user``'s address was set, if nothing was recorded yet (an account just made at sign-up): the
    links mailed to it cover that moment, and confirming it must not change it."""
    if user.email:
        EmailAddressState.objects.get_or_create(user=user, defaults={"set_at": timezone.now()})


def user_email_set(*, user, email: str, by_staff: bool = False) -> EmailSetResult:
    """Set the address ``user``'s password reset links go to, once confirmed; "" removes it (an administrator resets
    the password then). Every change of an address goes through here, its owner's (sign-up aside) or staff's
    (``by_staff``, the admin's form, said so in the notice).

    A new address waits for its owner to follow the link mailed to it (email_confirmation_request): until then no
    reset link goes there, so nobody can point the links at an inbox they do not read, nor at someone else's. Saving
    the address already set asks for another link if it waits. A confirmed address replaced or removed is owed a
    notice (EmailChangeNotice, stored with the change and sent by accounts.tasks.email_change_notice_send): a
    session taken over and used to redirect the links is seen.

    Not unique: an address may serve several accounts (one message lists a link for each), and a refusal for an
    address in use would tell anyone which addresses have an account here. Reset and confirmation links sent to the
    old address stop working, as both cover the address. Raises AccountGone, having changed nothing, for an account
    deleted meanwhile.
    """
    # The domain in lower case, as sign-up stores it; the name before the @ as typed (some servers tell case apart).
    email = get_user_model().objects.normalize_email(email.strip())
    notice_to = ""
    with transaction.atomic():
        # Two changes at once (two tabs) take turns, so each notice names the address the change really replaced.
        locked = user_lock(user=user)
        changed = locked.email != email
        if changed:
            old, old_confirmed = locked.email, selectors.user_email_confirmed(user=locked)
            locked.email = email
            locked.save(update_fields=["email"])
            EmailAddressState.objects.update_or_create(
                user=locked, defaults={"set_at": timezone.now(), "confirmed_email": "", "confirmed_at": None,
                                       "link_requested_at": None, "link_last_requested_at": None,
                                       "link_claimed_at": None, "link_refused_at": None})
            if old_confirmed:
                from accounts.tasks import email_change_notice_send as notice_task

                now = timezone.now()
                owed = EmailChangeNotice.objects.create(
                    user=locked, username=locked.get_username(), address=old, by_staff=by_staff, created_at=now,
                    queued_at=now, kind=EmailChangeNotice.REPLACED if email else EmailChangeNotice.REMOVED)
                transaction.on_commit(lambda: task_publish(
                    task=notice_task, kwargs={"notice_id": owed.pk}, what="the notice of an email address change"))
                notice_to = old
        # Under the same lock: the account deleted once the address is saved would make this request raise, and the
        # owner be told, after all, that nothing was changed.
        confirmation = email_confirmation_request(user=locked, first=changed)
    user.email = email
    return EmailSetResult(changed=changed, confirmation=confirmation, notice_to=notice_to)


def _email_confirmation_digest(*, user, state: EmailAddressState | None) -> str:
    # The address and when it was set: a link stops working once the address changes, even back to the same one.
    set_at = state.set_at.isoformat() if state is not None and state.set_at is not None else ""
    return hashlib.sha256(f"{user.pk}\n{user.email}\n{set_at}".encode()).hexdigest()[:32]


def _email_address_digest(*, user_id: int, email: str) -> str:
    # The address alone: once it is the one confirmed, its link says so whenever it was set.
    return hashlib.sha256(f"{user_id}\n{email}\naddress".encode()).hexdigest()[:32]


_EMAIL_CONFIRMATION_SALT = "accounts.email-confirmation"


def email_confirmation_token_make(*, user) -> str:
    """A signed, timed token confirming ``user``'s current address; good for nothing else (its own salt)."""
    digest = _email_confirmation_digest(user=user, state=selectors.email_address_state_get(user=user))
    return signing.dumps({"u": user.pk, "d": digest, "a": _email_address_digest(user_id=user.pk, email=user.email)},
                         salt=_EMAIL_CONFIRMATION_SALT)


def email_confirmation_user_get(*, token: str):
    """The account whose current address ``token`` confirms; raises EmailConfirmationError for a token that has
    expired (EMAIL_CONFIRMATION_TIMEOUT), was made for an address since changed, or was never made here, and
    EmailConfirmedAlready for one whose address is the account's, confirmed already (a second click, a second tab)."""
    try:
        payload = signing.loads(token, salt=_EMAIL_CONFIRMATION_SALT, max_age=settings.EMAIL_CONFIRMATION_TIMEOUT)
    except signing.SignatureExpired:
        raise EmailConfirmationError(EmailConfirmationError.EXPIRED) from None
    except signing.BadSignature:
        raise EmailConfirmationError(EmailConfirmationError.BROKEN) from None
    user = get_user_model().objects.filter(pk=payload.get("u")).first() if isinstance(payload, dict) else None
    if user is None:
        raise EmailConfirmationError(EmailConfirmationError.CHANGED)
    if payload.get("a") == _email_address_digest(user_id=user.pk, email=user.email) and selectors.user_email_confirmed(
            user=user):
        raise EmailConfirmedAlready()
    if payload.get("d") != _email_confirmation_digest(user=user, state=selectors.email_address_state_get(user=user)):
        raise EmailConfirmationError(EmailConfirmationError.CHANGED)
    return user


def email_confirm(*, token: str):
    """Confirm the address ``token`` was mailed to (email_confirmation_token_make). Following a link twice does no
    harm: the second time, as for an address confirmed already, nothing changes. Raises EmailConfirmationError as
    email_confirmation_user_get does."""
    with transaction.atomic():
        try:
            pk = email_confirmation_user_get(token=token).pk
            # Checked again under the lock a change takes: an address changed meanwhile is not confirmed by this link.
            get_user_model().objects.select_for_update().filter(pk=pk).first()
            user = email_confirmation_user_get(token=token)
        except EmailConfirmedAlready:
            return
        _email_confirmed_record(user=user)


def _email_confirmed_record(*, user) -> bool:
    """Record ``user``'s current address as confirmed, under the caller's lock on the user; False when it has none
    or is confirmed already."""
    if not user.email or selectors.user_email_confirmed(user=user):
        return False
    now = timezone.now()
    EmailAddressState.objects.update_or_create(
        user=user, defaults={"confirmed_email": user.email, "confirmed_at": now},
        # No set_at when none was recorded: the link being followed covers that, and must go on working.
        create_defaults={"set_at": None, "confirmed_email": user.email, "confirmed_at": now})
    return True


def email_confirm_by_staff(*, user_id: int) -> str | None:
    """Confirm account ``user_id``'s current address without a link, for staff who made sure out of band that it is
    its owner's; returns the address, or None when the account is gone, has none, or it is confirmed already."""
    with transaction.atomic():
        # The address as it is under the lock a change takes, not as a list showed it a moment ago.
        user = get_user_model().objects.select_for_update().filter(pk=user_id).first()
        if user is None or not _email_confirmed_record(user=user):
            return None
    return user.email
