"""mnistsite: a Django service that recognises handwritten digits."""
from mnistsite.celery import app as celery_app

__all__ = ("celery_app",)
