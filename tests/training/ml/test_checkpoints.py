"""Tests that checkpoints round-trip and that anything suspicious is refused before use."""

import hashlib
import pickle

import pytest
import torch

from training.ml import __version__
from training.ml.architectures import build_model, model_config
from training.ml.checkpoints import CheckpointError, load_checkpoint, save_checkpoint
from tests.devices import requires_cuda


def _small_model():
    torch.manual_seed(0)
    return build_model("cnn", {"blocks": [[4], [8]], "hidden": 16})


def _save(tmp_path, **kwargs):
    model = _small_model()
    path = tmp_path / "model.pt"
    digest, size = save_checkpoint(
        path, model=model, config=model_config(model), epoch=3, metrics={"test_accuracy": 0.9}, **kwargs
    )
    return model, path, digest, size


def test_saved_checkpoint_loads_into_an_identical_model(tmp_path):
    model, path, digest, size = _save(tmp_path, optimizer=torch.optim.SGD(_small_model().parameters(), lr=0.1))
    assert size == path.stat().st_size
    assert digest == hashlib.sha256(path.read_bytes()).hexdigest()
    loaded, payload = load_checkpoint(path, expected_sha256=digest)
    assert not loaded.training
    assert payload["epoch"] == 3 and payload["metrics"] == {"test_accuracy": 0.9}
    assert payload["project_version"] == __version__ and payload["torch_version"] == torch.__version__
    assert payload["optimizer"] is not None
    x = torch.randn(2, 1, 28, 28)
    torch.testing.assert_close(loaded(x), model.eval()(x))


@requires_cuda
def test_a_checkpoint_saved_from_the_gpu_loads_on_a_host_without_one_and_back_on_the_gpu(tmp_path):
    model = _small_model().cuda().to(memory_format=torch.channels_last)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    model(torch.randn(8, 1, 28, 28, device="cuda")).sum().backward()
    optimizer.step()
    path = tmp_path / "model.pt"
    digest, _ = save_checkpoint(path, model=model, config=None, epoch=1, metrics={}, optimizer=optimizer)
    # Loading without a map_location would fail on a host without CUDA if any GPU tensor had been stored.
    stored = torch.load(path, map_location=None, weights_only=True)
    tensors = [*stored["state_dict"].values(), *stored["optimizer"]["state"][0].values()]
    assert all(t.device.type == "cpu" and t.is_contiguous() for t in tensors if isinstance(t, torch.Tensor))
    on_cpu, _ = load_checkpoint(path, expected_sha256=digest)
    on_gpu, _ = load_checkpoint(path, expected_sha256=digest, device="cuda")
    assert {p.device.type for p in on_gpu.parameters()} == {"cuda"}
    x = torch.randn(4, 1, 28, 28)
    with torch.inference_mode():
        torch.testing.assert_close(on_gpu(x.cuda()).cpu(), on_cpu(x), rtol=1e-2, atol=1e-3)
        torch.testing.assert_close(on_cpu(x), model.eval()(x.cuda()).cpu(), rtol=1e-2, atol=1e-3)


def test_saving_leaves_no_temporary_files(tmp_path):
    _save(tmp_path)
    assert [p.name for p in tmp_path.iterdir()] == ["model.pt"]


def test_missing_checkpoint_is_refused(tmp_path):
    with pytest.raises(CheckpointError, match="does not exist"):
        load_checkpoint(tmp_path / "absent.pt", expected_sha256="0" * 64)


def test_checkpoint_with_wrong_hash_is_refused(tmp_path):
    _, path, digest, _ = _save(tmp_path)
    with pytest.raises(CheckpointError, match="does not match"):
        load_checkpoint(path, expected_sha256="f" * 64)


