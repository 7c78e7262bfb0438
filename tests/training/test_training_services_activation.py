"""Training services: activating checkpoints, one active at a time and only one that still exists."""
import pytest
from django.db import connection

from training import services
from tests.training.fixtures import HeldInAnotherConnection
from training.models import Checkpoint

pytestmark = pytest.mark.django_db


def test_activating_a_checkpoint_deactivates_the_previous_one(make_checkpoint):
    first, _ = make_checkpoint(activate=True)
    second, _ = make_checkpoint()
    services.checkpoint_activate(checkpoint=second)
    first.refresh_from_db()
    second.refresh_from_db()
    assert second.is_active and not first.is_active
    # Rolling back is the same operation.
    services.checkpoint_activate(checkpoint=first)
    assert list(Checkpoint.objects.filter(is_active=True)) == [first]


@pytest.mark.django_db(transaction=True)
@pytest.mark.skipif(connection.vendor != "postgresql", reason="SQLite runs one writer at a time")
def test_two_first_activations_at_once_both_succeed_one_after_the_other(make_checkpoint):
    first, _ = make_checkpoint()
    second, _ = make_checkpoint()
    # The first activation still uncommitted while the second starts, the moment the two used to collide, and
    # until the second is seen waiting for it.
    holder = HeldInAnotherConnection(lambda: services.checkpoint_activate(checkpoint=first), timeout=30)
    holder.start()
    services.checkpoint_activate(checkpoint=second)
    holder.finish()
    assert list(Checkpoint.objects.filter(is_active=True)) == [second]


def test_activating_a_checkpoint_deleted_since_it_was_read_leaves_the_active_one_active(make_checkpoint):
    active, _ = make_checkpoint(activate=True)
    deleted, _ = make_checkpoint()
    Checkpoint.objects.filter(pk=deleted.pk).delete()  # its file stays: loading it still succeeds
    with pytest.raises(services.CheckpointNotLoadableError, match="has been deleted"):
        services.checkpoint_activate(checkpoint=deleted)
    assert Checkpoint.objects.get(is_active=True) == active
