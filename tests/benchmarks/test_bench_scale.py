"""Smoke test of the scale benchmark: a small fill in a scratch database, every page answered, one deletion."""

import json
import os
import subprocess
import sys
from pathlib import Path

import psycopg
import pytest

REPO = Path(__file__).resolve().parents[2]
PG_ADMIN_URL = os.environ.get("BENCH_PG_ADMIN_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
SCRATCH_DB = "mnistsite_bench_scale_test"


def _postgres_answers() -> bool:
    try:
        psycopg.connect(PG_ADMIN_URL, connect_timeout=3).close()
    except psycopg.Error:
        return False
    return True


@pytest.mark.skipif(not _postgres_answers(), reason="the scale benchmark needs PostgreSQL")
def test_the_scale_benchmark_times_every_page_over_the_uploads_it_made():
    done = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "bench_scale.py"), "--uploads", "2000", "--users", "4",
         "--repeats", "1"],
        capture_output=True, text=True, timeout=240, env={**os.environ, "BENCH_DB": SCRATCH_DB},
    )
    with psycopg.connect(PG_ADMIN_URL, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{SCRATCH_DB}" WITH (FORCE)')
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert (report["uploads"], report["uploads_per_user"]) == (2000, 500)
    assert "/admin/classifier/upload/?latest_status=failed" in report["pages"] and "/metrics" in report["pages"]
    for path, page in report["pages"].items():
        assert page["ms_median"] > 0 and page["statements"] >= 1, path
    deletion = report["account_deletion"]
    assert deletion["uploads"] == 500 and deletion["confirmation_page_ms"] > 0 and deletion["delete_ms"] > 0
    assert deletion["confirmation_page_bytes"] < 50_000  # counted: a link to each upload and prediction took 110 KB
