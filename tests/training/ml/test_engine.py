"""Tests for the epoch loop, evaluation, augmentation determinism and the fit recipe."""

import copy
import math
import re

import pytest
import torch
from torch.optim.optimizer import register_optimizer_step_post_hook

from training.ml.architectures import build_model
from training.ml.augment import augment_batch
from training.ml.engine import TrainingCancelled, TrainingDiverged, evaluate, train_one_epoch
from training.ml.recipe import TrainConfig, fit, select_device
from tests.devices import DEVICES, full_float32, requires_cuda, requires_no_cuda

CPU = torch.device("cpu")
SMALL_CNN = {"blocks": [[4], [8]], "hidden": 16}


def _one_epoch(split, seed):
    torch.manual_seed(seed)
    model = build_model("cnn", SMALL_CNN)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    stats = train_one_epoch(
        model=model, optimizer=optimizer, scheduler=None, images=split.images, labels=split.labels,
        batch_size=64, device=CPU, generator=torch.Generator().manual_seed(seed), augment=True,
        on_step=None, should_stop=None,
    )
    return model, stats


def test_same_seed_gives_identical_weights(tiny_train):
    first, stats = _one_epoch(tiny_train, seed=7)
    second, _ = _one_epoch(tiny_train, seed=7)
    for a, b in zip(first.state_dict().values(), second.state_dict().values()):
        assert torch.equal(a, b)
    assert stats.n == 512 and stats.steps == 8 and stats.images_per_second > 0


def test_different_seeds_give_different_weights(tiny_train):
    first, _ = _one_epoch(tiny_train, seed=1)
    second, _ = _one_epoch(tiny_train, seed=2)
    assert not all(torch.equal(a, b) for a, b in zip(first.state_dict().values(), second.state_dict().values()))


def test_augmentation_is_deterministic_given_a_generator(tiny_train):
    x = tiny_train.images[:16].unsqueeze(1).float() / 255
    a = augment_batch(x, generator=torch.Generator().manual_seed(3))
    b = augment_batch(x, generator=torch.Generator().manual_seed(3))
    assert torch.equal(a, b) and a.shape == x.shape and not torch.equal(a, x)
    assert a.min() >= 0 and a.max() <= 1


@pytest.mark.parametrize("device", DEVICES)
def test_evaluate_reports_accuracy_and_a_confusion_matrix(tiny_test, device):
    model = build_model("mlp").to(device)
    result = evaluate(model=model, images=tiny_test.images, labels=tiny_test.labels, device=torch.device(device), batch_size=32)
    assert result.n == 100
    assert len(result.confusion) == 10 and all(len(row) == 10 for row in result.confusion)
    assert sum(map(sum, result.confusion)) == 100
    assert result.accuracy == pytest.approx(sum(result.confusion[k][k] for k in range(10)) / 100)
    assert math.isfinite(result.loss)


def test_should_stop_cancels_training(tiny_train):
    model = build_model("mlp")
    calls = []
    with pytest.raises(TrainingCancelled):
        train_one_epoch(
            model=model, optimizer=torch.optim.Adam(model.parameters()), scheduler=None,
            images=tiny_train.images, labels=tiny_train.labels, batch_size=64, device=CPU,
            generator=torch.Generator().manual_seed(0), augment=False, on_step=None,
            should_stop=lambda: calls.append(1) or len(calls) > 2,
        )
    assert len(calls) == 3


def _tiny_config(**overrides):
    return TrainConfig.from_dict({**TrainConfig().to_dict(), "model": SMALL_CNN, "epochs": 2, "batch_size": 64, **overrides})


@pytest.mark.parametrize("device", DEVICES)
def test_fit_learns_a_separable_task_and_reports_each_epoch(tiny_train, tiny_validation, tiny_test, device):
    progress, epochs_seen = [], []
    result = fit(
        config=_tiny_config(augment=False), train=tiny_train, validation=tiny_validation, test=tiny_test, device=torch.device(device),
        on_progress=lambda *args: progress.append(args),
        on_epoch_end=lambda epoch, model, optimizer, metrics: epochs_seen.append((epoch, len(metrics["history"]))),
    )
    assert result.final_accuracy > 0.9
    assert [row["epoch"] for row in result.history] == [1, 2]
    assert set(result.history[0]) >= {
        "epoch", "train_loss", "train_accuracy", "validation_loss", "validation_accuracy", "images_per_second", "seconds"
    }
    assert epochs_seen == [(1, 1), (2, 2)]
    assert progress[-1][0] == pytest.approx(1.0) and progress[-1][1:3] == (2, 8)
    assert {parameter.device.type for parameter in result.model.parameters()} == {device}


