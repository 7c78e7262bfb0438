"""The error envelope: one shape for every status, including paths that match no endpoint."""
from __future__ import annotations

import contextlib

import pytest
from django.core.exceptions import ValidationError
from django.db import OperationalError, connection

from api.errors import validation_error_response
from classifier.models import Upload
from tests.api.conftest import assert_envelope, stored_files, upload_file

pytestmark = pytest.mark.django_db


def test_an_unknown_api_path_is_a_404_envelope_even_anonymously(api_client):
    response = api_client.get("/api/v1/nothing-here/")

    assert response.status_code == 404
    assert assert_envelope(response.json())["code"] == "not_found"


def test_an_unknown_api_path_is_a_404_whatever_the_method_and_lists_no_methods(user_client):
    for method in ("GET", "POST", "DELETE", "TRACE", "PROPFIND"):
        response = user_client.generic(method, "/api/v1/nothing-here/")

        assert response.status_code == 404, method
        assert assert_envelope(response.json())["code"] == "not_found"
        assert "Allow" not in response, method


def test_a_missing_trailing_slash_is_pointed_out(user_client):
    response = user_client.get("/api/v1/predictions")

    assert response.status_code == 404
    assert "Did you mean /api/v1/predictions/ ?" in response.json()["error"]["message"]


def test_unauthenticated_forbidden_and_method_errors_share_the_shape(api_client, user_client):
    assert assert_envelope(api_client.get("/api/v1/predictions/").json())["code"] == "not_authenticated"
    assert assert_envelope(user_client.get("/api/v1/checkpoints/").json())["code"] == "permission_denied"
    assert assert_envelope(user_client.delete("/api/v1/predictions/").json())["code"] == "method_not_allowed"


def test_a_service_validation_error_for_a_field_names_it():
    error = ValidationError({"epochs": "Epochs must be between 1 and 100."})

    response = validation_error_response(error)

    assert response.status_code == 400
    assert response.data["error"]["field"] == "epochs"


def test_a_too_large_file_among_other_errors_makes_the_whole_response_413():
    error = ValidationError([ValidationError("bad", code="not_image"), ValidationError("big", code="too_large")])

    response = validation_error_response(error, field="images")

    assert response.status_code == 413
    error_body = response.data["error"]
    assert (error_body["code"], error_body["message"], error_body["field"]) == ("too_large", "big", "images")
    assert [item["code"] for item in error_body["details"]] == ["not_image", "too_large"]


def test_an_unexpected_error_is_a_500_envelope_and_still_reported_naming_the_request(
    user_client, user, make_prediction, caplog
):
    from django.core.signals import got_request_exception

    from classifier.models import Prediction

    # A row damaged outside the application: its probabilities are no longer numbers.
    prediction = make_prediction(owner=user, done=True)
    Prediction.objects.filter(pk=prediction.pk).update(probabilities=["boom"] * 10)
    reported = []
    got_request_exception.connect(lambda **kw: reported.append(kw), weak=False, dispatch_uid="api-test")
    user_client.raise_request_exception = False
    try:
        response = user_client.get(f"/api/v1/predictions/{prediction.pk}/")
    finally:
        got_request_exception.disconnect(dispatch_uid="api-test")

    assert response.status_code == 500
    assert assert_envelope(response.json())["code"] == "server_error"
    assert "boom" not in response.content.decode()
    assert reported
    (logged,) = [record for record in caplog.records if record.message.startswith("unhandled error in the API")]
    assert logged.message == f"unhandled error in the API: GET /api/v1/predictions/{prediction.pk}/ (user {user.pk})"


def test_options_describes_an_endpoint_instead_of_failing(staff_client, user_client):
    for client, url in ((staff_client, "/api/v1/training-runs/"), (user_client, "/api/v1/predictions/"),
                        (staff_client, "/api/v1/checkpoints/")):
        response = client.options(url)
        assert response.status_code == 200, (url, response.content)


def test_a_format_the_api_does_not_have_is_406_in_the_envelope_not_a_404(user_client, user, make_prediction):
    prediction = make_prediction(owner=user, done=True)

    for url in ("/api/v1/predictions/", f"/api/v1/predictions/{prediction.pk}/"):
        response = user_client.get(url, {"format": "xml"})
        assert response.status_code == 406, url
        error = assert_envelope(response.json())
        assert error["code"] == "not_acceptable" and "`xml`" in error["message"] and "`json`" in error["message"]
        assert user_client.get(url, {"format": "json"}).status_code == 200, url


