"""Password reset tokens: Django's, also ended by any change of the account's address, even back to the same one."""
from django.contrib.auth.tokens import PasswordResetTokenGenerator

from accounts.models import EmailAddressState


class AddressBoundPasswordResetTokenGenerator(PasswordResetTokenGenerator):
    """Django's reset token, which covers the password, the last log-in and the address as it reads now.

    The address alone would let a link mailed to it work again once the account is given another and then the
    first back, which leaves it waiting for confirmation (accounts.services.user_email_set): no reset link is to
    work there until it is confirmed again. So the token covers when the address was last set, too. An account with
    no such moment recorded gets Django's token as it is.
    """

    def _make_hash_value(self, user, timestamp) -> str:
        value = super()._make_hash_value(user, timestamp)
        set_at = EmailAddressState.objects.filter(user_id=user.pk).values_list("set_at", flat=True).first()
        return value if set_at is None else f"{value}{set_at.isoformat()}"


password_reset_token_generator = AddressBoundPasswordResetTokenGenerator()
