"""Digit classifiers selectable by name, each rebuilt from a JSON-serialisable config."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from torch import nn


@dataclass(frozen=True)
class MlpConfig:
    """The tutorial network: 784 inputs, one ReLU hidden layer, 10 logits."""

    hidden: int = 500


@dataclass(frozen=True)
class CnnConfig:
    """Small VGG-style net: each block is 3x3 conv+BN+ReLU layers (widths listed) then 2x2 max-pool.

    The default spends little compute at full 28x28 resolution because that is
    where a 2-core CPU loses most of its time.
    """

    blocks: tuple[tuple[int, ...], ...] = ((16,), (32, 32), (64,))
    hidden: int = 128
    dropout: float = 0.1


class Mlp(nn.Module):
    """Linear(784, hidden) -> ReLU -> Linear(hidden, 10) on flattened 28x28 input."""

    def __init__(self, config: MlpConfig) -> None:
        super().__init__()
        self.config = config
        self.net = nn.Sequential(
            nn.Flatten(),
            nn.Linear(28 * 28, config.hidden),
            nn.ReLU(),
            nn.Linear(config.hidden, 10),
        )

    def forward(self, x):
        return self.net(x)


class Cnn(nn.Module):
    """Conv feature extractor followed by a one-hidden-layer classifier head."""

    def __init__(self, config: CnnConfig) -> None:
        super().__init__()
        self.config = config
        layers: list[nn.Module] = []
        in_ch, side = 1, 28
        for block in config.blocks:
            for out_ch in block:
                # bias is redundant before BatchNorm
                layers += [nn.Conv2d(in_ch, out_ch, 3, padding=1, bias=False), nn.BatchNorm2d(out_ch), nn.ReLU(inplace=True)]
                in_ch = out_ch
            layers.append(nn.MaxPool2d(2))
            side //= 2
        self.features = nn.Sequential(*layers)
        self.head = nn.Sequential(
            nn.Flatten(),
            nn.Dropout(config.dropout),
            nn.Linear(in_ch * side * side, config.hidden, bias=False),
            nn.BatchNorm1d(config.hidden),
            nn.ReLU(inplace=True),
            nn.Dropout(config.dropout),
            nn.Linear(config.hidden, 10),
        )

    def forward(self, x):
        return self.head(self.features(x))


ARCHITECTURES: dict[str, tuple[type, type[nn.Module]]] = {
    "mlp": (MlpConfig, Mlp),
    "cnn": (CnnConfig, Cnn),
}
DEFAULT_ARCH = "cnn"


def _config_from_dict(config_cls: type, values: dict[str, Any]) -> Any:
    known = {f.name: f for f in dataclasses.fields(config_cls)}
    unknown = set(values) - set(known)
    if unknown:
        raise ValueError(f"unknown {config_cls.__name__} fields: {sorted(unknown)}")
    # JSON turns tuples into lists; frozen dataclasses must stay hashable.
    coerced = {k: _to_tuples(v) for k, v in values.items()}
    return config_cls(**coerced)


def _to_tuples(value: Any) -> Any:
    return tuple(_to_tuples(v) for v in value) if isinstance(value, (list, tuple)) else value


def _to_lists(value: Any) -> Any:
    return [_to_lists(v) for v in value] if isinstance(value, (list, tuple)) else value


def build_model(arch: str, config: dict[str, Any] | None = None) -> nn.Module:
    """Instantiate architecture ``arch`` with field overrides from ``config``.

    ``config`` may be the output of :func:`model_config` (its ``"arch"`` key must
    then agree with ``arch``). Raises ``ValueError`` for unknown names or fields.
    """
    if arch not in ARCHITECTURES:
        raise ValueError(f"unknown architecture {arch!r}; choose one of {sorted(ARCHITECTURES)}")
    values = dict(config or {})
    stored_arch = values.pop("arch", arch)
    if stored_arch != arch:
        raise ValueError(f"config is for architecture {stored_arch!r}, not {arch!r}")
    config_cls, model_cls = ARCHITECTURES[arch]
    return model_cls(_config_from_dict(config_cls, values))


def model_from_config(config: dict[str, Any]) -> nn.Module:
    """Rebuild a model from a ``{"arch": ..., **fields}`` dict as stored in checkpoints."""
    if "arch" not in config:
        raise ValueError("model config has no 'arch' key")
    return build_model(config["arch"], config)


def model_config(model_or_arch: nn.Module | str) -> dict[str, Any]:
    """JSON-serialisable ``{"arch": name, **fields}`` for a built model or an arch's defaults."""
    if isinstance(model_or_arch, str):
        if model_or_arch not in ARCHITECTURES:
            raise ValueError(f"unknown architecture {model_or_arch!r}; choose one of {sorted(ARCHITECTURES)}")
        arch, config = model_or_arch, ARCHITECTURES[model_or_arch][0]()
    else:
        matches = [name for name, (_, cls) in ARCHITECTURES.items() if type(model_or_arch) is cls]
        if not matches:
            raise ValueError(f"{type(model_or_arch).__name__} is not a registered architecture")
        arch, config = matches[0], model_or_arch.config
    fields = {k: _to_lists(v) for k, v in dataclasses.asdict(config).items()}
    return {"arch": arch, **fields}
