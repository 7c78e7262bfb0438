"""The README stays true: the tests its Guarantees name exist, its settings are read, its make targets are there."""
from __future__ import annotations

import re
from pathlib import Path

from tests.processes import REPO

README = (REPO / "README.md").read_text(encoding="utf-8")
# Where a Guarantees row names no file, its tests are in this folder.
RELIABILITY = REPO / "tests" / "reliability"


def _section(title: str) -> str:
    start = README.index(f"\n## {title}\n")
    end = README.find("\n## ", start + 1)
    return README[start : end if end >= 0 else len(README)]


def _table_rows(text: str) -> list[list[str]]:
    rows = [line for line in text.splitlines() if line.startswith("| ") and not line.startswith("| ---")]
    # Cells are split on the bars between them; a bar inside backticks (a shell pipe) is not one.
    return [re.split(r"\s\|\s(?=(?:[^`]*`[^`]*`)*[^`]*$)", row.strip().strip("|").strip()) for row in rows[1:]]


def _defined_tests(path: Path) -> set[str]:
    return set(re.findall(r"^(?:async )?def (test_\w+)\(", path.read_text(encoding="utf-8"), flags=re.MULTILINE))


def _guarantee_references() -> list[tuple[tuple[str, ...], str]]:
    """(files, name) for every test or test module each Guarantees row names.

    A row's cell reads "`tests/a.py`, `tests/b.py`: `test_x`, `test_y`; `test_z`": the files named before a colon
    hold the tests after it, up to the next semicolon; tests named alone are in tests/reliability/.
    """
    references = []
    for cells in _table_rows(_section("Guarantees")):
        for part in cells[-1].split(";"):
            head = re.match(r"\s*((?:`tests/[\w/]+\.py`(?:,\s*)?)+):", part)
            files = tuple(re.findall(r"`(tests/[\w/]+\.py)`", head.group(1))) if head else ()
            for name in re.findall(r"`(test_\w+(?:\.py)?)", part[head.end() if head else 0 :]):
                references.append((files, name))
    return references


def test_every_test_the_guarantees_name_exists_in_the_file_they_name():
    references = _guarantee_references()
    missing = []
    for files, name in references:
        paths = [REPO / file for file in files] or sorted(RELIABILITY.glob("test_*.py"))
        if name.endswith(".py"):
            found = (RELIABILITY / name).exists()
        else:
            found = any(path.exists() and name in _defined_tests(path) for path in paths)
        if not found:
            missing.append(f"{', '.join(files) or 'tests/reliability/'}: {name}")
    # Each of the table's rows names one test at least.
    assert len(references) >= len(_table_rows(_section("Guarantees")))
    assert missing == []


def test_every_setting_the_configuration_table_lists_is_read_by_the_code():
    names = {name for cells in _table_rows(_section("Configuration")) for name in re.findall(r"`([A-Z][A-Z0-9_]+)`", cells[0])}
    sources = "\n".join(
        path.read_text(encoding="utf-8")
        for pattern in ("mnistsite/**/*.py", "*.py", "scripts/*.py", "docker-compose*.yml", "Makefile", "Dockerfile")
        for path in REPO.glob(pattern)
    )
    assert len(names) > 30
    assert sorted(name for name in names if not re.search(rf"\b{name}\b", sources)) == []


def test_every_make_target_the_readme_runs_is_in_the_makefile():
    targets = set(re.findall(r"^([a-z][\w-]*):", (REPO / "Makefile").read_text(encoding="utf-8"), flags=re.MULTILINE))
    asked = set(re.findall(r"`(?:[A-Z_]+=\S+ )*make ([a-z][\w-]*)", README)) | set(re.findall(r"^make ([a-z][\w-]*)", README, flags=re.MULTILINE))
    assert {"run", "test", "bench"} <= asked
    assert sorted(asked - targets) == []


def test_every_metric_the_site_exports_is_in_the_monitoring_table():
    exported = set(re.findall(r'_family\(\s*"(mnistsite_\w+)"', (REPO / "mnistsite" / "metrics.py").read_text(encoding="utf-8")))
    monitoring = README[README.index("\n### Monitoring\n") : README.index("\n### GPU\n")]
    documented = {name for line in monitoring.splitlines() if line.startswith("| `mnistsite_")
                  for name in re.findall(r"`(mnistsite_\w+)", line.split(" | ")[0])}
    assert len(exported) > 10
    assert sorted(exported - documented) == []
