"""`make bench-inference`: a worker's preprocessing and forward pass per batch, on the CPU and any GPU (JSON)."""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402
from PIL import Image  # noqa: E402

from training.ml.architectures import build_model  # noqa: E402
from training.ml.data import load_split  # noqa: E402
from training.ml.preprocess import preprocess_batch, to_tensor  # noqa: E402
from training.ml.serving import inference_model  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
DATA_DIR = Path(os.environ.get("DATA_DIR", REPO / "data"))
BATCHES = (1, 32, 256)


def median_ms(action, *, device: torch.device, repeats: int) -> float:
    """Median wall time of ``action()`` in ms, waiting for the GPU after each call."""
    for _ in range(3):
        action()
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        action()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        times.append((time.perf_counter() - started) * 1000)
    return statistics.median(times)


def forward_ms(arch: str, *, device: torch.device, inputs: torch.Tensor, repeats: int) -> dict:
    """The prediction-only model's forward pass, input copy to the device and result copy back included."""
    torch.manual_seed(0)
    model = inference_model(build_model(arch).to(device))

    def predict(batch: torch.Tensor):
        with torch.inference_mode():
            return torch.softmax(model(batch.to(device)), dim=1).cpu()

    report = {}
    for size in BATCHES:
        ms = median_ms(lambda: predict(inputs[:size]), device=device, repeats=repeats)
        report[str(size)] = {"batch_ms": ms, "images_per_second": size / ms * 1000}
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeats", type=int, default=50)
    parser.add_argument("--threads", type=int, default=1, help="torch threads, as a worker process runs (default 1)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)

    pixels = load_split(DATA_DIR, split="test").images[: max(BATCHES)].numpy()
    images = [Image.fromarray(255 - row) for row in pixels]  # dark ink on white, as people upload
    preprocess_ms = median_ms(lambda: preprocess_batch(images[:32]), device=torch.device("cpu"), repeats=args.repeats)
    inputs = to_tensor(preprocess_batch(images))

    devices = [torch.device("cpu")] + ([torch.device("cuda")] if torch.cuda.is_available() else [])
    report = {
        "torch": str(torch.__version__),
        "threads": torch.get_num_threads(),
        "preprocess_ms_per_image_at_32": preprocess_ms / 32,
        "devices": {},
    }
    for device in devices:
        name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
        report["devices"][device.type] = {
            "name": name,
            **{arch: forward_ms(arch, device=device, inputs=inputs, repeats=args.repeats) for arch in ("cnn", "mlp")},
        }
    print(json.dumps(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
