"""Template context for account links: whether sign-up is open."""
from django.conf import settings


def signup(request) -> dict:
    return {"signup_enabled": settings.SIGNUP_ENABLED}
