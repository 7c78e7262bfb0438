"""The users' admin: deleting users as an account's deletion does, and their email addresses' confirmation."""
import datetime as dt
import io
import re

import pytest
from django.db import connection
from django.forms import MultiWidget

from tests.accounts.conftest import api_status, confirmation_path, run_queued

pytestmark = pytest.mark.django_db

USERS = "/admin/auth/user/"


def _uploaded(owner, digit_png, count: int = 2) -> list[int]:
    from classifier import services

    uploads = []
    for index in range(count):
        upload = services.upload_create(owner=owner, file=io.BytesIO(digit_png(index)), source="file")
        services.predictions_create(uploads=[upload], publish=False)
        uploads.append(upload.pk)
    return uploads


@pytest.mark.skipif(connection.vendor != "postgresql", reason="row locks: SQLite writes one transaction at a time")
@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("how", ["delete page", "delete selected"])
def test_a_user_deleted_in_the_admin_while_a_deletion_of_their_uploads_runs_waits_for_it_instead_of_deadlocking(
    admin_client, user, other_user, digit_png, how
):
    from django.contrib.auth import get_user_model

    from classifier import services
    from classifier.models import Upload
    from tests.classifier.fixtures import deletions_race

    uploads = _uploaded(user, digit_png)
    _uploaded(other_user, digit_png, count=1)

    def admin_delete():
        # The deletion takes the predictions, then the uploads; "Delete all" in the owner's tab runs meanwhile.
        if how == "delete page":
            return admin_client.post(f"{USERS}{user.pk}/delete/", {"post": "yes"}).status_code
        return admin_client.post(USERS, {"action": "delete_selected", "post": "yes",
                                         "_selected_action": [user.pk, other_user.pk]}).status_code

    outcome = deletions_race(held=admin_delete,
                             other=lambda: services.uploads_delete(owner=user, upload_ids=uploads))

    assert not [value for value in outcome.values() if isinstance(value, Exception)], outcome
    assert outcome["held"] == 302
    gone = [user.pk] if how == "delete page" else [user.pk, other_user.pk]
    assert not get_user_model().objects.filter(pk__in=gone).exists()
    assert not Upload.objects.filter(owner_id__in=gone).exists()


@pytest.mark.skipif(connection.vendor != "postgresql", reason="row locks: SQLite writes one transaction at a time")
@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("what", ["predictions", "uploads"])
def test_users_deleted_together_while_staff_delete_their_rows_wait_for_each_other_instead_of_deadlocking(
    admin_client, user, other_user, staff_user, what
):
    from django.contrib.auth import get_user_model

    from classifier import services
    from classifier.models import Prediction, Upload
    from tests.classifier.fixtures import deletions_race
    from tests.classifier.test_classifier_admin import _rows

    first, second = sorted([user, other_user], key=lambda account: account.pk)
    # The second account's upload has the lower id: locked owner by owner, the accounts' deletion would take the
    # first's, then wait for the second's, which staff's deletion (by id, across owners) took before the first's.
    _rows(second, 1)
    _rows(first, 1)

    def staff_delete():
        if what == "predictions":
            return services.predictions_delete_by_staff(user=staff_user, predictions=Prediction.objects.all())
        return services.uploads_delete_by_staff(user=staff_user, uploads=Upload.objects.all())

    outcome = deletions_race(
        held=lambda: admin_client.post(USERS, {"action": "delete_selected", "post": "yes",
                                               "_selected_action": [first.pk, second.pk]}).status_code,
        other=staff_delete, held_stops_after_locking=True,
    )

    assert not [value for value in outcome.values() if isinstance(value, Exception)], outcome
    assert outcome["held"] == 302
    assert not get_user_model().objects.filter(pk__in=[first.pk, second.pk]).exists() and not Upload.objects.exists()


