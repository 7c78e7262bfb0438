"""Tests that the prediction-only model computes what the trained model computes."""

import pytest
import torch

from training.ml.architectures import build_model
from training.ml.serving import inference_model
from tests.devices import DEVICES, full_float32


def _trained_like(arch: str) -> torch.nn.Module:
    """A model whose batch-norm statistics and affine weights are far from their initial values."""
    torch.manual_seed(0)
    model = build_model(arch).train()
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, (torch.nn.BatchNorm1d, torch.nn.BatchNorm2d)):
                module.weight.uniform_(0.5, 2.0)
                module.bias.uniform_(-0.5, 0.5)
        for _ in range(3):
            model(torch.rand(64, 1, 28, 28) * 3 + 1)
    return model.eval()


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("arch", ["mlp", "cnn"])
@pytest.mark.parametrize("batch", [1, 32])
def test_the_inference_model_gives_the_trained_models_outputs(arch, batch, device):
    model = _trained_like(arch)
    inputs = torch.rand(batch, 1, 28, 28)
    with torch.inference_mode(), full_float32():
        expected = model(inputs)
        actual = inference_model(model.to(device))(inputs.to(device))
    torch.testing.assert_close(actual.cpu(), expected, rtol=1e-4, atol=1e-5)


def test_batch_norms_are_folded_away_and_the_trained_model_is_left_as_it_was():
    model = _trained_like("cnn")
    before = {name: value.clone() for name, value in model.state_dict().items()}
    served = inference_model(model)
    assert not any(isinstance(m, (torch.nn.BatchNorm1d, torch.nn.BatchNorm2d)) for m in served.modules())
    assert not served.training and not any(p.requires_grad for p in served.parameters())
    assert any(isinstance(m, torch.nn.BatchNorm2d) for m in model.modules())
    for name, value in model.state_dict().items():
        assert torch.equal(value, before[name]), name
