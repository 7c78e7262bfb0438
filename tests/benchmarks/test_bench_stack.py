"""The benchmark stack's wait for the media folder's disk to settle."""
from __future__ import annotations

import math

from benchmarks.stack import media_settle


def test_a_media_folder_that_creates_files_cheaply_is_settled_after_one_probe(tmp_path):
    settled = media_settle(tmp_path, settled_us=math.inf, max_s=60, pause_s=60)

    assert settled["waited_s"] < 30 and settled["file_create_us"] > 0
    assert [path.name for path in (tmp_path / "file-create-probe").iterdir()] == ["settle-0"]


def test_a_media_folder_that_never_settles_is_given_up_on_after_the_longest_wait_its_probes_kept(tmp_path):
    settled = media_settle(tmp_path, settled_us=0, max_s=0.3, pause_s=0.1)

    assert settled["waited_s"] >= 0.3
    probes = sorted((tmp_path / "file-create-probe").iterdir())
    # Deleting them would free inodes, the very thing the wait lets age.
    assert len(probes) >= 3 and all(len(list(probe.iterdir())) == 200 for probe in probes)
