"""The project's templates are written so that Django reads them as meant."""
import re
from pathlib import Path

from django.conf import settings

# Django reads {# ... #} on one line only: one that runs over lines is printed on the page as it stands.
_OPEN_COMMENT = re.compile(r"\{#(?!.*#\})")


def _project_templates() -> list[Path]:
    base = Path(settings.BASE_DIR)
    folders = [base / "templates", *base.glob("*/templates")]
    return sorted(path for folder in folders for path in folder.rglob("*") if path.suffix in {".html", ".txt"})


def test_no_template_comment_runs_over_lines_where_django_would_print_it():
    templates = _project_templates()
    assert len(templates) > 20  # the folders were found
    unclosed = [
        f"{path.relative_to(settings.BASE_DIR)}:{number}"
        for path in templates
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1)
        if _OPEN_COMMENT.search(line)
    ]
    assert unclosed == []
