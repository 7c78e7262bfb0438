"""Account reads: a user's API token."""
from rest_framework.authtoken.models import Token


def api_token_get_for_user(*, user) -> Token | None:
    return Token.objects.filter(user=user).first()
