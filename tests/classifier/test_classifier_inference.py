"""The inference device: chosen from settings, and checked before a worker's pool forks."""
import os
import subprocess
import sys

import pytest
import torch

from classifier import inference
from tests.devices import requires_cuda, requires_no_cuda
from tests.processes import REPO


@pytest.mark.parametrize("choice", ["auto", "cpu"])
def test_the_device_check_accepts_auto_and_cpu_anywhere(settings, choice):
    settings.TORCH_DEVICE = choice
    inference.torch_device_check()


@requires_no_cuda
def test_the_device_check_refuses_cuda_without_a_gpu_and_leaves_the_environment_as_it_was(settings):
    settings.TORCH_DEVICE = "cuda"
    before = os.environ.get("PYTORCH_NVML_BASED_CUDA_CHECK")
    with pytest.raises(inference.TorchDeviceError, match="set TORCH_DEVICE to auto or cpu"):
        inference.torch_device_check()
    assert os.environ.get("PYTORCH_NVML_BASED_CUDA_CHECK") == before


@requires_no_cuda
def test_auto_means_the_cpu_without_a_gpu(settings):
    settings.TORCH_DEVICE = "auto"
    assert inference.torch_device() == torch.device("cpu")


@requires_cuda
def test_after_the_device_check_accepts_cuda_a_forked_child_can_still_use_the_gpu():
    # A fresh interpreter stands in for a worker's parent, which must not have touched CUDA when its pool forks.
    code = """
import os, django, torch
django.setup()
from django.conf import settings
settings.TORCH_DEVICE = "cuda"
from classifier.inference import torch_device_check
torch_device_check()
pid = os.fork()
if pid == 0:
    try:
        torch.ones(1, device="cuda").sum().item()
    except Exception as exc:
        print(exc, flush=True)
        os._exit(3)
    os._exit(0)
print("child exit", os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]), flush=True)
"""
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=REPO,
        env={**os.environ, "DJANGO_SETTINGS_MODULE": "mnistsite.settings.test"},
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().splitlines()[-1] == "child exit 0", done.stdout
