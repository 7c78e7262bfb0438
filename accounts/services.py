"""Account writes: the demo account, API tokens, email addresses and their confirmation, deletion, log-in counts, and
reset links."""
import contextlib
import dataclasses
import datetime as dt
import enum
import hashlib
import ipaddress
import logging
import secrets
import smtplib
import time
import unicodedata
from urllib.parse import urlsplit

from celery.exceptions import SoftTimeLimitExceeded
from django.conf import settings
from django.contrib.auth import get_user_model
from django.core import signing
from django.core.cache import cache
from django.core.mail import EmailMessage, get_connection
from django.db import DatabaseError, transaction
from django.db.models import F, Q, Value
from django.db.models.functions import Coalesce
from django.template.loader import render_to_string
from django.urls import reverse
from django.utils import timezone
from django.utils.encoding import force_bytes
from django.utils.http import urlsafe_base64_encode

from accounts import selectors
from accounts.mail import duration_words, mail_error_is_transient, mail_error_words, wait_words
from accounts.models import ApiToken, EmailAddressState, EmailChangeNotice, api_token_digest
from accounts.tokens import password_reset_token_generator
from classifier.services import uploads_lock_for_owner
from classifier.throttling import TOLERANCE_S, allowance_take
from mnistsite.env import rate_parse

logger = logging.getLogger(__name__)

LOCKOUT_THRESHOLD = getattr(settings, "LOGIN_FAILURE_LIMIT", 5)
LOCKOUT_SECONDS = getattr(settings, "LOGIN_LOCKOUT_SECONDS", 300)


# Failures allowed per (account, address) pair, per address (several people may share one), and per account
# from everywhere together. The pair's limit is the strict one: an attacker guessing at an account locks out only
# themselves, and the account's owner, elsewhere, is locked out only by guessing on a scale one address cannot do.
ADDRESS_FACTOR = 4
ACCOUNT_FACTOR = 10


def address_key(ip: str) -> str:
    """The address counted: an IPv6 client's whole /64, which one client commonly holds (and can pick from)."""
    try:
        address = ipaddress.ip_address(ip)
    except ValueError:
        return ip
    if address.version == 4:
        return str(address)
    if address.ipv4_mapped is not None:
        return str(address.ipv4_mapped)
    return str(ipaddress.ip_network(f"{address}/64", strict=False))


def _limits(*, username: str, ip: str) -> dict[str, int]:
    account, ip = username.lower()[:150], address_key(ip)
    return {
        f"login-failures:pair:{account}:{ip}": LOCKOUT_THRESHOLD,
        f"login-failures:ip:{ip}": LOCKOUT_THRESHOLD * ADDRESS_FACTOR,
        f"login-failures:user:{account}": LOCKOUT_THRESHOLD * ACCOUNT_FACTOR,
    }


class LockoutUnavailable(Exception):
    """The cache that counts failed log-ins cannot be reached: no password is checked until it can.

    Unlike the mail and upload throttles, which let requests through meanwhile, this one holds: checked uncounted,
    passwords could be guessed without limit for as long as the cache is down (or full).
    """


@contextlib.contextmanager
def _lockout_cache():
    try:
        yield
    except Exception as exc:  # noqa: BLE001 - any cache error: nothing can be counted
        logger.warning("log-in lockout unavailable: the cache cannot be reached; no password is checked meanwhile",
                       exc_info=True)
        raise LockoutUnavailable() from exc


def login_attempt_allowed(*, username: str, ip: str) -> bool:
    """Whether a password may be checked now; counts nothing (see login_attempt_start). Raises LockoutUnavailable
    while the cache cannot be reached."""
    limits = _limits(username=username, ip=ip)
    with _lockout_cache():
        counts = cache.get_many(list(limits))
    return all(counts.get(key, 0) < limit for key, limit in limits.items())


def _count_up(key: str) -> int:
    if cache.add(key, 1, LOCKOUT_SECONDS):
        return 1
    try:
        return cache.incr(key)
    except ValueError:  # expired between the two calls
        cache.set(key, 1, LOCKOUT_SECONDS)
        return 1


def login_attempt_start(*, username: str, ip: str) -> bool:
    """Count a password check as a failure before it is made; False (do not check it) when over a limit.

    Counted first, atomically: guesses sent at once would otherwise all pass a
    look at the counts before any of them was counted. A check that succeeds
    takes its count back with login_attempt_succeeded. Raises LockoutUnavailable while the cache cannot be reached.
    """
    limits = _limits(username=username, ip=ip)
    with _lockout_cache():
        counts = {key: _count_up(key) for key in limits}
        if all(counts[key] <= limit for key, limit in limits.items()):
            return True
        # Refused unchecked, it costs nothing: else one address, refused for the pair long since, would go on
        # counting against the account until its owner is locked out everywhere.
        _count_down(list(limits))
    return False


