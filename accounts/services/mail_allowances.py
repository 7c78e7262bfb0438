"""How often a message may be asked for: allowances taken, given back and refused."""
import hashlib
import logging
import re
import time
import unicodedata

from accounts.mail import wait_words
from classifier.throttling import TOLERANCE_S, allowance_take

logger = logging.getLogger(__name__)


class MailThrottled(Exception):
    """A message asked for too often; nothing was sent. ``retry_after``: the seconds until one would be."""

    def __init__(self, message: str, *, retry_after: float) -> None:
        super().__init__(message)
        self.retry_after = retry_after


# (cache key, (count, period), refusal with a {wait} to fill in) for each limit a message is counted against.
Limits = list[tuple[str, tuple[int, float], str]]


def allowances_take(*, limits: Limits, refused: type[MailThrottled], what: str) -> None:
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


def allowances_give_back(*, limits: Limits, what: str) -> None:
    """Give back what allowances_take spent on a request that sent nothing (the broker was down)."""
    now = time.time()
    try:
        for key, (count, period), _message in limits:
            allowance_take(key=key, now=now, cost=-period / count, period=period)
    except Exception:  # noqa: BLE001 - a request not given back is only counted, as if its mail had gone
        logger.warning("could not give back a %s request: the cache is unavailable", what, exc_info=True)


def email_key(email: str) -> str:
    """The inbox an address reaches, as the per-address allowances count it, hashed: no address is kept in the cache.

    In any case and NFKC, as Django's reset form matches addresses; a quoted local part unquoted ("victim" and
    "\\v\\ictim" are delivered to victim, and Django's form takes them); "+tag" left out, as most mail hosts deliver
    victim+1 to victim. Else each spelling had an allowance of its own, and accounts naming the spellings of one
    address would fill its inbox.
    """
    folded = unicodedata.normalize("NFKC", email).casefold()
    local, at, domain = folded.rpartition("@")
    if len(local) >= 2 and local[0] == local[-1] == '"':
        local = re.sub(r"\\(.)", r"\1", local[1:-1])
    mailbox = local.partition("+")[0] + at + domain
    return hashlib.sha256(mailbox.encode()).hexdigest()
