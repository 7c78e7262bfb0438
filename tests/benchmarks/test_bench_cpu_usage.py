"""The benchmarks' CPU accounting: processes found by role in /proc, and time per image between two snapshots."""
import dataclasses
import os
import subprocess
import sys
import time

import pytest

from benchmarks.cpu_usage import TICKS_PER_SECOND, CpuSnapshot, _process_seconds, cpu_profile, cpu_snapshot


def _spin(seconds: float) -> None:
    deadline = time.process_time() + seconds
    while time.process_time() < deadline:
        pass


def _of(snapshot: CpuSnapshot, pids: set[int]) -> CpuSnapshot:
    """The snapshot's processes among ``pids``: the test processes beside this one run workers of their own."""
    processes = {pid: seen for pid, seen in snapshot.processes.items() if pid in pids}
    return dataclasses.replace(snapshot, processes=processes)


def test_a_command_name_with_spaces_and_parentheses_does_not_shift_the_fields():
    ticks_fields = " ".join(["S"] + ["0"] * 10 + ["250", "50"] + ["0"] * 30)
    assert _process_seconds(f"42 (odd (name) here) {ticks_fields}") == pytest.approx(300 / TICKS_PER_SECOND)


def test_cpu_spent_between_snapshots_is_given_to_the_right_roles():
    # A child whose command line names it a worker burns CPU alongside this process, the load generator.
    # It spins only between the snapshots, and says when it is done: a busy machine may take a while.
    child_script = (
        "import sys, time\n"
        "print('ready', flush=True)\n"
        "sys.stdin.readline()\n"
        "deadline = time.process_time() + 0.2\n"
        "while time.process_time() < deadline: pass\n"
        "print('done', flush=True)\n"
        "sys.stdin.readline()\n"
    )
    child = subprocess.Popen(
        [sys.executable, "-c", child_script, "celery"], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    try:
        assert child.stdout.readline() == "ready\n"
        before = cpu_snapshot()
        child.stdin.write("go\n")
        child.stdin.flush()
        _spin(0.3)
        assert child.stdout.readline() == "done\n"
        ours = {os.getpid(), child.pid}
        profile = cpu_profile(_of(before, ours), _of(cpu_snapshot(), ours), images=10)
    finally:
        child.kill()
        child.wait()
    per_image = profile["ms_per_image"]
    assert 25 <= per_image["load_generator"] <= 50  # 0.3 s over 10 images
    assert 15 <= per_image["worker"] <= 35  # 0.2 s
    assert 0 < profile["machine_busy"] <= 1
