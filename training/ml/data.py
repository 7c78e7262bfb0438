"""MNIST held in memory as uint8 tensors, the validation split, normalisation constants, and index batching."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import torch

from .idx import read_idx
from .mnist_files import raw_dir

# The classic MNIST training-set statistics; every model input goes through these.
MNIST_MEAN = 0.1307
MNIST_STD = 0.3081

# The last this many of the 60,000 training images: held out of training to pick models by, so the 10,000 test
# images are only ever the final, unbiased estimate. A fixed slice, not a seeded draw, so that validation
# accuracies of runs with different seeds are measured on the same images and can be compared.
VALIDATION_SIZE = 5_000

_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}


@dataclass
class MnistSplit:
    """Images (N x 28 x 28 uint8) and labels (N int64) kept together on one device."""

    images: torch.Tensor
    labels: torch.Tensor

    def __post_init__(self) -> None:
        if self.images.dtype != torch.uint8 or self.images.dim() != 3:
            raise ValueError(f"images must be N x H x W uint8, got {tuple(self.images.shape)} {self.images.dtype}")
        if self.labels.shape != (self.images.shape[0],):
            raise ValueError("labels must be one per image")

    def __len__(self) -> int:
        return self.images.shape[0]

    def to(self, device: torch.device | str) -> "MnistSplit":
        """Copy to ``device`` once; later batching indexes in place."""
        return MnistSplit(to_device(self.images, device), to_device(self.labels, device))

    def subset(self, count: int) -> "MnistSplit":
        """The first ``count`` examples (for smoke tests and benchmarks)."""
        return MnistSplit(self.images[:count], self.labels[:count])


def to_device(tensor: torch.Tensor, device: torch.device | str) -> torch.Tensor:
    """``tensor`` on ``device``, copied without waiting only where that is safe: from the CPU, never to it.

    A non-blocking copy from a GPU to the CPU lands in pinned memory that the GPU
    fills later: the CPU could read it before it holds the data.
    """
    return tensor.to(device, non_blocking=tensor.device.type == "cpu")


def load_split(data_dir: Path, *, split: str) -> MnistSplit:
    """Read ``"train"`` or ``"test"`` from ``data_dir/MNIST/raw`` (see :func:`fetch_mnist`)."""
    if split not in _FILES:
        raise ValueError(f"split must be 'train' or 'test', not {split!r}")
    image_file, label_file = (raw_dir(Path(data_dir)) / name for name in _FILES[split])
    images = torch.from_numpy(read_idx(image_file))
    labels = torch.from_numpy(read_idx(label_file)).long()
    return MnistSplit(images, labels)


def load_mnist(data_dir: Path) -> tuple[MnistSplit, MnistSplit]:
    """(train, test) splits on the CPU."""
    return load_split(data_dir, split="train"), load_split(data_dir, split="test")


def split_validation(train: MnistSplit, *, size: int = VALIDATION_SIZE) -> tuple[MnistSplit, MnistSplit]:
    """(training, validation): ``train`` without its last ``size`` images, and those images."""
    if not 0 < size < len(train):
        raise ValueError(f"cannot hold out {size} of {len(train)} training images for validation")
    cut = len(train) - size
    return (
        MnistSplit(train.images[:cut], train.labels[:cut]),
        MnistSplit(train.images[cut:], train.labels[cut:]),
    )


def normalize(pixels: torch.Tensor) -> torch.Tensor:
    """Map [0, 1] float pixels to the zero-mean, unit-variance scale the models were trained on."""
    return (pixels - MNIST_MEAN) / MNIST_STD


def to_unit_float(images: torch.Tensor) -> torch.Tensor:
    """uint8 N x H x W -> float N x 1 x H x W in [0, 1]."""
    return images.unsqueeze(1).float().div_(255.0)


def _check_batch_size(batch_size: int) -> None:
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, not {batch_size}")


def batch_count(count: int, *, batch_size: int) -> int:
    """How many batches ``batch_indices`` yields: the steps of one epoch."""
    _check_batch_size(batch_size)
    batches = -(-count // batch_size)
    last = count - (batches - 1) * batch_size
    return batches - 1 if batches > 1 and last == 1 else batches


def batch_indices(
    count: int, *, batch_size: int, generator: torch.Generator | None = None, shuffle: bool = True
) -> Iterator[torch.Tensor]:
    """Yield CPU index tensors covering ``range(count)``; shuffled with ``generator`` if asked.

    A last batch of one image joins the one before it: batch normalisation cannot
    train on a single image, so a training set of 129 in batches of 128 would
    otherwise fail at the end of its first epoch. No images, no batches.
    """
    _check_batch_size(batch_size)
    if count == 0:
        return
    order = torch.randperm(count, generator=generator) if shuffle else torch.arange(count)
    batches = list(order.split(batch_size))
    if len(batches) > 1 and len(batches[-1]) == 1:
        batches[-2:] = [torch.cat(batches[-2:])]
    yield from batches
