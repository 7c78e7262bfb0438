"""Site-wide routes: the icon browsers ask for on every page."""
import pytest
from django.contrib.staticfiles import finders


@pytest.mark.django_db
def test_favicon_request_is_redirected_to_the_site_icon(client):
    response = client.get("/favicon.ico")
    assert response.status_code == 301
    assert response["Location"] == "/static/favicon.svg"
    icon = finders.find("favicon.svg")
    assert icon is not None
    with open(icon, encoding="utf-8") as svg:
        assert svg.read().startswith("<svg")


@pytest.mark.django_db
def test_site_pages_name_their_icon(client):
    response = client.get("/accounts/login/")
    assert b'<link rel="icon" href="/static/favicon.svg"' in response.content
