"""Training services: starting runs, validated, stored and their message sent once committed."""
import pytest
from django.core.exceptions import ValidationError

from training import services
from training.models import TrainingRun

pytestmark = pytest.mark.django_db


def _create(recipe, **overrides):
    return services.training_run_create(created_by=None, enqueue=False, **{**recipe, **overrides})


def test_creating_a_run_refuses_an_unknown_architecture_and_bad_numbers(tiny_recipe):
    with pytest.raises(ValidationError) as caught:
        services.training_run_create(
            created_by=None,
            **{**tiny_recipe, "architecture": "resnet", "epochs": 0, "learning_rate": -1, "seed": 3_000_000_000,
               "batch_size": 1, "train_subset": 1},
        )
    assert set(caught.value.message_dict) == {"architecture", "epochs", "learning_rate", "seed", "batch_size",
                                              "train_subset"}
    # A learning rate must also be at most 10: above it every run diverges at once.
    with pytest.raises(ValidationError) as too_high:
        services.training_run_create(created_by=None, **{**tiny_recipe, "learning_rate": 11})
    assert set(too_high.value.message_dict) == {"learning_rate"}
    assert not TrainingRun.objects.exists()


def test_creating_a_run_refuses_a_training_subset_larger_than_the_mnist_training_set(tiny_recipe):
    with pytest.raises(ValidationError) as caught:
        _create(tiny_recipe, train_subset=55_001)
    assert caught.value.message_dict["train_subset"] == [
        "The training subset must hold between 2 and 55,000 images (MNIST has 55,000 training images besides the "
        "5,000 held out for validation)."
    ]
    assert not TrainingRun.objects.exists()
    assert _create(tiny_recipe, train_subset=55_000).train_subset == 55_000


def test_creating_a_run_publishes_it_only_after_the_transaction_commits(
    tiny_recipe, training_queue, django_capture_on_commit_callbacks
):
    with django_capture_on_commit_callbacks(execute=False) as callbacks:
        run = services.training_run_create(created_by=None, **tiny_recipe)
    assert training_queue.messages() == []
    for callback in callbacks:
        callback()
    run.refresh_from_db()
    (message,) = training_queue.messages()
    assert message["task"] == "training.tasks.training_run_execute"
    assert (message["kwargs"], message["id"]) == ({"run_id": run.pk}, run.celery_task_id)
    assert run.status == TrainingRun.Status.QUEUED


def test_publishing_a_run_that_is_no_longer_queued_sends_nothing(tiny_recipe, training_queue):
    run = _create(tiny_recipe)
    TrainingRun.objects.filter(pk=run.pk).update(status=TrainingRun.Status.RUNNING, attempts=1)
    assert services.training_run_publish(run_id=run.pk) is None
    assert training_queue.messages() == []