@pytest.mark.skipif(connection.vendor != "postgresql", reason="row locks: SQLite writes one transaction at a time")
@pytest.mark.django_db(transaction=True)
def test_users_deleted_together_while_one_of_them_deletes_their_own_account_are_all_deleted(
    admin_client, user, other_user
):
    from django.contrib.auth import get_user_model

    from accounts.services import account_delete
    from classifier.models import Upload
    from tests.classifier.fixtures import deletions_race
    from tests.classifier.test_classifier_admin import _rows

    _rows(user, 1)
    _rows(other_user, 1)

    outcome = deletions_race(
        held=lambda: account_delete(user=get_user_model().objects.get(pk=other_user.pk)),
        other=lambda: admin_client.post(USERS, {"action": "delete_selected", "post": "yes",
                                                "_selected_action": [user.pk, other_user.pk]}).status_code,
        held_stops_after_locking=True,
    )

    # The administrator's deletion waited for the owner's, then found that account gone: no server error.
    assert not [value for value in outcome.values() if isinstance(value, Exception)], outcome
    assert outcome["other"] == 302
    assert not get_user_model().objects.filter(pk__in=[user.pk, other_user.pk]).exists() and not Upload.objects.exists()


def _confirmed(user, email: str):
    from tests.accounts.conftest import email_confirm

    user.email = email
    user.save(update_fields=["email"])
    return email_confirm(user)


def _waiting(user, email: str, *, set_at):
    from accounts.models import EmailAddressState
    from accounts.services import user_email_set

    user_email_set(user=user, email=email)
    EmailAddressState.objects.filter(user=user).update(set_at=set_at)
    return user


def _when(moment) -> str:
    """A time as the admin shows it."""
    from django.utils import formats, timezone

    return formats.localize(timezone.template_localtime(moment))


def test_a_users_admin_page_shows_whether_their_address_is_confirmed_and_since_when(
    admin_client, user, other_user, django_user_model
):
    from accounts.models import EmailAddressState
    from django.utils import timezone

    _confirmed(user, "alice@example.com")
    confirmed_at = EmailAddressState.objects.get(user=user).confirmed_at
    set_at = timezone.now() - dt.timedelta(days=3)
    _waiting(other_user, "bob@example.com", set_at=set_at)
    nobody = django_user_model.objects.create_user(username="carol", password="x9!kQ2#vLp")

    confirmed = admin_client.get(f"{USERS}{user.pk}/change/").content.decode()
    assert f"alice@example.com confirmed on {_when(confirmed_at)}" in confirmed
    waiting = admin_client.get(f"{USERS}{other_user.pk}/change/").content.decode()
    assert f"bob@example.com waiting for confirmation since {_when(set_at)}" in waiting
    assert "No email address" in admin_client.get(f"{USERS}{nobody.pk}/change/").content.decode()


def test_a_users_admin_page_says_when_the_mail_server_refused_the_link_as_the_account_page_does(
    admin_client, user, smtp_settings, mail_server
):
    from django.utils import timezone

    from accounts import tasks
    from accounts.models import EmailAddressState

    _waiting(user, "alice@exmaple.com", set_at=timezone.now())  # a typo
    mail_server.no_such_mailbox = {"alice@exmaple.com"}
    assert tasks.email_confirmation_send.apply(kwargs={"email": "alice@exmaple.com"}).get() == 0
    refused_at = EmailAddressState.objects.get(user=user).link_refused_at
    assert refused_at is not None

    page = admin_client.get(f"{USERS}{user.pk}/change/").content.decode()
    assert "alice@exmaple.com waiting for confirmation" in page
    assert f"Its mail server refused the link sent on {_when(refused_at)}: it may have no such mailbox" in page
    # Corrected, the new address says nothing of the old one's refusal.
    _waiting(user, "alice@example.com", set_at=timezone.now())
    assert "refused the link" not in admin_client.get(f"{USERS}{user.pk}/change/").content.decode()


