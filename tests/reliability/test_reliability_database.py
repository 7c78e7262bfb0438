"""The database dying in the middle of an upload: a clear 503, and nothing half-stored."""
import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from django.db import connection

from classifier.models import Prediction, Upload

pytestmark = pytest.mark.skipif(
    connection.vendor != "postgresql", reason="kills the server-side connection with a PostgreSQL trigger"
)

# Inserting an upload kills the very connection that does it, as a crashed or restarted server would.
KILL_ON_INSERT = """
CREATE OR REPLACE FUNCTION reliability_kill_backend() RETURNS trigger AS $$
BEGIN
    PERFORM pg_terminate_backend(pg_backend_pid());
    RETURN NEW;
END $$ LANGUAGE plpgsql;
CREATE TRIGGER reliability_kill_backend BEFORE INSERT ON classifier_upload
    FOR EACH ROW EXECUTE FUNCTION reliability_kill_backend();
"""
DROP = """
DROP TRIGGER IF EXISTS reliability_kill_backend ON classifier_upload;
DROP FUNCTION IF EXISTS reliability_kill_backend();
"""


@pytest.fixture
def database_dies_on_upload_insert(transactional_db):
    with connection.cursor() as cursor:
        cursor.execute(KILL_ON_INSERT)
    yield
    connection.close()  # the killed connection; Django opens a fresh one
    with connection.cursor() as cursor:
        cursor.execute(DROP)


def stored_files(root):
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())


def test_an_upload_during_a_database_failure_answers_503_and_leaves_only_files_for_the_orphan_sweep(
    client, user, digit_png, settings, database_dies_on_upload_insert
):
    client.force_login(user)
    files = [SimpleUploadedFile(f"digit{i}.png", digit_png(i), content_type="image/png") for i in range(3)]

    response = client.post("/", {"files": files})

    assert response.status_code == 503
    assert b"nothing was stored" in response.content
    assert response["Retry-After"]
    # Read through a fresh connection once the trigger is gone: the batch left no rows.
    connection.close()
    with connection.cursor() as cursor:
        cursor.execute(DROP)
    assert Upload.objects.count() == 0 and Prediction.objects.count() == 0
    _files_are_left_to_the_orphan_sweep(settings.MEDIA_ROOT, count=3)


def _files_are_left_to_the_orphan_sweep(root, *, count):
    # A lost connection cannot tell a rolled-back insert from one still committing: the files stay until the
    # orphan sweep finds no row naming them.
    import datetime as dt

    from django.utils import timezone

    from classifier.services import ORPHANED_AFTER, upload_files_orphaned_delete

    assert len(stored_files(root)) == count
    assert upload_files_orphaned_delete(now=timezone.now() + ORPHANED_AFTER + dt.timedelta(minutes=1)) == count
    assert all(name.startswith("orphaned/") for name in stored_files(root))


def test_an_api_upload_during_a_database_failure_answers_503_in_the_error_envelope(
    client, user, digit_png, settings, database_dies_on_upload_insert
):
    from accounts.services import api_token_create

    _, key = api_token_create(user=user)
    response = client.post(
        "/api/v1/predictions/",
        {"images": [SimpleUploadedFile("digit.png", digit_png(1), content_type="image/png")]},
        headers={"Authorization": f"Token {key}"},
    )

    assert response.status_code == 503
    assert response.json()["error"]["code"] == "service_unavailable"
    connection.close()
    with connection.cursor() as cursor:
        cursor.execute(DROP)
    assert Upload.objects.count() == 0 and Prediction.objects.count() == 0
    _files_are_left_to_the_orphan_sweep(settings.MEDIA_ROOT, count=1)


# The uploads' insert takes its time to commit, as on a loaded server.
SLOW_COMMIT = """
CREATE OR REPLACE FUNCTION reliability_slow_insert() RETURNS trigger AS $$
BEGIN
    PERFORM pg_sleep(2);
    RETURN NULL;
END $$ LANGUAGE plpgsql;
CREATE TRIGGER reliability_slow_insert AFTER INSERT ON classifier_upload
    FOR EACH STATEMENT EXECUTE FUNCTION reliability_slow_insert();
"""
DROP_SLOW_COMMIT = """
DROP TRIGGER IF EXISTS reliability_slow_insert ON classifier_upload;
DROP FUNCTION IF EXISTS reliability_slow_insert();
"""


def test_an_insert_that_commits_after_its_connection_was_lost_is_answered_as_stored_with_its_files(
    client, user, digit_png, settings, transactional_db, published
):
    import socket
    import threading
    import time

    with connection.cursor() as cursor:
        cursor.execute(SLOW_COMMIT)
    client.force_login(user)
    request_socket = socket.socket(fileno=__import__("os").dup(connection.connection.pgconn.socket))

    def lose_the_connection() -> None:
        # The network drops while the server works on the insert: the server goes on and commits it, after the
        # request has already asked, on a fresh connection, whether it was stored.
        time.sleep(0.5)
        request_socket.shutdown(socket.SHUT_RDWR)

    cutter = threading.Thread(target=lose_the_connection)
    cutter.start()
    try:
        response = client.post("/", {"files": [SimpleUploadedFile("digit.png", digit_png(0), content_type="image/png")]})
    finally:
        cutter.join()
        request_socket.close()
        connection.close()

    with connection.cursor() as cursor:
        cursor.execute(DROP_SLOW_COMMIT)
    # The request waited for the server to finish the insert before asking: stored, not "nothing was stored".
    (prediction,) = Prediction.objects.all()
    assert response.status_code == 302 and response["Location"] == f"/predictions/{prediction.pk}/"
    assert prediction.upload.image.storage.exists(prediction.upload.image.name)


