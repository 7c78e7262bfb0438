"""Benchmark: the PyTorch tutorial's MLP recipe vs the same MLP and the default CNN through training.ml."""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import torch  # noqa: E402
from PIL import Image  # noqa: E402
from torch import nn  # noqa: E402

from training.ml.data import load_mnist, split_validation  # noqa: E402
from training.ml.preprocess import preprocess, to_tensor  # noqa: E402
from training.ml.recipe import TrainConfig, fit, select_device  # noqa: E402

QUICK_TRAIN, QUICK_TEST = 1000, 200
OTHER_SAMPLES = REPO / "media" / "samples" / "other"


def samples_accuracy(predict) -> dict:
    """Accuracy on the shipped non-MNIST digits (label: the file name's first character)."""
    paths = sorted(p for p in OTHER_SAMPLES.iterdir() if p.name[0].isdigit())
    correct = 0
    for path in paths:
        with Image.open(path) as image:
            image.load()
            with torch.no_grad():
                correct += int(predict(image) == int(path.name[0]))
    return {"accuracy": correct / len(paths), "n": len(paths)}


def tutorial_input(image: Image.Image) -> torch.Tensor:
    """The tutorial app's preprocessing: grayscale, a plain resize to 28x28, flatten."""
    from torchvision import transforms

    transform = transforms.Compose([transforms.Grayscale(num_output_channels=1), transforms.Resize((28, 28)),
                                    transforms.ToTensor()])
    return transform(image).flatten().unsqueeze(0)


