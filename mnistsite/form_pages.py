"""What the address a form posts to answers to a GET: the page the form is on, saying what was not done."""
from django.contrib import messages
from django.http import HttpRequest, HttpResponse
from django.shortcuts import redirect


def form_sent_again(request: HttpRequest, *, page: str, message: str | None) -> HttpResponse:
    """A redirect to ``page`` (the URL the form is on), with ``message``, when given, saying that nothing was done.

    A form sent after the session ended (the visitor logged out in another tab) leads to the log-in page, which then
    leads to the form's address without the form: a bare "method not allowed" there would say nothing of what
    happened. ``message`` is for a form that can be sent again from the page.
    """
    if message:
        messages.info(request, message)
    return redirect(page)
