"""The Celery application; its configuration lives in settings under CELERY_*."""
import os

from celery import Celery

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "mnistsite.settings.dev")

app = Celery("mnistsite")
# Lazy: settings are read when Celery first needs them, not at import time.
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()
