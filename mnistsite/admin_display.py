"""What the apps' admin pages share: the project's admin stylesheet and a date short enough for a list column."""
from django.utils import timezone


class AdminStyles:
    """The project's admin stylesheet (thumbnails, the model's input, buttons, progress, charts): no inline styles."""

    class Media:
        css = {"all": ("css/admin.css",)}


def admin_when(value) -> str:
    # Django's "Dec. 4, 2026, 7:59 p.m." takes a column of its own twice as wide as this.
    return "–" if value is None else timezone.localtime(value).strftime("%Y-%m-%d %H:%M")