def test_a_path_with_a_newline_still_gets_the_json_error_envelope(client):
    response = client.get("/api/v1/predictions/%0A%C3%AB/")
    assert response.status_code == 404
    assert response["Content-Type"] == "application/json"
    assert response.json()["error"]["code"] == "not_found"


def test_a_path_without_its_slash_gets_no_hint_when_that_is_no_endpoint_either(user_client):
    response = user_client.get("/api/v1/nonexistent")

    assert response.status_code == 404
    assert assert_envelope(response.json())["message"] == "No API endpoint at /api/v1/nonexistent."


def test_a_json_body_nested_too_deeply_is_a_400_parse_error_not_a_server_error(
    user_client, staff_client, user, make_prediction
):
    deep = "[" * 10_000 + "]" * 10_000
    prediction = make_prediction(owner=user, done=True)
    for client, method, url in ((user_client, "patch", f"/api/v1/predictions/{prediction.pk}/"),
                                (staff_client, "post", "/api/v1/training-runs/")):
        client.raise_request_exception = False

        response = getattr(client, method)(url, deep, content_type="application/json")

        assert response.status_code == 400, (url, response.content)
        error = assert_envelope(response.json())
        assert error["code"] == "parse_error" and "nested too deeply" in error["message"]
    prediction.refresh_from_db()
    assert prediction.feedback is None


@contextlib.contextmanager
def database_out_of_reach():
    """The database server gone: every new connection is refused, as while it restarts."""
    port = connection.settings_dict["PORT"]
    connection.close()
    connection.settings_dict["PORT"] = "1"  # nothing listens on port 1
    try:
        yield
    finally:
        connection.close()
        connection.settings_dict["PORT"] = port


@pytest.mark.skipif(connection.vendor != "postgresql", reason="points the PostgreSQL connection at a closed port")
@pytest.mark.django_db(transaction=True)
def test_reading_or_deleting_while_the_database_is_out_of_reach_is_503_with_retry_after(
    user_client, user, make_prediction
):
    url = f"/api/v1/predictions/{make_prediction(owner=user).pk}/"

    with database_out_of_reach():
        answers = [user_client.get(url), user_client.delete(url), user_client.get("/api/v1/predictions/")]

    for response in answers:
        assert response.status_code == 503
        error = assert_envelope(response.json())
        assert error["code"] == "service_unavailable" and "nothing was stored" not in error["message"]
        assert 0 < int(response["Retry-After"]) <= 60
    assert user_client.get(url).status_code == 200


def test_an_upload_the_storage_cannot_take_is_503_with_retry_after_saying_nothing_was_stored(
    user_client, settings, tmp_path
):
    # MEDIA_ROOT under a regular file: every write fails, as on an unmounted volume.
    (tmp_path / "not-a-folder").write_text("")
    settings.MEDIA_ROOT = str(tmp_path / "not-a-folder" / "media")

    response = user_client.post("/api/v1/predictions/", {"image": upload_file()}, format="multipart")

    assert response.status_code == 503
    error = assert_envelope(response.json())
    assert error["code"] == "service_unavailable" and "nothing was stored" in error["message"]
    assert 0 < int(response["Retry-After"]) <= 60
    assert Upload.objects.count() == 0


def _named(name: str, data: bytes | None = None):
    """A file sent under any name (Django's own upload objects cut a name to 255 characters before it is sent)."""
    import io

    from tests.api.conftest import seven_png

    file = io.BytesIO(seven_png() if data is None else data)
    file.name = name
    return file


def _session_client(user):
    """A browser's script calling the API with its session: its CSRF check reads the body before the view does."""
    from rest_framework.test import APIClient

    client = APIClient(enforce_csrf_checks=True)
    client.csrf_token = client.get("/accounts/login/").cookies["csrftoken"].value
    client.force_login(user)
    return client


@pytest.mark.parametrize("name", ["😀" * 300 + ".png", "d" * 2000 + ".png"], ids=["300 emoji", "2,000 letters"])
@pytest.mark.parametrize("caller", ["token", "session"])
def test_a_file_name_too_long_to_be_read_is_a_400_saying_so_and_nothing_is_stored(user_client, user, caller, name):
    client = user_client if caller == "token" else _session_client(user)
    csrf = {} if caller == "token" else {"HTTP_X_CSRFTOKEN": client.csrf_token}

    response = client.post(
        "/api/v1/predictions/", {"images": [_named("fine.png"), _named(name)]}, format="multipart", **csrf
    )

    assert response.status_code == 400
    error = assert_envelope(response.json())
    assert error["code"] == "file_name_too_long"
    assert error["message"].startswith("A file's name is too long: names of up to about 900 bytes can be sent")
    assert Upload.objects.count() == 0 and stored_files() == []


