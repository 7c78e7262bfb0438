"""The benchmark stack's wait for the benchmarks' last deletion of files to age."""
from __future__ import annotations

import os
import time

from benchmarks.stack import media_settle


def test_a_stack_after_no_deletion_is_handed_over_at_once_with_the_cost_of_creating_a_file(tmp_path):
    settled = media_settle(tmp_path / "media", marker=tmp_path / "never-touched", recent_s=60)

    assert settled["waited_s"] < 5 and settled["file_create_us"] > 0
    assert len(list((tmp_path / "media" / "file-create-probe" / "settled").iterdir())) == 200


def test_a_stack_right_after_a_deletion_waits_until_it_is_old_enough(tmp_path):
    marker = tmp_path / "deleted"
    marker.touch()
    os.utime(marker, (time.time() - 1.0, time.time() - 1.0))

    started = time.monotonic()
    settled = media_settle(tmp_path / "media", marker=marker, recent_s=1.6)

    assert 0.5 <= time.monotonic() - started < 5 and settled["waited_s"] >= 0.5


def test_a_stack_long_after_a_deletion_does_not_wait(tmp_path):
    marker = tmp_path / "deleted"
    marker.touch()
    os.utime(marker, (time.time() - 120, time.time() - 120))

    assert media_settle(tmp_path / "media", marker=marker, recent_s=60)["waited_s"] < 5
