"""The account commands: the demo administrator, createsuperuser and changepassword."""
import re
import sys
from pathlib import Path

import pytest
from django.core.management import CommandError, call_command

pytestmark = pytest.mark.django_db

# The password this command once gave every demo account, published in the README: no account may have it again.
PUBLISHED_PASSWORD = "mnist-demo-2026"


def _shown_password(out: str) -> str:
    return re.search(r"password '([^']+)'", out).group(1)


def test_the_demo_account_gets_a_random_password_that_works_and_is_shown_and_kept(
    settings, django_user_model, capsys, tmp_path
):
    settings.DEBUG = True
    kept = tmp_path / "var" / "demo-password"

    call_command("ensure_demo_user", f"--password-file={kept}")

    demo = django_user_model.objects.get(username="demo")
    shown = _shown_password(capsys.readouterr().out)
    assert demo.is_staff and demo.is_superuser and demo.check_password(shown)
    assert not demo.check_password(PUBLISHED_PASSWORD) and len(shown) >= 16
    assert kept.read_text().strip() == shown and kept.stat().st_mode & 0o777 == 0o600


def test_each_new_demo_account_gets_a_password_of_its_own(settings, django_user_model, capsys):
    settings.DEBUG = True
    call_command("ensure_demo_user")
    call_command("ensure_demo_user", "--username", "demo2")
    first, second = re.findall(r"password '([^']+)'", capsys.readouterr().out)
    assert first != second and PUBLISHED_PASSWORD not in {first, second}


def test_ensuring_the_demo_account_again_leaves_its_password_and_shows_the_kept_one(
    settings, django_user_model, capsys, tmp_path
):
    settings.DEBUG = True
    kept = tmp_path / "demo-password"
    call_command("ensure_demo_user", f"--password-file={kept}")
    shown = _shown_password(capsys.readouterr().out)
    encoded = django_user_model.objects.get(username="demo").password

    call_command("ensure_demo_user", f"--password-file={kept}")

    demo = django_user_model.objects.get(username="demo")
    assert demo.password == encoded and not demo.check_password(PUBLISHED_PASSWORD)
    assert _shown_password(capsys.readouterr().out) == shown


def test_an_existing_demo_accounts_password_is_never_reset_without_a_kept_one_and_the_command_says_how_to_set_one(
    settings, django_user_model, capsys, tmp_path
):
    settings.DEBUG = True
    django_user_model.objects.create_superuser(username="demo", password="the-Operators-own-1")

    call_command("ensure_demo_user")
    assert django_user_model.objects.get(username="demo").check_password("the-Operators-own-1")
    call_command("ensure_demo_user", f"--password-file={tmp_path / 'missing'}")
    (tmp_path / "stale").write_text("an-old-password\n")
    call_command("ensure_demo_user", f"--password-file={tmp_path / 'stale'}")

    assert django_user_model.objects.get(username="demo").check_password("the-Operators-own-1")
    out = capsys.readouterr().out
    assert out.count("manage.py changepassword demo") == 3 and "an-old-password" not in out
    # With this interpreter (.venv/bin/python in a checkout): a bare python may lack the project's packages.
    here = Path(sys.executable)
    python = here.relative_to(Path.cwd()) if here.is_relative_to(Path.cwd()) else here
    assert out.count(f"To set one: {python} manage.py changepassword demo") == 3
    assert not (tmp_path / "missing").exists()


def test_without_debug_the_demo_account_needs_a_password_of_its_own_which_is_set_even_over_its_own(
    settings, django_user_model, tmp_path
):
    settings.DEBUG = False
    with pytest.raises(CommandError, match="password of your own"):
        call_command("ensure_demo_user")
    assert not django_user_model.objects.exists()

    call_command("ensure_demo_user", "--password", "a-Long-own-pass-1")
    demo = django_user_model.objects.get(username="demo")
    assert demo.is_staff and demo.is_superuser and demo.check_password("a-Long-own-pass-1")

    # As benchmarks/stack.py gives one: in a single argument, since a generated one may start with "-".
    call_command("ensure_demo_user", "--password=-another-Own-2", f"--password-file={tmp_path / 'kept'}")
    demo.refresh_from_db()
    assert demo.check_password("-another-Own-2") and (tmp_path / "kept").read_text().strip() == "-another-Own-2"