def synchronize(device: torch.device) -> None:
    """Wait for queued GPU work, so that a clock read after it counts that work."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def tutorial_recipe(
    data_dir: Path, *, epochs: int, subset: int | None, test_subset: int | None, device: torch.device
) -> dict:
    """The tutorial exactly: torchvision Dataset + ToTensor + DataLoader(100, shuffle) + Adam 1e-3, on ``device``."""
    import torchvision
    from torch.utils.data import DataLoader, Subset
    from torchvision import transforms

    torch.manual_seed(0)
    started, cpu_started = time.perf_counter(), time.process_time()
    train_dataset = torchvision.datasets.MNIST(root=str(data_dir), train=True, transform=transforms.ToTensor(), download=False)
    test_dataset = torchvision.datasets.MNIST(root=str(data_dir), train=False, transform=transforms.ToTensor(), download=False)
    if subset is not None:
        train_dataset = Subset(train_dataset, range(subset))
    if test_subset is not None:
        test_dataset = Subset(test_dataset, range(test_subset))
    train_loader = DataLoader(dataset=train_dataset, batch_size=100, shuffle=True)
    test_loader = DataLoader(dataset=test_dataset, batch_size=100, shuffle=False)

    class NeuralNet(nn.Module):
        def __init__(self, input_size=784, hidden_size=500, num_classes=10):
            super().__init__()
            self.fc1 = nn.Linear(input_size, hidden_size)
            self.relu = nn.ReLU()
            self.fc2 = nn.Linear(hidden_size, num_classes)

        def forward(self, x):
            return self.fc2(self.relu(self.fc1(x)))

    model = NeuralNet().to(device)
    criterion = nn.CrossEntropyLoss()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    train_seconds = 0.0
    for _ in range(epochs):
        epoch_started = time.perf_counter()
        for images, labels in train_loader:
            images = images.reshape(-1, 28 * 28).to(device)
            loss = criterion(model(images), labels.to(device))
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        synchronize(device)
        train_seconds += time.perf_counter() - epoch_started
    with torch.no_grad():
        correct = total = 0
        for images, labels in test_loader:
            predicted = model(images.reshape(-1, 28 * 28).to(device)).argmax(1).cpu()
            total += labels.size(0)
            correct += (predicted == labels).sum().item()
    seconds, cpu_seconds = time.perf_counter() - started, time.process_time() - cpu_started
    model.cpu()
    return {
        "seconds": seconds,
        "cpu_seconds": cpu_seconds,
        "images_per_second": len(train_dataset) * epochs / train_seconds,
        "test_accuracy": correct / total,
        "epochs": epochs,
        "other_digits_accuracy": samples_accuracy(lambda image: model(tutorial_input(image)).argmax(1).item()),
    }


def pipeline_recipe(
    config: TrainConfig, data_dir: Path, *, subset: int | None, test_subset: int | None, device: torch.device
) -> dict:
    """``fit`` end to end, including loading the IDX files, every per-epoch validation and the final test."""
    started, cpu_started = time.perf_counter(), time.process_time()
    train, test = load_mnist(data_dir)
    train, validation = split_validation(train)
    if subset is not None:
        train, validation, test = train.subset(subset), validation.subset(test_subset), test.subset(test_subset)
    result = fit(config=config, train=train, validation=validation, test=test, device=device)
    seconds, cpu_seconds = time.perf_counter() - started, time.process_time() - cpu_started
    model = result.model.cpu().eval()
    with torch.inference_mode():
        other = samples_accuracy(lambda image: model(to_tensor(preprocess(image))).argmax(1).item())
    return {
        "other_digits_accuracy": other,
        "seconds": seconds,
        # CPU time summed over threads: on a shared machine it shows how much of "seconds" was waiting.
        "cpu_seconds": cpu_seconds,
        "images_per_second": result.images_per_second,
        "test_accuracy": result.final_accuracy,
        "epochs": config.epochs,
        "config": config.to_dict(),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="smoke mode: 1 epoch on a small subset")
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's choice)")
    parser.add_argument("--skip-default", action="store_true", help="leave out the (slow) default CNN recipe")
    parser.add_argument("--device", default="cpu", help="auto, cpu or cuda, for every recipe (default: cpu)")
    args = parser.parse_args(argv)
    device = select_device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    data_dir = Path(os.environ.get("DATA_DIR", REPO / "data"))
    subset, test_subset = (QUICK_TRAIN, QUICK_TEST) if args.quick else (None, None)

    def log(message: str) -> None:
        print(message, file=sys.stderr, flush=True)

    mlp = TrainConfig.default_for("mlp")
    cnn = TrainConfig.default_for("cnn")
    if args.quick:
        mlp.epochs = cnn.epochs = 1
    log("a) tutorial recipe")
    tutorial = tutorial_recipe(data_dir, epochs=mlp.epochs, subset=subset, test_subset=test_subset, device=device)
    log(f"   {tutorial}")
    log("b) tutorial MLP through training.ml")
    pipeline_mlp = pipeline_recipe(mlp, data_dir, subset=subset, test_subset=test_subset, device=device)
    log(f"   {pipeline_mlp['seconds']:.1f}s acc {pipeline_mlp['test_accuracy']:.4f}")
    report = {
        "quick": args.quick,
        "threads": torch.get_num_threads(),
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "torch": str(torch.__version__),
        "tutorial_mlp": tutorial,
        "pipeline_mlp": pipeline_mlp,
        "speedup_pipeline_mlp_vs_tutorial": tutorial["seconds"] / pipeline_mlp["seconds"],
        "speedup_pipeline_mlp_vs_tutorial_cpu": tutorial["cpu_seconds"] / pipeline_mlp["cpu_seconds"],
    }
    if not args.skip_default:
        log("c) default CNN recipe")
        default_cnn = pipeline_recipe(cnn, data_dir, subset=subset, test_subset=test_subset, device=device)
        log(f"   {default_cnn['seconds']:.1f}s acc {default_cnn['test_accuracy']:.4f}")
        report["default_cnn"] = default_cnn
        report["default_vs_tutorial_time_ratio"] = default_cnn["seconds"] / tutorial["seconds"]
        report["default_vs_tutorial_accuracy_gain"] = default_cnn["test_accuracy"] - tutorial["test_accuracy"]
    print(json.dumps(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
