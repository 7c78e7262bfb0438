"""The admin form for starting a training run; blank hyper-parameters take the architecture's tuned recipe."""
from django import forms

from training.ml.config import TrainConfig
from training.services import (
    ARCHITECTURE_CHOICES, DEVICE_CHOICES, MAX_BATCH_SIZE, MAX_EPOCHS, MAX_LEARNING_RATE, MAX_SEED, MAX_TRAIN_SUBSET,
    MIN_BATCH_SIZE, MIN_TRAIN_SUBSET,
)


class TrainingRunStartForm(forms.Form):
    architecture = forms.ChoiceField(
        choices=[(name, name.upper()) for name in ARCHITECTURE_CHOICES],
        initial="cnn",
        help_text="CNN: the accurate default. MLP: the tutorial's 784-500-10 network, much faster on a CPU.",
    )
    epochs = forms.IntegerField(min_value=1, max_value=MAX_EPOCHS, required=False)
    batch_size = forms.IntegerField(min_value=MIN_BATCH_SIZE, max_value=MAX_BATCH_SIZE, required=False)
    # Bounds checked in clean_learning_rate: min_value=0 would say "greater than or equal to 0" of a -1, and 0 is no
    # rate either.
    learning_rate = forms.FloatField(required=False)
    seed = forms.IntegerField(initial=0, min_value=0, max_value=MAX_SEED)
    augment = forms.TypedChoiceField(
        choices=[("", "Recipe default (on for the CNN, off for the MLP)"), ("true", "On"), ("false", "Off")],
        coerce=lambda value: value == "true",
        empty_value=None,
        required=False,
        label="Augmentation",
        help_text="Random affine, elastic and stroke-width changes.",
    )
    device = forms.ChoiceField(choices=[(name, name) for name in DEVICE_CHOICES], initial="auto")
    train_subset = forms.IntegerField(
        min_value=MIN_TRAIN_SUBSET, max_value=MAX_TRAIN_SUBSET, required=False, help_text="Train on the first N images only (smoke runs)."
    )
    activate_on_success = forms.BooleanField(
        required=False,
        label="Activate when done",
        help_text="Serve predictions with this run's model if it succeeds and tests at least as well as the active "
        "one.",
    )

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        # Whoever leaves a field blank should know what the run will use, and the two recipes differ.
        cnn, mlp = TrainConfig.default_for("cnn"), TrainConfig.default_for("mlp")
        self.fields["epochs"].help_text = f"Blank: the recipe's, {cnn.epochs} for the CNN, {mlp.epochs} for the MLP."
        self.fields["batch_size"].help_text = (
            f"Blank: the recipe's, {cnn.batch_size} for the CNN, {mlp.batch_size} for the MLP."
        )
        self.fields["learning_rate"].help_text = (
            f"Blank: the recipe's, {cnn.lr:g} for the CNN (its peak rate), {mlp.lr:g} for the MLP. "
            f"Greater than 0, at most {MAX_LEARNING_RATE:g}."
        )

    def clean_learning_rate(self) -> float | None:
        rate = self.cleaned_data.get("learning_rate")
        if rate is not None and not 0 < rate <= MAX_LEARNING_RATE:
            raise forms.ValidationError(
                f"The learning rate must be greater than 0 and at most {MAX_LEARNING_RATE:g}.", code="out_of_range"
            )
        return rate

    def clean(self):
        cleaned = super().clean()
        architecture = cleaned.get("architecture")
        if architecture:
            recipe = TrainConfig.default_for(architecture)
            defaults = (
                ("epochs", recipe.epochs), ("batch_size", recipe.batch_size), ("learning_rate", recipe.lr),
                ("augment", recipe.augment),
            )
            for field, default in defaults:
                if cleaned.get(field) is None and field not in self.errors:
                    cleaned[field] = default
        return cleaned
