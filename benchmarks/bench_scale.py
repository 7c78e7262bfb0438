"""`make bench-scale`: the admin's lists, a history, the API, /metrics and an account's deletion at a million uploads.

A scratch PostgreSQL database gets ``--uploads`` uploads (one prediction each, 1% of them failed; 1.5% re-run
with a newer prediction that is done, a third of those after a failure) spread over ``--users`` users and a year,
plus 200 sample images. Every user gets a share of each kind. Each page is then
asked for in-process through Django's test client with production settings: one warm-up, then the median of
``--repeats`` timings, with the number of SQL statements and the slowest one. Last, one user's account is deleted
in the admin: its confirmation page and the deletion, timed once.
"""
from __future__ import annotations

import argparse
import os
import secrets
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.stack import database_recreate, manage, print_report, stack_env  # noqa: E402

PASSWORD = "bench-scale-password"

# Rows made by SQL: generating a million through the ORM would take longer than everything measured.
FILL = [
    """
INSERT INTO classifier_upload (image, original_name, format, size, width, height, sha256, source, sample_set,
                               label, created_at, owner_id)
SELECT 'uploads/bench/' || g || '.png', 'digit-' || g || '.png', 'PNG', 900, 28, 28, md5(g::text) || md5(g::text),
       'api', '', NULL, now() - make_interval(secs => g * 31536000.0 / %(uploads)s),
       (%(owners)s::int[])[1 + g %% %(users)s]
FROM generate_series(1, %(uploads)s) g
""",
    """
INSERT INTO classifier_upload (image, original_name, format, size, width, height, sha256, source, sample_set,
                               label, created_at, owner_id)
SELECT 'samples/' || g || '.png', g || '.png', 'PNG', 900, 28, 28, md5('sample' || g) || md5('sample' || g), 'sample',
       CASE WHEN g <= 50 THEN 'mnist' ELSE 'other' END, g %% 10, now(), (%(owners)s::int[])[1]
FROM generate_series(1, 200) g
""",
    """
INSERT INTO classifier_prediction (upload_id, status, digit, confidence, probabilities, device, queue_ms,
                                   compute_ms, error, publish_attempts, attempts, created_at, started_at, finished_at)
SELECT id, CASE WHEN id / %(users)s %% 100 = 7 THEN 'failed' ELSE 'done' END,
       CASE WHEN id / %(users)s %% 100 = 7 THEN NULL ELSE id / %(users)s %% 10 END,
       0.9, '[0.01, 0.01, 0.01, 0.01, 0.01, 0.01, 0.01, 0.01, 0.01, 0.91]', 'cpu', 5, 1,
       CASE WHEN id / %(users)s %% 100 = 7 THEN 'No digit was found in this image.' ELSE '' END, 1, 1,
       created_at, created_at, created_at
FROM classifier_upload
""",
    """
INSERT INTO classifier_prediction (upload_id, status, digit, confidence, probabilities, device, queue_ms,
                                   compute_ms, error, publish_attempts, attempts, created_at, started_at, finished_at)
SELECT id, 'done', (id / %(users)s + 1) %% 10, 0.8, '[0.01, 0.01, 0.01, 0.01, 0.01, 0.01, 0.01, 0.01, 0.01, 0.91]', 'cpu', 5, 1,
       '', 1, 1, created_at + interval '1 minute', created_at + interval '1 minute', created_at + interval '1 minute'
FROM classifier_upload
WHERE id / %(users)s %% 100 = 42 OR id / %(users)s %% 100 = 7 AND id / %(users)s / 100 %% 2 = 0
""",
]


def pages(*, middle_page: int, admin_middle_page: int) -> list[tuple[str, str]]:
    return [
        ("staff", "/admin/classifier/upload/"),
        ("staff", "/admin/classifier/upload/?latest_status=failed"),
        ("staff", "/admin/classifier/upload/?latest_status=done"),
        ("staff", "/admin/classifier/upload/?latest_digit=3"),
        ("staff", "/admin/classifier/upload/?sample_set=mnist"),
        ("staff", "/admin/classifier/upload/?q=digit-123456"),
        ("staff", f"/admin/classifier/upload/?p={admin_middle_page}"),
        ("staff", "/admin/classifier/prediction/"),
        ("staff", "/admin/classifier/prediction/?status__exact=failed"),
        ("staff", "/admin/classifier/prediction/?digit=3"),
        ("staff", f"/admin/classifier/prediction/?p={admin_middle_page}"),
        ("user", "/history/"),
        ("user", "/history/?status=failed"),
        ("user", "/history/?digit=3"),
        ("user", f"/history/?page={middle_page}"),
        ("user", "/api/v1/predictions/"),
        ("user", "/api/v1/predictions/?digit=7&status=done"),
        ("scraper", "/metrics"),
    ]