def test_each_epoch_is_judged_on_the_validation_set_and_the_test_set_only_once_on_the_final_model(
    tiny_train, tiny_validation, tiny_test
):
    epoch_metrics, evaluated = [], []
    result = fit(
        config=_tiny_config(augment=False), train=tiny_train, validation=tiny_validation, test=tiny_test, device=CPU,
        on_epoch_end=lambda epoch, model, optimizer, metrics: epoch_metrics.append(metrics),
    )
    assert all(not any(key.startswith("test_") for key in row) for row in result.history)
    for row, metrics in zip(result.history, epoch_metrics):
        assert not any(key.startswith("test_") for key in metrics)
        assert metrics["validation_accuracy"] == row["validation_accuracy"]
    for split in (tiny_validation, tiny_test):
        evaluated.append(evaluate(model=result.model, images=split.images, labels=split.labels, device=CPU))
    on_validation, on_test = evaluated
    assert result.validation_accuracy == result.history[-1]["validation_accuracy"] == on_validation.accuracy
    assert result.validation_loss == pytest.approx(on_validation.loss)
    assert result.final_accuracy == on_test.accuracy and result.confusion == on_test.confusion
    assert result.test_loss == pytest.approx(on_test.loss)


def test_a_run_resumed_with_no_epoch_left_reports_its_models_validation_and_test_accuracy(
    tiny_train, tiny_validation, tiny_test
):
    config = _tiny_config(epochs=1, augment=False)
    saved = {}
    trained = fit(
        config=config, train=tiny_train, validation=tiny_validation, test=tiny_test, device=CPU,
        on_epoch_end=lambda epoch, model, optimizer, metrics: saved.update(
            copy.deepcopy({"state_dict": model.state_dict(), "epoch": epoch, "metrics": metrics})
        ),
    )
    resumed = fit(config=config, train=tiny_train, validation=tiny_validation, test=tiny_test, device=CPU,
                  resume_from=saved)
    assert resumed.history == trained.history
    assert resumed.validation_accuracy == trained.validation_accuracy
    assert resumed.final_accuracy == trained.final_accuracy


def test_the_reported_training_loss_is_plain_cross_entropy_comparable_with_the_test_loss(tiny_train):
    # A learning rate of 0 leaves the weights as they are, so the epoch's loss must be the evaluation's loss on the
    # same images, although the optimiser was given the label-smoothed one.
    torch.manual_seed(0)
    model = build_model("mlp", {"hidden": 32})
    stats = train_one_epoch(
        model=model, optimizer=torch.optim.SGD(model.parameters(), lr=0.0), scheduler=None,
        images=tiny_train.images, labels=tiny_train.labels, batch_size=64, device=CPU,
        generator=torch.Generator().manual_seed(0), augment=False, label_smoothing=0.1,
    )
    plain = evaluate(model=model, images=tiny_train.images, labels=tiny_train.labels, device=CPU)
    assert stats.loss == pytest.approx(plain.loss, rel=1e-5)


def test_a_cnn_trains_when_the_last_batch_would_hold_a_single_image(tiny_train, tiny_validation, tiny_test):
    # Batch normalisation refuses to train on one image; 65 images in batches of 64 would leave one.
    progress = []
    result = fit(config=_tiny_config(epochs=1), train=tiny_train.subset(65), validation=tiny_validation, test=tiny_test,
                 device=CPU, on_progress=lambda *args: progress.append(args))
    assert [row["epoch"] for row in result.history] == [1]
    assert progress[-1][0] == pytest.approx(1.0) and progress[-1][2] == 1


