"""ASGI entry point."""
import os

from django.core.asgi import get_asgi_application

# A server started without a settings module gets production's: no DEBUG pages, no committed key.
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "mnistsite.settings.production")

application = get_asgi_application()