def test_the_demo_command_does_not_take_over_someone_elses_account(settings, django_user_model, tmp_path):
    settings.DEBUG = True
    someone = django_user_model.objects.create_user(username="demo", password="their-own-pass-9")
    for args in ([], ["--password", "a-Long-own-pass-1"], [f"--password-file={tmp_path / 'kept'}"]):
        with pytest.raises(CommandError, match="someone's account"):
            call_command("ensure_demo_user", *args)
    someone.refresh_from_db()
    assert not someone.is_staff and not someone.is_superuser and someone.check_password("their-own-pass-9")
    assert not (tmp_path / "kept").exists()


def test_ensuring_the_demo_account_again_keeps_its_sessions_signed_in(settings, client, capsys, tmp_path):
    # `make run` ensures the account at every start: a developer's admin tab must stay signed in across restarts.
    settings.DEBUG = True
    kept = tmp_path / "demo-password"
    call_command("ensure_demo_user", f"--password-file={kept}")
    assert client.login(username="demo", password=_shown_password(capsys.readouterr().out))
    assert client.get("/admin/").status_code == 200

    call_command("ensure_demo_user", f"--password-file={kept}")

    assert client.get("/admin/").status_code == 200


def test_a_demo_account_left_with_the_published_password_gets_a_random_one_kept_and_shown(
    settings, django_user_model, capsys, tmp_path
):
    settings.DEBUG = True
    django_user_model.objects.create_superuser("demo", password=PUBLISHED_PASSWORD)
    kept = tmp_path / "demo-password"

    call_command("ensure_demo_user", f"--password-file={kept}")

    demo = django_user_model.objects.get(username="demo")
    shown = _shown_password(capsys.readouterr().out)
    assert not demo.check_password(PUBLISHED_PASSWORD) and demo.check_password(shown)
    assert kept.read_text().strip() == shown


@pytest.mark.parametrize("name", ["ALICE", "ａｌｉｃｅ"])
def test_createsuperuser_refuses_a_name_an_account_has_in_another_case_instead_of_failing_on_the_database(
    user, django_user_model, monkeypatch, name
):
    monkeypatch.setenv("DJANGO_SUPERUSER_PASSWORD", "another correct horse")

    with pytest.raises(CommandError, match="That username is already taken"):
        call_command("createsuperuser", interactive=False, username=name, email="root@example.com")

    assert list(django_user_model.objects.values_list("username", flat=True)) == ["alice"]


def test_createsuperuser_asks_again_for_a_name_an_account_has_in_another_case(
    user, django_user_model, monkeypatch, capsys
):
    import builtins
    import getpass
    import io

    class Terminal(io.StringIO):
        def isatty(self):
            return True

    answers = iter(["Alice", "carol", "carol@example.com"])
    monkeypatch.setattr(builtins, "input", lambda prompt="": next(answers))
    monkeypatch.setattr(getpass, "getpass", lambda prompt="": "another correct horse")

    call_command("createsuperuser", interactive=True, stdin=Terminal())

    assert "Error: That username is already taken." in capsys.readouterr().err
    carol = django_user_model.objects.get(username="carol")
    assert carol.is_superuser and carol.email == "carol@example.com"
    assert django_user_model.objects.count() == 2


def _typed(monkeypatch, *passwords: str, meanwhile=None) -> None:
    """Answer changepassword's prompts with ``passwords``, calling ``meanwhile`` at the first, as if someone else
    changed the account while its new password was typed."""
    import getpass

    answers = iter(passwords)

    def typed(prompt=""):
        nonlocal meanwhile
        if meanwhile is not None:
            meanwhile, then = None, meanwhile
            then()
        return next(answers)

    monkeypatch.setattr(getpass, "getpass", typed)