def test_an_address_changed_in_the_admin_waits_for_confirmation_and_the_confirmed_one_replaced_is_owed_a_notice(
    admin_client, user
):
    from accounts.models import EmailAddressState, EmailChangeNotice
    from django.utils import timezone

    _confirmed(user, "alice@example.com")
    EmailAddressState.objects.filter(user=user).update(set_at=timezone.now() - dt.timedelta(days=30))
    form = {"username": "alice", "email": "alice@example.net", "is_active": "on",
            "date_joined_0": "2024-01-01", "date_joined_1": "00:00:00", "initial-date_joined_0": "2024-01-01",
            "initial-date_joined_1": "00:00:00"}
    before = timezone.now()
    saved = admin_client.post(f"{USERS}{user.pk}/change/", form, follow=True)
    assert saved.status_code == 200
    # Owed in the database and swept, each goes whatever became of its task: said so, and no more.
    said = [str(message) for message in saved.context["messages"]]
    assert "A link to confirm alice@example.net is on its way to it." in said
    assert "A notice that its address changed is on its way to alice@example.com, the address replaced." in said
    assert not any("Queued" in text or "could not be queued" in text for text in said)
    state = EmailAddressState.objects.get(user=user)
    assert state.set_at >= before and state.confirmed_email == ""
    page = admin_client.get(f"{USERS}{user.pk}/change/").content.decode()
    assert f"alice@example.net waiting for confirmation since {_when(state.set_at)}" in page
    notice = EmailChangeNotice.objects.get(user=user)
    assert (notice.address, notice.kind, notice.by_staff) == ("alice@example.com", EmailChangeNotice.REPLACED, True)


def _listed(page: str) -> list[str]:
    import re

    return re.findall(r'<th class="field-username"><a href="[^"]+">([^<]+)</a>', page)


def _confirmed_column(page: str) -> dict[str, str]:
    import re

    return dict(re.findall(r'<th class="field-username"><a href="[^"]+">([^<]+)</a>.*?'
                           r'<td class="field-email_confirmed"><img [^>]*alt="(\w+)"', page, re.S))


def test_the_user_list_shows_and_filters_by_whether_the_address_is_confirmed(
    admin_client, user, other_user, django_user_model
):
    from django.utils import timezone

    _confirmed(user, "alice@example.com")
    _waiting(other_user, "bob@example.com", set_at=timezone.now())
    # Confirmed once, then changed elsewhere (a shell): no longer confirmed.
    changed = _confirmed(django_user_model.objects.create_user(username="carol"), "carol@example.com")
    changed.email = "carol@example.net"
    changed.save(update_fields=["email"])
    django_user_model.objects.create_user(username="dave")

    assert _confirmed_column(admin_client.get(USERS).content.decode()) == {
        "admin": "False", "alice": "True", "bob": "False", "carol": "False", "dave": "False"}
    assert sorted(_listed(admin_client.get(f"{USERS}?email_confirmed=yes").content.decode())) == ["alice"]
    assert sorted(_listed(admin_client.get(f"{USERS}?email_confirmed=waiting").content.decode())) == ["admin", "bob", "carol"]
    assert "dave" in _listed(admin_client.get(f"{USERS}?email_confirmed=none").content.decode())
    assert "alice" not in _listed(admin_client.get(f"{USERS}?email_confirmed=none").content.decode())


def test_staff_may_mark_an_address_confirmed_which_then_gets_reset_links_and_is_logged(admin_client, user, other_user):
    from django.contrib.admin.models import LogEntry
    from django.utils import timezone

    from accounts.selectors import password_reset_user_list, user_email_confirmed

    _waiting(user, "alice@example.com", set_at=timezone.now())
    response = admin_client.post(USERS, {"action": "email_mark_confirmed",
                                         "_selected_action": [user.pk, other_user.pk]}, follow=True)
    page = response.content.decode()
    assert "Marked 1 email address confirmed" in page and "1 had no address or one confirmed already" in page
    user.refresh_from_db()
    assert user_email_confirmed(user=user)
    assert [found.pk for found in password_reset_user_list(email="alice@example.com")] == [user.pk]
    (entry,) = LogEntry.objects.filter(object_id=str(user.pk))
    assert entry.is_change() and entry.get_change_message() == "Marked the email address confirmed."
    assert not LogEntry.objects.filter(object_id=str(other_user.pk)).exists()


