"""A site that serves the API under another path, for tests of what follows ROOT_URLCONF."""
from django.urls import include, path

urlpatterns = [path("elsewhere/", include("api.urls"))]
