"""Batching: every image once an epoch, in as many batches as the engine counts, never a lone last image."""
import pytest
import torch

from training.ml.data import MnistSplit, batch_count, batch_indices
from tests.devices import requires_cuda


@pytest.mark.parametrize("batch_size", [1, 2, 64])
@pytest.mark.parametrize("count", [0, 1, 2, 3, 5, 63, 64, 65, 66, 127, 128, 129, 1025])
def test_batches_cover_every_image_once_and_match_the_step_count(count, batch_size):
    batches = list(batch_indices(count, batch_size=batch_size, generator=torch.Generator().manual_seed(0)))
    assert sorted(torch.cat(batches).tolist() if batches else []) == list(range(count))
    assert len(batches) == batch_count(count, batch_size=batch_size)
    assert count <= 1 or len(batches[-1]) > 1


def test_a_last_batch_of_one_image_joins_the_batch_before_it():
    sizes = [len(batch) for batch in batch_indices(129, batch_size=64, shuffle=False)]
    assert sizes == [64, 65]


def test_a_batch_size_below_one_is_refused():
    with pytest.raises(ValueError, match="batch_size must be at least 1"):
        batch_count(10, batch_size=0)
    with pytest.raises(ValueError, match="batch_size must be at least 1"):
        list(batch_indices(10, batch_size=0))


@requires_cuda
def test_a_split_on_the_gpu_comes_back_to_the_cpu_whole():
    # The images are written by the last of a queue of slow GPU kernels: a copy back that does not wait for them
    # would hand the CPU memory the GPU has yet to fill.
    work = torch.randn(4096, 4096, device="cuda")
    for _ in range(50):
        work = torch.tanh(work @ work)
    images = torch.zeros(10_000, 28, 28, dtype=torch.uint8, device="cuda")
    images += (work[0, 0] * 0 + 7).to(torch.uint8)
    split = MnistSplit(images, torch.arange(10_000, device="cuda") % 10).to("cpu")
    assert split.images.device.type == "cpu"
    assert bool((split.images == 7).all())
    assert split.labels.tolist() == [i % 10 for i in range(10_000)]
