"""Training services: activating checkpoints, one active at a time and only one that still exists."""
import re

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


@pytest.mark.parametrize(
    ("active_accuracies", "new_accuracies", "kept_by"),
    [
        # Both validated: validation decides, whatever the test accuracies say.
        ((0.10, 0.99), (0.99, 0.98), "validation"),
        # Either from before the validation split: test accuracies, as before it.
        ((0.99, None), (0.10, 0.98), "test"),
        ((0.99, 0.98), (0.10, None), "test"),
    ],
    ids=["both-validated", "active-from-before-validation", "new-from-before-validation"],
)
def test_activating_when_done_keeps_the_active_checkpoint_by_validation_accuracy_else_by_test_accuracy(
    make_checkpoint, active_accuracies, new_accuracies, kept_by
):
    test, validation = active_accuracies
    active, _ = make_checkpoint(activate=True, accuracy=test, validation_accuracy=validation)
    test, validation = new_accuracies
    checkpoint, _ = make_checkpoint(accuracy=test, validation_accuracy=validation)
    with pytest.raises(services.CheckpointBelowActiveError) as refused:
        services.checkpoint_activate(checkpoint=checkpoint, keep_better_active=True)
    shown = {"validation": (0.98, 0.99), "test": (0.10, 0.99)}[kept_by]
    assert str(refused.value).startswith(
        f"Not activated: its {shown[0]:.2%} {kept_by} accuracy is below the active checkpoint's {shown[1]:.2%} "
    )
    active.refresh_from_db()
    assert active.is_active and refused.value.compared.kind == kept_by


def test_activating_when_done_replaces_a_checkpoint_that_tests_better_but_validates_worse(make_checkpoint):
    active, _ = make_checkpoint(activate=True, accuracy=0.99, validation_accuracy=0.10)
    checkpoint, _ = make_checkpoint(accuracy=0.10, validation_accuracy=0.98)
    services.checkpoint_activate(checkpoint=checkpoint, keep_better_active=True)
    checkpoint.refresh_from_db()
    assert checkpoint.is_active


def test_activating_when_done_keeps_an_active_checkpoint_of_higher_accuracy_but_replaces_one_of_equal_accuracy(
    make_checkpoint
):
    active, _ = make_checkpoint(activate=True, accuracy=0.98)
    worse, _ = make_checkpoint(accuracy=0.97)
    equal, _ = make_checkpoint(accuracy=0.98)

    with pytest.raises(services.CheckpointBelowActiveError, match=f"checkpoint {active.pk}, mlp"):
        services.checkpoint_activate(checkpoint=worse, keep_better_active=True)
    assert Checkpoint.objects.get(is_active=True) == active
    services.checkpoint_activate(checkpoint=equal, keep_better_active=True)
    assert Checkpoint.objects.get(is_active=True) == equal


def test_an_activation_told_it_replaces_another_checkpoint_than_the_active_one_changes_nothing(make_checkpoint):
    active, _ = make_checkpoint(activate=True)
    other, _ = make_checkpoint()

    with pytest.raises(services.ActiveCheckpointChangedError, match=re.escape(f"the active checkpoint is now {active}")):
        services.checkpoint_activate(checkpoint=other, replacing=None)
    assert Checkpoint.objects.get(is_active=True) == active
    services.checkpoint_activate(checkpoint=other, replacing=active.pk)
    assert Checkpoint.objects.get(is_active=True) == other