def test_the_admins_history_of_an_account_keeps_no_address_that_would_outlive_it(
    admin_client, user, reset_queue, django_capture_on_commit_callbacks
):
    from django.contrib.admin.models import LogEntry
    from django.utils import timezone

    _waiting(user, "alice.private@example.com", set_at=timezone.now())
    with django_capture_on_commit_callbacks(execute=True):
        admin_client.post(USERS, {"action": "email_confirmation_send_again", "_selected_action": [user.pk]})
        admin_client.post(USERS, {"action": "email_mark_confirmed", "_selected_action": [user.pk]})
    assert LogEntry.objects.filter(object_id=str(user.pk)).count() == 2

    from accounts.services import users_delete

    users_delete(users=[user])

    # Django keeps the history of a deleted object: it must not keep the address with it.
    assert not [entry.change_message for entry in LogEntry.objects.all() if "private" in entry.change_message]


def test_staff_may_send_the_confirmation_link_again_which_works_and_is_logged(
    admin_client, client, user, reset_queue, django_capture_on_commit_callbacks, settings, mailoutbox
):
    from django.contrib.admin.models import LogEntry
    from django.utils import timezone

    from accounts.selectors import user_email_confirmed

    _waiting(user, "alice@example.com", set_at=timezone.now())
    reset_queue.purge()
    with django_capture_on_commit_callbacks(execute=True):
        response = admin_client.post(USERS, {"action": "email_confirmation_send_again",
                                             "_selected_action": [user.pk]}, follow=True)
    assert "1 confirmation link(s) on their way." in response.content.decode()
    run_queued(reset_queue)
    (message,) = mailoutbox
    assert message.to == ["alice@example.com"]
    assert client.post(confirmation_path(message)).status_code == 302
    user.refresh_from_db()
    assert user_email_confirmed(user=user)
    (entry,) = LogEntry.objects.filter(object_id=str(user.pk))
    assert entry.is_change() and "confirmation link" in entry.get_change_message()


def test_a_confirmation_link_sent_again_by_staff_counts_against_the_accounts_limit(
    admin_client, user, reset_queue, django_capture_on_commit_callbacks, settings
):
    from django.contrib.admin.models import LogEntry
    from django.utils import timezone

    settings.EMAIL_CONFIRMATION_THROTTLE_RATE = "1/h"
    _waiting(user, "alice@example.com", set_at=timezone.now())
    reset_queue.purge()
    pages = []
    for _ in range(2):
        with django_capture_on_commit_callbacks(execute=True):
            pages.append(admin_client.post(USERS, {"action": "email_confirmation_send_again",
                                                   "_selected_action": [user.pk]}, follow=True).content.decode())
    assert "1 confirmation link(s) on their way." in pages[0] and "Too many confirmation links" in pages[1]
    assert len(reset_queue.messages()) == 1 and LogEntry.objects.filter(object_id=str(user.pk)).count() == 1


def test_staff_sending_the_link_again_to_a_deactivated_account_are_told_no_link_is_sent(
    admin_client, user, reset_queue, django_capture_on_commit_callbacks
):
    from django.contrib.admin.models import LogEntry
    from django.utils import timezone

    _waiting(user, "alice@example.com", set_at=timezone.now())
    type(user).objects.filter(pk=user.pk).update(is_active=False)
    reset_queue.purge()
    with django_capture_on_commit_callbacks(execute=True):
        page = admin_client.post(USERS, {"action": "email_confirmation_send_again",
                                         "_selected_action": [user.pk]}, follow=True).content.decode()
    assert "Account alice is deactivated: no link is sent." in page and "on their way" not in page
    assert reset_queue.messages() == [] and not LogEntry.objects.filter(object_id=str(user.pk)).exists()


def test_staff_who_may_not_change_users_are_offered_neither_email_action(client, user, django_user_model):
    from django.contrib.auth.models import Permission
    from django.utils import timezone

    from accounts.selectors import user_email_confirmed

    viewer = django_user_model.objects.create_user(username="viewer", password="x9!kQ2#vLp", is_staff=True)
    viewer.user_permissions.add(Permission.objects.get(codename="view_user"))
    _waiting(user, "alice@example.com", set_at=timezone.now())
    client.force_login(viewer)
    page = client.get(USERS).content.decode()
    assert "email_mark_confirmed" not in page and "email_confirmation_send_again" not in page
    client.post(USERS, {"action": "email_mark_confirmed", "_selected_action": [user.pk]})
    user.refresh_from_db()
    assert not user_email_confirmed(user=user)


