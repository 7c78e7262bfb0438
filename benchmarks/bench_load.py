"""`make bench-load`: a burst of uploads through gunicorn, Redis, PostgreSQL and a Celery worker, then every result.

1,000 MNIST test digits are POSTed to /api/v1/predictions/ by 16 concurrent clients without waiting
for the digits; then the database is polled until every prediction is finished. Reported: throughput
of uploads and of results, upload-to-result latency (client request start to the prediction's
finished_at, one machine clock), 5xx count, and whether every upload got exactly one finished
prediction.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import psycopg  # noqa: E402

from benchmarks.loadgen import mnist_pngs, multipart, run_load  # noqa: E402
from benchmarks.stack import BENCH_DB, REPO, auth_headers, print_report, running_stack  # noqa: E402

DATA_DIR = Path(os.environ.get("DATA_DIR", REPO / "data"))
DB_URL = os.environ.get("BENCH_DB_URL", f"postgresql://postgres@127.0.0.1:5432/{BENCH_DB}")


def wait_all_finished(ids: list[int], *, timeout: float) -> float:
    """Poll the bench database until every prediction is done or failed; returns when that happened."""
    deadline = time.monotonic() + timeout
    with psycopg.connect(DB_URL, autocommit=True) as conn:
        while True:
            (left,) = conn.execute(
                "SELECT count(*) FROM classifier_prediction WHERE id = ANY(%s) AND status NOT IN ('done', 'failed')",
                (ids,),
            ).fetchone()
            if left == 0:
                return time.time()
            if time.monotonic() > deadline:
                raise TimeoutError(f"{left} predictions still unfinished after {timeout}s")
            time.sleep(0.5)


def percentile(ordered: list[float], p: float) -> float | None:
    return round(ordered[min(len(ordered) - 1, int(p * len(ordered)))], 1) if ordered else None


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--uploads", type=int, default=1000)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--finish-timeout", type=float, default=900.0)
    args = parser.parse_args()

    # Dark ink on white, like a photographed digit.
    images = mnist_pngs(DATA_DIR, args.uploads, invert=True)
    with tempfile.TemporaryDirectory(prefix="bench-load-") as workdir, running_stack(Path(workdir)) as stack:
        result = run_load(
            base_url=stack.base_url, path="/api/v1/predictions/", concurrency=args.concurrency,
            requests=[multipart([("image", f"digit{i}.png", image)]) + (1,) for i, image in enumerate(images)],
            headers=auth_headers(stack), keep_records=True,
        )
        records = [
            {"started": r.started, "status": r.status, "request_s": r.elapsed_ms / 1000,
             "ids": [item["id"] for item in json.loads(r.body)["predictions"]] if r.status in (200, 202) else []}
            for r in result.records
        ]
        burst_s = result.seconds
        began = min(record["started"] for record in records)
        ids = [pid for record in records for pid in record["ids"]]
        all_finished = wait_all_finished(ids, timeout=args.finish_timeout) if ids else time.time()

        with psycopg.connect(DB_URL, autocommit=True) as conn:
            finished_at = {
                pid: (status, when.timestamp() if isinstance(when, datetime) else None)
                for pid, status, when in conn.execute(
                    "SELECT id, status, finished_at FROM classifier_prediction WHERE id = ANY(%s)", (ids,)
                )
            }
            (uploads_stored,) = conn.execute("SELECT count(*) FROM classifier_upload").fetchone()
            per_upload = conn.execute(
                "SELECT u.id, count(p.id) FILTER (WHERE p.status = 'done'), count(p.id) "
                "FROM classifier_upload u LEFT JOIN classifier_prediction p ON p.upload_id = u.id GROUP BY u.id"
            ).fetchall()

    latencies = sorted(
        (finished_at[pid][1] - record["started"]) * 1000
        for record in records for pid in record["ids"] if finished_at.get(pid, (None, None))[1] is not None
    )
    statuses: dict[str, int] = {}
    for record in records:
        statuses[str(record["status"])] = statuses.get(str(record["status"]), 0) + 1
    server_errors = sum(count for status, count in statuses.items() if int(status) >= 500)
    exactly_one = all(done == 1 and total == 1 for _upload, done, total in per_upload)
    report = {
        "benchmark": "bench_load",
        "uploads_sent": len(records),
        "uploads_accepted": sum(1 for record in records if record["ids"]),
        "uploads_stored": uploads_stored,
        "concurrency": args.concurrency,
        "http_statuses": statuses,
        "http_5xx": server_errors,
        "burst_seconds": round(burst_s, 2),
        "uploads_per_second": round(len(records) / burst_s, 1),
        "all_results_seconds": round(all_finished - began, 2),
        "results_per_second": round(len(ids) / (all_finished - began), 1),
        "upload_request_ms": {
            "p50": percentile(sorted(r["request_s"] * 1000 for r in records), 0.50),
            "p95": percentile(sorted(r["request_s"] * 1000 for r in records), 0.95),
        },
        "upload_to_result_ms": {
            "p50": percentile(latencies, 0.50), "p95": percentile(latencies, 0.95),
            "p99": percentile(latencies, 0.99), "max": round(latencies[-1], 1) if latencies else None,
        },
        "predictions_done": sum(1 for status, _ in finished_at.values() if status == "done"),
        "predictions_failed": sum(1 for status, _ in finished_at.values() if status == "failed"),
        "every_upload_has_exactly_one_finished_prediction": exactly_one and uploads_stored == len(records),
    }
    print_report(report)
    ok = server_errors == 0 and report["every_upload_has_exactly_one_finished_prediction"]
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
