"""The OpenAPI schema validates without warnings and, with Swagger UI, is public and served without a CDN."""
from __future__ import annotations

import subprocess
import sys

import pytest

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
