"""Tests for building models by name and round-tripping their configs."""

import json

import pytest
import torch

from training.ml.architectures import build_model, model_config, model_from_config


@pytest.mark.parametrize("arch", ["mlp", "cnn"])
def test_each_architecture_maps_a_batch_to_ten_logits(arch):
    model = build_model(arch).eval()
    assert model(torch.zeros(3, 1, 28, 28)).shape == (3, 10)


def test_mlp_is_the_tutorial_network():
    layers = [m for m in build_model("mlp").modules() if isinstance(m, torch.nn.Linear)]
    assert [(l.in_features, l.out_features) for l in layers] == [(784, 500), (500, 10)]


def test_model_config_survives_json_and_rebuilds_the_same_shapes():
    model = build_model("cnn", {"blocks": [[8], [16]], "hidden": 32})
    config = json.loads(json.dumps(model_config(model)))
    assert config["arch"] == "cnn"
    rebuilt = model_from_config(config)
    assert rebuilt.config == model.config
    rebuilt.load_state_dict(model.state_dict(), strict=True)


def test_unknown_architecture_is_a_value_error():
    with pytest.raises(ValueError, match="unknown architecture"):
        build_model("transformer")


def test_unknown_config_field_is_a_value_error():
    with pytest.raises(ValueError, match="unknown"):
        build_model("mlp", {"depth": 3})
