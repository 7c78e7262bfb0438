"""The Content-Security-Policy header of the site's own pages."""
from __future__ import annotations

from django.conf import settings
from django.http import HttpRequest, HttpResponse

# Pages whose templates are not ours to keep free of inline scripts: Django's admin and the API's Swagger UI.
EXEMPT_PREFIXES = ("/admin/", "/api/docs/")


class ContentSecurityPolicyMiddleware:
    """Adds ``CONTENT_SECURITY_POLICY`` to every HTML answer but the exempt pages'.

    The site's pages load their scripts from their own origin only, so a file
    name or any other text that escaped its escaping still could not run.
    """

    def __init__(self, get_response) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        response = self.get_response(request)
        policy = settings.CONTENT_SECURITY_POLICY
        if (
            policy
            and "Content-Security-Policy" not in response
            and response.get("Content-Type", "").startswith("text/html")
            and not request.path_info.startswith(EXEMPT_PREFIXES)
        ):
            response["Content-Security-Policy"] = policy
        return response
