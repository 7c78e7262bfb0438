"""Who may use which endpoint: staff manage training and checkpoints, each action needing its admin permission."""
from rest_framework.permissions import IsAdminUser

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