TOKENS = "/admin/accounts/apitoken/"


@pytest.mark.parametrize(
    "query",
    [
        f"{USERS}?username=%00",
        f"{USERS}?email__exact=al%00ice@example.com",
        f"{USERS}?first_name=a%00",
        f"{USERS}?email_confirmed=%00",
        f"{USERS}?q=%00",
        f"{TOKENS}?name=%00",
        f"{TOKENS}?prefix__startswith=%00",
        f"{TOKENS}?q=%00",
    ],
)
def test_a_nul_character_in_a_user_or_token_lists_address_gets_the_admins_error_page_not_a_500(
    admin_client, user, query
):
    # PostgreSQL refuses a NUL in any text it is sent; SQLite took it, and found nothing. (The admin takes any of
    # the model's own fields as a filter, listed or not.)
    from accounts.services import api_token_create

    api_token_create(user=user, name="laptop")

    response = admin_client.get(query)

    assert response.status_code == 302 and response["Location"].endswith("?e=1")


@pytest.mark.parametrize(
    ("path", "action"),
    [
        (USERS, "email_mark_confirmed"),
        (USERS, "email_confirmation_send_again"),
        (USERS, "delete_selected"),
        (TOKENS, "delete_selected"),
    ],
)
def test_an_action_on_users_or_tokens_selected_by_something_other_than_a_number_is_a_bad_request_not_a_500(
    admin_client, user, path, action
):
    from accounts.models import ApiToken
    from accounts.services import api_token_create

    token, _ = api_token_create(user=user, name="laptop")
    user.email = "alice@example.com"
    user.save()
    selected = [str(token.pk if path == TOKENS else user.pk), "abc"]

    response = admin_client.post(path, {"action": action, "index": "0", "_selected_action": selected, "post": "yes"})

    assert response.status_code == 400
    assert type(user).objects.filter(pk=user.pk).exists() and ApiToken.objects.filter(pk=token.pk).exists()
    assert not _confirmed_or_asked(user)


def _confirmed_or_asked(user) -> bool:
    from accounts.models import EmailAddressState

    return EmailAddressState.objects.filter(user=user).exclude(confirmed_email="", link_requested_at=None).exists()


def _change_form_data(admin_client, user) -> dict:
    # What the admin's change page would send unchanged, as a browser sends it.
    form = admin_client.get(f"{USERS}{user.pk}/change/").context["adminform"].form
    data = {}
    for name, field in form.fields.items():
        value = form[name].value()
        if value is None or field.disabled:
            continue
        if isinstance(field.widget, MultiWidget):
            data.update({f"{name}_{index}": str(part) for index, part in enumerate(field.widget.decompress(value))})
        elif isinstance(value, (list, tuple)):
            data[name] = [str(item) for item in value]
        elif isinstance(value, bool):
            if value:
                data[name] = "on"
        else:
            data[name] = str(value)
    return data


def test_renaming_a_user_in_the_admin_to_anothers_name_in_another_case_is_refused_on_the_form(
    admin_client, user, other_user
):
    data = {**_change_form_data(admin_client, user), "username": other_user.username.upper()}

    response = admin_client.post(f"{USERS}{user.pk}/change/", data)

    assert response.status_code == 200
    assert "A user with that username already exists." in response.context["adminform"].form.errors["username"]
    user.refresh_from_db()
    assert user.username == "alice"


def test_renaming_a_user_in_the_admin_to_their_own_name_in_another_case_is_saved(admin_client, user):
    data = {**_change_form_data(admin_client, user), "username": "Alice"}

    response = admin_client.post(f"{USERS}{user.pk}/change/", data)

    assert response.status_code == 302
    user.refresh_from_db()
    assert user.username == "Alice"