def test_a_long_file_name_that_can_be_read_is_kept_shortened_with_its_extension(user_client):
    # 844 bytes in UTF-8, under what the parser reads, but more characters than a name is kept with.
    response = user_client.post("/api/v1/predictions/", {"image": _named("数" * 280 + ".png")}, format="multipart")

    assert response.status_code == 202, response.content
    assert Upload.objects.get().original_name == "数" * 251 + ".png"


@contextlib.contextmanager
def database_lost_once_committed(statement: str | None = None):
    """The database stops answering just after it committed the first statement that starts with ``statement``.

    A statement committed by itself loses its own answer; one inside a transaction, the answer to the transaction's
    commit, as when the server goes away between committing and saying so. From then on, every statement fails.
    Without ``statement``, the database is out of reach from the first statement on.
    """
    state = {"written": statement is None, "lost": statement is None}
    commit = connection._commit

    def lost():
        state["lost"] = True
        return OperationalError("server closed the connection unexpectedly")

    def lose(execute, sql, params, many, context):
        if state["lost"]:
            raise lost()
        result = execute(sql, params, many, context)
        if statement is not None and sql.startswith(statement):
            state["written"] = True
            if not connection.in_atomic_block:
                raise lost()
        return result

    def commit_then_lose():
        commit()
        if state["written"]:
            raise lost()

    connection._commit = commit_then_lose
    try:
        with connection.execute_wrapper(lose):
            yield
    finally:
        del connection._commit
    assert state["written"] and state["lost"], "the database was never lost"


def _failed_prediction(make_prediction, owner):
    from classifier.models import Prediction

    prediction = make_prediction(owner=owner)
    Prediction.objects.filter(pk=prediction.pk).update(status=Prediction.Status.FAILED, error="Unreadable.")
    return prediction


def _write(kind: str, *, client, user, make_prediction, make_checkpoint):
    """A request of each kind of write but uploads, the statement that applies it, and a check that it was applied."""
    from classifier.models import Prediction
    from training.models import Checkpoint, TrainingRun
    from training.services import training_run_create

    if kind == "feedback":
        prediction = make_prediction(owner=user, done=True)
        return (lambda: client.patch(f"/api/v1/predictions/{prediction.pk}/", {"feedback": 4}, format="json"),
                'UPDATE "classifier_prediction" SET "feedback"',
                lambda: Prediction.objects.get(pk=prediction.pk).feedback == 4)
    if kind == "retry":
        failed = _failed_prediction(make_prediction, user)
        return (lambda: client.post(f"/api/v1/predictions/{failed.pk}/retry/"),
                'INSERT INTO "classifier_prediction"',
                lambda: Prediction.objects.filter(upload=failed.upload).count() == 2)
    if kind == "cancel":
        run = training_run_create(created_by=user, architecture="mlp", epochs=1, batch_size=50, learning_rate=1e-3,
                                  enqueue=False)
        return (lambda: client.post(f"/api/v1/training-runs/{run.pk}/cancel/"),
                'UPDATE "training_trainingrun"',
                lambda: TrainingRun.objects.get(pk=run.pk).status == TrainingRun.Status.CANCELLED)
    if kind == "activate":
        make_checkpoint(activate=True)
        checkpoint, _ = make_checkpoint()
        return (lambda: client.post(f"/api/v1/checkpoints/{checkpoint.pk}/activate/"),
                'UPDATE "training_checkpoint"',
                lambda: Checkpoint.objects.get(is_active=True).pk == checkpoint.pk)
    assert kind == "start run"
    return (lambda: client.post("/api/v1/training-runs/", {"architecture": "mlp", "epochs": 1}, format="json"),
            'INSERT INTO "training_trainingrun"',
            lambda: TrainingRun.objects.count() == 1)


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("kind", ["feedback", "retry", "cancel", "activate"])
def test_a_write_the_database_dropped_after_committing_is_503_saying_it_may_have_been_applied_and_is_safe_to_resend(
    staff_user, make_prediction, make_checkpoint, kind
):
    from tests.api.conftest import client_for

    client = client_for(staff_user)
    send, statement, applied = _write(kind, client=client, user=staff_user, make_prediction=make_prediction,
                                      make_checkpoint=make_checkpoint)
    with database_lost_once_committed():
        before = send()
    with database_lost_once_committed(statement):
        after = send()

    assert before.status_code == 503 and "nothing was stored" in assert_envelope(before.json())["message"]
    assert after.status_code == 503
    error = assert_envelope(after.json())
    assert error["code"] == "service_unavailable" and "nothing was stored" not in error["message"]
    assert "may or may not have been" in error["message"] and "sending it again is safe" in error["message"]
    assert 0 < int(after["Retry-After"]) <= 60
    assert applied()
    assert send().status_code in (200, 202)
    assert applied()


