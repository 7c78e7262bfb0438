"""Shared tiny synthetic MNIST-shaped data so unit tests never need the real files."""

import pytest
import torch

from training.ml.data import MnistSplit


def synthetic_split(count: int, *, seed: int = 0) -> MnistSplit:
    """Class k is a bright bar whose position depends on k, plus noise: learnable in one epoch."""
    generator = torch.Generator().manual_seed(seed)
    labels = torch.arange(count) % 10
    images = torch.randint(0, 40, (count, 28, 28), generator=generator, dtype=torch.uint8)
    for k in range(10):
        images[labels == k, 4 + 2 * k : 6 + 2 * k, 6:22] = 255
    return MnistSplit(images, labels)


@pytest.fixture
def tiny_train() -> MnistSplit:
    return synthetic_split(512, seed=1)


@pytest.fixture
def tiny_test() -> MnistSplit:
    return synthetic_split(100, seed=2)


@pytest.fixture
def tiny_validation() -> MnistSplit:
    return synthetic_split(100, seed=3)
