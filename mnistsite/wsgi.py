"""WSGI entry point for gunicorn."""
import os

from django.core.wsgi import get_wsgi_application

# A server started without a settings module gets production's: no DEBUG pages, no committed key.
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "mnistsite.settings.production")

application = get_wsgi_application()
