"""The preprocessing benchmark's scenes: the digit comes through every one the pipeline is built for."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
DATA_DIR = Path(os.environ.get("DATA_DIR", REPO / "data"))


@pytest.mark.skipif(not (DATA_DIR / "MNIST" / "raw" / "t10k-images-idx3-ubyte").exists(), reason="MNIST not fetched")
def test_the_digit_comes_through_dust_frames_rings_desks_light_chalk_margins_and_printed_lines_and_plain_empty_sheets_are_refused(
    active_checkpoint, settings
):
    checkpoint = active_checkpoint
    done = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "bench_preprocess.py"), "--count", "40", "--empty", "10",
         "--close-pairs", "0", "--singles", "0",
         "--checkpoint", str(Path(settings.CHECKPOINT_DIR) / checkpoint.path), "--sha256", checkpoint.sha256],
        capture_output=True, text=True, timeout=240, env={**os.environ, "DATA_DIR": str(DATA_DIR)},
    )
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    scenes = report["scenes"]
    assert report["digits"] == 40 and scenes["clean"]["same_as_clean"] == 1.0
    for name in ("dust", "frame", "circled", "desk_along_an_edge", "dim_light", "chalk_on_grey", "transparent_margins",
                 "squared_paper", "dark_ruled_paper"):
        assert scenes[name]["refused"] == 0 and scenes[name]["same_as_clean"] >= 0.9, (name, scenes[name])
    # With a model (a small MLP here), those scenes are read about as well as clean paper, and so is uneven light.
    # (A hard shadow's edge leaves a trace that this MLP stumbles on; the default CNN reads 97% of them.)
    for name in ("dust", "frame", "circled", "desk_along_an_edge", "dim_light", "chalk_on_grey", "transparent_margins",
                 "uneven_light", "squared_paper", "dark_ruled_paper"):
        assert scenes[name]["accuracy"] >= scenes["clean"]["accuracy"] - 0.1, (name, scenes[name])
    # A sheet with no digit on it is refused as blank where nothing but the light differs from clean paper.
    # And on ruled paper, once its lines are taken out, whether they are faint, dark or turned with the sheet.
    for name in ("clean", "dim_light", "chalk_on_grey", "rotated", "transparent_margins", "ruled_paper",
                 "dark_ruled_paper", "squared_paper_turned"):
        assert scenes[name]["empty_refused"] == 1.0, (name, scenes[name])
    # One digit is never taken for several, in any scene, nor is an empty sheet; two digits a third of a digit's
    # height apart are, whether side by side or one above the other.
    assert {name: scene["several_digits"] for name, scene in scenes.items() if scene["several_digits"]} == {}
    for arrangement in ("side_by_side", "stacked"):
        assert report["pairs"][arrangement]["pairs"] == 20
        assert report["pairs"][arrangement]["several_digits"] >= 0.9, (arrangement, report["pairs"])


@pytest.mark.skipif(not (DATA_DIR / "MNIST" / "raw" / "t10k-images-idx3-ubyte").exists(), reason="MNIST not fetched")
def test_two_digits_closer_than_a_fifth_of_their_height_are_taken_for_several_and_no_single_digit_or_sample_is():
    done = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "bench_preprocess.py"), "--count", "2", "--empty", "0",
         "--close-pairs", "20", "--singles", "1000"],
        capture_output=True, text=True, timeout=240, env={**os.environ, "DATA_DIR": str(DATA_DIR)},
    )
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    close = report["close_pairs"]
    assert close["pairs"] == 20 and close["gaps"][0] < 0 < close["gaps"][-1]
    for arrangement in ("side_by_side", "stacked"):
        for surface in ("paper", "mnist"):
            shares = close[arrangement][surface]
            assert set(shares) == {str(gap) for gap in close["gaps"]}
            # Apart by a pixel up to a fifth of their height: kept together as one digit, and still taken for two.
            assert all(shares[str(gap)] >= 0.9 for gap in (1, 2, 3, 4)), (arrangement, surface, shares)
    singles = report["singles"]
    assert singles["mnist_test"] == {"digits": 1000, "several_digits": []}
    assert singles["samples"]["images"] > 0 and singles["samples"]["several_digits"] == []
