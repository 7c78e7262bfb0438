"""The inference device, chosen from settings and checked before a worker's pool forks; the per-process model cache."""
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


@pytest.mark.parametrize("digest_read", [True, False], ids=["digest read with the id", "digest looked up"])
def test_a_checkpoint_id_that_comes_to_name_another_file_is_loaded_afresh(
    register_checkpoint, trained_model_file, always_seven_model_file, digest_read
):
    held = inference.model_for_checkpoint_id(checkpoint_id=register_checkpoint(trained_model_file, name="model").pk)
    # Another model written where the first was, and registered again: the same row, now with another digest.
    again = register_checkpoint(always_seven_model_file, name="model")
    assert again.pk == held.checkpoint_id
    # A worker's claim reads the digest with the id; another caller has it looked up.
    digest = {"sha256": again.sha256} if digest_read else {}
    loaded = inference.model_for_checkpoint_id(checkpoint_id=again.pk, **digest)
    assert loaded is not held and loaded.sha256 == again.sha256
    assert inference.model_for_checkpoint_id(checkpoint_id=again.pk, **digest) is loaded  # and only once