def account_deletion(*, client, user) -> dict:
    """The admin's confirmation page for deleting ``user``, then the deletion itself; last, as it deletes."""
    from classifier.models import Upload

    path = f"/admin/auth/user/{user.pk}/delete/"
    uploads = Upload.objects.filter(owner=user).count()
    start = time.perf_counter()
    page = client.get(path)
    page_ms = (time.perf_counter() - start) * 1000
    start = time.perf_counter()
    deleted = client.post(path, {"post": "yes"})
    delete_ms = (time.perf_counter() - start) * 1000
    if (page.status_code, deleted.status_code) != (200, 302):
        raise SystemExit(f"{path}: HTTP {page.status_code}, then {deleted.status_code}")
    return {"uploads": uploads, "confirmation_page_ms": round(page_ms, 1),
            "confirmation_page_bytes": len(page.content), "delete_ms": round(delete_ms, 1)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--uploads", type=int, default=1_000_000)
    parser.add_argument("--users", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="bench-scale-") as workdir:
        metrics_token = secrets.token_urlsafe(24)
        # No worker runs: the messages an account's deletion sends (to remove files, which rows made by SQL lack) stay
        # in this process, out of every shared broker's queues.
        env = stack_env(Path(workdir), METRICS_TOKEN=metrics_token, STATIC_ROOT=str(Path(workdir) / "static"),
                        CELERY_BROKER_URL="memory://localhost/")
        database_recreate()
        manage(env, "migrate", "--noinput")
        # Production pages name their styles through the manifest that collectstatic writes.
        manage(env, "collectstatic", "--noinput")
        os.environ.update(env)
        import django

        django.setup()
        from django.contrib.auth import get_user_model
        from django.db import connection
        from django.test import Client
        from django.test.utils import CaptureQueriesContext

        from classifier.admin import UploadAdmin
        from classifier.views import HISTORY_PAGE_SIZE

        users = get_user_model().objects
        staff = users.create_superuser("bench-staff", "staff@example.org", PASSWORD)
        people = [users.create_user(f"bench-user-{i}", password=PASSWORD) for i in range(args.users)]
        started = time.monotonic()
        # Through Django's own connection (in autocommit, as VACUUM needs): the database the pages read.
        with connection.cursor() as cursor:
            for statement in FILL:
                cursor.execute(statement, {"uploads": args.uploads, "users": args.users, "owners": [p.pk for p in people]})
            cursor.execute("VACUUM ANALYZE")
        filled_s = time.monotonic() - started

        clients = {"staff": Client(SERVER_NAME="127.0.0.1"), "user": Client(SERVER_NAME="127.0.0.1"),
                   "scraper": Client(SERVER_NAME="127.0.0.1", HTTP_AUTHORIZATION=f"Bearer {metrics_token}")}
        clients["staff"].force_login(staff)
        clients["user"].force_login(people[-1])
        per_user = args.uploads // args.users
        report: dict = {"uploads": args.uploads, "users": args.users, "uploads_per_user": per_user,
                        "fill_seconds": round(filled_s, 1), "pages": {}}
        middle_pages = {"middle_page": max(1, per_user // HISTORY_PAGE_SIZE // 2),
                        "admin_middle_page": max(1, args.uploads // UploadAdmin.list_per_page // 2)}
        for who, path in pages(**middle_pages):
            client = clients[who]
            client.get(path)
            timings, statements, slowest = [], 0, (0.0, "")
            for _ in range(args.repeats):
                with CaptureQueriesContext(connection) as queries:
                    start = time.perf_counter()
                    response = client.get(path)
                    timings.append((time.perf_counter() - start) * 1000)
                if response.status_code != 200:
                    raise SystemExit(f"{path}: HTTP {response.status_code}")
                statements = len(queries.captured_queries)
                for query in queries.captured_queries:
                    slowest = max(slowest, (float(query["time"]) * 1000, query["sql"][:160]))
            report["pages"][path] = {
                "as": who,
                "ms_median": round(statistics.median(timings), 1),
                "statements": statements,
                "slowest_statement_ms": round(slowest[0], 1),
                "slowest_statement": slowest[1],
            }
        report["account_deletion"] = account_deletion(client=clients["staff"], user=people[1])
        connection.close()
    print_report(report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
