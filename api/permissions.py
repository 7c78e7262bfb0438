"""Who may use which endpoint: read-only tokens only read; staff manage training with their admin permissions."""
from rest_framework.permissions import SAFE_METHODS, BasePermission, IsAdminUser

from accounts.models import ApiToken

STAFF_ONLY = "Only staff members may manage training runs and checkpoints."


class StaffWithModelPermissions(IsAdminUser):
    """Staff holding the Django permissions that the same action needs in the admin.

    A view names them per method in ``required_permissions``; HEAD and OPTIONS
    need what GET needs. Without this a staff member allowed only to look at runs
    in the admin could start, cancel or activate through the API.
    """

    message = STAFF_ONLY

    def has_permission(self, request, view) -> bool:
        if not super().has_permission(request, view):
            return False
        method = "GET" if request.method in ("HEAD", "OPTIONS") else request.method
        missing = [perm for perm in view.required_permissions.get(method, ()) if not request.user.has_perm(perm)]
        if missing:
            self.message = f"Your account lacks the permission this needs ({', '.join(missing)})."
        return not missing


class TokenScopeAllows(BasePermission):
    """A read-only API token reads (GET, HEAD, OPTIONS) and nothing else, whatever its user may do."""

    message = "This API token is read-only: it can read, never upload, change or start anything."

    def has_permission(self, request, view) -> bool:
        token = request.auth
        return not (isinstance(token, ApiToken) and token.read_only) or request.method in SAFE_METHODS