def login_attempt_succeeded(*, username: str, ip: str, log_in: bool) -> None:
    """Take back the count of a password check that succeeded; a log-in also clears the pair's failures.

    Only the pair's: a success here must not wipe out guesses made at the account from elsewhere. A cache lost
    meanwhile leaves the count (it expires): the password was right, and its owner gets in.
    """
    keys = list(_limits(username=username, ip=ip))
    with contextlib.suppress(LockoutUnavailable), _lockout_cache():
        if log_in:
            cache.delete(keys.pop(0))
        _count_down(keys)


def _count_down(keys: list[str]) -> None:
    for key in keys:
        try:
            cache.decr(key)
        except ValueError:
            pass  # expired meanwhile


def login_failures_forget(*, username: str, ip: str) -> None:
    """Clear the failed log-ins counted at one account from one address, as a log-in there would.

    For a password just reset by email: its owner, having guessed at the old one, logs in with the new one at once.
    The address's and the account's counts stay, as for a log-in: others' guesses are not wiped out. A cache that
    cannot be reached leaves them to expire: the password is set all the same.
    """
    with contextlib.suppress(LockoutUnavailable), _lockout_cache():
        cache.delete(next(iter(_limits(username=username, ip=ip))))


class MailThrottled(Exception):
    """A message asked for too often; nothing was sent. ``retry_after``: the seconds until one would be."""

    def __init__(self, message: str, *, retry_after: float) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class PasswordResetThrottled(MailThrottled):
    """A reset link asked for too often, from one client address or for one email address; nothing was sent."""


# (cache key, (count, period), refusal with a {wait} to fill in) for each limit a message is counted against.
Limits = list[tuple[str, tuple[int, float], str]]


def _allowances_take(*, limits: Limits, refused: type[MailThrottled], what: str) -> None:
    """Spend one message of each of ``limits``; raises ``refused``, having spent nothing, when one is spent.

    An unreachable cache throttles nothing: it must not keep people out of their account.
    """
    now, spent = time.time(), []
    try:
        for key, (count, period), message in limits:
            retry_after = allowance_take(key=key, now=now, cost=period / count, period=period)
            if retry_after > TOLERANCE_S:
                refusal = refused(message.format(wait=wait_words(seconds=retry_after)), retry_after=retry_after)
                break
            spent.append((key, period / count, period))
        else:
            return
        # Refused for one limit: what the others spent is given back, as nothing was sent.
        for key, cost, period in spent:
            allowance_take(key=key, now=now, cost=-cost, period=period)
    except Exception:  # noqa: BLE001 - an unreachable cache must not keep people out of their account
        logger.warning("%s throttle skipped: the cache is unavailable", what, exc_info=True)
        return
    raise refusal


def _allowances_give_back(*, limits: Limits, what: str) -> None:
    """Give back what _allowances_take spent on a request that sent nothing (the broker was down)."""
    now = time.time()
    try:
        for key, (count, period), _message in limits:
            allowance_take(key=key, now=now, cost=-period / count, period=period)
    except Exception:  # noqa: BLE001 - a request not given back is only counted, as if its mail had gone
        logger.warning("could not give back a %s request: the cache is unavailable", what, exc_info=True)


def _email_key(email: str) -> str:
    # The address as Django's reset form matches it (NFKC, any case), hashed: no address is kept in the cache.
    folded = unicodedata.normalize("NFKC", email).casefold()
    return hashlib.sha256(folded.encode()).hexdigest()


def _password_reset_limits(*, ip: str, email: str) -> Limits:
    """(cache key, (count, period), refusal) for each reset limit in force: the client's address, the email address."""
    limits = [
        (f"throttle_password_reset_ip_{address_key(ip)}", rate_parse(settings.PASSWORD_RESET_THROTTLE_RATE),
         "Too many reset links were asked for from your address; try again in {wait}."),
        (f"throttle_password_reset_email_{_email_key(email)}", rate_parse(settings.PASSWORD_RESET_EMAIL_THROTTLE_RATE),
         "Reset links for this email address were asked for too often; try again in {wait}. "
         "A link already sent still works until it expires."),
    ]
    return [(key, rate, message) for key, rate, message in limits if rate is not None]