@pytest.mark.parametrize("button", ["set-password", "unset-password"])
def test_a_password_set_or_disabled_in_the_admin_revokes_the_accounts_api_tokens_says_which_and_logs_them(
    admin_client, user, other_user, button
):
    from django.contrib.admin.models import LogEntry

    from accounts.models import ApiToken
    from accounts.services import api_token_create

    _, laptop = api_token_create(user=user, name="laptop")
    _, scanner = api_token_create(user=user, name="scanner")
    _, theirs = api_token_create(user=other_user, name="laptop")
    page = admin_client.get(f"{USERS}{user.pk}/password/").content.decode()
    assert re.search(r'<input type="checkbox" name="revoke_api_tokens"[^>]*checked', page) and "It has 2 now." in page

    disabled = button == "unset-password"
    answer = admin_client.post(f"{USERS}{user.pk}/password/", {
        "usable_password": "false" if disabled else "true", "password1": "" if disabled else "a-New-pass-482",
        "password2": "" if disabled else "a-New-pass-482", "revoke_api_tokens": "on", button: "x"}, follow=True)

    assert answer.redirect_chain == [(f"{USERS}{user.pk}/change/", 302)]
    assert "2 API tokens of alice were revoked: “scanner”, “laptop”." in answer.content.decode()
    assert api_status(laptop) == api_status(scanner) == 401 and api_status(theirs) == 200
    assert list(ApiToken.objects.values_list("user", flat=True)) == [other_user.pk]
    user.refresh_from_db()
    assert user.has_usable_password() is not disabled and (disabled or user.check_password("a-New-pass-482"))
    logged = LogEntry.objects.get(object_id=str(user.pk)).get_change_message()
    assert "Deleted API token “scanner”." in logged and "Deleted API token “laptop”." in logged


def test_a_password_set_in_the_admin_with_the_box_unticked_leaves_the_api_tokens_working(admin_client, user):
    from accounts.services import api_token_create

    _, key = api_token_create(user=user, name="scanner")

    answer = admin_client.post(f"{USERS}{user.pk}/password/", {
        "usable_password": "true", "password1": "a-New-pass-482", "password2": "a-New-pass-482"}, follow=True)

    page = answer.content.decode()
    assert "Password changed successfully." in page and "revoked" not in page
    assert api_status(key) == 200
    user.refresh_from_db()
    assert user.check_password("a-New-pass-482")


def test_a_password_refused_in_the_admin_revokes_no_token(admin_client, user):
    from accounts.services import api_token_create

    _, key = api_token_create(user=user, name="scanner")

    answer = admin_client.post(f"{USERS}{user.pk}/password/", {
        "usable_password": "true", "password1": "a-New-pass-482", "password2": "another-Pass-593",
        "revoke_api_tokens": "on"})

    assert answer.status_code == 200 and answer.context["form"].errors["password2"]
    assert api_status(key) == 200
    user.refresh_from_db()
    assert user.check_password("correct horse battery")


def test_an_administrator_setting_their_own_password_in_the_admin_stays_signed_in(admin_client, admin_user):
    answer = admin_client.post(f"{USERS}{admin_user.pk}/password/", {
        "usable_password": "true", "password1": "a-New-pass-482", "password2": "a-New-pass-482",
        "revoke_api_tokens": "on"})

    assert answer.status_code == 302
    assert admin_client.get("/admin/").status_code == 200


@pytest.fixture
def helpdesk(client, django_user_model):
    """Staff allowed to view, change and delete users (to set forgotten passwords), and nothing more."""
    from django.contrib.auth.models import Permission

    helper = django_user_model.objects.create_user(username="helpdesk", password="x9!kQ2#vLp", is_staff=True)
    helper.user_permissions.add(*Permission.objects.filter(codename__in=["view_user", "change_user", "delete_user"]))
    client.force_login(helper)
    client.user = helper
    return client


