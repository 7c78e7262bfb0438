"""`make bench-concurrency`: gunicorn processes x threads and Celery pool sizes compared on this machine (JSON)."""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.bench_serve import DATA_DIR, upload_load  # noqa: E402
from benchmarks.loadgen import mnist_pngs  # noqa: E402
from benchmarks.stack import running_stack  # noqa: E402

# (gunicorn processes, threads per process, Celery inference pool processes)
LAYOUTS = [(2, 4, 1), (1, 8, 1), (4, 1, 1), (1, 8, 2), (2, 4, 2), (1, 16, 2)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--images", type=int, default=640)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--per-request", type=int, default=32)
    args = parser.parse_args()
    images = mnist_pngs(DATA_DIR, args.images)
    results = []
    with tempfile.TemporaryDirectory(prefix="bench-concurrency-") as tmp:
        for web_workers, web_threads, worker_concurrency in LAYOUTS:
            workdir = Path(tmp) / f"w{web_workers}t{web_threads}c{worker_concurrency}"
            with running_stack(
                workdir, web_workers=web_workers, web_threads=web_threads, worker_concurrency=worker_concurrency
            ) as stack:
                upload_load(stack, images, 1, 2)  # warm-up
                single = upload_load(stack, images, 1, args.concurrency).summary()
                multi = upload_load(stack, images, args.per_request, args.concurrency).summary()
            row = {
                "gunicorn_workers": web_workers,
                "gunicorn_threads": web_threads,
                "celery_concurrency": worker_concurrency,
                f"single_c{args.concurrency}": single,
                f"multi_{args.per_request}_c{args.concurrency}": multi,
            }
            print(
                f"{web_workers}x{web_threads} web, {worker_concurrency} inference: "
                f"single {single['images_per_second']} img/s, multi {multi['images_per_second']} img/s",
                file=sys.stderr,
            )
            results.append(row)
    print(json.dumps({"images": len(images), "layouts": results}, indent=2))


if __name__ == "__main__":
    main()
