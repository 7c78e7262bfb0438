"""The account commands: the demo administrator."""
import pytest
from django.core.management import CommandError, call_command

pytestmark = pytest.mark.django_db


def test_the_demo_account_with_the_published_password_is_made_only_with_debug_on(settings, django_user_model, capsys):
    settings.DEBUG = False
    with pytest.raises(CommandError, match="password of your own"):
        call_command("ensure_demo_user")
    assert not django_user_model.objects.exists()

    call_command("ensure_demo_user", "--password", "a-Long-own-pass-1")
    demo = django_user_model.objects.get(username="demo")
    assert demo.is_staff and demo.is_superuser and demo.check_password("a-Long-own-pass-1")

    settings.DEBUG = True
    call_command("ensure_demo_user")  # a second run resets the password, to the printed one
    demo.refresh_from_db()
    assert demo.check_password("mnist-demo-2026") and "mnist-demo-2026" in capsys.readouterr().out


def test_the_demo_command_does_not_take_over_someone_elses_account(settings, django_user_model):
    settings.DEBUG = True
    someone = django_user_model.objects.create_user(username="demo", password="their-own-pass-9")
    with pytest.raises(CommandError, match="someone's account"):
        call_command("ensure_demo_user")
    someone.refresh_from_db()
    assert not someone.is_staff and not someone.is_superuser and someone.check_password("their-own-pass-9")


def test_ensuring_the_demo_account_again_with_its_password_keeps_its_sessions_signed_in(settings, client):
    # `make run` ensures the account at every start: a developer's admin tab must stay signed in across restarts.
    settings.DEBUG = True
    call_command("ensure_demo_user")
    assert client.login(username="demo", password="mnist-demo-2026")
    assert client.get("/admin/").status_code == 200

    call_command("ensure_demo_user")

    assert client.get("/admin/").status_code == 200
