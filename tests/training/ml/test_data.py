"""Batching: every image once an epoch, in as many batches as the engine counts, never a lone last image."""
import pytest
import torch

from training.ml.data import VALIDATION_SIZE, MnistSplit, batch_count, batch_indices, split_validation
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


def test_the_validation_set_is_the_last_5000_training_images_and_training_keeps_only_the_rest():
    images = torch.arange(60_000).remainder(256).to(torch.uint8).view(-1, 1, 1).expand(-1, 28, 28).contiguous()
    labels = torch.arange(60_000)
    train, validation = split_validation(MnistSplit(images, labels))
    assert VALIDATION_SIZE == 5_000
    assert validation.labels.tolist() == list(range(55_000, 60_000))
    assert torch.equal(validation.images, images[55_000:])
    assert train.labels.tolist() == list(range(55_000))


def test_no_training_batch_of_an_epoch_holds_a_validation_image():
    labels = torch.arange(60_000)
    train, validation = split_validation(MnistSplit(torch.zeros(60_000, 28, 28, dtype=torch.uint8), labels))
    seen = torch.cat(list(batch_indices(len(train), batch_size=128, generator=torch.Generator().manual_seed(0))))
    trained_on = set(train.labels[seen].tolist())
    assert trained_on == set(range(55_000)) and trained_on.isdisjoint(validation.labels.tolist())


def test_the_validation_set_does_not_depend_on_any_seed():
    split = MnistSplit(torch.zeros(6_000, 28, 28, dtype=torch.uint8), torch.arange(6_000))
    torch.manual_seed(1)
    first = split_validation(split)[1].labels
    torch.manual_seed(2)
    assert torch.equal(first, split_validation(split)[1].labels)


def test_holding_out_as_many_images_as_there_are_is_refused():
    split = MnistSplit(torch.zeros(10, 28, 28, dtype=torch.uint8), torch.arange(10))
    with pytest.raises(ValueError, match="cannot hold out 10 of 10 training images"):
        split_validation(split, size=10)


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
