"""The OpenAPI schema validates without warnings, declares what the API really answers and, with Swagger UI, is public
and served without a CDN."""
from __future__ import annotations

import subprocess
import sys

import pytest
from django.db import connection

from tests.api.conftest import assert_envelope, client_for
from tests.api.test_api_errors import database_out_of_reach
from tests.processes import REPO, child_env


@pytest.mark.django_db
def test_the_schema_validates_without_a_single_warning():
    result = subprocess.run(
        [sys.executable, "manage.py", "spectacular", "--validate", "--fail-on-warn", "--file", "/dev/null"],
        cwd=REPO, env=child_env(), capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.django_db
def test_the_schema_is_public_and_lists_every_endpoint(api_client):
    response = api_client.get("/api/schema/", HTTP_ACCEPT="application/vnd.oai.openapi+json")

    assert response.status_code == 200
    paths = response.json()["paths"]
    assert set(paths) >= {
        "/api/v1/predictions/", "/api/v1/predictions/{prediction_id}/", "/api/v1/training-runs/",
        "/api/v1/training-runs/{run_id}/", "/api/v1/training-runs/{run_id}/cancel/", "/api/v1/checkpoints/",
        "/api/v1/checkpoints/{checkpoint_id}/activate/",
    }
    upload = paths["/api/v1/predictions/"]["post"]
    assert "multipart/form-data" in upload["requestBody"]["content"]
    assert {"200", "202", "400", "401", "413", "429"} <= set(upload["responses"])


@pytest.mark.django_db
def test_the_upload_declares_image_as_a_binary_file_and_images_as_a_list_of_them_in_its_multipart_body(api_client):
    schema = api_client.get("/api/schema/", HTTP_ACCEPT="application/vnd.oai.openapi+json").json()
    body = schema["paths"]["/api/v1/predictions/"]["post"]["requestBody"]["content"]["multipart/form-data"]
    name = body["schema"]["$ref"].rsplit("/", 1)[-1]
    fields = schema["components"]["schemas"][name]["properties"]

    assert (fields["image"]["type"], fields["image"]["format"]) == ("string", "binary")
    assert fields["images"]["type"] == "array"
    assert fields["images"]["items"] == {"type": "string", "format": "binary"}


@pytest.mark.django_db
def test_swagger_ui_is_public_and_uses_only_local_assets(api_client):
    response = api_client.get("/api/docs/")

    assert response.status_code == 200
    page = response.content.decode()
    assert "swagger-ui" in page
    assert "cdn." not in page and "unpkg" not in page
    assert "/static/drf_spectacular_sidecar/" in page


@pytest.mark.django_db
def test_the_docs_page_answers_any_method_but_get_and_head_with_405_not_a_server_error(api_client):
    for method in ("options", "post", "delete"):
        assert getattr(api_client, method)("/api/docs/").status_code == 405, method
    assert api_client.head("/api/docs/").status_code == 200


@pytest.mark.django_db
@pytest.mark.parametrize("path", ["/api/schema/", "/api/docs/"])
def test_the_schema_and_the_docs_answer_their_errors_in_the_json_envelope(api_client, path):
    provoked = {
        "an Accept header nothing satisfies": (api_client.get(path, HTTP_ACCEPT="text/csv"), 406, "not_acceptable"),
        "an unknown format": (api_client.get(path, {"format": "xml"}), 406, "not_acceptable"),
        "a POST": (api_client.post(path), 405, "method_not_allowed"),
        "a DELETE": (api_client.delete(path), 405, "method_not_allowed"),
        "a bad token": (api_client.get(path, HTTP_AUTHORIZATION="Token not-a-key"), 401, "authentication_failed"),
    }

    for case, (response, status, code) in provoked.items():
        assert response.status_code == status, case
        assert response["Content-Type"] == "application/json", case
        error = assert_envelope(response.json())
        assert error["code"] == code, case
    # Each format it has is named once, though two media types give each.
    message = provoked["an unknown format"][0].json()["error"]["message"]
    assert "`xml`" in message and all(message.count(f"`{name}`") <= 1 for name in ("yaml", "json", "html"))


@pytest.mark.django_db
def test_the_schema_says_a_feedback_patch_needs_its_field_as_the_server_does(api_client, user_client, user,
                                                                              make_prediction):
    schema = api_client.get("/api/schema/", HTTP_ACCEPT="application/vnd.oai.openapi+json").json()
    body = schema["paths"]["/api/v1/predictions/{prediction_id}/"]["patch"]["requestBody"]
    component = body["content"]["application/json"]["schema"]["$ref"].rsplit("/", 1)[1]

    assert body["required"] is True
    assert schema["components"]["schemas"][component]["required"] == ["feedback"]
    refused = user_client.patch(f"/api/v1/predictions/{make_prediction(owner=user).pk}/", {}, format="json")
    assert refused.status_code == 400 and refused.json()["error"]["code"] == "required"


@pytest.mark.django_db
def test_every_endpoint_documents_its_503_and_the_retry_after_that_comes_with_it(api_client):
    paths = api_client.get("/api/schema/", HTTP_ACCEPT="application/vnd.oai.openapi+json").json()["paths"]

    operations = [(path, method, operation) for path, item in paths.items() if path.startswith("/api/v1/")
                  for method, operation in item.items()]
    assert operations
    for path, method, operation in operations:
        assert "503" in operation["responses"], (method, path)
        assert "Retry-After" in operation["responses"]["503"]["description"], (method, path)


def _schema(client) -> dict:
    return client.get("/api/schema/", HTTP_ACCEPT="application/vnd.oai.openapi+json").json()


@pytest.mark.django_db
def test_the_list_documents_its_latest_filter_as_a_boolean_off_by_default(api_client):
    parameters = _schema(api_client)["paths"]["/api/v1/predictions/"]["get"]["parameters"]

    (latest,) = [parameter for parameter in parameters if parameter["name"] == "latest"]
    assert latest["in"] == "query" and latest["schema"] == {"type": "boolean", "default": False}


@pytest.mark.django_db
def test_every_list_documents_its_page_size_with_the_maximum_the_server_holds_to(api_client):
    paths = _schema(api_client)["paths"]

    for path in ("/api/v1/predictions/", "/api/v1/training-runs/", "/api/v1/checkpoints/"):
        operation = paths[path]["get"]
        (page_size,) = [parameter for parameter in operation["parameters"] if parameter["name"] == "page_size"]
        assert page_size["in"] == "query" and page_size["schema"] == {"type": "integer", "minimum": 1, "maximum": 100}
        assert "400" in operation["responses"], path


@pytest.mark.django_db
def test_every_list_documents_newest_the_bound_its_links_carry(api_client):
    paths = _schema(api_client)["paths"]

    for path in ("/api/v1/predictions/", "/api/v1/training-runs/", "/api/v1/checkpoints/"):
        parameters = paths[path]["get"]["parameters"]
        (newest,) = [parameter for parameter in parameters if parameter["name"] == "newest"]
        assert newest["in"] == "query" and newest["schema"] == {"type": "integer", "minimum": 0}
        assert "next" in newest["description"]


# What the statuses below are provoked with; a body of a type no parser reads goes only with the methods that take
# one.
_OPERATION_METHODS = ("get", "put", "post", "delete", "patch")
_METHODS_WITH_BODY = {"post", "put", "patch"}


def _answered(client, path: str, method: str) -> set[int]:
    """Which of 304, 406, 411, 413 and 415 the API answers to ``method`` on ``path`` when provoked."""
    answered = set()
    unsatisfiable = client.generic(method.upper(), path, HTTP_ACCEPT="text/csv")
    answered |= {406} & {unsatisfiable.status_code}
    if method in _METHODS_WITH_BODY:
        # A body of a type no parser reads.
        foreign = client.generic(method.upper(), path, "feedback=7", content_type="text/plain")
        answered |= {415} & {foreign.status_code}
    # A body declared larger than any request may be (never sent whole), then one of unknown length: with any
    # method, since a client may send one with a GET or a DELETE too.
    oversized = client.generic(method.upper(), path, "{}", content_type="application/json",
                               CONTENT_LENGTH=str(10**10))
    answered |= {413} & {oversized.status_code}
    chunked = client.generic(method.upper(), path, "{}", content_type="application/json",
                             HTTP_TRANSFER_ENCODING="chunked")
    answered |= {411} & {chunked.status_code}
    if method == "get":
        etag = client.get(path).get("ETag")
        if etag:
            answered |= {304} & {client.get(path, HTTP_IF_NONE_MATCH=etag).status_code}
    return answered


def _one_of_each(staff_user, make_prediction, make_checkpoint) -> dict[str, int]:
    """The ids the API's path templates name: a prediction, a training run and a checkpoint."""
    from training.services import training_run_create

    return {
        "prediction_id": make_prediction(owner=staff_user, done=True).pk,
        "run_id": training_run_create(created_by=staff_user, architecture="mlp", epochs=1, batch_size=50,
                                      learning_rate=1e-3, enqueue=False).pk,
        "checkpoint_id": make_checkpoint()[0].pk,
    }


@pytest.mark.django_db
def test_each_operation_declares_the_304_406_411_413_and_415_it_answers_and_no_other_and_405_is_said_once(
    api_client, staff_user, make_prediction, make_checkpoint
):
    client = client_for(staff_user)  # a superuser: no permission check answers first
    ids = _one_of_each(staff_user, make_prediction, make_checkpoint)
    schema = _schema(api_client)
    paths = schema["paths"]
    assert "405" in schema["info"]["description"] and "Allow" in schema["info"]["description"]

    checked = 0
    for template, item in paths.items():
        if not template.startswith("/api/v1/"):
            continue
        path = template.format(**ids)
        for method in _OPERATION_METHODS:
            if method not in item:
                refused = client.generic(method.upper(), path)
                assert refused.status_code == 405 and method.upper() not in refused["Allow"], (method, template)
        for method, operation in item.items():
            declared = {int(code) for code in operation["responses"]} & {304, 405, 406, 411, 413, 415}
            assert declared == _answered(client, path, method), (method, template)
            checked += 1
    assert checked >= 15


@pytest.mark.django_db
def test_no_operation_is_described_by_the_docstring_of_a_class_its_view_is_built_from(api_client):
    import inspect

    from django.urls import resolve

    checked = 0
    for template, item in _schema(api_client)["paths"].items():
        if not template.startswith("/api/v1/"):
            continue
        view = resolve(template.replace("{", "").replace("}", "").replace("prediction_id", "1").replace(
            "run_id", "1").replace("checkpoint_id", "1")).func.view_class
        inherited = [inspect.cleandoc(base.__dict__["__doc__"]) for base in view.__mro__[1:]
                     if base.__dict__.get("__doc__")]
        for method, operation in item.items():
            description = operation.get("description", "")
            assert not any(doc in description for doc in inherited), (method, template, description[:80])
            checked += 1
    assert checked >= 15


@pytest.mark.django_db
def test_the_error_envelope_declares_the_request_id_a_user_quotes_and_every_example_shows_one(api_client):
    schema = _schema(api_client)
    error = schema["components"]["schemas"]["Error"]

    assert "request_id" in error["properties"] and "request_id" in error["required"]
    assert "X-Request-ID" in error["properties"]["request_id"]["description"]
    examples = [example["value"] for item in schema["paths"].values() for operation in item.values()
                for response in operation["responses"].values()
                for content in response.get("content", {}).values()
                for example in content.get("examples", {}).values() if "error" in example.get("value", {})]
    assert examples and all(example["error"]["request_id"] for example in examples)


_SCHEMA_MEDIA_TYPES = {
    # Accept: (Content-Type, file name)
    "application/vnd.oai.openapi": ("application/vnd.oai.openapi; charset=utf-8", "mnistsite API.yaml"),
    "application/yaml": ("application/yaml; charset=utf-8", "mnistsite API.yaml"),
    "application/vnd.oai.openapi+json": ("application/vnd.oai.openapi+json", "mnistsite API.json"),
    "application/json": ("application/json", "mnistsite API.json"),
    "application/json; indent=2": ("application/json", "mnistsite API.json"),
}


@pytest.fixture
def schema_generations(monkeypatch) -> list[int]:
    """How many times drf-spectacular generates a schema while the test runs: one item each time."""
    from drf_spectacular.generators import SchemaGenerator

    generations, original = [], SchemaGenerator.get_schema

    def counted(self, *args, **kwargs):
        generations.append(1)
        return original(self, *args, **kwargs)

    monkeypatch.setattr(SchemaGenerator, "get_schema", counted)
    return generations


@pytest.mark.django_db
def test_the_schema_is_generated_once_per_process_not_on_every_request(api_client, user_client, schema_generations):
    first = {accept: api_client.get("/api/schema/", HTTP_ACCEPT=accept) for accept in _SCHEMA_MEDIA_TYPES}
    generations_at_first = len(schema_generations)

    for _ in range(3):
        for accept, (content_type, name) in _SCHEMA_MEDIA_TYPES.items():
            for client in (api_client, user_client):
                again = client.get("/api/schema/", HTTP_ACCEPT=accept)
                assert again.status_code == 200, accept
                assert again.content == first[accept].content, accept
                assert again["Content-Type"] == content_type, accept
                assert again["Content-Disposition"] == f'inline; filename="{name}"', accept
        assert api_client.get("/api/docs/").status_code == 200
    assert len(schema_generations) == generations_at_first <= 1
    assert first["application/json; indent=2"].content != first["application/json"].content


@pytest.mark.django_db
def test_a_schema_request_cannot_ask_for_a_schema_that_needs_generating_again(api_client, schema_generations):
    plain = api_client.get("/api/schema/").content
    generations = len(schema_generations)

    # Each would otherwise be a schema of its own: `version` wrote any value into the schema as its version, `lang`
    # translated Django's and DRF's few strings in an English schema, and the media type's parameters are the
    # client's to choose.
    for query in ({"version": "2"}, {"version": "x" * 100}, {"lang": "fr"}, {"lang": "de"}):
        assert api_client.get("/api/schema/", query).content == plain, query
    indented = api_client.get("/api/schema/", HTTP_ACCEPT="application/json; indent=2").content
    generations_indented = len(schema_generations)
    for accept in ("application/json; indent=2; x=1", "application/json; indent=2; y=2", "application/json;indent=2"):
        assert api_client.get("/api/schema/", HTTP_ACCEPT=accept).content == indented, accept
    assert len(schema_generations) == generations_indented <= generations + 1


@pytest.mark.django_db
def test_the_schema_follows_the_settings_a_test_changes(api_client):
    from django.test import override_settings

    english = api_client.get("/api/schema/").content
    assert b"A page number within the paginated result set." in english

    with override_settings(LANGUAGE_CODE="fr"):
        french = api_client.get("/api/schema/").content
    assert french != english and b"A page number within the paginated result set." not in french
    # The paths are the URL configuration's, which a setting names too.
    with override_settings(ROOT_URLCONF="tests.api.urls_elsewhere"):
        elsewhere = api_client.get("/elsewhere/schema/", HTTP_ACCEPT="application/json").json()
    assert "/elsewhere/v1/predictions/" in elsewhere["paths"] and "/api/v1/predictions/" not in elsewhere["paths"]
    assert api_client.get("/api/schema/").content == english


@pytest.mark.django_db
@pytest.mark.parametrize("kind", ["image", "input"])
def test_the_images_document_the_etag_they_answer_and_the_conditional_headers_they_read(
    api_client, user_client, user, make_prediction, kind
):
    operation = _schema(api_client)["paths"][f"/api/v1/predictions/{{prediction_id}}/{kind}/"]["get"]
    prediction = make_prediction(owner=user, done=True)
    url = f"/api/v1/predictions/{prediction.pk}/{kind}/"

    sent = user_client.get(url)
    unchanged = user_client.get(url, HTTP_IF_NONE_MATCH=sent["ETag"])
    changed = user_client.get(url, HTTP_IF_MATCH='"something-else"')

    assert (sent.status_code, unchanged.status_code, changed.status_code) == (200, 304, 412)
    headers = {parameter["name"] for parameter in operation["parameters"] if parameter["in"] == "header"}
    assert {"If-None-Match", "If-Match"} <= headers
    for code, answer in (("200", sent), ("304", unchanged)):
        declared = operation["responses"][code].get("headers", {})
        assert {"ETag", "Cache-Control"} <= set(declared), code
        assert answer["ETag"] and answer["Cache-Control"] == "private, no-cache"


@pytest.mark.django_db
def test_every_field_a_run_a_checkpoint_or_a_prediction_is_answered_with_is_declared_required(
    api_client, staff_client, staff_user, make_prediction, make_checkpoint
):
    from training.services import training_run_create

    components = _schema(api_client)["components"]["schemas"]
    run = training_run_create(
        created_by=staff_user, architecture="mlp", epochs=1, batch_size=50, learning_rate=1e-3, enqueue=False
    )
    checkpoint = make_checkpoint(activate=True)
    checkpoint = checkpoint[0] if isinstance(checkpoint, tuple) else checkpoint
    prediction = make_prediction(owner=staff_user, done=True)

    answers = {
        "TrainingRun": staff_client.get(f"/api/v1/training-runs/{run.pk}/").json(),
        "Checkpoint": staff_client.get(f"/api/v1/checkpoints/{checkpoint.pk}/").json(),
        "Prediction": staff_client.get(f"/api/v1/predictions/{prediction.pk}/").json(),
    }

    for name, answer in answers.items():
        # A field left out of `required` is optional to a client built from the schema, one it must test for.
        assert set(answer) <= set(components[name]["required"]), name


@pytest.mark.skipif(connection.vendor != "postgresql", reason="points the PostgreSQL connection at a closed port")
@pytest.mark.django_db(transaction=True)
def test_every_503_declares_the_retry_after_header_it_is_answered_with(api_client, user_client, user, make_prediction):
    paths = _schema(api_client)["paths"]
    url = f"/api/v1/predictions/{make_prediction(owner=user).pk}/"

    with database_out_of_reach():
        response = user_client.get(url)

    assert response.status_code == 503 and int(response["Retry-After"]) > 0
    for path, item in paths.items():
        for method, operation in item.items():
            headers = operation["responses"]["503"].get("headers", {})
            assert headers.get("Retry-After", {}).get("schema") == {"type": "integer"}, (method, path)


@pytest.mark.django_db
def test_every_operation_takes_the_query_parameters_it_documents_and_refuses_any_other(
    api_client, staff_user, make_prediction, make_checkpoint
):
    from django.urls import resolve

    client = client_for(staff_user)  # a superuser: no permission check answers first
    ids = _one_of_each(staff_user, make_prediction, make_checkpoint)
    checked = 0
    for template, item in _schema(api_client)["paths"].items():
        if not template.startswith("/api/v1/"):
            continue
        path = template.format(**ids)
        view = resolve(path).func.view_class
        for method, operation in item.items():
            documented = [p["name"] for p in operation.get("parameters", []) if p["in"] == "query"]
            assert set(documented) == set(view.query_parameters.get(method.upper(), ())), (method, template)
            # Each alone, with a value it may well refuse: what counts is that it is not refused as unknown.
            for name in [*documented, "format"]:
                response = client.generic(method.upper(), f"{path}?{name}=1")
                assert response.status_code != 400 or response.json()["error"]["code"] != "unknown", (method, path, name)
            refused = client.generic(method.upper(), f"{path}?undocumented=1")
            assert refused.status_code == 400, (method, template)
            assert (refused.json()["error"]["code"], refused.json()["error"]["field"]) == ("unknown", "undocumented")
            assert "400" in operation["responses"], (method, template)
            checked += 1
    assert checked >= 15
