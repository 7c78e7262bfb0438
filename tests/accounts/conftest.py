"""Fixtures for the account mail: a real SMTP server in this process, the reset page's queued task, and addresses
confirmed as their owners would; and how the API answers a token."""
import email
import email.policy
import socket
import threading

import pytest

RESET = "/accounts/password/reset/"


# Answers that say nothing for STALL_S once a message's data is in, as a server that hangs after taking the
# connection: STALL keeps nothing, KEEP_THEN_STALL keeps the message first (a sender cannot tell it was accepted).
STALL, KEEP_THEN_STALL = "stall", "keep, then stall"
STALL_S = 30
# Accepts the message, after SLOW_S: a second sender has time to start meanwhile.
SLOW = "slow"
SLOW_S = 1.5


class MailServer:
    """An SMTP server on 127.0.0.1 (aiosmtpd, in a thread of the test process) that keeps what it accepts.

    ``answers`` are the replies to the next messages, in turn ("421 ..." refuses one for now, None accepts it, SLOW
    accepts it after a while, STALL and KEEP_THEN_STALL hang); once they run out, every message is accepted. ``attempts`` counts every message
    offered, accepted or not. ``no_such_mailbox`` holds addresses refused for good when named as a recipient, as a
    server refuses a mailbox it does not have.
    """

    def __init__(self) -> None:
        self.received: list[email.message.EmailMessage] = []
        self.answers: list[str | None] = []
        self.attempts = 0
        self.no_such_mailbox: set[str] = set()
        self.port = 0
        self._arrived = threading.Condition()

    async def handle_RCPT(self, server, session, envelope, address, rcpt_options) -> str:
        if address in self.no_such_mailbox:
            return "550 5.1.1 No such mailbox"
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server, session, envelope) -> str:
        import asyncio

        with self._arrived:
            self.attempts += 1
            answer = self.answers.pop(0) if self.answers else None
            if answer in (None, KEEP_THEN_STALL, SLOW):
                self.received.append(email.message_from_bytes(envelope.content, policy=email.policy.default))
                self._arrived.notify_all()
        if answer == SLOW:
            await asyncio.sleep(SLOW_S)
            return "250 Message accepted"
        if answer in (STALL, KEEP_THEN_STALL):
            # Outside the lock: this session hangs, the server's other sessions go on.
            await asyncio.sleep(STALL_S)
            return "451 Too late"
        return answer or "250 Message accepted"

    def wait_for(self, count: int, *, timeout: float) -> list:
        with self._arrived:
            if not self._arrived.wait_for(lambda: len(self.received) >= count, timeout=timeout):
                raise TimeoutError(f"{len(self.received)} of {count} messages arrived in {timeout}s "
                                   f"({self.attempts} offered)")
            return list(self.received)


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture
def mail_server():
    from aiosmtpd.controller import Controller

    server = MailServer()
    server.port = _free_port()
    controller = Controller(server, hostname="127.0.0.1", port=server.port)
    controller.start()
    yield server
    controller.stop()


@pytest.fixture
def smtp_settings(settings, mail_server):
    """This process sends mail through ``mail_server``, as EMAIL_URL=smtp://127.0.0.1:<port> would have it."""
    settings.EMAIL_BACKEND = "django.core.mail.backends.smtp.EmailBackend"
    settings.EMAIL_HOST, settings.EMAIL_PORT = "127.0.0.1", mail_server.port
    settings.EMAIL_HOST_USER = settings.EMAIL_HOST_PASSWORD = ""
    settings.EMAIL_USE_TLS = settings.EMAIL_USE_SSL = False
    settings.EMAIL_TIMEOUT = 5
    return settings


@pytest.fixture
def reset_queue():
    """The real broker's inference queue, where the reset page queues its mail task; empty at the start."""
    from mnistsite.celery import app
    from tests.broker import BrokerQueue

    queue = BrokerQueue(app, "inference")
    queue.purge()
    yield queue
    queue.purge()


def run_queued(queue) -> list[dict]:
    """Take the messages off ``queue`` and run each in this process, as a worker would; returns them."""
    from mnistsite.celery import app

    messages = queue.messages()
    for message in messages:
        app.tasks[message["task"]].apply(args=message["args"], kwargs=message["kwargs"])
    return messages


@pytest.fixture
def ask_reset(reset_queue, django_capture_on_commit_callbacks):
    """Send the reset form as ``visitor``, then run what it queued on the real broker here, as a worker would (its
    mail lands in django.core.mail.outbox); returns the page's answer."""

    def ask(visitor, address: str, **extra):
        with django_capture_on_commit_callbacks(execute=True):
            response = visitor.post(RESET, {"email": address}, **extra)
        run_queued(reset_queue)
        return response

    return ask


def email_confirm(user):
    """Confirm ``user``'s address as its owner would, by the link mailed to it; returns the user."""
    from accounts.services import email_confirm as confirm
    from accounts.services import email_confirmation_token_make

    confirm(token=email_confirmation_token_make(user=user))
    return user


@pytest.fixture
def confirmed_user(django_user_model):
    """Make an account whose address its owner confirmed: ``confirmed_user(username=..., email=..., ...)``."""

    def make(**fields):
        return email_confirm(django_user_model.objects.create_user(**fields))

    return make


@pytest.fixture
def post_and_mail(reset_queue, django_capture_on_commit_callbacks):
    """Post as ``visitor``, then run the mail tasks it queued on the real broker here, as a worker would (their mail
    lands in django.core.mail.outbox); returns the page's answer."""

    def post(visitor, path: str, data: dict | None = None, **extra):
        with django_capture_on_commit_callbacks(execute=True):
            response = visitor.post(path, data or {}, **extra)
        run_queued(reset_queue)
        return response

    return post


def confirmation_path(message) -> str:
    """The path of the confirmation link in ``message`` (sent to the locmem outbox), without SITE_URL."""
    import re

    from django.conf import settings

    body = message.body if hasattr(message, "body") else message.get_content()
    return re.search(re.escape(settings.SITE_URL) + r"(/accounts/email/confirm/[^/\s]+/)", body).group(1)


def api_status(key: str) -> int:
    """The status the API answers a request with the token ``key``: 200 while it works, 401 once revoked."""
    from rest_framework.test import APIClient

    api = APIClient()
    api.credentials(HTTP_AUTHORIZATION=f"Token {key}")
    return api.get("/api/v1/predictions/").status_code
