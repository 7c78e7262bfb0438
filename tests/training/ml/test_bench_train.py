"""Smoke test of the training benchmark script in --quick mode (needs the real MNIST files)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.devices import DEVICES

REPO = Path(__file__).resolve().parents[3]
DATA_DIR = Path(os.environ.get("DATA_DIR", REPO / "data"))


@pytest.mark.skipif(not (DATA_DIR / "MNIST" / "raw" / "t10k-labels-idx1-ubyte").exists(), reason="MNIST not fetched")
@pytest.mark.parametrize("device", DEVICES)
def test_quick_benchmark_prints_one_json_object_with_all_recipes(device):
    done = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "bench_train.py"), "--quick", f"--device={device}"],
        capture_output=True, text=True, timeout=240, env={**os.environ, "DATA_DIR": str(DATA_DIR)},
    )
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    for key in ("tutorial_mlp", "pipeline_mlp", "default_cnn"):
        assert 0 <= report[key]["test_accuracy"] <= 1 and report[key]["seconds"] > 0
    assert report["speedup_pipeline_mlp_vs_tutorial"] > 0
    assert (report["device"] == "cpu") == (device == "cpu")