def test_staff_who_are_not_superusers_cannot_give_anyone_staff_or_superuser_status_groups_or_permissions(
    helpdesk, user, admin_client
):
    from django.contrib.auth.models import Group, Permission

    group = Group.objects.create(name="trainers")
    every_permission = [str(pk) for pk in Permission.objects.values_list("pk", flat=True)]
    raised = {"is_staff": "on", "is_superuser": "on", "groups": [str(group.pk)], "user_permissions": every_permission}

    answer = helpdesk.post(f"{USERS}{user.pk}/change/", {**_change_form_data(helpdesk, user), **raised,
                                                        "first_name": "Changed"})

    assert answer.status_code == 302
    user.refresh_from_db()
    assert user.first_name == "Changed" and not user.is_staff and not user.is_superuser
    assert not user.groups.exists() and not user.user_permissions.exists()
    # Nor their own: a staff account, theirs included, is a superuser's to change.
    assert helpdesk.post(f"{USERS}{helpdesk.user.pk}/change/", {"username": "helpdesk", **raised}).status_code == 403
    assert not helpdesk.user.groups.exists() and helpdesk.user.user_permissions.count() == 3
    # A superuser still may.
    answer = admin_client.post(f"{USERS}{user.pk}/change/", {**_change_form_data(admin_client, user), **raised})
    assert answer.status_code == 302
    user.refresh_from_db()
    assert user.is_superuser and list(user.groups.all()) == [group]


# A superuser without staff status cannot open the admin, but signs in with every right once it is given back.
@pytest.mark.parametrize("rank", ["superuser", "staff", "superuser without staff status"])
def test_staff_who_are_not_superusers_can_neither_set_a_staff_accounts_password_nor_change_or_delete_it(
    helpdesk, user, django_user_model, rank
):
    from accounts.services import api_token_create

    higher = django_user_model.objects.create_user(
        username="higher", password="x9!kQ2#vLp", is_staff=rank != "superuser without staff status",
        is_superuser=rank != "staff",
    )
    _, key = api_token_create(user=higher, name="scanner")
    password = {"usable_password": "true", "password1": "a-New-pass-482", "password2": "a-New-pass-482",
                "revoke_api_tokens": "on"}

    assert helpdesk.get(f"{USERS}{higher.pk}/password/").status_code == 403
    assert helpdesk.post(f"{USERS}{higher.pk}/password/", password).status_code == 403
    page = helpdesk.get(f"{USERS}{higher.pk}/change/")
    assert page.status_code == 200 and not page.context["has_change_permission"]
    assert helpdesk.post(f"{USERS}{higher.pk}/change/", {"username": "taken-over"}).status_code == 403
    assert helpdesk.post(f"{USERS}{higher.pk}/delete/", {"post": "yes"}).status_code == 403
    selected = {"action": "delete_selected", "_selected_action": [user.pk, higher.pk]}
    asked = helpdesk.post(USERS, selected).content.decode()
    assert "permission to delete the following types of objects" in asked and "staff accounts" in asked
    assert helpdesk.post(USERS, {**selected, "post": "yes"}).status_code == 403

    higher.refresh_from_db()
    assert higher.username == "higher" and higher.check_password("x9!kQ2#vLp") and api_status(key) == 200
    assert set(django_user_model.objects.values_list("username", flat=True)) == {"alice", "helpdesk", "higher"}
    # Anyone else's password they set, as they are there to.
    assert helpdesk.post(f"{USERS}{user.pk}/password/", password).status_code == 302
    user.refresh_from_db()
    assert user.check_password("a-New-pass-482")


def test_staff_who_are_not_superusers_cannot_give_a_group_permissions(client, django_user_model, admin_client):
    from django.contrib.auth.models import Group, Permission

    group = Group.objects.create(name="helpdesk")
    helper = django_user_model.objects.create_user(username="helpdesk", password="x9!kQ2#vLp", is_staff=True)
    helper.groups.add(group)
    helper.user_permissions.add(*Permission.objects.filter(codename__in=["view_group", "change_group"]))
    client.force_login(helper)
    every_permission = [str(pk) for pk in Permission.objects.values_list("pk", flat=True)]

    page = f"/admin/auth/group/{group.pk}/change/"

    answer = client.post(page, {"name": "help desk", "permissions": every_permission})

    assert answer.status_code == 302
    group.refresh_from_db()
    assert group.name == "help desk" and not group.permissions.exists()
    assert not helper.has_perm("auth.change_permission")
    admin_client.post(page, {"name": "help desk", "permissions": every_permission[:2]})
    assert group.permissions.count() == 2


