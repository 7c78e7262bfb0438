"""The error envelope: one shape for every status, including paths that match no endpoint."""
from __future__ import annotations

import contextlib

import pytest
from django.core.exceptions import ValidationError
from django.db import connection

from api.errors import validation_error_response
from classifier.models import Upload
from tests.api.conftest import stored_files, upload_file

pytestmark = pytest.mark.django_db


def assert_envelope(body: dict) -> dict:
    assert set(body) == {"error"}
    error = body["error"]
    assert set(error) == {"code", "message", "field", "details"}
    assert isinstance(error["code"], str) and isinstance(error["message"], str) and error["message"]
    assert error["details"][0] == {key: error[key] for key in ("code", "message", "field")}
    return error


def test_an_unknown_api_path_is_a_404_envelope_even_anonymously(api_client):
    response = api_client.get("/api/v1/nothing-here/")

    assert response.status_code == 404
    assert assert_envelope(response.json())["code"] == "not_found"


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


def test_an_unexpected_error_is_a_500_envelope_and_still_reported(user_client, user, make_prediction):
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


def test_options_describes_an_endpoint_instead_of_failing(staff_client, user_client):
    for client, url in ((staff_client, "/api/v1/training-runs/"), (user_client, "/api/v1/predictions/"),
                        (staff_client, "/api/v1/checkpoints/")):
        response = client.options(url)
        assert response.status_code == 200, (url, response.content)


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
