"""The devices a test can run on: always the CPU, and a CUDA GPU where the machine has one."""
from __future__ import annotations

import contextlib
from collections.abc import Iterator

import pytest
import torch

requires_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
requires_no_cuda = pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without a CUDA GPU")

# Parametrize a test with DEVICES to run it on the CPU and, where there is one, on the GPU.
DEVICES = [pytest.param("cpu", id="cpu"), pytest.param("cuda", id="cuda", marks=requires_cuda)]


@contextlib.contextmanager
def full_float32() -> Iterator[None]:
    """Plain float32 arithmetic on the GPU while comparing with the CPU.

    cuDNN convolutions use TF32 by default (about three decimal digits), which is
    right for training but too coarse to tell a real device bug from rounding.
    """
    saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved
