"""The site's pages carry a Content-Security-Policy that allows scripts from the site only."""
import pytest


@pytest.mark.django_db
def test_the_sites_pages_allow_scripts_from_the_site_only(client, user):
    client.force_login(user)
    for path in ("/", "/history/", "/accounts/", "/accounts/login/"):
        policy = client.get(path)["Content-Security-Policy"]
        assert "script-src 'self';" in policy and "frame-ancestors 'none'" in policy, path


@pytest.mark.django_db
def test_the_admin_and_the_api_docs_keep_their_inline_scripts_working(client, staff_user):
    client.force_login(staff_user)
    assert "Content-Security-Policy" not in client.get("/admin/")
    assert "Content-Security-Policy" not in client.get("/api/docs/")
    # JSON and images need no policy.
    assert "Content-Security-Policy" not in client.get("/api/v1/predictions/")


@pytest.mark.django_db
def test_an_empty_policy_turns_the_header_off(client, user, settings):
    settings.CONTENT_SECURITY_POLICY = ""
    client.force_login(user)
    assert "Content-Security-Policy" not in client.get("/")
