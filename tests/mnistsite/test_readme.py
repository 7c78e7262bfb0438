"""The README stays true: what it cites exists, its settings and commands are the code's, its make targets are there."""
from __future__ import annotations

import re
from pathlib import Path

from django.core.management import get_commands, load_command_class

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
    exported = set(re.findall(r'_(?:family|histogram)\(\s*"(mnistsite_\w+)"', (REPO / "mnistsite" / "metrics.py").read_text(encoding="utf-8")))
    monitoring = README[README.index("\n### Monitoring\n") : README.index("\n### GPU\n")]
    documented = {name for line in monitoring.splitlines() if line.startswith("| `mnistsite_")
                  for name in re.findall(r"`(mnistsite_\w+)", line.split(" | ")[0])}
    assert len(exported) > 10
    assert sorted(exported - documented) == []


# The folders of the code itself: a cited path under one of them names something the checkout holds (what a
# deployment makes, such as staticfiles/ or media/orphaned/, lies elsewhere).
CODE_FOLDERS = ("accounts", "api", "benchmarks", "classifier", "mnistsite", "scripts", "static", "templates", "tests",
                "training")
FILE_CITATION = r"[\w.-]+(?:/[\w.-]+)*\.(?:py|yml|json|ini|txt|md)"


def test_every_file_folder_and_migration_the_readmes_cite_exists():
    missing = []
    for readme in (REPO / "README.md", REPO / "benchmarks" / "README.md"):
        text = readme.read_text(encoding="utf-8")
        for cited in set(re.findall(r"`([^`\s]+)`", text)):
            if re.fullmatch(FILE_CITATION, cited):
                # A test module named alone is somewhere under tests/; another file named alone is described, not
                # located (manifest.json beside the samples, web.txt among a profile's stacks).
                if "/" in cited:
                    found = (REPO / cited).is_file()
                elif cited.startswith("test_"):
                    found = any((REPO / "tests").rglob(cited))
                else:
                    continue
            elif re.fullmatch(r"[\w.-]+(?:/[\w.-]+)*/", cited) and cited.split("/")[0] in CODE_FOLDERS:
                found = (REPO / cited).is_dir()
            elif migration := re.fullmatch(r"(accounts|classifier|training)/(\d{4})", cited):
                found = any((REPO / migration[1] / "migrations").glob(f"{migration[2]}_*.py"))
            else:
                continue
            if not found:
                missing.append(f"{readme.relative_to(REPO)}: {cited}")
    assert sorted(missing) == []


def test_every_setting_the_code_reads_is_in_the_configuration_table():
    # What an operator may set: the settings every environment reads, gunicorn's and `make run`'s (the test
    # settings' own knobs are the suite's).
    sources = [REPO / "mnistsite" / "settings" / name for name in ("base.py", "dev.py", "production.py")]
    sources += [REPO / "gunicorn.conf.py", REPO / "scripts" / "run_local.py"]
    # env.int("NAME", ...), _setting_or("NAME", ...), os.environ.get("NAME"), _whole_number("NAME", ...) and the like.
    reader = r"""(?:\benv|_setting_or|environ|environment|_whole_number)(?:\.\w+)?\(\s*["']([A-Z][A-Z0-9_]+)["']"""
    read = {name for path in sources for name in re.findall(reader, path.read_text(encoding="utf-8"))}
    configuration = _section("Configuration")
    assert {"SECRET_KEY", "PORT", "GUNICORN_WORKERS", "CELERY_BROKER_URL"} <= read
    assert sorted(name for name in read if f"`{name}`" not in configuration) == []


def test_every_command_and_option_the_command_line_table_names_exists():
    commands = get_commands()
    # A row reads "`train [--arch cnn\|mlp] [--sync]` | what it does".
    shown = [usage.groups() for cells in _table_rows(_section("Using it"))
             if (usage := re.match(r"`([a-z_]+)([^`]*)`", cells[0]))]
    unknown = []
    for name, usage in shown:
        if name not in commands:
            unknown.append(name)
            continue
        parser = load_command_class(commands[name], name).create_parser("manage.py", name)
        unknown += [f"{name} {option}" for option in re.findall(r"--[\w-]+", usage)
                    if option not in parser._option_string_actions]
    assert len(shown) >= 10
    assert unknown == []