def password_reset_allowance_take(*, ip: str, email: str) -> None:
    """Count a request for a reset link against the client's address and against the email address asked for.

    Counted whether or not an account has that address, before anyone looks: an answer that depended on it would
    tell. The email address's limit (PASSWORD_RESET_EMAIL_THROTTLE_RATE) bounds what its inbox receives, as each
    request sends it one message at most (password_reset_email_send), however many accounts have the address; the
    client's (PASSWORD_RESET_THROTTLE_RATE) keeps one client from sending links to address after address. Raises
    PasswordResetThrottled, having spent nothing, when either is spent. An unreachable cache throttles nothing.
    """
    _allowances_take(limits=_password_reset_limits(ip=ip, email=email), refused=PasswordResetThrottled,
                     what="password reset")


def password_reset_allowance_give_back(*, ip: str, email: str) -> None:
    """Give back what password_reset_allowance_take spent on a request that sent nothing (the broker was down)."""
    _allowances_give_back(limits=_password_reset_limits(ip=ip, email=email), what="password reset")


def password_reset_email_publish(*, email: str) -> bool:
    """Queue the reset links for ``email`` (accounts.tasks.password_reset_email_send); False when the broker failed.

    Queued alike whether or not an account has the address, which only the worker looks up: the request does the
    same work either way, so its answer and its time tell nobody, and a slow mail server holds no web thread. The
    message carries the address alone, no token. A broker failure is logged, not raised: the caller tells the asker
    that nothing was sent, which a broker outage tells alike for every address.
    """
    from accounts.tasks import password_reset_email_send as send_task

    try:
        send_task.apply_async(kwargs={"email": email})
    except Exception:  # noqa: BLE001 - any broker error: nothing is sent, and the asker may ask again
        logger.exception("could not queue a password reset email; nothing was sent")
        return False
    return True


class EmailDeferred(Exception):
    """The mail server could not take a message now and may later; ``user_ids`` are the accounts it is for."""

    def __init__(self, message: str, *, user_ids: list[int]) -> None:
        super().__init__(message)
        self.user_ids = user_ids


class PasswordResetEmailDeferred(EmailDeferred):
    """The mail server could not take a reset message now and may later."""


def _message_send(*, message: EmailMessage, what: str, user_ids: list[int],
                  deferred: type[EmailDeferred] = EmailDeferred, refusals: list | None = None) -> bool:
    """Send ``message`` (the ``what`` for ``user_ids``); False when the server refused it for good (a 5xx answer: no
    such mailbox), which is logged, and the refusal added to ``refusals`` when given. Raises ``deferred`` when the
    server cannot take it now and may later, or stalled until the task's soft time limit (SoftTimeLimitExceeded).

    A server that stalled may have kept the message before it stopped answering, and then gets it again: every
    message here is safe to receive twice (a reset link works once, and none after the password changed; a
    confirmation link confirms once; a notice says the same again).
    """
    sent = False
    try:
        with get_connection() as connection:
            try:
                connection.send_messages([message])
            except SoftTimeLimitExceeded:
                _connection_abandon(connection)
                raise
            sent = True
    except Exception as exc:
        if sent:
            # The message went; only saying goodbye failed.
            logger.warning("the mail server failed after the %s was sent: %s", what, mail_error_words(exc))
            return True
        if not (isinstance(exc, SoftTimeLimitExceeded) or mail_error_is_transient(exc)):
            if isinstance(exc, smtplib.SMTPException):
                logger.error("the mail server refused the %s to users %s: %s", what, user_ids, mail_error_words(exc))
                if refusals is not None:
                    refusals.append(exc)
                return False
            raise
        raise deferred(
            f"the mail server could not take a {what} now: {mail_error_words(exc)}", user_ids=user_ids
        ) from exc
    return True


def _connection_abandon(connection) -> None:
    """Close a mail connection without saying goodbye: a server that stalled would keep the goodbye waiting for
    EMAIL_TIMEOUT, time the task no longer has before its hard time limit ends its process."""
    smtp = getattr(connection, "connection", None)
    if smtp is not None:
        with contextlib.suppress(OSError):
            smtp.close()
        connection.connection = None


# The most accounts one reset message lists, so that accounts made by the hundred with someone's address cannot
# make it endless; the oldest first, which accounts made later to fill it cannot push out.
PASSWORD_RESET_ACCOUNTS_PER_MESSAGE = 10