def test_truncated_checkpoint_is_refused(tmp_path):
    _, path, _, size = _save(tmp_path)
    truncated = path.read_bytes()[: size // 2]
    path.write_bytes(truncated)
    with pytest.raises(CheckpointError, match="corrupt"):
        load_checkpoint(path, expected_sha256=hashlib.sha256(truncated).hexdigest())


def test_malicious_pickle_is_refused_without_running_its_payload(tmp_path):
    marker = tmp_path / "payload-ran"

    class Exploit:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    path = tmp_path / "evil.pt"
    torch.save({"state_dict": Exploit()}, path)
    with pytest.raises(CheckpointError, match="corrupt or contains disallowed"):
        load_checkpoint(path, expected_sha256=hashlib.sha256(path.read_bytes()).hexdigest())
    assert not marker.exists()


def test_raw_pickle_with_payload_is_refused_without_running_it(tmp_path):
    marker = tmp_path / "payload-ran"

    class Exploit:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    path = tmp_path / "evil.pkl"
    path.write_bytes(pickle.dumps(Exploit(), protocol=2))
    with pytest.raises(CheckpointError):
        load_checkpoint(path, expected_sha256=hashlib.sha256(path.read_bytes()).hexdigest())
    assert not marker.exists()


def _written_with_config(path, model, config):
    """A checkpoint file whose stored config is ``config``, as an older release or an altered file may hold."""
    digest, _ = save_checkpoint(path, model=model, config=None, epoch=1, metrics={})
    payload = torch.load(path, weights_only=True)
    payload["model_config"] = config
    torch.save(payload, path)
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_checkpoint_whose_weights_do_not_fit_its_config_is_refused(tmp_path):
    model = _small_model()
    path = tmp_path / "mismatch.pt"
    digest = _written_with_config(path, model, {**model_config(model), "hidden": 32})
    with pytest.raises(CheckpointError, match="do not fit"):
        load_checkpoint(path, expected_sha256=digest)


def _written_with_payload(path, model, change):
    """A checkpoint file whose payload ``change`` altered after it was saved, as an older release or a bad edit may."""
    save_checkpoint(path, model=model, config=None, epoch=1, metrics={})
    payload = torch.load(path, weights_only=True)
    change(payload)
    torch.save(payload, path)
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.mark.parametrize(
    ("change", "error"),
    [
        (lambda payload: payload["state_dict"].pop("head.6.bias"), "(?s)weights do not fit its model: .*head.6.bias"),
        (lambda payload: payload["state_dict"].update(extra=torch.zeros(1)), "(?s)weights do not fit its model: .*extra"),
        (lambda payload: payload.update(format_version=2), "has format 'mnistsite-checkpoint' v2, expected"),
    ],
    ids=["a-layer-missing", "a-weight-too-many", "a-later-format"],
)
def test_a_checkpoint_missing_weights_holding_others_or_of_another_format_version_is_refused(tmp_path, change, error):
    path = tmp_path / "altered.pt"
    digest = _written_with_payload(path, _small_model(), change)
    with pytest.raises(CheckpointError, match=error):
        load_checkpoint(path, expected_sha256=digest)


def test_a_checkpoints_hash_given_in_capitals_is_the_same_hash(tmp_path):
    model, path, digest, _ = _save(tmp_path)
    loaded, _ = load_checkpoint(path, expected_sha256=digest.upper())
    x = torch.randn(2, 1, 28, 28)
    torch.testing.assert_close(loaded(x), model.eval()(x))


def test_checkpoint_with_unknown_architecture_is_refused(tmp_path):
    model = _small_model()
    path = tmp_path / "unknown.pt"
    digest = _written_with_config(path, model, {"arch": "resnet"})
    with pytest.raises(CheckpointError, match="invalid model config"):
        load_checkpoint(path, expected_sha256=digest)


@pytest.mark.parametrize(
    ("config", "error"),
    [
        ({"hidden": 32}, r"'head\.2\.weight' has shape \(16, 392\) here, \(32, 392\) by the config"),
        ({"blocks": [[4]]}, "'features.4.weight' has no place in the config's model"),
        ({"blocks": [[4], [8], [16]]}, "the config's model needs 'features.8.weight', which this model lacks"),
        ({"arch": "mlp"}, "which this model lacks"),
        ({"arch": "resnet"}, "cannot build a model from the config"),
        ({"dropout": "a lot", "no_such_field": 1}, "cannot build a model from the config"),
    ],
)
def test_a_config_that_cannot_rebuild_the_models_weights_is_refused_at_save_and_nothing_is_written(
    tmp_path, config, error
):
    model = _small_model()
    config = {**model_config(model), **config}
    if config["arch"] == "mlp":
        config = {"arch": "mlp"}
    path = tmp_path / "model.pt"
    with pytest.raises(ValueError, match=error):
        save_checkpoint(path, model=model, config=config, epoch=1, metrics={})
    assert list(tmp_path.iterdir()) == []


def test_plain_state_dict_file_is_refused_as_not_a_checkpoint(tmp_path):
    path = tmp_path / "weights.pt"
    torch.save(_small_model().state_dict(), path)
    with pytest.raises(CheckpointError, match="lacks the keys"):
        load_checkpoint(path, expected_sha256=hashlib.sha256(path.read_bytes()).hexdigest())