@pytest.mark.parametrize(("images", "batch_size", "steps"), [(64, 64, 1), (256, 64, 4), (320, 32, 10)])
def test_the_one_cycle_schedule_warms_up_runs_long_enough_to_and_shorter_ones_train_at_the_peak_rate(
    tiny_train, tiny_validation, tiny_test, images, batch_size, steps
):
    config = _tiny_config(epochs=1, batch_size=batch_size, schedule="onecycle", warmup_fraction=0.2, lr=0.1)
    rates = []
    hook = register_optimizer_step_post_hook(lambda optimizer, *_: rates.append(optimizer.param_groups[0]["lr"]))
    try:
        fit(config=config, train=tiny_train.subset(images), validation=tiny_validation, test=tiny_test, device=CPU)
    finally:
        hook.remove()

    assert len(rates) == steps
    if steps < 5:  # a warm-up of a fifth would be shorter than one step
        assert rates == [0.1] * steps
    else:
        assert rates[0] == pytest.approx(0.01) and max(rates) == pytest.approx(0.1) and rates[-1] < 0.01


@requires_cuda
def test_training_on_the_gpu_takes_the_same_steps_as_on_the_cpu(tiny_train):
    # The CPU generator draws the batches and the augmentation, so both devices see the same inputs;
    # dropout would draw from each device's own generator, so it is off here.
    def train_on(device):
        torch.manual_seed(0)
        model = build_model("cnn", {**SMALL_CNN, "dropout": 0.0}).to(device)
        optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
        train_one_epoch(
            model=model, optimizer=optimizer, scheduler=None, images=tiny_train.images[:256],
            labels=tiny_train.labels[:256], batch_size=64, device=device,
            generator=torch.Generator().manual_seed(3), augment=True,
        )
        return {name: value.cpu() for name, value in model.state_dict().items()}

    with full_float32():
        on_cpu, on_gpu = train_on(CPU), train_on(torch.device("cuda"))
    for name, value in on_cpu.items():
        torch.testing.assert_close(on_gpu[name], value, rtol=1e-3, atol=1e-4, msg=name)


def test_resuming_from_an_epoch_checkpoint_matches_an_uninterrupted_run(tiny_train, tiny_validation, tiny_test):
    config = _tiny_config()
    saved = {}

    def keep_first(epoch, model, optimizer, metrics):
        if epoch == 1:
            saved.update(
                state_dict={k: v.clone() for k, v in model.state_dict().items()},
                optimizer=__import__("copy").deepcopy(optimizer.state_dict()),
                epoch=epoch, metrics=metrics,
            )

    full = fit(config=config, train=tiny_train, validation=tiny_validation, test=tiny_test, device=CPU, on_epoch_end=keep_first)
    resumed = fit(config=config, train=tiny_train, validation=tiny_validation, test=tiny_test, device=CPU, resume_from=saved)
    assert [r["epoch"] for r in resumed.history] == [1, 2]
    for a, b in zip(full.model.state_dict().values(), resumed.model.state_dict().values()):
        torch.testing.assert_close(a, b)


def test_fit_raises_training_cancelled_when_asked_to_stop(tiny_train, tiny_validation, tiny_test):
    with pytest.raises(TrainingCancelled):
        fit(config=_tiny_config(), train=tiny_train, validation=tiny_validation, test=tiny_test, device=CPU, should_stop=lambda: True)


def test_a_diverging_run_stops_before_its_epoch_is_reported_or_saved(tiny_train, tiny_validation, tiny_test):
    config = _tiny_config(lr=1e12)
    reported = []
    with pytest.raises(TrainingDiverged, match="lower the learning rate"):
        fit(config=config, train=tiny_train, validation=tiny_validation, test=tiny_test, device=CPU,
            on_epoch_end=lambda epoch, model, optimizer, metrics: reported.append(epoch))
    assert reported == []


def test_a_loss_that_stops_being_finite_ends_the_epoch_at_the_next_check_naming_the_step(tiny_train, tiny_validation, tiny_test):
    # Checked at every progress report (each step here): the rest of the epoch would only train NaN weights.
    config = _tiny_config(epochs=1, augment=False, progress_interval_s=0.0, lr=0.01)
    steps = []

    def ruin_the_weights_at_step_three(optimizer, args, kwargs):
        steps.append(1)
        if len(steps) == 3:
            with torch.no_grad():
                optimizer.param_groups[0]["params"][0].fill_(float("inf"))

    handle = register_optimizer_step_post_hook(ruin_the_weights_at_step_three)
    try:
        with pytest.raises(
            TrainingDiverged, match=r"^the training loss became nan at step 4 of epoch 1; lower the learning rate "
            r"\(it was 0\.01\)$"
        ):
            fit(config=config, train=tiny_train, validation=tiny_validation, test=tiny_test, device=CPU)
    finally:
        handle.remove()
    assert len(steps) == 4 < len(tiny_train) // config.batch_size