def test_every_endpoint_that_takes_a_write_says_when_its_write_begins():
    # A 503 says "nothing was stored" for a view that does not, so a view that writes without saying would mislead.
    from api.errors import WriteStageMixin
    from api.urls import v1

    writers = [p.callback.view_class for p in v1 if {"post", "put", "patch"} & set(dir(p.callback.view_class))]

    assert writers and all(issubclass(view, WriteStageMixin) for view in writers), writers


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("method,path", [
    ("post", "/api/v1/predictions/1/image/"),
    ("put", "/api/v1/predictions/1/input/"),
    ("put", "/api/v1/training-runs/1/"),
    ("patch", "/api/v1/checkpoints/1/"),
    ("post", "/api/v1/checkpoints/"),
])
def test_a_request_to_a_view_that_writes_nothing_while_the_database_is_out_of_reach_says_nothing_was_stored(
    user, method, path
):
    from tests.api.conftest import client_for

    client = client_for(user)
    with database_lost_once_committed():
        response = getattr(client, method)(path, {}, format="json")

    assert response.status_code == 503
    error = assert_envelope(response.json())
    assert error["code"] == "service_unavailable" and "nothing was stored" in error["message"]
    assert 0 < int(response["Retry-After"]) <= 60


@pytest.mark.django_db(transaction=True)
def test_an_upload_stored_whose_predictions_cannot_be_read_back_is_503_outcome_unknown_without_retry_after(user):
    from tests.api.conftest import client_for
    from tests.classifier.fixtures import uploads_stored_then_read_back_lost

    client = client_for(user)
    with uploads_stored_then_read_back_lost():
        response = client.post("/api/v1/predictions/", {"image": upload_file()}, format="multipart")

    assert response.status_code == 503
    error = assert_envelope(response.json())
    assert error["code"] == "outcome_unknown" and "nothing was stored" not in error["message"]
    assert "Retry-After" not in response
    assert Upload.objects.count() == 1


@pytest.mark.django_db(transaction=True)
def test_a_run_the_database_dropped_after_storing_is_503_outcome_unknown_without_retry_after(
    staff_user, make_prediction, make_checkpoint
):
    from tests.api.conftest import client_for

    send, statement, applied = _write("start run", client=client_for(staff_user), user=staff_user,
                                      make_prediction=make_prediction, make_checkpoint=make_checkpoint)
    with database_lost_once_committed():
        before = send()
    with database_lost_once_committed(statement):
        after = send()

    assert before.status_code == 503 and "nothing was stored" in assert_envelope(before.json())["message"]
    assert "Retry-After" in before
    assert after.status_code == 503
    error = assert_envelope(after.json())
    assert error["code"] == "outcome_unknown" and "check before sending it again" in error["message"]
    assert "Retry-After" not in after
    # Stored after all: had the answer said "nothing was stored", the run would be started twice.
    assert applied()


@pytest.mark.parametrize("path", ["/api/v1/predictions/", "/api/schema/", "/api/no-such-thing"])
def test_a_host_header_the_site_does_not_serve_is_a_400_in_the_envelope_on_an_api_path(client, settings, path):
    # What Django answers itself, before any view: the site's handler400 (mnistsite.urls) is this one.
    settings.ALLOWED_HOSTS = ["testserver"]

    response = client.get(path, HTTP_HOST="attacker.example")

    assert response.status_code == 400
    assert response["Content-Type"] == "application/json"
    error = assert_envelope(response.json())
    assert error["code"] == "bad_request" and "Host" in error["message"]
    assert error["request_id"] == response["X-Request-ID"]


def test_a_host_header_the_site_does_not_serve_is_still_djangos_page_on_a_page(client, settings):
    settings.ALLOWED_HOSTS = ["testserver"]

    response = client.get("/accounts/login/", HTTP_HOST="attacker.example")

    assert response.status_code == 400
    assert response["Content-Type"].startswith("text/html")


