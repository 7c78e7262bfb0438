"""Who may use which endpoint: staff alone manage training and checkpoints."""
from rest_framework.permissions import IsAdminUser


class IsStaff(IsAdminUser):
    message = "Only staff members may manage training runs and checkpoints."