@pytest.mark.parametrize(
    "poison, caught_by",
    [(float("nan"), "the weights stopped being finite"), (3e38, "the validation loss became")],
    ids=["non-finite-weights", "finite-weights-that-overflow"],
)
def test_an_epoch_whose_last_step_ruins_the_weights_is_never_reported_or_saved(
    tiny_train, tiny_validation, tiny_test, poison, caught_by
):
    # The epoch's mean loss is computed before each step, so it stays finite whatever the last step does.
    config = _tiny_config(epochs=1, augment=False)
    steps_per_epoch = len(tiny_train) // config.batch_size
    steps = []

    def poison_the_last_step(optimizer, args, kwargs):
        steps.append(1)
        if len(steps) == steps_per_epoch:
            with torch.no_grad():
                optimizer.param_groups[0]["params"][0].fill_(poison)

    reported = []
    handle = register_optimizer_step_post_hook(poison_the_last_step)
    try:
        with pytest.raises(TrainingDiverged, match=f"{caught_by}.* in epoch 1; lower the learning rate"):
            fit(config=config, train=tiny_train, validation=tiny_validation, test=tiny_test, device=CPU,
                on_epoch_end=lambda epoch, model, optimizer, metrics: reported.append(epoch))
    finally:
        handle.remove()
    assert len(steps) == steps_per_epoch and reported == []


def test_the_step_callback_gets_the_loss_as_a_tensor_so_no_step_waits_for_the_device(tiny_train):
    model = build_model("mlp", {"hidden": 32})
    losses = []
    train_one_epoch(
        model=model, optimizer=torch.optim.SGD(model.parameters(), lr=0.01), scheduler=None,
        images=tiny_train.images, labels=tiny_train.labels, batch_size=64, device=CPU,
        generator=torch.Generator().manual_seed(0), augment=False,
        on_step=lambda step, steps, loss: losses.append(loss),
    )
    assert len(losses) == 8
    assert all(isinstance(loss, torch.Tensor) and loss.ndim == 0 and not loss.requires_grad for loss in losses)
    assert all(math.isfinite(float(loss)) for loss in losses)


def test_train_config_round_trips_and_has_the_tutorial_mlp_recipe():
    mlp = TrainConfig.default_for("mlp")
    assert (mlp.arch, mlp.batch_size, mlp.optimizer, mlp.lr, mlp.epochs, mlp.augment) == ("mlp", 100, "adam", 1e-3, 5, False)
    assert TrainConfig.from_dict(mlp.to_dict()) == mlp
    assert TrainConfig.default_for("cnn").arch == "cnn"
    with pytest.raises(ValueError):
        TrainConfig.from_dict({"epochz": 3})


@requires_cuda
def test_select_device_gives_the_gpu_for_auto_when_there_is_one():
    assert select_device("auto").type == "cuda" and select_device("cuda").type == "cuda"


def test_select_device_understands_auto_and_cpu():
    assert select_device("cpu") == CPU
    assert select_device("auto").type in {"cpu", "cuda"}
    with pytest.raises(ValueError):
        select_device("tpu")


@pytest.mark.parametrize("name", ["cuda:x", "cuda:-1", "cuda:", "cuda:01", "cuda:0:1", "CUDA", " cuda"])
def test_a_malformed_device_name_is_refused_by_name_on_any_machine(name):
    with pytest.raises(ValueError, match=re.escape(f"unknown device {name!r}; use 'auto', 'cpu', 'cuda' or 'cuda:N'")):
        select_device(name)


@requires_no_cuda
@pytest.mark.parametrize("name", ["cuda", "cuda:0", "cuda:5"])
def test_a_gpu_asked_for_on_a_machine_without_cuda_is_refused_at_selection(name):
    with pytest.raises(ValueError, match=re.escape(f"device {name!r} was requested but CUDA is not available")):
        select_device(name)


