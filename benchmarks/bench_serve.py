"""`make bench-serve`: the tutorial's Flask app against our full stack, single and multi-image uploads (JSON)."""
from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402

from benchmarks.cpu_usage import cpu_profile, cpu_snapshot  # noqa: E402
from benchmarks.loadgen import mnist_pngs, multipart, run_load  # noqa: E402
from benchmarks.stack import REPO, auth_headers, file_create_us, running_stack, wait_http  # noqa: E402
from training.ml.data import load_split, split_validation  # noqa: E402
from training.ml.recipe import TrainConfig, fit, select_device  # noqa: E402

DATA_DIR = Path(os.environ.get("DATA_DIR", REPO / "data"))


def tutorial_state_dict(path: Path) -> None:
    """The tutorial's MLP weights, saved the way it saved them (a plain state dict)."""
    train, test = load_split(DATA_DIR, split="train"), load_split(DATA_DIR, split="test")
    config = TrainConfig.default_for("mlp")
    config.epochs = 1
    train, validation = split_validation(train)
    result = fit(
        config=config, train=train, validation=validation.subset(1000), test=test.subset(1000), device=select_device("cpu")
    )
    # Our Mlp wraps the same two Linear layers in a Sequential after a Flatten.
    names = {"net.1.weight": "l1.weight", "net.1.bias": "l1.bias", "net.3.weight": "l2.weight", "net.3.bias": "l2.bias"}
    torch.save({names[key]: value for key, value in result.model.state_dict().items()}, path)


def all_done(status: int, body: bytes) -> bool:
    if status != 200:
        return False
    predictions = json.loads(body)["predictions"]
    return all(p["status"] == "done" for p in predictions)


def measure(label: str, run, concurrencies: list[int]) -> dict:
    """One load per concurrency, each with where the machine's CPU went during it."""
    report = {}
    for concurrency in concurrencies:
        before = cpu_snapshot()
        summary = run(concurrency).summary()
        summary["cpu"] = cpu_profile(before, cpu_snapshot(), images=summary["images"])
        print(f"{label} c={concurrency}: {summary['images_per_second']} img/s p50 {summary['latency_ms']['p50']} ms; "
              f"CPU ms per image {summary['cpu']['ms_per_image']}, machine busy {summary['cpu']['machine_busy']}",
              file=sys.stderr)
        report[f"c{concurrency}"] = summary
    return report


def bench_tutorial(images: list[bytes], workdir: Path, weights: Path, concurrencies: list[int]) -> dict:
    port = 8766
    log = (workdir / "flask.log").open("a")
    process = subprocess.Popen(
        [sys.executable, str(REPO / "benchmarks" / "tutorial_flask_app.py"), str(weights), str(port)],
        stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
    )
    try:
        wait_http(f"http://127.0.0.1:{port}/", timeout=60)
        requests = [multipart([("file", "digit.png", image)]) + (1,) for image in images]
        return measure(
            "tutorial",
            lambda c: run_load(base_url=f"http://127.0.0.1:{port}", path="/", requests=requests, concurrency=c),
            concurrencies,
        )
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(timeout=20)


def mean_of(before: dict, after: dict) -> dict:
    """The tutorial's images/s per concurrency, averaged over its runs before and after the stack's."""
    return {
        key: {"images_per_second": round((before[key]["images_per_second"] + after[key]["images_per_second"]) / 2, 1)}
        for key in before
    }


def upload_load(stack, images: list[bytes], batch: int, concurrency: int):
    """Every image uploaded once through the API, ``batch`` per request, waiting for the results."""
    field = "image" if batch == 1 else "images"
    requests = [
        multipart([(field, f"digit{j}.png", image) for j, image in enumerate(images[i : i + batch])])
        + (len(images[i : i + batch]),)
        for i in range(0, len(images), batch)
    ]
    return run_load(base_url=stack.base_url, path="/api/v1/predictions/?wait=30", requests=requests,
                    concurrency=concurrency, headers=auth_headers(stack), accept=all_done)


def bench_stack(
    images: list[bytes], workdir: Path, concurrencies: list[int], per_request: int
) -> tuple[dict, dict, dict]:
    with running_stack(workdir / "stack") as stack:
        probes = Path(stack.env["MEDIA_ROOT"]) / "file-create-probe"
        disk = {"settle": stack.media_settle, "before": file_create_us(probes / "before")}
        upload_load(stack, images, 1, 2)  # warm-up: model loaded, connections open
        single = measure("stack single", lambda c: upload_load(stack, images, 1, c), concurrencies)
        multi = measure(f"stack multi x{per_request}", lambda c: upload_load(stack, images, per_request, c), concurrencies)
        disk["after"] = file_create_us(probes / "after")
    return single, multi, disk


def ratio(a: dict, b: dict, key: str) -> float | None:
    x, y = a[key]["images_per_second"], b[key]["images_per_second"]
    return round(x / y, 2) if x and y else None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--images", type=int, default=1000)
    parser.add_argument("--per-request", type=int, default=32)
    args = parser.parse_args()
    concurrencies = [1, 8]
    images = mnist_pngs(DATA_DIR, args.images)
    with tempfile.TemporaryDirectory(prefix="bench-serve-") as tmp:
        workdir = Path(tmp)
        weights = workdir / "tutorial-mlp.ckpt"
        tutorial_state_dict(weights)
        # This machine's speed drifts by 10% and more within minutes: the tutorial runs before and after
        # the stack, and the ratios use its mean, so that a drift shows instead of skewing them.
        tutorial = bench_tutorial(images, workdir, weights, concurrencies)
        single, multi, disk = bench_stack(images, workdir, concurrencies, args.per_request)
        tutorial_after = bench_tutorial(images, workdir, weights, concurrencies)
    baseline = mean_of(tutorial, tutorial_after)
    report = {
        "images": len(images),
        "tutorial_flask": tutorial,
        "tutorial_flask_after": tutorial_after,
        "tutorial_mean": baseline,
        "stack_single": single,
        f"stack_multi_{args.per_request}": multi,
        "media_file_create_us": disk,
        "ratios": {
            f"single_vs_tutorial_c{c}": ratio(single, baseline, f"c{c}") for c in concurrencies
        } | {f"multi_vs_tutorial_c{c}": ratio(multi, baseline, f"c{c}") for c in concurrencies},
        "targets": {
            "single_vs_tutorial_c8_at_least": 1.0,
            "multi_vs_tutorial_c8_at_least": 5.0,
            "single_p50_ms_c1_under": 30,
        },
    }
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