def test_an_api_upload_whose_connection_dies_while_it_waits_answers_202_with_what_was_stored(
    client, user, digit_png, transactional_db
):
    import threading
    import time

    from django.db import connections
    from accounts.services import api_token_create

    _, key = api_token_create(user=user)
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_backend_pid()")
        (request_backend,) = cursor.fetchone()

    def kill_once_stored() -> None:
        # No worker runs, so the request waits; its connection is killed once the upload is committed.
        try:
            deadline = time.monotonic() + 20
            while not Upload.objects.exists() and time.monotonic() < deadline:
                time.sleep(0.05)
            with connection.cursor() as cursor:
                cursor.execute("SELECT pg_terminate_backend(%s)", [request_backend])
        finally:
            connections.close_all()

    killer = threading.Thread(target=kill_once_stored)
    killer.start()
    try:
        response = client.post(
            "/api/v1/predictions/?wait=10",
            {"image": SimpleUploadedFile("digit.png", digit_png(1), content_type="image/png")},
            headers={"Authorization": f"Token {key}"},
        )
    finally:
        killer.join()
        # The killed connection, closed whatever happens: the reads below and the teardown's flush open a fresh one
        # (on the dead one the flush fails, and leaves this test's rows to the next tests).
        connection.close()

    assert response.status_code == 202, response.content
    (answered,) = response.json()["predictions"]
    assert answered["status"] == "pending"
    assert list(Prediction.objects.values_list("pk", flat=True)) == [answered["id"]]



def _lost_after_commit_and_unconfirmed():
    """An execute wrapper: the uploads' insert commits and its answer is lost, then asking whether it stored fails."""
    from django.db import OperationalError

    inserted = []

    def wrapper(execute, sql, params, many, context):
        if inserted and Upload._meta.db_table in sql:
            raise OperationalError("could not connect to server: Connection refused")
        result = execute(sql, params, many, context)
        if "INSERT INTO" in sql and Upload._meta.db_table in sql:
            inserted.append(sql)
            context["connection"].close()
            raise OperationalError("server closed the connection unexpectedly")
        return result

    return wrapper


def test_the_upload_page_whose_insert_may_have_committed_does_not_say_nothing_was_uploaded(
    client, user, digit_png, transactional_db, published
):
    client.force_login(user)
    files = [SimpleUploadedFile(f"digit{i}.png", digit_png(i), content_type="image/png") for i in range(2)]
    with connection.execute_wrapper(_lost_after_commit_and_unconfirmed()):
        response = client.post("/", {"files": files})

    assert response.status_code == 503
    page = response.content.decode()
    assert "This upload may have been stored." in page and "Nothing was uploaded" not in page
    assert Upload.objects.count() == 2


def test_an_upload_whose_insert_may_or_may_not_have_committed_says_so_and_keeps_its_files_for_the_sweeps(
    client, user, digit_png, transactional_db, published
):
    from accounts.services import api_token_create

    _, key = api_token_create(user=user)
    files = [SimpleUploadedFile(f"digit{i}.png", digit_png(i), content_type="image/png") for i in range(2)]
    with connection.execute_wrapper(_lost_after_commit_and_unconfirmed()):
        response = client.post("/api/v1/predictions/", {"images": files}, headers={"Authorization": f"Token {key}"})

    assert response.status_code == 503, response.content
    error = response.json()["error"]
    assert error["code"] == "outcome_unknown" and "nothing was stored" not in error["message"]
    # No Retry-After: a client retrying on its own would send the images again, maybe a second time.
    assert "history" in error["message"] and "Retry-After" not in response
    # Stored after all: the files stay with their rows, and the sweeper will send the predictions.
    assert Upload.objects.count() == 2 and Prediction.objects.filter(status="pending").count() == 2
    assert all(upload.image.storage.exists(upload.image.name) for upload in Upload.objects.all())
    assert published.prediction_ids() == []


def test_the_upload_page_says_when_it_cannot_tell_whether_the_images_were_stored(
    client, user, digit_png, transactional_db, published
):
    client.force_login(user)
    with connection.execute_wrapper(_lost_after_commit_and_unconfirmed()):
        response = client.post("/", {"files": [SimpleUploadedFile("digit.png", digit_png(0), content_type="image/png")]})

    assert response.status_code == 503
    page = response.content.decode()
    assert "whether they were is not known" in page and "nothing was stored" not in page
    assert Upload.objects.count() == 1


def test_an_upload_whose_connection_is_lost_just_after_its_insert_committed_is_answered_as_stored_and_queued(
    client, user, digit_png, transactional_db, published
):
    from django.db import OperationalError

    from accounts.services import api_token_create

    _, key = api_token_create(user=user)

    def lost_after_commit(execute, sql, params, many, context):
        result = execute(sql, params, many, context)
        if "INSERT INTO" in sql and Upload._meta.db_table in sql:
            # The server committed the statement (autocommit); its answer never reaches us.
            context["connection"].close()
            raise OperationalError("server closed the connection unexpectedly")
        return result

    files = [SimpleUploadedFile(f"digit{i}.png", digit_png(i), content_type="image/png") for i in range(3)]
    with connection.execute_wrapper(lost_after_commit):
        response = client.post("/api/v1/predictions/", {"images": files}, headers={"Authorization": f"Token {key}"})

    assert response.status_code == 202, response.content
    answered = [prediction["id"] for prediction in response.json()["predictions"]]
    stored = list(Prediction.objects.order_by("upload__original_name").values_list("pk", flat=True))
    assert answered == stored and len(stored) == 3
    # Sent to the workers now, not a minute later by the sweeper; the files stay with their rows.
    assert sorted(published.prediction_ids()) == sorted(stored)
    assert all(upload.image.storage.exists(upload.image.name) for upload in Upload.objects.all())
