"""Sign-up: names that differ from an account's only in case or in compatibility letters, one at a time and two at
once."""
import pytest
from django.db import connection

PASSWORD = "x9!kQ2#vLp"


def _sign_up(client, username: str):
    return client.post("/accounts/signup/", {"username": username, "password1": PASSWORD, "password2": PASSWORD})


@pytest.mark.django_db
@pytest.mark.parametrize("name", ["Alice", "ALICE", "ａｌｉｃｅ", "Ａｌｉｃｅ", " alice "])
def test_a_name_that_differs_from_an_account_s_only_in_case_or_letter_width_is_refused_as_taken(
        client, user, django_user_model, name):
    response = _sign_up(client, name)

    assert response.status_code == 400
    assert "A user with that username already exists." in response.content.decode()
    assert django_user_model.objects.count() == 1


@pytest.mark.django_db
def test_a_name_in_full_width_letters_is_stored_as_its_plain_letters_and_logs_in_by_them(client, django_user_model):
    assert _sign_up(client, "Ｃａｒｏｌ１").status_code == 302

    assert list(django_user_model.objects.values_list("username", flat=True)) == ["Carol1"]
    assert type(client)().login(username="Carol1", password=PASSWORD)


@pytest.mark.skipif(connection.vendor != "postgresql", reason="the overlap is arranged with PostgreSQL's locks")
@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("name", ["Carol", "ｃａｒｏｌ"])
def test_two_sign_ups_at_once_with_names_differing_only_in_case_or_width_make_one_account_and_say_the_name_is_taken(
        django_user_model, name):
    from django.test import Client

    from tests.locks import overtaken

    tab = Client(raise_request_exception=False)
    # One person's account is being stored when the other's form, its name in another case, arrives.
    (answer,) = overtaken(first=lambda: django_user_model.objects.create_user(username="carol", password=PASSWORD),
                          then=[lambda: _sign_up(tab, name)])

    assert not isinstance(answer, Exception), answer
    assert answer.status_code == 400 and "A user with that username already exists." in answer.content.decode()
    assert list(django_user_model.objects.values_list("username", flat=True)) == ["carol"]
