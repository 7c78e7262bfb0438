"""Answers to HEAD requests without their body, as HTTP wants them, whatever server runs the site."""
from django.http import HttpRequest, HttpResponse


class HeadBodyDropMiddleware:
    """A HEAD's answer keeps the GET's status and headers and loses its body.

    Django's development server drops the body itself; gunicorn sends whatever it is given, and on a kept-alive
    connection a client would read a streamed body (no Content-Length) as the start of its next answer. And a HEAD
    for a history download (some download managers send one first) would build the whole export, every image read,
    for nothing: a streamed body is closed unread instead.
    """

    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        response = self.get_response(request)
        if request.method != "HEAD":
            return response
        if response.streaming:
            # The stream given stays among the response's closers: closed with it, never read.
            response.streaming_content = []
        else:
            response.content = b""
        return response
