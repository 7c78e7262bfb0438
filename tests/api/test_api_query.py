"""A query parameter an operation does not take is refused, naming it and those it takes, before anything is done."""
from __future__ import annotations

import pytest

from classifier.models import Prediction, Upload
from tests.api.conftest import assert_envelope, stored_files, upload_file

LIST = "/api/v1/predictions/"


def test_a_misspelt_filter_is_refused_naming_it_and_the_filters_the_list_takes(user_client, user, make_prediction):
    make_prediction(owner=user, done=True, digit=3)

    response = user_client.get(LIST, {"stauts": "failed"})

    # Ignored, it listed every prediction as if they had all failed.
    assert response.status_code == 400
    error = assert_envelope(response.json())
    assert (error["code"], error["field"]) == ("unknown", "stauts")
    assert error["message"] == (
        "`stauts` is not a query parameter of this operation; it takes `digit`, `status`, `created_after`, "
        "`created_before`, `latest`, `page`, `page_size`, `newest`."
    )


def test_the_filters_the_list_documents_and_the_format_are_taken(user_client, user, make_prediction):
    make_prediction(owner=user, done=True, digit=3)

    response = user_client.get(LIST, {"digit": 3, "status": "done", "created_after": "2000-01-01", "latest": "true",
                                      "page": 1, "page_size": 5, "format": "json"})

    assert response.status_code == 200
    assert response.json()["count"] == 1


@pytest.mark.django_db
def test_an_upload_with_a_query_parameter_it_does_not_take_stores_and_counts_nothing(user_client):
    response = user_client.post(f"{LIST}?wiat=5", {"image": upload_file()}, format="multipart")

    assert response.status_code == 400
    error = assert_envelope(response.json())
    assert (error["code"], error["field"]) == ("unknown", "wiat")
    assert "it takes `wait`" in error["message"]
    assert not Upload.objects.exists() and not Prediction.objects.exists() and stored_files() == []
    # Nothing was spent of the upload allowance either: the next upload finds it whole but for itself.
    accepted = user_client.post(LIST, {"image": upload_file()}, format="multipart")
    assert accepted.status_code == 202
    assert int(accepted["RateLimit-Remaining"]) == int(accepted["RateLimit-Limit"]) - 1


@pytest.mark.django_db
def test_an_operation_that_takes_no_query_parameter_says_so(user_client, user, make_prediction):
    prediction = make_prediction(owner=user, done=True)

    response = user_client.delete(f"{LIST}{prediction.pk}/?confirm=yes")

    assert response.status_code == 400
    assert response.json()["error"]["message"] == "`confirm` is not a query parameter of this operation; it takes none."
    assert Prediction.objects.filter(pk=prediction.pk).exists()


@pytest.mark.django_db
def test_a_caller_without_credentials_is_told_that_first(api_client):
    response = api_client.get(LIST, {"stauts": "failed"})

    assert response.status_code == 401


@pytest.mark.django_db
def test_a_method_the_path_does_not_take_is_405_whatever_its_query_string(user_client):
    response = user_client.put(f"{LIST}?stauts=failed")

    assert response.status_code == 405


@pytest.mark.django_db
def test_the_browsable_apis_form_sent_from_a_filtered_list_page_is_not_refused(user_client):
    # Its forms post to the page's own address: a list's filters and page come with the upload.
    response = user_client.post(f"{LIST}?status=done&page=1", {"image": upload_file()}, format="multipart",
                                HTTP_ACCEPT="text/html")

    assert response.status_code == 202
    assert Upload.objects.count() == 1


@pytest.mark.django_db
def test_options_asked_from_a_filtered_list_describes_the_path(user_client):
    response = user_client.options(f"{LIST}?status=done&wait=1")

    assert response.status_code == 200


@pytest.mark.django_db
def test_a_parameter_with_no_name_is_refused_in_words(user_client):
    response = user_client.get(f"{LIST}?=1")

    assert response.status_code == 400
    assert response.json()["error"]["message"].startswith(
        "A parameter with no name (`?=`) is not a query parameter of this operation; it takes `digit`,")

