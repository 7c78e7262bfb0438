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