def test_a_gpu_index_past_the_machines_count_is_refused_at_selection_not_at_the_first_tensor(monkeypatch):
    # What torch reports on a one-GPU machine; nothing is moved to the device.
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    assert select_device("cuda:0") == torch.device("cuda:0")
    refusal = "there is no device 'cuda:5': this machine has 1 CUDA GPU (cuda:0)"
    with pytest.raises(ValueError, match=re.escape(refusal)):
        select_device("cuda:5")


@requires_cuda
def test_a_gpu_this_machine_does_not_have_is_refused_at_selection_naming_those_it_has():
    count = torch.cuda.device_count()
    assert select_device(f"cuda:{count - 1}") == torch.device(f"cuda:{count - 1}")
    with pytest.raises(ValueError, match=f"there is no device 'cuda:{count}': this machine has {count} CUDA GPU"):
        select_device(f"cuda:{count}")


@pytest.mark.parametrize("arch", ["mlp", "cnn"])
def test_training_on_no_images_is_refused_rather_than_reported_as_a_diverging_run(arch, tiny_validation, tiny_test):
    empty = tiny_test.subset(0)
    with pytest.raises(ValueError, match="no training images"):
        fit(config=TrainConfig.default_for(arch), train=empty, validation=tiny_validation, test=tiny_test, device=CPU)
    model = build_model(arch)
    with pytest.raises(ValueError, match="no training images"):
        train_one_epoch(
            model=model, optimizer=torch.optim.SGD(model.parameters(), lr=0.01), scheduler=None,
            images=empty.images, labels=empty.labels, batch_size=64, device=CPU,
            generator=torch.Generator().manual_seed(0), augment=False,
        )


@pytest.mark.parametrize(("optimizer", "key"), [("sgd", "momentum"), ("adamw", "betas")])
@pytest.mark.parametrize("momentum", [0.5, 0.9])
def test_the_one_cycle_schedule_cycles_momentum_around_the_configs_not_a_fixed_one(
    tiny_train, tiny_validation, tiny_test, optimizer, key, momentum
):
    config = _tiny_config(epochs=1, augment=False, optimizer=optimizer, lr=0.01, momentum=momentum)
    seen = []

    def record(optim, args, kwargs):
        value = optim.param_groups[0][key]
        seen.append(value[0] if key == "betas" else value)

    handle = register_optimizer_step_post_hook(record)
    try:
        fit(config=config, train=tiny_train, validation=tiny_validation, test=tiny_test, device=CPU)
    finally:
        handle.remove()
    assert seen
    assert min(seen) == pytest.approx(momentum - 0.05, abs=0.01) and max(seen) == pytest.approx(momentum + 0.05, abs=1e-6)


@pytest.mark.parametrize(
    ("epochs", "images", "batch_size"),
    [(1, 10, 2), (5, 64, 64)],
    ids=["one-epoch-of-five-steps", "five-epochs-of-one-step"],
)
def test_a_one_cycle_run_of_exactly_five_steps_trains_instead_of_dividing_by_zero(
    tiny_train, tiny_validation, tiny_test, epochs, images, batch_size
):
    # A 20% warm-up of five steps is one step, which torch's schedule takes as a phase of length zero.
    config = _tiny_config(epochs=epochs, batch_size=batch_size, augment=False)
    saved = {}

    def keep_first(epoch, model, optimizer, metrics):
        if epoch == 1:
            saved.update(copy.deepcopy(
                {"state_dict": model.state_dict(), "optimizer": optimizer.state_dict(), "epoch": epoch, "metrics": metrics}
            ))

    result = fit(config=config, train=tiny_train.subset(images), validation=tiny_validation, test=tiny_test, device=CPU, on_epoch_end=keep_first)
    assert [row["epoch"] for row in result.history] == list(range(1, epochs + 1))
    assert all(math.isfinite(row["lr"]) and row["lr"] > 0 for row in result.history)
    resumed = fit(config=config, train=tiny_train.subset(images), validation=tiny_validation, test=tiny_test, device=CPU, resume_from=saved)
    assert len(resumed.history) == epochs

