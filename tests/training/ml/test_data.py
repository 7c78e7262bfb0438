"""Batching: every image once an epoch, in as many batches as the engine counts, never a lone last image."""
import pytest
import torch

from training.ml.data import batch_count, batch_indices


@pytest.mark.parametrize("count", [1, 2, 63, 64, 65, 66, 127, 128, 129, 1025])
def test_batches_cover_every_image_once_and_match_the_step_count(count):
    batches = list(batch_indices(count, batch_size=64, generator=torch.Generator().manual_seed(0)))
    assert sorted(torch.cat(batches).tolist()) == list(range(count))
    assert len(batches) == batch_count(count, batch_size=64)


def test_a_last_batch_of_one_image_joins_the_batch_before_it():
    sizes = [len(batch) for batch in batch_indices(129, batch_size=64, shuffle=False)]
    assert sizes == [64, 65]
