"""URL routes: pages, admin, API, accounts and health checks."""
from django.contrib import admin
from django.urls import include, path

from mnistsite import health

urlpatterns = [
    path("healthz", health.healthz, name="healthz"),
    path("readyz", health.readyz, name="readyz"),
    path("admin/", admin.site.urls),
    path("api/", include("api.urls")),
    path("accounts/", include("accounts.urls")),
    path("", include("classifier.urls")),
]
