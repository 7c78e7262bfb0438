"""URL routes: pages, admin, API, accounts, health checks and the site icon."""
from django.contrib import admin
from django.contrib.auth.decorators import login_not_required
from django.templatetags.static import static
from django.urls import include, path
from django.utils.functional import lazy
from django.views.generic import RedirectView

from mnistsite import health

urlpatterns = [
    # Browsers ask for /favicon.ico on every page that names no icon (the admin, the API docs).
    path(
        "favicon.ico",
        login_not_required(RedirectView.as_view(url=lazy(static, str)("favicon.svg"), permanent=True)),
    ),
    path("healthz", health.healthz, name="healthz"),
    path("readyz", health.readyz, name="readyz"),
    # The admin's own password change checks the old password outside the log-in lockout; the account page's counts
    # every wrong guess (and offers to revoke the API tokens).
    path("admin/password_change/", RedirectView.as_view(pattern_name="password_change")),
    path("admin/", admin.site.urls),
    path("api/", include("api.urls")),
    path("accounts/", include("accounts.urls")),
    path("", include("classifier.urls")),
]

# A request Django refuses before any view (a Host header the site does not serve), or an error no view handled (in a
# middleware, or rendering an answer): the API's paths answer in the API's error envelope, every other path with the
# 400 or 500 page.
handler400 = "api.errors.bad_request"
handler500 = "api.errors.server_error"