def _password_reset_message(*, recipient: str, users: list, unlisted: int, site) -> EmailMessage:
    """The message to ``recipient`` with a link for each of ``users``, from SITE_URL: a request's Host header, which
    the asker chooses, never names it."""
    accounts = []
    for user in users:
        path = reverse("password_reset_confirm", kwargs={
            "uidb64": urlsafe_base64_encode(force_bytes(user.pk)),
            "token": password_reset_token_generator.make_token(user)})
        accounts.append({"username": user.get_username(), "reset_url": f"{site.scheme}://{site.netloc}{path}"})
    context = {
        "accounts": accounts,
        "unlisted": unlisted,
        "domain": site.netloc,
        "link_valid_for": duration_words(seconds=settings.PASSWORD_RESET_TIMEOUT),
    }
    # One line: a header cannot hold a line break.
    subject = "".join(render_to_string("registration/password_reset_subject.txt", context).splitlines())
    body = render_to_string("registration/password_reset_email.txt", context)
    return EmailMessage(subject, body, settings.DEFAULT_FROM_EMAIL, [recipient])


def password_reset_email_send(*, email: str, user_ids: list[int] | None = None) -> int:
    """Mail ``email`` one message with a reset link for each account that has it (selectors.password_reset_user_list);
    returns how many links it carried, none when no account has the address.

    One message, whatever the number of accounts: addresses are not unique, and a message each would multiply what
    the email address's limit lets through. Only confirmed addresses get one (selectors.password_reset_user_list):
    anyone may give an account someone else's.
    It lists PASSWORD_RESET_ACCOUNTS_PER_MESSAGE at most, and says how many more there are. It goes to the address
    as an account stored it, and lists only the accounts stored with that very spelling (some servers tell the case
    of the name before the @ apart): the spelling asked for when an account has it, else the oldest account's.

    ``user_ids`` limits it to those accounts: a retry carries the links of the first try, none for accounts given
    the address since. A message the server refuses for good (a 5xx answer: no such mailbox) is logged, not sent
    again; one it cannot take now, or takes no answer from before the task's soft time limit, raises
    PasswordResetEmailDeferred. A message sent twice (a worker lost before its task was acknowledged, a server that
    kept it and then stalled) does no harm: each link works once, and none after the password changed.
    """
    users = selectors.password_reset_user_list(email=email, user_ids=user_ids)
    if not users:
        return 0
    asked = get_user_model().objects.normalize_email(email.strip())
    recipient = asked if any(user.email == asked for user in users) else users[0].email
    users = [user for user in users if user.email == recipient]
    listed = users[:PASSWORD_RESET_ACCOUNTS_PER_MESSAGE]
    message = _password_reset_message(recipient=recipient, users=listed, unlisted=len(users) - len(listed),
                                      site=urlsplit(settings.SITE_URL))
    sent = _message_send(message=message, what="password reset email", user_ids=[user.pk for user in users],
                         deferred=PasswordResetEmailDeferred)
    return len(listed) if sent else 0


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


def _email_confirmation_address_limits(*, email: str) -> Limits:
    rate = rate_parse(settings.EMAIL_CONFIRMATION_THROTTLE_RATE)
    return [] if rate is None else [(f"throttle_email_confirmation_email_{_email_key(email)}", rate, "")]


def _allowances_wait(*, limits: Limits) -> float:
    """The seconds until ``limits`` let one more message through; 0 for now. Spends nothing."""
    try:
        _allowances_take(limits=limits, refused=EmailConfirmationThrottled, what="email confirmation")
    except EmailConfirmationThrottled as exc:
        return exc.retry_after
    _allowances_give_back(limits=limits, what="email confirmation")
    return 0


