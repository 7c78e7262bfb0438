"""Password reset links: their allowances, their task queued, and their message sent."""
import logging
from urllib.parse import urlsplit

from django.conf import settings
from django.contrib.auth import get_user_model
from django.core.mail import EmailMessage
from django.template.loader import render_to_string
from django.urls import reverse
from django.utils.encoding import force_bytes
from django.utils.http import urlsafe_base64_encode

from accounts import selectors
from accounts.mail import duration_words
from accounts.services.login_lockout import address_key
from accounts.services.mail_allowances import Limits, MailThrottled, allowances_give_back, allowances_take, email_key
from accounts.services.mail_sending import EmailDeferred, message_send
from accounts.tokens import password_reset_token_generator
from mnistsite.env import rate_parse

logger = logging.getLogger(__name__)


class PasswordResetThrottled(MailThrottled):
    """A reset link asked for too often, from one client address or for one email address; nothing was sent."""


def _password_reset_limits(*, ip: str, email: str) -> Limits:
    """(cache key, (count, period), refusal) for each reset limit in force: the client's address, the email address."""
    limits = [
        (f"throttle_password_reset_ip_{address_key(ip)}", rate_parse(settings.PASSWORD_RESET_THROTTLE_RATE),
         "Too many reset links were asked for from your address; try again in {wait}."),
        (f"throttle_password_reset_email_{email_key(email)}", rate_parse(settings.PASSWORD_RESET_EMAIL_THROTTLE_RATE),
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
    allowances_take(limits=_password_reset_limits(ip=ip, email=email), refused=PasswordResetThrottled,
                     what="password reset")


def password_reset_allowance_give_back(*, ip: str, email: str) -> None:
    """Give back what password_reset_allowance_take spent on a request that sent nothing (the broker was down)."""
    allowances_give_back(limits=_password_reset_limits(ip=ip, email=email), what="password reset")


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


class PasswordResetEmailDeferred(EmailDeferred):
    """The mail server could not take a reset message now and may later."""


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
    sent = message_send(message=message, what="password reset email", user_ids=[user.pk for user in users],
                         deferred=PasswordResetEmailDeferred)
    return len(listed) if sent else 0
