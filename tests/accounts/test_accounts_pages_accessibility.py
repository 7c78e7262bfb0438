"""What the account pages tell screen readers of a refused form, as the server sends them."""
import re

import pytest

pytestmark = pytest.mark.django_db


@pytest.fixture
def signed_in(client, user):
    client.force_login(user)
    return client


@pytest.mark.parametrize("url, data, field_id", [
    ("/accounts/tokens/", {"name": "scanner", "password": "not my password"}, "id_token_password"),
    ("/accounts/delete/", {"password": "not my password", "understood": "on"}, "id_password"),
])
def test_a_wrong_password_on_the_account_page_is_the_description_of_its_own_field(signed_in, url, data, field_id):
    page = signed_in.post(url, data).content.decode()
    field = re.search(rf'<input type="password"[^>]*\bid="{field_id}"[^>]*>', page).group(0)
    assert 'aria-invalid="true"' in field
    described_by = re.search(r'aria-describedby="([^"]+)"', field).group(1)
    assert re.search(rf'<div id="{described_by}"><p class="field-error">That is not your password.</p></div>', page)
    assert page.count(f'id="{described_by}"') == 1


def _autofocused(page: str) -> list[str]:
    return re.findall(r'<input [^>]*\bname="(\w+)"[^>]*\bautofocus\b', page) + re.findall(
        r'<input [^>]*\bautofocus\b[^>]*\bname="(\w+)"', page
    )


def test_a_sign_up_sent_back_opens_on_the_field_in_error_not_on_the_name(client):
    assert _autofocused(client.get("/accounts/signup/").content.decode()) == ["username"]

    page = client.post("/accounts/signup/", {"username": "bob", "password1": "a long enough password 123",
                                             "password2": "a long enough password 124"}).content.decode()

    # Django autofocuses the name, which was fine: the browser would race the page's script for the keyboard.
    assert _autofocused(page) == ["password2"]


def test_a_password_change_sent_back_opens_on_the_field_in_error(signed_in):
    page = signed_in.post("/accounts/password/", {"old_password": "correct horse battery",
                                                   "new_password1": "a-New-pass-482",
                                                   "new_password2": "a-New-pass-483"}).content.decode()

    assert _autofocused(page) == ["new_password2"]


def test_the_sign_up_page_says_what_its_address_field_is_for_so_browsers_fill_it_in(client):
    page = client.get("/accounts/signup/").content.decode()

    assert re.search(r'<input type="email" name="email" autocomplete="email"[^>]*id="id_email"', page)