class FailingMiddleware:
    """A middleware that fails on every request, as one does whose backend (a session store, a cache) broke."""

    def __init__(self, get_response) -> None:
        self.get_response = get_response

    def __call__(self, request):
        raise RuntimeError("the middleware's backend broke")


@pytest.fixture
def failing_middleware(settings) -> None:
    # Last, so that it fails after every real middleware has run, where the request would reach the view.
    settings.MIDDLEWARE = [*settings.MIDDLEWARE, f"{__name__}.FailingMiddleware"]


def _server_errors_logged(records) -> list:
    return [record for record in records if record.name == "django.request" and record.levelname == "ERROR"]


def test_an_error_outside_the_api_views_is_a_500_envelope_and_still_logged_by_django(
    failing_middleware, user_client, caplog
):
    from django.core.signals import got_request_exception

    reported = []
    got_request_exception.connect(lambda **kw: reported.append(kw), weak=False, dispatch_uid="api-test")
    user_client.raise_request_exception = False
    try:
        response = user_client.get("/api/v1/predictions/", HTTP_X_REQUEST_ID="api-500")
    finally:
        got_request_exception.disconnect(dispatch_uid="api-test")

    assert response.status_code == 500
    assert response["Content-Type"] == "application/json"
    error = assert_envelope(response.json())
    assert error["code"] == "server_error" and error["request_id"] == response["X-Request-ID"] == "api-500"
    assert "backend broke" not in response.content.decode()
    assert reported
    (logged,) = _server_errors_logged(caplog.records)
    assert logged.getMessage() == "Internal Server Error: /api/v1/predictions/"
    assert str(logged.exc_info[1]) == "the middleware's backend broke"


def test_an_error_outside_any_view_is_still_the_server_error_page_on_a_page(failing_middleware, client, caplog):
    client.raise_request_exception = False

    response = client.get("/accounts/login/")

    assert response.status_code == 500
    assert response["Content-Type"].startswith("text/html")
    assert "Something went wrong on our side" in response.content.decode()
    (logged,) = _server_errors_logged(caplog.records)
    assert logged.getMessage() == "Internal Server Error: /accounts/login/"


def test_an_answer_that_cannot_be_written_as_json_is_a_500_envelope(user_client, user, make_prediction, caplog):
    from classifier.models import Prediction

    # A row damaged outside the application: JSON has no infinity, and the view's answer is rendered after it returns.
    prediction = make_prediction(owner=user, done=True)
    Prediction.objects.filter(pk=prediction.pk).update(compute_ms=float("inf"))
    user_client.raise_request_exception = False

    response = user_client.get(f"/api/v1/predictions/{prediction.pk}/")

    assert response.status_code == 500
    assert response["Content-Type"] == "application/json"
    assert assert_envelope(response.json())["code"] == "server_error"
    (logged,) = _server_errors_logged(caplog.records)
    assert logged.getMessage() == f"Internal Server Error: /api/v1/predictions/{prediction.pk}/"


@contextlib.contextmanager
def _database_unreachable_for(table: str):
    """Every query naming ``table`` fails as a database that went away fails: at the driver, in this thread."""

    def refuse(execute, sql, params, many, context):
        if table in sql:
            raise OperationalError("connection to server at \"db\" failed: Connection refused")
        return execute(sql, params, many, context)

    with connection.execute_wrapper(refuse):
        yield


def test_logging_in_while_the_database_is_out_of_reach_is_a_503_page_that_says_to_try_again(client, user, caplog):
    client.raise_request_exception = False

    with _database_unreachable_for("auth_user"):
        response = client.post("/accounts/login/", {"username": "alice", "password": "correct horse battery"})

    assert response.status_code == 503 and response["Retry-After"] == "5"
    assert response["Content-Type"].startswith("text/html")
    assert "The site cannot reach its database just now. Please try again in a minute." in response.content.decode()
    # Still logged, with the error, as every answer from 500 up is.
    (logged,) = _server_errors_logged(caplog.records)
    assert "Connection refused" in str(logged.exc_info[1])


def test_an_api_request_whose_session_cannot_be_read_is_a_503_envelope(user, client):
    client.force_login(user)
    client.raise_request_exception = False

    with _database_unreachable_for("django_session"):
        response = client.get("/api/v1/predictions/")

    assert response.status_code == 503 and response["Retry-After"] == "5"
    assert assert_envelope(response.json())["code"] == "service_unavailable"
