"""The site's log writes the secret parts of mailed links as ***, as the access log does."""
import runpy

import pytest
from django.test import Client

from mnistsite.log_secrets import SECRET_IN_PATH
from tests.mnistsite.test_request_id import console_log
from tests.processes import REPO

TOKEN = "Ab.Cd-Ef0123456789"


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("path", "masked"),
    [(f"/accounts/email/confirm/{TOKEN}/", "/accounts/email/confirm/***/"),
     (f"/accounts/password/reset/MQ/{TOKEN}/", "/accounts/password/reset/MQ/***/")],
    ids=["email confirmation", "password reset"],
)
def test_a_refused_post_of_a_mailed_link_is_logged_without_its_token(path, masked):
    with console_log() as log:
        response = Client(enforce_csrf_checks=True).post(path)

    assert response.status_code == 403
    assert masked in log.getvalue()
    assert TOKEN not in log.getvalue()


def test_the_access_log_masks_the_same_paths_as_the_sites_log():
    assert runpy.run_path(str(REPO / "gunicorn.conf.py"))["_SECRET_IN_PATH"].pattern == SECRET_IN_PATH.pattern
