"""CPU time of the machine's processes grouped by role (web, worker, PostgreSQL...), read from Linux's /proc."""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

PROC = Path("/proc")
TICKS_PER_SECOND = os.sysconf("SC_CLK_TCK")
# The first needle found in a process's command line names its role; anything else is "other".
ROLES = (
    ("tutorial", "tutorial_flask_app"),
    ("web", "gunicorn"),
    ("worker", "celery"),
    ("postgresql", "postgres"),
    ("redis", "redis-server"),
)


@dataclass(frozen=True)
class CpuSnapshot:
    """Each live process's role and CPU seconds so far, and the machine's busy and total CPU seconds."""

    processes: dict[int, tuple[str, float]]
    busy: float
    total: float


def _role(pid: int, cmdline: str) -> str:
    if pid == os.getpid():
        return "load_generator"
    return next((role for role, needle in ROLES if needle in cmdline), "other")


def stat_fields(stat: str) -> list[str]:
    """The fields of /proc/PID/stat after the command name, from the state on (state, parent, group, session...)."""
    # The command name in parentheses may hold spaces: fields are counted after its closing parenthesis.
    return stat[stat.rindex(")") + 2 :].split()


def _process_seconds(stat: str) -> float:
    fields = stat_fields(stat)
    return (int(fields[11]) + int(fields[12])) / TICKS_PER_SECOND  # utime, stime


def cpu_snapshot() -> CpuSnapshot:
    processes: dict[int, tuple[str, float]] = {}
    for entry in PROC.iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            seconds = _process_seconds((entry / "stat").read_text())
        except (OSError, ValueError, IndexError):
            continue  # exited while being read
        pid = int(entry.name)
        processes[pid] = (_role(pid, cmdline), seconds)
    # The first line of /proc/stat: user nice system idle iowait irq softirq steal ..., over all cores.
    ticks = [int(value) for value in (PROC / "stat").read_text().splitlines()[0].split()[1:9]]
    busy = sum(ticks) - ticks[3] - ticks[4]  # less idle and iowait
    return CpuSnapshot(processes=processes, busy=busy / TICKS_PER_SECOND, total=sum(ticks) / TICKS_PER_SECOND)


def cpu_profile(before: CpuSnapshot, after: CpuSnapshot, *, images: int) -> dict:
    """Where the CPU went between two snapshots: milliseconds per image by role, and how busy the machine was.

    A process that exited in between is missing from the roles (its time still counts as busy); one that
    started in between counts from its start.
    """
    spent: dict[str, float] = {}
    for pid, (role, seconds) in after.processes.items():
        earlier = before.processes.get(pid)
        spent[role] = spent.get(role, 0.0) + seconds - (earlier[1] if earlier and earlier[0] == role else 0.0)
    total = after.total - before.total
    return {
        "machine_busy": round((after.busy - before.busy) / total, 3) if total > 0 else None,
        "ms_per_image": {role: round(spent[role] * 1000 / images, 3) for role in sorted(spent) if spent[role] > 0},
    }