def test_staff_who_are_not_superusers_cannot_mark_a_staff_accounts_address_confirmed(
    helpdesk, user, django_user_model
):
    from django.utils import timezone

    from accounts.selectors import user_email_confirmed

    higher = django_user_model.objects.create_user(username="higher", password="x9!kQ2#vLp", is_staff=True)
    _waiting(higher, "higher@example.com", set_at=timezone.now())
    _waiting(user, "alice@example.com", set_at=timezone.now())

    page = helpdesk.post(USERS, {"action": "email_mark_confirmed", "_selected_action": [user.pk, higher.pk]},
                         follow=True).content.decode()

    assert "Account higher is a staff account: only a superuser marks its address confirmed." in page
    assert "Marked 1 email address confirmed." in page and "had no address" not in page
    assert user_email_confirmed(user=user) and not user_email_confirmed(user=higher)


def _many_uploaded(owner, digit_png, count: int) -> list:
    from classifier import services

    batch = 32  # the most one upload takes
    return [
        prediction
        for start in range(0, count, batch)
        for prediction in services.predictions_submit(owner=owner, source="api", files=[
            (io.BytesIO(digit_png(index % 10)), None) for index in range(start, min(count, start + batch))
        ])
    ]


def test_deleting_an_account_with_more_uploads_than_the_admin_lists_confirms_their_count_and_deletes_them_all(
    admin_client, user, digit_png, django_capture_on_commit_callbacks, settings
):
    from pathlib import Path

    from django.contrib.auth import get_user_model

    from accounts.services import api_token_create
    from classifier.admin import DELETE_LIST_MAX
    from classifier.models import Upload

    predictions = _many_uploaded(user, digit_png, DELETE_LIST_MAX + 1)
    files = [Path(settings.MEDIA_ROOT) / prediction.upload.image.name for prediction in predictions]
    api_token_create(user=user, name="laptop")

    page = admin_client.get(f"{USERS}{user.pk}/delete/").content.decode()

    # Counted where Django would link every upload and prediction; the account's other rows are listed as before.
    assert f"{DELETE_LIST_MAX + 1} uploads, their stored images and their {DELETE_LIST_MAX + 1} predictions" in page
    assert f"<li>Uploads: {DELETE_LIST_MAX + 1}</li>" in page and f"<li>Predictions: {DELETE_LIST_MAX + 1}</li>" in page
    assert not re.search(r"/admin/classifier/(upload|prediction)/\d", page)
    assert f'<a href="{USERS}{user.pk}/change/">alice</a>' in page and "laptop" in page
    assert "permission" not in page

    with django_capture_on_commit_callbacks(execute=True):
        assert admin_client.post(f"{USERS}{user.pk}/delete/", {"post": "yes"}).status_code == 302

    assert not get_user_model().objects.filter(pk=user.pk).exists() and not Upload.objects.exists()
    assert files[0].parent.exists() and not [file for file in files if file.exists()]


def test_staff_who_may_not_delete_uploads_are_refused_an_account_with_more_than_the_admin_lists(
    helpdesk, user, digit_png
):
    from django.contrib.auth import get_user_model

    from classifier.admin import DELETE_LIST_MAX
    from classifier.models import Upload

    _many_uploaded(user, digit_png, DELETE_LIST_MAX + 1)

    page = helpdesk.get(f"{USERS}{user.pk}/delete/").content.decode()

    assert "doesn't have permission to delete the following types of objects" in page
    assert "<li>upload</li>" in page and "<li>prediction</li>" in page
    assert helpdesk.post(f"{USERS}{user.pk}/delete/", {"post": "yes"}).status_code == 403
    assert get_user_model().objects.filter(pk=user.pk).exists() and Upload.objects.count() == DELETE_LIST_MAX + 1


def test_every_account_confirmed_for_deletion_has_its_own_count_of_uploads_even_when_the_counts_are_equal(
    admin_client, user, other_user
):
    from classifier.admin import DELETE_LIST_MAX
    from tests.classifier.test_classifier_admin import _rows

    each = DELETE_LIST_MAX // 2 + 1
    _rows(user, each)
    _rows(other_user, each)

    page = admin_client.post(USERS, {"action": "delete_selected", "_selected_action": [user.pk, other_user.pk]})

    assert page.content.decode().count(f"{each} uploads, their stored images and their {each} predictions") == 2
