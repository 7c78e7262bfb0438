"""The site's log writes the secret parts of mailed links as ***, as the access log does."""
import runpy

import pytest
from django.test import Client

from mnistsite.log_secrets import SECRET_IN_PATH
from tests.mnistsite.test_request_id import console_log
from tests.processes import REPO

TOKEN = "Ab.Cd-Ef0123456789"


@pytest.mark.django_db
def test_a_refused_post_of_a_confirmation_link_is_logged_without_its_token():
    with console_log() as log:
        response = Client(enforce_csrf_checks=True).post(f"/accounts/email/confirm/{TOKEN}/")

    assert response.status_code == 403
    assert "/accounts/email/confirm/***/" in log.getvalue()
    assert TOKEN not in log.getvalue()


@pytest.mark.django_db
def test_a_refused_post_of_a_password_reset_link_is_logged_without_its_token():
    with console_log() as log:
        response = Client(enforce_csrf_checks=True).post(f"/accounts/password/reset/MQ/{TOKEN}/")

    assert response.status_code == 403
    assert "/accounts/password/reset/MQ/***/" in log.getvalue()
    assert TOKEN not in log.getvalue()


def test_the_access_log_masks_the_same_paths_as_the_sites_log():
    assert runpy.run_path(str(REPO / "gunicorn.conf.py"))["_SECRET_IN_PATH"].pattern == SECRET_IN_PATH.pattern
