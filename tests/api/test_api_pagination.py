"""Every list's pages: `page` read strictly; `next` and `previous` keep to the rows of the first page's moment."""
from __future__ import annotations

import pytest

from training.services import training_run_create

RUNS = "/api/v1/training-runs/"
CHECKPOINTS = "/api/v1/checkpoints/"


def _run(user):
    return training_run_create(
        created_by=user, architecture="mlp", epochs=1, batch_size=50, learning_rate=1e-3, enqueue=False
    ).pk


@pytest.mark.django_db
def test_following_next_through_the_checkpoints_lists_each_once_while_training_saves_more(
    staff_client, make_checkpoint
):
    made = [make_checkpoint()[0].pk for _ in range(3)]

    first = staff_client.get(CHECKPOINTS, {"page_size": 2}).json()
    make_checkpoint()
    second = staff_client.get(first["next"]).json()

    assert first["count"] == second["count"] == 3 and second["next"] is None
    assert [item["id"] for item in first["results"] + second["results"]] == made[::-1]


@pytest.mark.django_db
def test_following_next_through_the_training_runs_lists_each_once_while_more_are_started(staff_client, staff_user):
    made = [_run(staff_user) for _ in range(3)]

    first = staff_client.get(RUNS, {"page_size": 2}).json()
    _run(staff_user)
    second = staff_client.get(first["next"]).json()

    assert first["count"] == second["count"] == 3 and second["next"] is None
    assert [item["id"] for item in first["results"] + second["results"]] == made[::-1]


@pytest.mark.django_db
@pytest.mark.parametrize("page", ["0", "000", "-1", "abc", "1.0", " 1", "1_0", "+1"])
def test_a_page_that_is_no_page_number_is_400_naming_it(staff_client, staff_user, page):
    _run(staff_user)

    response = staff_client.get(RUNS, {"page": page})

    assert response.status_code == 400
    error = response.json()["error"]
    assert (error["field"], error["message"]) == ("page", "The page must be a whole number from 1, or `last`.")


@pytest.mark.django_db
def test_the_last_page_is_page_last(staff_client, staff_user):
    made = [_run(staff_user) for _ in range(3)]

    last = staff_client.get(RUNS, {"page_size": 2, "page": "last"}).json()

    assert [item["id"] for item in last["results"]] == [made[0]] and last["next"] is None


@pytest.mark.django_db
def test_newest_zero_is_a_list_of_the_moment_before_any_row_was_stored(staff_client, staff_user):
    _run(staff_user)

    response = staff_client.get(RUNS, {"newest": "0"})

    assert response.status_code == 200, response.json()
    assert response.json()["count"] == 0 and response.json()["results"] == []
