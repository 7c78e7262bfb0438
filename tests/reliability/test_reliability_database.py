"""The database failing uploads and workers midway, and accounts deleted under uploads: nothing half-stored."""
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


def test_an_upload_during_a_database_failure_answers_503_and_leaves_neither_rows_nor_files(
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
    # The killed server process can store nothing more, which a fresh connection waited to see: the files went too.
    assert stored_files(settings.MEDIA_ROOT) == []


def test_an_api_upload_during_a_database_failure_answers_503_in_the_error_envelope_and_keeps_no_file(
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
    assert stored_files(settings.MEDIA_ROOT) == []


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


def test_an_api_upload_whose_account_is_deleted_during_its_insert_answers_403_and_stores_nothing(
    client, user, digit_png, settings, transactional_db, published
):
    import threading

    from django.contrib.auth import get_user_model
    from django.db import connections

    from accounts.services import account_delete, api_token_create

    _, key = api_token_create(user=user)
    deleting, outcome = threading.Event(), {}

    def hold_once_the_user_row_is_deleted(execute, sql, params, many, context):
        result = execute(sql, params, many, context)
        if sql.startswith(f'DELETE FROM "{get_user_model()._meta.db_table}"'):
            # The deletion's transaction holds the account's row while the upload's insert comes to it.
            deleting.set()
            threading.Event().wait(1)
        return result

    def delete_the_account() -> None:
        try:
            with connection.execute_wrapper(hold_once_the_user_row_is_deleted):
                account_delete(user=get_user_model().objects.get(pk=user.pk))
            outcome["deleted"] = True
        except Exception as exc:  # noqa: BLE001 - reported by the assertion below
            outcome["deleted"] = exc
        finally:
            deleting.set()
            connections.close_all()

    def insert_once_the_deletion_is_under_way(execute, sql, params, many, context):
        if "INSERT INTO" in sql and Upload._meta.db_table in sql and not deleting.is_set():
            threading.Thread(target=delete_the_account, daemon=True).start()
            assert deleting.wait(20)
        return execute(sql, params, many, context)

    files = [SimpleUploadedFile(f"digit{i}.png", digit_png(i), content_type="image/png") for i in range(2)]
    with connection.execute_wrapper(insert_once_the_deletion_is_under_way):
        response = client.post("/api/v1/predictions/", {"images": files}, headers={"Authorization": f"Token {key}"})

    assert outcome == {"deleted": True}
    assert response.status_code == 403, response.content
    error = response.json()["error"]
    assert error["code"] == "account_deleted" and "nothing was stored" in error["message"]
    assert Upload.objects.count() == 0 and Prediction.objects.count() == 0
    assert stored_files(settings.MEDIA_ROOT) == []
    assert published.prediction_ids() == []


@pytest.mark.parametrize("uploaded_before", [False, True], ids=["first upload", "later upload"])
def test_an_upload_committing_while_its_account_is_deleted_neither_fails_the_deletion_nor_outlives_it(
    user, digit_png, settings, transactional_db, published, uploaded_before
):
    import io
    import threading

    from django.contrib.auth import get_user_model
    from django.db import connections

    from accounts.services import account_delete
    from classifier import services

    if uploaded_before:
        services.upload_create(owner=user, file=io.BytesIO(digit_png(3)), source="file")
    collected, uploaded, outcome = threading.Event(), threading.Event(), {}

    def hold_once_everything_is_collected(execute, sql, params, many, context):
        if sql.startswith("DELETE FROM") and not collected.is_set():
            # The cascade has read what the account holds and deletes it now: an upload committed at this moment
            # would be missed, and name an account that no longer exists.
            collected.set()
            uploaded.wait(2)
        return execute(sql, params, many, context)

    def delete_the_account() -> None:
        try:
            with connection.execute_wrapper(hold_once_everything_is_collected):
                account_delete(user=get_user_model().objects.get(pk=user.pk))
            outcome["deletion"] = "done"
        except Exception as exc:  # noqa: BLE001 - reported by the assertion below
            outcome["deletion"] = repr(exc)
        finally:
            collected.set()
            connections.close_all()

    deletion = threading.Thread(target=delete_the_account)
    deletion.start()
    assert collected.wait(20)
    try:
        services.predictions_submit(owner=user, files=[(io.BytesIO(digit_png(0)), "0.png")], source="file")
        outcome["upload"] = "stored"
    except services.UploadOwnerDeletedError:
        outcome["upload"] = "refused"
    finally:
        uploaded.set()
        deletion.join(30)

    assert outcome == {"deletion": "done", "upload": "refused"}
    assert not get_user_model().objects.filter(pk=user.pk).exists()
    assert Upload.objects.count() == 0 and Prediction.objects.count() == 0
    assert stored_files(settings.MEDIA_ROOT) == []


def _connection_lost(*, at: str, after_commit: bool):
    """An execute wrapper: the connection dies at the first statement that starts with ``at`` (its server process
    ended, as a restart or a failover ends it), before the statement runs or once it committed and before its answer
    came back. The connection is left broken, as a real loss leaves it, for whatever the worker does next."""
    lost = []

    def lose(execute, sql, params, many, context):
        if lost or not sql.startswith(at):
            return execute(sql, params, many, context)
        lost.append(sql)
        result = execute(sql, params, many, context) if after_commit else None
        context["cursor"].execute("SELECT pg_terminate_backend(pg_backend_pid())")
        return result

    return lose, lost


def _worker_predictions(user, digit_png, count: int) -> list[int]:
    import io

    from classifier import services

    upload = services.upload_create(owner=user, file=io.BytesIO(digit_png(0)), source="file")
    return [p.pk for p in services.predictions_create(uploads=[upload] * count, publish=False)]


def test_a_claim_whose_answer_the_lost_connection_took_hands_its_batch_back_at_once_uncounted(
    user, digit_png, transactional_db, active_checkpoint
):
    from django.db import DatabaseError

    from classifier import services

    ids = _worker_predictions(user, digit_png, 3)
    lose, lost = _connection_lost(at="WITH candidates AS MATERIALIZED", after_commit=True)
    with connection.execute_wrapper(lose), pytest.raises(DatabaseError):
        services.predictions_execute(prediction_ids=ids[:1])
    assert lost

    # Claimed, and nobody computing them: they would wait for the stale limit, then go one at a time, each claim
    # counted against PREDICTION_MAX_ATTEMPTS. Handed back, the task's retry takes them at once.
    connection.close()
    assert set(Prediction.objects.values_list("status", "attempts", "started_at")) == {("pending", 0, None)}
    assert {p.status for p in services.predictions_execute(prediction_ids=ids)} == {"done"}


@pytest.mark.parametrize("after_commit", [False, True], ids=["results lost", "answer lost"])
def test_a_batch_whose_connection_dies_as_its_results_are_stored_is_handed_back_or_kept_done(
    user, digit_png, transactional_db, active_checkpoint, after_commit
):
    from django.db import DatabaseError

    from classifier import services

    ids = _worker_predictions(user, digit_png, 2)
    lose, lost = _connection_lost(at="WITH done AS (UPDATE", after_commit=after_commit)
    with connection.execute_wrapper(lose), pytest.raises(DatabaseError):
        services.predictions_execute(prediction_ids=ids)
    assert lost

    connection.close()
    if after_commit:
        # Stored: nothing is handed back, and the retry recomputes nothing.
        assert set(Prediction.objects.values_list("status", flat=True)) == {"done"}
        assert services.predictions_execute(prediction_ids=ids) == []
    else:
        assert set(Prediction.objects.values_list("status", "attempts", "started_at")) == {("pending", 0, None)}
        assert {p.status for p in services.predictions_execute(prediction_ids=ids)} == {"done"}


def test_an_upload_page_the_database_fails_is_logged_as_one_error_with_its_traceback(
    client, user, digit_png, database_dies_on_upload_insert, caplog
):
    client.force_login(user)

    with caplog.at_level("INFO"):
        response = client.post("/", {"files": [SimpleUploadedFile("digit.png", digit_png(1), content_type="image/png")]})

    assert response.status_code == 503
    # One fault, one error: not Django's "Service Unavailable" again, without the cause, beside the view's own.
    (error,) = [record for record in caplog.records if record.levelname == "ERROR"]
    assert error.getMessage().startswith("upload failed: the database") and error.exc_info is not None
