"""bench-profile's sampling: py-spy attached to the stack's own processes, and its stacks turned into shares."""
import subprocess
import sys
import time

import pytest

from benchmarks.profile_serve import collapsed_profile, role_pids, sampling

SPINNER = """
import time

def spin_here():
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        pass

spin_here()
"""


def _share(entries: list[dict], needle: str) -> float:
    return sum(entry["share"] for entry in entries if needle in entry["function"])


def test_collapsed_stacks_give_each_function_its_inclusive_and_self_share():
    lines = [
        "main (app.py:1);handle (app.py:10);parse (app.py:20) 6",
        "main (app.py:1);handle (app.py:11);render (app.py:30) 3",
        # A recursive call counts once per sample towards the function's inclusive share.
        "main (app.py:1);walk (app.py:40);walk (app.py:41) 1",
        "not a stack line",
    ]
    profile = collapsed_profile(lines, top=10)
    assert profile["samples"] == 10
    inclusive = {entry["function"]: entry["share"] for entry in profile["inclusive"]}
    assert inclusive == {"main (app.py)": 1.0, "handle (app.py)": 0.9, "parse (app.py)": 0.6,
                         "render (app.py)": 0.3, "walk (app.py)": 0.1}
    assert profile["self"][0] == {"function": "parse (app.py)", "share": 0.6}
    assert collapsed_profile(lines, top=2)["inclusive"] == profile["inclusive"][:2]


def test_a_busy_process_of_the_stack_shows_up_in_its_py_spy_profile(tmp_path):
    # A session of its own, as the stack's gunicorn and Celery have; "celery" in its command line makes it a worker.
    child = subprocess.Popen([sys.executable, "-c", SPINNER, "celery"], start_new_session=True)
    try:
        time.sleep(0.3)
        assert role_pids(["worker", "web"], sessions=[child.pid]) == {"worker": [child.pid], "web": []}
        assert role_pids(["worker"], sessions=[]) == {"worker": []}
        with sampling([child.pid], tmp_path, rate=100) as files:
            time.sleep(3)
    finally:
        child.kill()
        child.wait()
    profile = collapsed_profile(files[child.pid].read_text().splitlines(), top=20)
    # Far fewer than 300: attaching takes part of the window, and a loaded machine starves the sampler.
    assert profile["samples"] >= 30
    assert _share(profile["self"], "spin_here") > 0.8


def test_a_process_that_cannot_be_sampled_is_reported_not_skipped(tmp_path):
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    with pytest.raises(RuntimeError, match=f"(?s)py-spy wrote no profile.*process {gone.pid}: "):
        with sampling([gone.pid], tmp_path, rate=100):
            time.sleep(0.5)
