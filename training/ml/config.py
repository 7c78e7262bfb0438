"""TrainConfig, everything that determines a training run, without torch: the web reads its recipes too."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any


@dataclass
class TrainConfig:
    """Everything that determines a training run; JSON round-trips via to_dict/from_dict."""

    arch: str = "cnn"
    # Field overrides for the architecture's config dataclass.
    model: dict[str, Any] = field(default_factory=dict)
    # Tuned on a 2-core CPU: 4 epochs reach ~99.6% MNIST test accuracy in about 2 minutes.
    epochs: int = 4
    batch_size: int = 128
    optimizer: str = "sgd"  # "sgd" (Nesterov), "adamw" or "adam"
    lr: float = 0.1  # peak rate when schedule is "onecycle"
    # SGD's momentum, Adam's beta1; with the one-cycle schedule the centre of their cycle (0.05 either side).
    momentum: float = 0.9
    weight_decay: float = 5e-4
    schedule: str = "onecycle"  # "onecycle" or "constant"
    warmup_fraction: float = 0.2
    label_smoothing: float = 0.1
    augment: bool = True
    # Field overrides for AugmentConfig.
    augmentation: dict[str, Any] = field(default_factory=dict)
    seed: int = 0
    eval_batch_size: int = 1000
    channels_last: bool = False
    progress_interval_s: float = 0.5

    @classmethod
    def default_for(cls, arch: str) -> "TrainConfig":
        """The tuned recipe for ``arch``: "cnn" (the site default) or "mlp" (the tutorial's)."""
        if arch == "cnn":
            return cls()
        if arch == "mlp":
            # The PyTorch MNIST tutorial: 784-500-10, batch 100, Adam 1e-3, 5 epochs, no tricks.
            return cls(
                arch="mlp", epochs=5, batch_size=100, optimizer="adam", lr=1e-3, weight_decay=0.0,
                schedule="constant", label_smoothing=0.0, augment=False,
            )
        raise ValueError(f"no default recipe for architecture {arch!r}")

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-serialisable dict."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> "TrainConfig":
        """Inverse of :meth:`to_dict`; unknown keys raise ``ValueError``."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(values) - known
        if unknown:
            raise ValueError(f"unknown TrainConfig fields: {sorted(unknown)}")
        return cls(**dict(values))