def _task_publish(*, task, kwargs: dict, what: str, expires: float | None = None) -> bool:
    try:
        task.apply_async(kwargs=kwargs, expires=expires)
    except Exception:  # noqa: BLE001 - any broker error: what it was for is owed in the database, and swept
        logger.exception("could not queue %s; a sweep queues it once the broker is back", what)
        return False
    return True


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
            _allowances_take(limits=_email_change_limits(user_id=user.pk), refused=EmailConfirmationThrottled,
                             what="email address change")
        except EmailConfirmationThrottled:
            wait = _allowances_wait(limits=_email_confirmation_account_limits(user_id=user.pk))
            when = f"in {wait_words(seconds=wait)}" if wait else "to have it sent"
            return EmailConfirmationRequest(
                ConfirmationLink.THROTTLED, retry_after=wait,
                refusal=f"too many addresses were saved for your account lately. Press “Send the link again” {when}.")
    else:
        try:
            _allowances_take(limits=_email_confirmation_account_limits(user_id=user.pk),
                             refused=EmailConfirmationThrottled, what="email confirmation")
        except EmailConfirmationThrottled as exc:
            return EmailConfirmationRequest(ConfirmationLink.THROTTLED, refusal=str(exc), retry_after=exc.retry_after)
    EmailAddressState.objects.get_or_create(user_id=user.pk, defaults={"set_at": None})
    # The first request still owed is kept: the accounts that asked first are listed first. The last one counts
    # for giving up: each press gets its full EMAIL_CONFIRMATION_GIVE_UP_AFTER.
    now = timezone.now()
    EmailAddressState.objects.filter(user_id=user.pk).update(
        link_requested_at=Coalesce(F("link_requested_at"), Value(now)), link_last_requested_at=now)
    if not _allowances_wait(limits=_email_confirmation_address_limits(email=user.email)):
        kwargs = {"email": user.email}
        transaction.on_commit(lambda: _task_publish(task=send_task, kwargs=kwargs,
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
                transaction.on_commit(lambda: _task_publish(
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


def _site_message(*, template: str, context: dict, recipient: str) -> EmailMessage:
    site = urlsplit(settings.SITE_URL)
    context = {**context, "domain": site.netloc, "site_url": f"{site.scheme}://{site.netloc}"}
    # One line: a header cannot hold a line break.
    subject = "".join(render_to_string(f"registration/{template}_subject.txt", context).splitlines())
    body = render_to_string(f"registration/{template}_email.txt", context)
    return EmailMessage(subject, body, settings.DEFAULT_FROM_EMAIL, [recipient])


# The most accounts one confirmation message lists, as for reset messages; the rest stay owed, for the next one.
EMAIL_CONFIRMATION_ACCOUNTS_PER_MESSAGE = 10
# How long a sender's claim on what it mails holds others off: far beyond one try (the task's 90 s time limit), so
# that only a sender lost with its worker (killed, its machine gone) loses it, and the sweep then sends it again.
MAIL_CLAIM_LEASE = dt.timedelta(minutes=3)
# Past this since it was last asked for, a link owed is given up, with an error: the mail server has refused it for a
# day.
EMAIL_CONFIRMATION_GIVE_UP_AFTER = dt.timedelta(days=1)


def _link_owed(*, now: dt.datetime) -> Q:
    """The EmailAddressState rows whose link is owed and claimed by no sender (or by one lost)."""
    return Q(link_requested_at__isnull=False) & (
        Q(link_claimed_at__isnull=True) | Q(link_claimed_at__lt=now - MAIL_CLAIM_LEASE))


def email_confirmation_send(*, email: str) -> int:
    """Mail ``email`` one message with a link for every account waiting on it (its address, not confirmed), from
    SITE_URL, if a link is owed (email_confirmation_request); returns how many links it carried.

    The accounts owed a link come first, the one that asked first first, then the others waiting,
    EMAIL_CONFIRMATION_ACCOUNTS_PER_MESSAGE at most: links still owed beyond those go in another message. The links
    owed are claimed first (MAIL_CLAIM_LEASE), so that two sends for one address (a message delivered twice, the
    sweep's and the request's) mail each once. Each message spends the address's allowance; with it spent, nothing
    is sent, and the sweep (email_confirmations_sweep) sends the links once it refills. Raises EmailDeferred when
    the mail server cannot take it now: the links stay owed and the allowance is given back. A permanent refusal is
    logged, and the links are owed no more; one of the address itself (no such mailbox) is recorded on each account
    listed (EmailAddressState.link_refused_at), for its Account page to say, until a message to it is taken.
    """
    from accounts.tasks import email_confirmation_send as send_task

    now = timezone.now()
    waiting = selectors.email_confirmation_waiting_list(email=email)
    owed = [user.pk for user in waiting if user.link_requested_at is not None
            and (user.link_claimed_at is None or user.link_claimed_at < now - MAIL_CLAIM_LEASE)]
    if not owed:
        return 0
    limits = _email_confirmation_address_limits(email=email)
    try:
        _allowances_take(limits=limits, refused=EmailConfirmationThrottled, what="email confirmation")
    except EmailConfirmationThrottled:
        return 0
    # Each row claimed only while still owed and unclaimed: of two senders at once, one gets it.
    claimed = {pk for pk in owed[:EMAIL_CONFIRMATION_ACCOUNTS_PER_MESSAGE]
               if EmailAddressState.objects.filter(_link_owed(now=now), user_id=pk, user__email=email).update(
                   link_claimed_at=now)}
    if not claimed:
        _allowances_give_back(limits=limits, what="email confirmation")
        return 0
    mine = EmailAddressState.objects.filter(user_id__in=claimed, link_claimed_at=now)
    # Those claimed, then those waiting without having asked; not those another sender is mailing.
    listed = [user for user in waiting if user.pk in claimed or user.link_requested_at is None][
        :EMAIL_CONFIRMATION_ACCOUNTS_PER_MESSAGE]
    site = urlsplit(settings.SITE_URL)
    try:
        accounts = [{"username": user.get_username(), "confirm_url": f"{site.scheme}://{site.netloc}" + reverse(
            "email_confirm", kwargs={"token": email_confirmation_token_make(user=user)})} for user in listed]
        message = _site_message(template="email_confirmation", recipient=email, context={
            "accounts": accounts,
            "unlisted": len(waiting) - len(listed),
            "link_valid_for": duration_words(seconds=settings.EMAIL_CONFIRMATION_TIMEOUT),
        })
        refusals: list = []
        sent = _message_send(message=message, what="email confirmation link", user_ids=[user.pk for user in listed],
                             refusals=refusals)
    except BaseException:
        # Owed still: for this task's retry, or the sweep.
        mine.update(link_claimed_at=None)
        _allowances_give_back(limits=limits, what="email confirmation")
        raise
    # Owed no more, unless the address changed meanwhile (which cleared the claim).
    mine.update(link_requested_at=None, link_last_requested_at=None, link_claimed_at=None)
    # The address itself refused (no such mailbox), or taken after all: said on the Account page of every account
    # the message listed, while that is still its address. Not a refusal of the site's sender or password: that is
    # no fault of the address.
    recipient_refused = any(isinstance(exc, smtplib.SMTPRecipientsRefused) for exc in refusals)
    if sent or recipient_refused:
        EmailAddressState.objects.filter(user_id__in=[user.pk for user in listed], user__email=email).update(
            link_refused_at=None if sent else timezone.now())
    if len(owed) > len(claimed):
        _task_publish(task=send_task, kwargs={"email": email}, what="the next email confirmation message")
    return len(listed) if sent else 0


def email_confirmations_sweep() -> int:
    """Queue a message (email_confirmation_send) for every address owed a link whose allowance has room, and give
    up (with an error in the log) on links not asked for again for EMAIL_CONFIRMATION_GIVE_UP_AFTER; returns how
    many were queued.

    Every minute (CELERY_BEAT_SCHEDULE): links wait here, not on the broker, for an address's allowance to refill,
    for a broker that was down when they were asked for, or for a worker lost while it mailed them. Each message
    expires when the next sweep is due, so that none pile up while no worker takes them.
    """
    from accounts.tasks import email_confirmation_send as send_task

    now = timezone.now()
    owed = EmailAddressState.objects.filter(_link_owed(now=now), user__is_active=True).exclude(user__email="").exclude(
        user__email=F("confirmed_email"))
    stale = Q(link_last_requested_at__lt=now - EMAIL_CONFIRMATION_GIVE_UP_AFTER) | Q(
        link_last_requested_at__isnull=True, link_requested_at__lt=now - EMAIL_CONFIRMATION_GIVE_UP_AFTER)
    for user_id in owed.filter(stale).values_list("user_id", flat=True):
        # Not if asked for again meanwhile.
        if EmailAddressState.objects.filter(_link_owed(now=now), stale, user_id=user_id).update(
                link_requested_at=None, link_last_requested_at=None):
            logger.error("gave up on the email confirmation link owed to user %s for a day, unsent", user_id)
    queued = 0
    for email in owed.values_list("user__email", flat=True).distinct().order_by("user__email"):
        if not _allowances_wait(limits=_email_confirmation_address_limits(email=email)) and _task_publish(
                task=send_task, kwargs={"email": email}, what="an email confirmation message",
                expires=selectors.email_confirmation_sweep_interval()):
            queued += 1
    return queued


def email_change_notice_send(*, notice_id: int) -> bool:
    """Send notice ``notice_id`` (EmailChangeNotice) if it is still owed, and record it sent: should someone else
    have changed the address, its owner learns before a reset link goes elsewhere. Sent even when the account is gone
    since. False when it was sent already, given up, or the server refused it for good (logged; given up). Raises
    EmailDeferred when the mail server cannot take it now: it stays owed."""
    now = timezone.now()
    # Claimed first, while owed and unclaimed (MAIL_CLAIM_LEASE): of two copies of the task at once, one sends it.
    # The try is noted too: the sweep leaves a notice a worker is trying alone.
    if not EmailChangeNotice.objects.filter(
            Q(claimed_at__isnull=True) | Q(claimed_at__lt=now - MAIL_CLAIM_LEASE), pk=notice_id,
            sent_at__isnull=True, given_up_at__isnull=True).update(claimed_at=now, queued_at=now):
        return False
    mine = EmailChangeNotice.objects.filter(pk=notice_id, claimed_at=now)
    try:
        notice = EmailChangeNotice.objects.get(pk=notice_id)
        message = _site_message(template="email_change_notice", recipient=notice.address, context={
            "username": notice.username,
            "replaced": notice.kind == EmailChangeNotice.REPLACED,
            "by_staff": notice.by_staff,
        })
        user_ids = [notice.user_id] if notice.user_id is not None else []
        sent = _message_send(message=message, what="email change notice", user_ids=user_ids)
    except BaseException:
        mine.update(claimed_at=None)  # owed still: for this task's retry, or the sweep
        raise
    mine.update(claimed_at=None, **{"sent_at" if sent else "given_up_at": timezone.now()})
    # Kept for a deleted account only while owed: done with, it would be the last of its addresses here.
    _email_change_notices_finished().filter(pk=notice_id, user__isnull=True).delete()
    return sent


# A notice no worker has tried for this long lost its task (a broker down when it was queued, a worker lost, retries
# spent on a mail server down): the sweep queues it again. Far above the longest gap between a task's tries.
EMAIL_CHANGE_NOTICE_REQUEUE_AFTER = dt.timedelta(minutes=10)
# Past this, the address has likely changed hands or the change is old news: the notice is given up, with an error.
EMAIL_CHANGE_NOTICE_GIVE_UP_AFTER = dt.timedelta(days=1)


def email_change_notices_requeue() -> tuple[int, int]:
    """Queue again every notice still owed that no worker has tried for EMAIL_CHANGE_NOTICE_REQUEUE_AFTER, and give
    up (with an error in the log) on those owed for EMAIL_CHANGE_NOTICE_GIVE_UP_AFTER; returns (queued, given up)."""
    from accounts.tasks import email_change_notice_send as notice_task

    now = timezone.now()
    stale = EmailChangeNotice.objects.filter(sent_at__isnull=True, given_up_at__isnull=True,
                                             queued_at__lt=now - EMAIL_CHANGE_NOTICE_REQUEUE_AFTER)
    given_up = 0
    for notice in stale.filter(created_at__lt=now - EMAIL_CHANGE_NOTICE_GIVE_UP_AFTER).order_by("pk"):
        if EmailChangeNotice.objects.filter(pk=notice.pk, sent_at__isnull=True).update(given_up_at=now):
            given_up += 1
            logger.error("gave up on the notice to the address user %s replaced or removed a day ago, unsent",
                         notice.user_id)
    queued = 0
    for notice_id in stale.filter(created_at__gte=now - EMAIL_CHANGE_NOTICE_GIVE_UP_AFTER).values_list("pk",
                                                                                                         flat=True):
        # Claimed first, so that two sweeps at once queue it once.
        if EmailChangeNotice.objects.filter(pk=notice_id, queued_at__lt=now - EMAIL_CHANGE_NOTICE_REQUEUE_AFTER).update(
                queued_at=now) and _task_publish(task=notice_task, kwargs={"notice_id": notice_id},
                                                 what="an email change notice again"):
            queued += 1
    return queued, given_up


def _email_change_notices_finished():
    return EmailChangeNotice.objects.exclude(sent_at__isnull=True, given_up_at__isnull=True)


def email_change_notices_forget() -> int:
    """Delete the notices of deleted accounts that are sent or given up; returns how many.

    A deleted account's notice is kept only while still owed: its old address's owner should learn of a change made
    just before the account went. Deleting an account (users_delete) and sending a notice delete such notices at
    once; this catches those that a deletion outside them (a shell) or a race between the two left behind.
    """
    deleted, _ = _email_change_notices_finished().filter(user__isnull=True).delete()
    return deleted


class DemoUserError(ValueError):
    """The name belongs to an account that is not a demo account."""


def demo_user_ensure(*, username: str, password: str):
    """The demo account for a local install: staff, so the admin works; its password is reset each time.

    Raises DemoUserError for an existing account that is not staff: a mistyped name must not make someone's
    account an administrator with a password printed on the screen.
    """
    user, created = get_user_model().objects.get_or_create(username=username)
    if not created and not (user.is_staff and user.is_superuser):
        raise DemoUserError(f"{username!r} is someone's account, not a demo account; choose another --username.")
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
    """
    locked = get_user_model().objects.select_for_update().filter(pk=user.pk).first()
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


class ApiTokenError(ValueError):
    """A token cannot be made: its name is too long or taken, or the user has MAX_PER_USER already."""


def api_token_create(*, user, name: str = "", read_only: bool = False) -> tuple[ApiToken, str]:
    """A new API token for ``user`` and its key; the user's other tokens go on working.

    A ``read_only`` token is refused every request but GET, HEAD and OPTIONS.

    Only the key's digest is stored: the caller shows the key once, and nobody,
    staff included, can read it back. Without a name, the token is named after
    its key's first characters. Raises ApiTokenError for a name too long or
    taken, or when the user has MAX_PER_USER tokens already, and AccountGone when
    the account was deleted meanwhile.
    """
    key = secrets.token_hex(20)
    prefix = key[: ApiToken.PREFIX_LENGTH]
    name = " ".join(name.split()) or f"Token {prefix}"
    if len(name) > ApiToken.NAME_MAX_LENGTH:
        raise ApiTokenError(f"A token's name has at most {ApiToken.NAME_MAX_LENGTH} characters.")
    with transaction.atomic():
        # Two requests at once (a double click) take turns here, so the count and the name are checked in turn.
        user_lock(user=user)
        tokens = ApiToken.objects.filter(user=user)
        if tokens.count() >= ApiToken.MAX_PER_USER:
            raise ApiTokenError(f"You have {ApiToken.MAX_PER_USER} tokens already; revoke one you no longer use first.")
        if tokens.filter(name=name).exists():
            raise ApiTokenError(f"You have a token called “{name}” already; choose another name.")
        token = ApiToken.objects.create(
            user=user,
            name=name,
            digest=api_token_digest(key),
            prefix=prefix,
            created_at=timezone.now(),
            read_only=read_only,
        )
    return token, key


def api_token_revoke(*, user, token_id: int) -> bool:
    """Delete one of ``user``'s API tokens; True when it was theirs and there. Raises AccountGone for an account
    deleted meanwhile (its tokens went with it): else its tab would be told the token was revoked already."""
    with transaction.atomic():
        user_lock(user=user)
        deleted, _ = ApiToken.objects.filter(user=user, pk=token_id).delete()
    return bool(deleted)


def api_tokens_revoke_all(*, user) -> int:
    """Delete every API token of ``user`` (after a password change, when the account may have been someone else's)."""
    deleted, _ = ApiToken.objects.filter(user=user).delete()
    return deleted


def api_token_mark_used(*, token: ApiToken) -> None:
    """Record that ``token`` authenticated a request, unless that was recorded within the last LAST_USED_PRECISION."""
    now = timezone.now()
    if token.last_used_at is not None and now - token.last_used_at < ApiToken.LAST_USED_PRECISION:
        return
    try:
        # In a savepoint: the note is advisory, and a failed write must not fail, or poison, the request it rides on.
        with transaction.atomic():
            # Conditional, so concurrent requests with one token write once between them.
            ApiToken.objects.filter(pk=token.pk).filter(
                Q(last_used_at__isnull=True) | Q(last_used_at__lt=now - ApiToken.LAST_USED_PRECISION)
            ).update(last_used_at=now)
    except DatabaseError:
        logger.warning("could not record the use of API token %s", token.pk, exc_info=True)
        return
    token.last_used_at = now


def account_delete(*, user) -> None:
    """Delete the account with its uploads, predictions and token; the image files go once that commits.

    A superuser cannot: the site would risk losing its last administrator, so
    another one must do it in the admin.
    """
    if user.is_superuser:
        raise AccountDeleteError("An administrator's account is deleted by another administrator, in the admin.")
    users_delete(users=[user])


def users_delete(*, users) -> None:
    """Delete ``users`` (any accounts, administrators' included: the admin's deletion) with their uploads,
    predictions, tokens and the address change notices they no longer owe, in one transaction; the image files go
    once that commits."""
    users = sorted(users, key=lambda user: user.pk)
    with transaction.atomic():
        # Django's cascade deletes the predictions before the uploads; every deletion of uploads locks the uploads
        # first. Locked here as those deletions lock them, a "Delete all" running in another tab waits for this one
        # (or this one for it) instead of the two deadlocking. Owner by owner in id order, so two deletions of
        # several accounts wait for each other too.
        for user in users:
            uploads_lock_for_owner(owner=user)
        # Then the accounts themselves, before the cascade deletes any row of theirs: a change from one of their
        # tabs (user_lock, then their tokens or address) is waited for, or waits, whole. Locked only by the cascade's
        # last step, an account would be open to such a change while its tokens were gone already: the change
        # would wait for the tokens, the deletion for the account, a deadlock.
        list(get_user_model().objects.filter(pk__in=[user.pk for user in users]).order_by("pk").select_for_update()
             .values_list("pk", flat=True))
        # Their notices go too, but those still owed to an old address (email_change_notices_forget).
        _email_change_notices_finished().filter(user__in=[user.pk for user in users]).delete()
        get_user_model().objects.filter(pk__in=[user.pk for user in users]).delete()
