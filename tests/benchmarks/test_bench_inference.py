"""Smoke test of the inference benchmark script (needs the real MNIST files)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[2]
DATA_DIR = Path(os.environ.get("DATA_DIR", REPO / "data"))


@pytest.mark.skipif(not (DATA_DIR / "MNIST" / "raw" / "t10k-images-idx3-ubyte").exists(), reason="MNIST not fetched")
def test_the_inference_benchmark_times_every_batch_size_on_every_device_there_is():
    done = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "bench_inference.py"), "--repeats", "2"],
        capture_output=True, text=True, timeout=240, env={**os.environ, "DATA_DIR": str(DATA_DIR)},
    )
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert set(report["devices"]) == ({"cpu", "cuda"} if torch.cuda.is_available() else {"cpu"})
    for device in report["devices"].values():
        for arch in ("cnn", "mlp"):
            assert set(device[arch]) == {"1", "32", "256"}
            assert all(row["batch_ms"] > 0 for row in device[arch].values())
    assert 0 < report["preprocess_ms_per_image_at_32"] < 100