def test_changepassword_revokes_the_accounts_api_tokens_with_the_old_password_and_says_which(
    user, other_user, monkeypatch, capsys
):
    from accounts.models import ApiToken
    from accounts.services import api_token_create

    api_token_create(user=user, name="scanner")
    api_token_create(user=other_user, name="scanner")
    _typed(monkeypatch, "a-New-pass-482", "a-New-pass-482")

    call_command("changepassword", "Alice")

    out = capsys.readouterr().out
    assert "Revoked its 1 API token(s): scanner" in out and "Password changed successfully for user 'alice'" in out
    assert list(ApiToken.objects.values_list("user", flat=True)) == [other_user.pk]
    user.refresh_from_db()
    assert user.check_password("a-New-pass-482")


def test_changepassword_told_to_keep_the_api_tokens_keeps_them(user, monkeypatch):
    from accounts.models import ApiToken
    from accounts.services import api_token_create

    api_token_create(user=user, name="scanner")
    _typed(monkeypatch, "a-New-pass-482", "a-New-pass-482")

    call_command("changepassword", "alice", "--keep-api-tokens")

    assert ApiToken.objects.filter(user=user).count() == 1
    user.refresh_from_db()
    assert user.check_password("a-New-pass-482")


def test_changepassword_asks_again_for_passwords_that_differ_or_are_refused_and_gives_up_after_three(
    user, monkeypatch, capsys
):
    from accounts.models import ApiToken
    from accounts.services import api_token_create

    api_token_create(user=user, name="scanner")
    _typed(monkeypatch, "a-New-pass-482", "another-Pass-593", "alice", "alice", "123", "123")

    with pytest.raises(CommandError, match="after 3 attempts"):
        call_command("changepassword", "alice")

    captured = capsys.readouterr()
    assert "Passwords do not match." in captured.out and "too similar to the username" in captured.err
    user.refresh_from_db()
    assert user.check_password("correct horse battery") and ApiToken.objects.filter(user=user).exists()


def test_changepassword_keeps_what_was_changed_while_the_password_was_typed(user, django_user_model, monkeypatch):
    def deactivated_with_an_address():
        django_user_model.objects.filter(pk=user.pk).update(is_active=False, email="alice@example.com")

    _typed(monkeypatch, "a-New-pass-482", "a-New-pass-482", meanwhile=deactivated_with_an_address)

    call_command("changepassword", "alice")

    user.refresh_from_db()
    assert user.check_password("a-New-pass-482") and not user.is_active and user.email == "alice@example.com"


def test_changepassword_for_an_account_deleted_while_the_password_was_typed_does_not_bring_it_back(
    user, django_user_model, monkeypatch
):
    _typed(monkeypatch, "a-New-pass-482", "a-New-pass-482",
           meanwhile=lambda: django_user_model.objects.filter(pk=user.pk).delete())

    with pytest.raises(CommandError, match="was deleted meanwhile; nothing was changed"):
        call_command("changepassword", "alice")

    assert not django_user_model.objects.exists()


def test_rename_user_renames_an_account_found_in_any_case_and_it_logs_in_by_the_new_name(user, client, capsys):
    call_command("rename_user", "ALICE", "alice.smith")

    user.refresh_from_db()
    assert user.username == "alice.smith"
    assert "Renamed 'alice' to 'alice.smith'." in capsys.readouterr().out
    assert client.post("/accounts/login/", {"username": "Alice.Smith", "password": "correct horse battery"}).status_code == 302


@pytest.mark.parametrize(("new", "refusal"), [
    ("BOB", "another account is named 'BOB', in this case or another"),
    ("alice smith", "Enter a valid username"),
    ("a" * 151, "Ensure this value has at most 150 characters"),
    ("", "This field cannot be blank."),
])
def test_rename_user_refuses_a_name_taken_in_any_case_or_one_sign_up_refuses_and_changes_nothing(
    user, other_user, new, refusal
):
    with pytest.raises(CommandError, match=re.escape(refusal)):
        call_command("rename_user", "alice", new)

    user.refresh_from_db()
    assert user.username == "alice"


def test_rename_user_names_an_account_that_does_not_exist():
    with pytest.raises(CommandError, match="user 'nobody' does not exist"):
        call_command("rename_user", "nobody", "somebody")
