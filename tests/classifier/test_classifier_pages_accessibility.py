"""What the classifier's pages tell screen readers, and what they offer without JavaScript, as the server sends them."""
import io
import re

import pytest

from classifier import services

pytestmark = pytest.mark.django_db


@pytest.fixture
def alice(client, user):
    client.force_login(user)
    return client


def test_the_ten_probabilities_are_a_list_named_by_its_heading(alice, user, digit_png, active_checkpoint):
    upload = services.upload_create(owner=user, file=io.BytesIO(digit_png(0)), source="file")
    (prediction,) = services.predictions_create(uploads=[upload], publish=False)
    services.prediction_execute(prediction_id=prediction.pk)
    page = alice.get(f"/predictions/{prediction.pk}/").content.decode()
    assert re.search(r'<h2 class="small-heading" id="bars-heading">Probability of each digit</h2>', page)
    listed = re.search(r'<ol class="bars" id="bars" aria-labelledby="bars-heading">(.*?)</ol>', page, re.S)
    assert listed is not None
    values = re.findall(r'<span class="bar-value">(\d+\.\d)%</span>', listed.group(1))
    assert len(values) == 10  # each probability as text, not only as a bar's length


def test_the_upload_box_offers_dropping_files_only_where_a_script_takes_them(alice):
    page = alice.get("/").content.decode()
    # Hidden where scripts are off (site.css): only the browser's own control takes a dropped file then.
    assert '<span class="needs-script"> or drag and drop them here</span>' in page


def test_each_history_row_names_its_digit_as_read_and_leaves_the_dash_of_one_without_a_digit_unsaid(
    alice, user, digit_png, active_checkpoint
):
    read, waiting = (services.upload_create(owner=user, file=io.BytesIO(digit_png(i)), source="file") for i in range(2))
    (prediction,) = services.predictions_create(uploads=[read], publish=False)
    digit = services.prediction_execute(prediction_id=prediction.pk).digit
    services.predictions_create(uploads=[waiting], publish=False)
    page = alice.get("/history/").content.decode()
    cells = dict(re.findall(r'data-upload-id="(\d+)".*?<div class="history-digit"[^>]*>(.*?)</div>', page, re.S))
    assert cells[str(read.pk)] == (
        f'<span class="visually-hidden js-digit-label">Read as </span><span class="js-digit">{digit}</span>'
    )
    assert cells[str(waiting.pk)] == (
        '<span class="visually-hidden js-digit-label" hidden>Read as </span><span class="js-digit" aria-hidden="true">–</span>'
    )
