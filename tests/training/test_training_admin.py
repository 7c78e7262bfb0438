"""The training admin: only staff with permissions start, cancel and activate; pages show progress and charts."""

import re
from datetime import timedelta

import pytest
from django.contrib.auth.models import Permission
from django.template.defaultfilters import filesizeformat
from django.urls import reverse
from django.utils import timezone

from mnistsite.database_now import Now
from training import services
from training.models import Checkpoint, TrainingRun

pytestmark = pytest.mark.django_db

START = reverse("admin:training_trainingrun_add")
FORM = {"architecture": "mlp", "epochs": "1", "batch_size": "50", "learning_rate": "0.001", "seed": "0",
        "device": "auto", "train_subset": "300"}


@pytest.fixture
def queued_run(tiny_recipe):
    return services.training_run_create(created_by=None, enqueue=False, **tiny_recipe)


@pytest.fixture
def plain_staff(django_user_model):
    """Staff, but without any training permissions."""
    return django_user_model.objects.create_user(username="intern", password="correct horse battery", is_staff=True)


def _cancel_url(run):
    return reverse("admin:training_trainingrun_cancel", args=[run.pk])


def _activate_url(checkpoint):
    return reverse("admin:training_checkpoint_activate", args=[checkpoint.pk])


def test_anonymous_visitors_are_sent_to_log_in_for_every_training_action(client, queued_run, make_checkpoint):
    checkpoint, _ = make_checkpoint()
    for url, method in ((START, "get"), (START, "post"), (_cancel_url(queued_run), "post"), (_activate_url(checkpoint), "post")):
        response = getattr(client, method)(url, FORM if url == START else {})
        assert response.status_code == 302 and "login" in response["Location"], url
    assert TrainingRun.objects.count() == 1
    queued_run.refresh_from_db()
    checkpoint.refresh_from_db()
    assert queued_run.status == TrainingRun.Status.QUEUED and not checkpoint.is_active


def test_logged_in_users_who_are_not_staff_get_the_admin_login_page(client, user, queued_run, make_checkpoint):
    checkpoint, _ = make_checkpoint()
    client.force_login(user)
    for url in (START, _cancel_url(queued_run), _activate_url(checkpoint)):
        response = client.post(url, FORM if url == START else {})
        assert response.status_code == 302 and response["Location"].startswith(reverse("admin:login")), url
    queued_run.refresh_from_db()
    assert queued_run.status == TrainingRun.Status.QUEUED and TrainingRun.objects.count() == 1


def test_staff_without_training_permissions_are_forbidden(client, plain_staff, queued_run, make_checkpoint):
    checkpoint, _ = make_checkpoint()
    client.force_login(plain_staff)
    for url in (START, _cancel_url(queued_run), _activate_url(checkpoint)):
        assert client.post(url, FORM if url == START else {}).status_code == 403, url
    checkpoint.refresh_from_db()
    assert not checkpoint.is_active and TrainingRun.objects.count() == 1


def test_staff_with_the_add_permission_can_start_a_run(client, plain_staff, training_queue, django_capture_on_commit_callbacks):
    plain_staff.user_permissions.add(Permission.objects.get(codename="add_trainingrun"))
    client.force_login(plain_staff)
    with django_capture_on_commit_callbacks(execute=True):
        response = client.post(START, FORM)
    run = TrainingRun.objects.get()
    assert response.status_code == 302 and response["Location"] == reverse("admin:index")  # it may not view runs
    assert run.created_by == plain_staff and run.architecture == "mlp" and run.train_subset == 300
    assert not run.activate_on_success and not run.augment
    assert [(m["kwargs"], m["id"]) for m in training_queue.messages()] == [({"run_id": run.pk}, run.celery_task_id)]


def test_staff_who_may_start_runs_but_not_change_checkpoints_cannot_have_a_run_activate_its_model(
    client, plain_staff, training_queue, django_capture_on_commit_callbacks
):
    plain_staff.user_permissions.add(Permission.objects.get(codename="add_trainingrun"))
    client.force_login(plain_staff)
    with django_capture_on_commit_callbacks(execute=True):
        refused = client.post(START, {**FORM, "activate_on_success": "on"})
    assert refused.status_code == 200 and b"permission to change checkpoints" in refused.content
    assert not TrainingRun.objects.exists() and training_queue.messages() == []

    plain_staff.user_permissions.add(Permission.objects.get(codename="change_checkpoint"))
    with django_capture_on_commit_callbacks(execute=True):
        allowed = client.post(START, {**FORM, "activate_on_success": "on"})
    assert allowed.status_code == 302 and TrainingRun.objects.get().activate_on_success


def test_the_start_page_shows_the_form_and_fills_blank_fields_from_the_recipe(client, staff_user):
    client.force_login(staff_user)
    page = client.get(START)
    assert page.status_code == 200 and b"Start training run" in page.content
    client.post(START, {"architecture": "mlp", "seed": "3", "device": "cpu", "augment": ""})
    run = TrainingRun.objects.get()
    assert (run.epochs, run.batch_size, run.learning_rate, run.seed, run.augment) == (5, 100, 1e-3, 3, False)
    client.post(START, {"architecture": "cnn", "seed": "0", "device": "cpu", "augment": ""})
    assert TrainingRun.objects.get(architecture="cnn").augment is True
    client.post(START, {"architecture": "cnn", "seed": "0", "device": "cpu", "augment": "false"})
    assert TrainingRun.objects.latest("pk").augment is False


def test_the_start_page_reports_invalid_input(client, staff_user):
    client.force_login(staff_user)
    response = client.post(START, {**FORM, "epochs": "0", "seed": "3000000000"})
    assert response.status_code == 200 and not TrainingRun.objects.exists()
    assert response.context["form"].errors["epochs"] and response.context["form"].errors["seed"]


def test_staff_can_cancel_a_queued_run(client, staff_user, queued_run):
    client.force_login(staff_user)
    response = client.post(_cancel_url(queued_run))
    assert response.status_code == 302
    queued_run.refresh_from_db()
    assert queued_run.status == TrainingRun.Status.CANCELLED


def test_the_cancel_button_asks_for_confirmation_on_a_page_of_its_own_before_cancelling(client, staff_user, queued_run):
    client.force_login(staff_user)
    change = client.get(reverse("admin:training_trainingrun_change", args=[queued_run.pk])).content.decode()
    tools = change.split('class="object-tools"')[1].split("</ul>")[0]
    assert f'href="{_cancel_url(queued_run)}"' in tools and "style=" not in tools
    page = client.get(_cancel_url(queued_run))
    html = page.content.decode()
    assert page.status_code == 200 and "Are you sure?" in html and "csrfmiddlewaretoken" in html
    assert f'<form method="post" action="{_cancel_url(queued_run)}">' in html
    assert reverse("admin:training_trainingrun_change", args=[queued_run.pk]) in html  # the way back
    queued_run.refresh_from_db()
    assert queued_run.status == TrainingRun.Status.QUEUED and not queued_run.cancel_requested

    response = client.post(_cancel_url(queued_run), {"post": "yes"})
    queued_run.refresh_from_db()
    assert response.status_code == 302 and queued_run.status == TrainingRun.Status.CANCELLED


def test_staff_allowed_only_to_view_runs_get_no_cancel_confirmation_page(client, plain_staff, queued_run):
    plain_staff.user_permissions.add(Permission.objects.get(codename="view_trainingrun"))
    client.force_login(plain_staff)
    assert client.get(_cancel_url(queued_run)).status_code == 403
    change = client.get(reverse("admin:training_trainingrun_change", args=[queued_run.pk])).content.decode()
    assert _cancel_url(queued_run) not in change


def test_the_cancel_confirmation_of_a_finished_run_says_it_cannot_be_cancelled(client, staff_user, queued_run):
    TrainingRun.objects.filter(pk=queued_run.pk).update(status=TrainingRun.Status.SUCCEEDED)
    client.force_login(staff_user)
    response = client.get(_cancel_url(queued_run), follow=True)
    assert b"cannot be cancelled" in response.content and b"Are you sure?" not in response.content


def test_the_cancel_confirmation_of_a_running_run_says_which_epoch_and_step_it_has_reached(
    client, staff_user, queued_run
):
    TrainingRun.objects.filter(pk=queued_run.pk).update(
        status=TrainingRun.Status.RUNNING, epochs=3, current_epoch=2, current_step=213, total_steps=469, progress=0.4848
    )
    client.force_login(staff_user)
    html = " ".join(client.get(_cancel_url(queued_run)).content.decode().split())
    assert (
        "It stops at its next step and cannot be resumed: it is at epoch 2 of 3, step 213 of 469 of that epoch "
        "(48% of the run)."
    ) in html
    assert "(213 of 469 done)" not in html


def test_the_cancel_confirmation_of_a_run_that_has_not_trained_a_step_yet_says_so(client, staff_user, queued_run):
    TrainingRun.objects.filter(pk=queued_run.pk).update(status=TrainingRun.Status.RUNNING)
    client.force_login(staff_user)
    html = client.get(_cancel_url(queued_run)).content.decode()
    assert "It stops before its first step and cannot be resumed." in html and "epoch 0" not in html


def test_the_cancel_confirmation_of_a_run_queued_again_after_a_restart_says_it_will_not_resume(
    client, staff_user, queued_run
):
    TrainingRun.objects.filter(pk=queued_run.pk).update(epochs=3, current_epoch=2, attempts=1)
    client.force_login(staff_user)
    html = " ".join(client.get(_cancel_url(queued_run)).content.decode().split())
    assert "A restart stopped it at epoch 2 of 3" in html and "cancelled, it will not resume." in html
    assert "has not started yet" not in html


NO_TRAINER = (
    "no trainer has taken it. Is a trainer worker running (<code>celery -A mnistsite worker -Q training</code>, "
    "or the compose service <code>trainer</code>)?"
)


def _queued_since(run, *, minutes: float) -> None:
    TrainingRun.objects.filter(pk=run.pk).update(created_at=timezone.now() - timedelta(minutes=minutes))


def test_a_run_queued_for_minutes_with_no_trainer_at_work_warns_on_its_list_row_and_its_page(
    client, staff_user, queued_run
):
    _queued_since(queued_run, minutes=12.5)
    client.force_login(staff_user)
    change = client.get(reverse("admin:training_trainingrun_change", args=[queued_run.pk])).content.decode()
    listed = client.get(reverse("admin:training_trainingrun_changelist")).content.decode()
    for html in (change, listed):
        assert f"Queued for 12 minutes: {NO_TRAINER}" in html


def test_a_run_queued_briefly_or_behind_a_run_a_trainer_is_busy_with_shows_no_warning(
    client, staff_user, queued_run, tiny_recipe
):
    client.force_login(staff_user)
    change_url = reverse("admin:training_trainingrun_change", args=[queued_run.pk])
    list_url = reverse("admin:training_trainingrun_changelist")
    _queued_since(queued_run, minutes=1)
    assert "no trainer has taken it" not in client.get(change_url).content.decode()

    _queued_since(queued_run, minutes=30)
    busy = services.training_run_create(created_by=None, enqueue=False, **tiny_recipe)
    TrainingRun.objects.filter(pk=busy.pk).update(
        status=TrainingRun.Status.RUNNING, started_at=timezone.now(), heartbeat_at=timezone.now()
    )
    assert "no trainer has taken it" not in client.get(change_url).content.decode()
    assert "no trainer has taken it" not in client.get(list_url).content.decode()

    # A run whose trainer stopped beating long ago keeps no trainer busy.
    TrainingRun.objects.filter(pk=busy.pk).update(heartbeat_at=timezone.now() - timedelta(hours=1))
    assert "Queued for 30 minutes: no trainer has taken it" in client.get(list_url).content.decode()


def test_a_run_queued_again_after_its_trainer_stopped_counts_its_wait_from_then(client, staff_user, queued_run):
    # Created an hour ago, trained until its trainer stopped half a minute ago: it has waited half a minute.
    TrainingRun.objects.filter(pk=queued_run.pk).update(
        created_at=timezone.now() - timedelta(hours=1), started_at=timezone.now() - timedelta(hours=1),
        heartbeat_at=timezone.now() - timedelta(seconds=30), attempts=1,
    )
    client.force_login(staff_user)
    html = client.get(reverse("admin:training_trainingrun_change", args=[queued_run.pk])).content.decode()
    assert "no trainer has taken it" not in html

    TrainingRun.objects.filter(pk=queued_run.pk).update(heartbeat_at=timezone.now() - timedelta(minutes=5))
    html = client.get(reverse("admin:training_trainingrun_change", args=[queued_run.pk])).content.decode()
    assert f"Queued for 5 minutes: {NO_TRAINER}" in html


def test_a_running_runs_time_is_counted_on_the_databases_clock_not_the_web_hosts(client, staff_user, queued_run,
                                                                                  monkeypatch):
    # Started a minute and a half ago by the database's clock, which the trainer's claim writes.
    TrainingRun.objects.filter(pk=queued_run.pk).update(
        status=TrainingRun.Status.RUNNING, attempts=1, started_at=Now() - timedelta(seconds=90), heartbeat_at=Now()
    )
    right_time = timezone.now
    client.force_login(staff_user)
    for skew in (timedelta(minutes=-10), timedelta(minutes=10)):
        monkeypatch.setattr(timezone, "now", lambda skew=skew: right_time() + skew)
        listed = client.get(reverse("admin:training_trainingrun_changelist")).content.decode()
        assert "% · 1:3" in listed, skew
        progress = client.get(reverse("admin:training_trainingrun_progress", args=[queued_run.pk])).json()
        assert 90 <= progress["duration_seconds"] < 100, skew


def test_the_checkpoint_list_shows_whether_each_is_active_first_and_its_size_readably(client, staff_user, make_checkpoint):
    checkpoint, _ = make_checkpoint(activate=True)
    client.force_login(staff_user)
    page = client.get(reverse("admin:training_checkpoint_changelist"))
    headers = [h.lower() for h in page.context["cl"].list_display]
    assert headers.index("is_active") < headers.index("validation") < headers.index("accuracy")
    assert filesizeformat(checkpoint.size) in page.content.decode()


def test_cancelling_a_finished_run_from_the_admin_shows_an_error(client, staff_user, queued_run):
    TrainingRun.objects.filter(pk=queued_run.pk).update(status=TrainingRun.Status.FAILED)
    client.force_login(staff_user)
    response = client.post(_cancel_url(queued_run), follow=True)
    assert b"cannot be cancelled" in response.content


def test_the_cancel_action_on_the_run_list_requests_cancellation(client, staff_user, queued_run):
    client.force_login(staff_user)
    client.post(
        reverse("admin:training_trainingrun_changelist"),
        {"action": "cancel_runs", "_selected_action": [queued_run.pk]},
    )
    queued_run.refresh_from_db()
    assert queued_run.status == TrainingRun.Status.CANCELLED


def test_staff_can_activate_a_checkpoint_and_roll_back(client, staff_user, make_checkpoint):
    first, _ = make_checkpoint(activate=True)
    second, _ = make_checkpoint()
    client.force_login(staff_user)
    assert client.post(_activate_url(second)).status_code == 302
    assert Checkpoint.objects.get(is_active=True) == second
    asked = client.post(
        reverse("admin:training_checkpoint_changelist"),
        {"action": "activate_checkpoint", "_selected_action": [first.pk]},
    )
    assert asked.status_code == 302 and asked.url == _activate_url(first)
    assert Checkpoint.objects.get(is_active=True) == second
    client.post(asked.url)
    assert Checkpoint.objects.get(is_active=True) == first


def test_activating_a_checkpoint_asks_first_and_warns_when_the_active_one_tests_better(
    client, staff_user, make_checkpoint
):
    active, _ = make_checkpoint(activate=True, accuracy=0.9954)
    worse, _ = make_checkpoint(accuracy=0.2914)
    better, _ = make_checkpoint(accuracy=0.9960)
    client.force_login(staff_user)
    change_page = client.get(reverse("admin:training_checkpoint_change", args=[worse.pk])).content.decode()
    assert f'href="{_activate_url(worse)}"' in change_page
    asked = client.get(_activate_url(worse)).content.decode()
    assert f'It replaces "{active}", the active checkpoint.' in asked
    assert "Its test accuracy, 29.14%, is below the active checkpoint&#x27;s 99.54%." in asked
    assert Checkpoint.objects.get(is_active=True) == active
    assert "is below the active" not in client.get(_activate_url(better)).content.decode()
    client.post(_activate_url(worse))
    assert Checkpoint.objects.get(is_active=True) == worse


def test_the_activation_warning_compares_validation_accuracies_when_both_checkpoints_have_one(
    client, staff_user, make_checkpoint
):
    active, _ = make_checkpoint(activate=True, accuracy=0.10, validation_accuracy=0.9954)
    worse, _ = make_checkpoint(accuracy=0.9960, validation_accuracy=0.2914)
    better, _ = make_checkpoint(accuracy=0.05, validation_accuracy=0.9960)
    client.force_login(staff_user)
    asked = client.get(_activate_url(worse)).content.decode()
    assert "Its validation accuracy, 29.14%, is below the active checkpoint&#x27;s 99.54%." in asked
    assert "is below the active" not in client.get(_activate_url(better)).content.decode()


def _replacing(page: str) -> str:
    """The checkpoint a confirmation page says activating replaces, as its form posts it ("" for none)."""
    import re

    return re.search(r'name="replacing" value="(\d*)"', page).group(1)


def test_a_confirmation_answered_after_another_checkpoint_was_activated_asks_again_naming_that_one(
    client, staff_user, make_checkpoint
):
    from html import unescape

    shown, _ = make_checkpoint(activate=True, accuracy=0.9)
    worse, _ = make_checkpoint(accuracy=0.2914)
    meanwhile, _ = make_checkpoint(accuracy=0.9954)
    client.force_login(staff_user)
    answer = {"post": "yes", "replacing": _replacing(client.get(_activate_url(worse)).content.decode())}
    assert answer["replacing"] == str(shown.pk)
    services.checkpoint_activate(checkpoint=meanwhile)  # a colleague, or a run when done

    again = client.post(_activate_url(worse), answer)

    assert again.status_code == 200 and Checkpoint.objects.get(is_active=True) == meanwhile
    page = unescape(again.content.decode())
    assert "Another checkpoint was activated since that page was shown" in page
    assert f'It replaces "{meanwhile}", the active checkpoint.' in page and "below the active checkpoint's 99.54%" in page
    answer["replacing"] = _replacing(page)
    assert client.post(_activate_url(worse), answer).status_code == 302
    assert Checkpoint.objects.get(is_active=True) == worse


def test_a_confirmation_shown_while_no_checkpoint_was_active_is_asked_again_once_one_is(
    client, staff_user, make_checkpoint
):
    first, _ = make_checkpoint()
    meanwhile, _ = make_checkpoint()
    client.force_login(staff_user)
    assert _replacing(client.get(_activate_url(first)).content.decode()) == ""
    services.checkpoint_activate(checkpoint=meanwhile)

    assert client.post(_activate_url(first), {"post": "yes", "replacing": ""}).status_code == 200
    assert Checkpoint.objects.get(is_active=True) == meanwhile


def test_activating_the_active_checkpoint_says_nothing_changed(client, staff_user, make_checkpoint):
    from django.contrib.admin.models import LogEntry

    active, _ = make_checkpoint(activate=True)
    client.force_login(staff_user)
    page = client.post(_activate_url(active), follow=True).content.decode()
    assert f"{active} is already active; nothing changed." in page
    assert not LogEntry.objects.exists()


def test_who_started_cancelled_and_activated_what_is_in_the_admins_history(client, staff_user, make_checkpoint):
    from django.contrib.admin.models import ADDITION, CHANGE, LogEntry

    replaced, _ = make_checkpoint(activate=True, accuracy=0.99, validation_accuracy=0.97)
    checkpoint, _ = make_checkpoint(accuracy=0.98)
    client.force_login(staff_user)
    client.post(START, FORM)
    run = TrainingRun.objects.get()
    client.post(_cancel_url(run))
    client.post(_activate_url(checkpoint))
    entries = [
        (entry.user, entry.action_flag, entry.object_repr, entry.get_change_message())
        for entry in LogEntry.objects.order_by("pk")
    ]
    run.refresh_from_db()
    checkpoint.refresh_from_db()
    replaced.refresh_from_db()
    assert entries == [
        (staff_user, ADDITION, str(TrainingRun(pk=run.pk, architecture="mlp", status="queued")), "Started."),
        (staff_user, CHANGE, str(run), "Cancelled."),
        (staff_user, CHANGE, str(checkpoint),
         f"Activated, replacing checkpoint {replaced.pk} (mlp, 97.00% validation accuracy)."),
        (staff_user, CHANGE, str(replaced), f"Deactivated: checkpoint {checkpoint.pk} replaced it."),
    ]
    history = client.get(reverse("admin:training_checkpoint_history", args=[checkpoint.pk])).content.decode()
    assert f"Activated, replacing checkpoint {replaced.pk} (mlp, 97.00% validation accuracy)." in history


def test_a_checkpoint_whose_file_no_longer_loads_is_not_activated_and_staff_are_told_why(
    client, staff_user, make_checkpoint, settings
):
    active, _ = make_checkpoint(activate=True)
    broken, _ = make_checkpoint()
    (settings.CHECKPOINT_DIR / broken.path).write_bytes(b"changed on disk")
    client.force_login(staff_user)
    page = client.post(_activate_url(broken), follow=True)
    assert "cannot be loaded" in page.content.decode() and "the active model is unchanged" in page.content.decode()
    assert Checkpoint.objects.get(is_active=True) == active


def test_a_get_request_does_not_activate_a_checkpoint(client, staff_user, make_checkpoint):
    checkpoint, _ = make_checkpoint()
    client.force_login(staff_user)
    client.get(_activate_url(checkpoint))
    checkpoint.refresh_from_db()
    assert not checkpoint.is_active


def test_the_run_list_shows_progress_and_accuracy(client, staff_user, queued_run):
    TrainingRun.objects.filter(pk=queued_run.pk).update(progress=0.42, test_accuracy=0.9876)
    client.force_login(staff_user)
    page = client.get(reverse("admin:training_trainingrun_changelist"))
    assert page.status_code == 200
    assert b"<progress" in page.content and b"42%" in page.content and b"98.76%" in page.content


def test_the_run_list_names_the_device_filter_of_runs_not_started_rather_than_leave_an_empty_link(
    client, staff_user, queued_run
):
    client.force_login(staff_user)
    page = client.get(reverse("admin:training_trainingrun_changelist")).content.decode()
    assert '<a href="?device=">not started</a>' in page and '<a href="?device="></a>' not in page


def test_the_start_forms_fields_are_described_by_their_help_as_they_say(client, staff_user):
    client.force_login(staff_user)
    page = client.get(START).content.decode()
    described = re.findall(r'aria-describedby="([^"]+)"', page)
    assert described and all(f'id="{target}"' in page for ids in described for target in ids.split())


def test_the_run_list_marks_the_accuracy_of_a_run_that_did_not_succeed_as_its_last_epochs_not_a_final_one(
    client, staff_user, tiny_recipe
):
    rows = [{"epoch": 1, "test_accuracy": 0.9123}]
    cancelled = services.training_run_create(created_by=None, enqueue=False, **{**tiny_recipe, "epochs": 3})
    succeeded = services.training_run_create(created_by=None, enqueue=False, **tiny_recipe)
    TrainingRun.objects.filter(pk=cancelled.pk).update(
        status=TrainingRun.Status.CANCELLED, metrics=rows, test_accuracy=0.9123
    )
    TrainingRun.objects.filter(pk=succeeded.pk).update(
        status=TrainingRun.Status.SUCCEEDED, metrics=rows, test_accuracy=0.9456
    )
    client.force_login(staff_user)
    html = client.get(reverse("admin:training_trainingrun_changelist")).content.decode()
    assert "91.23% (epoch 1 of 3, not final)" in html
    assert "94.56%" in html and "94.56% (" not in html


def test_the_run_list_shows_a_training_runs_validation_accuracy_by_epoch_and_its_test_accuracy_only_once_final(
    client, staff_user, tiny_recipe
):
    running = services.training_run_create(created_by=None, enqueue=False, **{**tiny_recipe, "epochs": 3})
    succeeded = services.training_run_create(created_by=None, enqueue=False, **tiny_recipe)
    TrainingRun.objects.filter(pk=running.pk).update(
        status=TrainingRun.Status.RUNNING, metrics=[{"epoch": 1, "validation_accuracy": 0.9123}],
        validation_accuracy=0.9123,
    )
    TrainingRun.objects.filter(pk=succeeded.pk).update(
        status=TrainingRun.Status.SUCCEEDED, metrics=[{"epoch": 1, "validation_accuracy": 0.9345}],
        validation_accuracy=0.9345, test_accuracy=0.9456,
    )
    client.force_login(staff_user)
    page = client.get(reverse("admin:training_trainingrun_changelist"))
    html = page.content.decode()
    assert "91.23% (epoch 1 of 3)" in html and "93.45%" in html and "94.56%" in html
    assert page.context["cl"].list_display.index("validation") < page.context["cl"].list_display.index("accuracy")
    assert "validation accuracy" in html.lower() and "test accuracy" in html.lower()


def test_a_resumed_run_that_is_healthy_shows_its_restart_as_information_not_as_an_error(client, staff_user, queued_run):
    note = "The trainer shut down during this run; it resumes from its last epoch checkpoint."
    TrainingRun.objects.filter(pk=queued_run.pk).update(status=TrainingRun.Status.RUNNING, error=note)
    client.force_login(staff_user)
    url = reverse("admin:training_trainingrun_change", args=[queued_run.pk])
    html = client.get(url).content.decode()
    assert f'<li class="info">{note}</li>' in html and "errornote" not in html

    TrainingRun.objects.filter(pk=queued_run.pk).update(
        status=TrainingRun.Status.FAILED, error="worker stopped responding"
    )
    assert '<p class="errornote">worker stopped responding</p>' in client.get(url).content.decode()


def test_a_finished_run_page_shows_metrics_curves_and_the_confusion_matrix(client, staff_user, queued_run):
    rows = [
        {"epoch": e, "train_loss": 1 / e, "train_accuracy": 0.8 + e / 100, "validation_loss": 1.1 / e,
         "validation_accuracy": 0.85 + e / 100, "images_per_second": 1000, "seconds": 2.0, "lr": 0.01}
        for e in (1, 2, 3)
    ]
    confusion = [[90 if i == j else 1 for j in range(10)] for i in range(10)]
    TrainingRun.objects.filter(pk=queued_run.pk).update(
        status=TrainingRun.Status.SUCCEEDED, metrics=rows, confusion_matrix=confusion, progress=1.0, test_accuracy=0.88
    )
    client.force_login(staff_user)
    page = client.get(reverse("admin:training_trainingrun_change", args=[queued_run.pk]))
    html = page.content.decode()
    assert page.status_code == 200
    assert "Per-epoch metrics" in html and html.count('class="training-chart"') == 3 and "Confusion matrix" in html
    assert "<th>Validation loss</th><th>Validation accuracy</th>" in html and "<td>0.8800</td>" in html
    assert "validation accuracy" in html and "test accuracy</text>" not in html
    # Its counts as a table too, which screen readers read cell by cell.
    assert re.search(r'<tr><th scope="row">3</th>\s*<td>1</td><td>1</td><td>1</td><td>90</td><td>1</td>', html)
    assert "Cancel run" not in html and 'name="_save"' not in html


def test_a_run_page_from_before_the_validation_split_labels_its_per_epoch_columns_as_test(
    client, staff_user, queued_run
):
    rows = [{"epoch": 1, "train_loss": 0.5, "train_accuracy": 0.9, "test_loss": 0.4, "test_accuracy": 0.9123,
             "images_per_second": 1000, "seconds": 2.0, "lr": 0.01}]
    TrainingRun.objects.filter(pk=queued_run.pk).update(status=TrainingRun.Status.SUCCEEDED, metrics=rows)
    client.force_login(staff_user)
    html = client.get(reverse("admin:training_trainingrun_change", args=[queued_run.pk])).content.decode()
    assert "<th>Test loss</th><th>Test accuracy</th>" in html and "<td>0.9123</td>" in html


def test_a_live_run_page_polls_its_progress_endpoint(client, staff_user, queued_run):
    TrainingRun.objects.filter(pk=queued_run.pk).update(status=TrainingRun.Status.RUNNING, progress=0.25, current_epoch=1)
    client.force_login(staff_user)
    page = client.get(reverse("admin:training_trainingrun_change", args=[queued_run.pk])).content.decode()
    progress_url = reverse("admin:training_trainingrun_progress", args=[queued_run.pk])
    assert progress_url in page and "Cancel run" in page
    data = client.get(progress_url).json()
    assert data["status"] == "running" and data["progress"] == 0.25 and data["finished"] is False


def test_the_checkpoint_page_offers_activation(client, staff_user, make_checkpoint):
    checkpoint, _ = make_checkpoint()
    client.force_login(staff_user)
    page = client.get(reverse("admin:training_checkpoint_change", args=[checkpoint.pk]))
    assert page.status_code == 200 and _activate_url(checkpoint).encode() in page.content
    assert client.get(reverse("admin:training_checkpoint_changelist")).status_code == 200


def _delete_url(checkpoint):
    return reverse("admin:training_checkpoint_delete", args=[checkpoint.pk])


def _messages(response) -> list[str]:
    return [str(message) for message in response.context["messages"]]


def test_staff_delete_a_checkpoint_nothing_needs_and_its_file_goes_once_committed(
    client, staff_user, make_checkpoint, settings, django_capture_on_commit_callbacks
):
    checkpoint, _ = make_checkpoint()
    client.force_login(staff_user)
    page = client.get(reverse("admin:training_checkpoint_change", args=[checkpoint.pk]))
    assert _delete_url(checkpoint).encode() in page.content
    assert client.get(_delete_url(checkpoint)).status_code == 200  # the confirmation page
    with django_capture_on_commit_callbacks(execute=True):
        response = client.post(_delete_url(checkpoint), {"post": "yes"})
    assert response.status_code == 302 and not Checkpoint.objects.exists()
    assert not (settings.CHECKPOINT_DIR / checkpoint.path).exists()


def test_deleting_the_active_checkpoint_in_the_admin_is_refused_with_a_message(
    client, staff_user, make_checkpoint, settings, django_capture_on_commit_callbacks
):
    active, _ = make_checkpoint(activate=True)
    client.force_login(staff_user)
    for method in ("get", "post"):
        with django_capture_on_commit_callbacks(execute=True):
            response = getattr(client, method)(_delete_url(active), {"post": "yes"} if method == "post" else {})
        assert response.status_code == 302
        assert response["Location"] == reverse("admin:training_checkpoint_change", args=[active.pk])
        assert _messages(client.get(response["Location"])) == [
            "Nothing was deleted.", f"{active} is the active checkpoint: activate another one before deleting it."
        ]
    assert Checkpoint.objects.get() == active and (settings.CHECKPOINT_DIR / active.path).exists()


def test_deleting_selected_checkpoints_is_refused_whole_when_predictions_were_made_with_one(
    client, staff_user, make_checkpoint, predict_with, settings, django_capture_on_commit_callbacks
):
    used, _ = make_checkpoint()
    predict_with(used)
    unneeded, _ = make_checkpoint()
    client.force_login(staff_user)
    with django_capture_on_commit_callbacks(execute=True):
        response = client.post(
            reverse("admin:training_checkpoint_changelist"),
            {"action": "delete_selected", "_selected_action": [used.pk, unneeded.pk], "post": "yes"},
            follow=True,
        )
    assert _messages(response) == [
        "Nothing was deleted.",
        f"{used} made predictions, which keep naming the model that made them: it cannot be deleted.",
    ]
    assert Checkpoint.objects.count() == 2
    assert all((settings.CHECKPOINT_DIR / c.path).exists() for c in (used, unneeded))


def test_a_bulk_deletion_refused_at_the_last_moment_records_no_deletion_in_the_admin_history(
    client, staff_user, make_checkpoint, monkeypatch
):
    from django.contrib.admin.models import LogEntry

    import training.admin as training_admin

    checkpoint, _ = make_checkpoint()
    djangos_own = training_admin.django_delete_selected

    def another_staff_member_activates_it_first(modeladmin, request, queryset):
        services.checkpoint_activate(checkpoint=checkpoint)
        return djangos_own(modeladmin, request, queryset)

    monkeypatch.setattr(training_admin, "django_delete_selected", another_staff_member_activates_it_first)
    client.force_login(staff_user)
    response = client.post(
        reverse("admin:training_checkpoint_changelist"),
        {"action": "delete_selected", "_selected_action": [checkpoint.pk], "post": "yes"},
        follow=True,
    )
    assert _messages(response)[0] == "Nothing was deleted."
    assert Checkpoint.objects.filter(pk=checkpoint.pk).exists()
    assert not LogEntry.objects.filter(object_id=str(checkpoint.pk)).exists()


def test_deleting_selected_checkpoints_asks_for_confirmation_then_deletes_them_and_their_files(
    client, staff_user, make_checkpoint, settings, django_capture_on_commit_callbacks
):
    first, _ = make_checkpoint()
    second, _ = make_checkpoint()
    client.force_login(staff_user)
    data = {"action": "delete_selected", "_selected_action": [first.pk, second.pk]}
    page = client.post(reverse("admin:training_checkpoint_changelist"), data)
    assert page.status_code == 200 and b"Delete multiple objects" in page.content and Checkpoint.objects.count() == 2
    with django_capture_on_commit_callbacks(execute=True):
        client.post(reverse("admin:training_checkpoint_changelist"), {**data, "post": "yes"})
    assert not Checkpoint.objects.exists()
    assert not any((settings.CHECKPOINT_DIR / c.path).exists() for c in (first, second))


def test_staff_without_the_delete_permission_cannot_delete_a_checkpoint(client, plain_staff, make_checkpoint):
    checkpoint, _ = make_checkpoint()
    plain_staff.user_permissions.add(Permission.objects.get(codename="view_checkpoint"))
    client.force_login(plain_staff)
    assert client.post(_delete_url(checkpoint), {"post": "yes"}).status_code == 403
    client.post(
        reverse("admin:training_checkpoint_changelist"),
        {"action": "delete_selected", "_selected_action": [checkpoint.pk], "post": "yes"},
    )
    assert Checkpoint.objects.get() == checkpoint


def _change_url(run):
    return reverse("admin:training_trainingrun_change", args=[run.pk])


def test_a_failed_runs_error_is_shown_in_full_with_its_line_breaks(client, staff_user, queued_run):
    error = "RuntimeError: CUDA out of memory.\nTraceback (most recent call last):\n  File \"fit.py\", line 3"
    TrainingRun.objects.filter(pk=queued_run.pk).update(status=TrainingRun.Status.FAILED, error=error)
    client.force_login(staff_user)
    html = client.get(_change_url(queued_run)).content.decode()
    assert (
        '<p class="errornote">RuntimeError: CUDA out of memory.<br>Traceback (most recent call last):<br>'
        "  File &quot;fit.py&quot;, line 3</p>"
    ) in html


def test_a_learning_rate_out_of_range_gets_one_message_naming_both_bounds(client, staff_user):
    client.force_login(staff_user)
    for rate in ("-1", "0", "11"):
        response = client.post(START, {**FORM, "learning_rate": rate})
        assert response.context["form"].errors["learning_rate"] == [
            "The learning rate must be greater than 0 and at most 10."
        ], rate
    assert not TrainingRun.objects.exists()


def test_the_start_page_says_what_each_blank_hyper_parameter_defaults_to_for_each_architecture(client, staff_user):
    client.force_login(staff_user)
    form = client.get(START).context["form"]
    assert form.fields["epochs"].help_text == "Blank: the recipe's, 4 for the CNN, 5 for the MLP."
    assert form.fields["batch_size"].help_text == "Blank: the recipe's, 128 for the CNN, 100 for the MLP."
    assert form.fields["learning_rate"].help_text == (
        "Blank: the recipe's, 0.1 for the CNN (its peak rate), 0.001 for the MLP. Greater than 0, at most 10."
    )


def test_a_live_run_page_shows_its_time_so_far_an_eta_in_minutes_and_that_it_updates_itself(
    client, staff_user, queued_run
):
    TrainingRun.objects.filter(pk=queued_run.pk).update(
        status=TrainingRun.Status.RUNNING, attempts=1, started_at=Now() - timedelta(seconds=125), heartbeat_at=Now(),
        progress=0.3, eta_seconds=1234.5,
    )
    client.force_login(staff_user)
    html = " ".join(client.get(_change_url(queued_run)).content.decode().split())
    assert 'ETA <span id="run-eta">20:34</span>' in html and 'running for <span id="run-elapsed">2:0' in html
    assert "This page updates itself every few seconds." in html
    progress = client.get(reverse("admin:training_trainingrun_progress", args=[queued_run.pk])).json()
    assert progress["eta_seconds"] == 1234.5

    TrainingRun.objects.filter(pk=queued_run.pk).update(
        status=TrainingRun.Status.SUCCEEDED, finished_at=Now(), eta_seconds=None, progress=1.0
    )
    html = " ".join(client.get(_change_url(queued_run)).content.decode().split())
    assert "ran for" in html and "updates itself" not in html


def test_a_running_run_already_asked_to_cancel_says_so_and_offers_no_second_cancel(client, staff_user, queued_run):
    TrainingRun.objects.filter(pk=queued_run.pk).update(status=TrainingRun.Status.RUNNING, attempts=1)
    client.force_login(staff_user)
    response = client.post(_cancel_url(queued_run), {"post": "yes"}, follow=True)
    html = response.content.decode()
    assert f"Training run {queued_run.pk} will stop at its next step." in _messages(response)
    assert "Cancel requested: the run stops at its next step." in html and _cancel_url(queued_run) not in html
    again = client.get(_cancel_url(queued_run), follow=True)
    assert _messages(again) == [f"Run {queued_run.pk} is already asked to cancel; it stops at its next step."]
    assert b"Are you sure?" not in again.content


def test_staff_who_may_start_runs_but_not_view_them_are_sent_to_the_admin_index_not_a_forbidden_page(
    client, plain_staff
):
    plain_staff.user_permissions.add(Permission.objects.get(codename="add_trainingrun"))
    client.force_login(plain_staff)
    response = client.post(START, FORM)
    run = TrainingRun.objects.get()
    assert response.status_code == 302 and response["Location"] == reverse("admin:index")
    assert _messages(client.get(response["Location"])) == [f"Training run {run.pk} queued."]


def test_a_runs_page_links_to_all_its_checkpoints_and_the_checkpoint_list_to_each_ones_run(
    client, staff_user, make_run_with_checkpoints
):
    run, checkpoints = make_run_with_checkpoints(status=TrainingRun.Status.FAILED, epochs=2)
    client.force_login(staff_user)
    run_page = client.get(_change_url(run)).content.decode()
    run_checkpoints = reverse("admin:training_checkpoint_changelist") + f"?run__id__exact={run.pk}"
    assert f'<a href="{run_checkpoints}">Checkpoints (2)</a>' in run_page
    listed = client.get(run_checkpoints)
    assert {c.pk for c in listed.context["cl"].result_list} == {c.pk for c in checkpoints.values()}
    assert f'<a href="{_change_url(run)}">run {run.pk}</a>, epoch 2' in listed.content.decode()


@pytest.fixture
def lands_between_read_and_write():
    """``connect(model, change)``: ``change(pk)`` runs once, as a row of ``model`` is about to be saved, or when the
    returned function is called if nothing saved one: a trainer's or an activation's write landing meanwhile."""
    from django.db.models.signals import pre_save

    connected = []

    def connect(model, change):
        landed = []

        def land(pk):
            if not landed:
                landed.append(pk)
                change(pk)

        def receiver(sender, instance, **kwargs):
            land(instance.pk)

        pre_save.connect(receiver, sender=model, weak=False)
        connected.append((model, receiver))
        return land

    yield connect
    for model, receiver in connected:
        pre_save.disconnect(receiver, sender=model)


def test_a_post_to_a_runs_page_never_writes_the_run_back_over_what_its_trainer_wrote_meanwhile(
    client, staff_user, queued_run, lands_between_read_and_write
):
    TrainingRun.objects.filter(pk=queued_run.pk).update(status=TrainingRun.Status.RUNNING, attempts=1, heartbeat_at=Now())
    trainer_finishes = lands_between_read_and_write(
        TrainingRun,
        lambda pk: TrainingRun.objects.filter(pk=pk).update(
            status=TrainingRun.Status.SUCCEEDED, progress=1.0, finished_at=Now()
        ),
    )
    client.force_login(staff_user)
    response = client.post(reverse("admin:training_trainingrun_change", args=[queued_run.pk]), {})
    trainer_finishes(queued_run.pk)
    assert response.status_code == 405
    queued_run.refresh_from_db()
    assert queued_run.status == TrainingRun.Status.SUCCEEDED and queued_run.finished_at is not None


def test_a_post_to_a_checkpoints_page_never_deactivates_it_after_it_was_activated_meanwhile(
    client, staff_user, make_checkpoint, lands_between_read_and_write
):
    first, _ = make_checkpoint(activate=True)
    second, _ = make_checkpoint()
    activated = lands_between_read_and_write(
        Checkpoint, lambda pk: services.checkpoint_activate(checkpoint=Checkpoint.objects.get(pk=pk))
    )
    client.force_login(staff_user)
    response = client.post(reverse("admin:training_checkpoint_change", args=[second.pk]), {})
    activated(second.pk)
    assert response.status_code == 405
    assert Checkpoint.objects.get(is_active=True) == second


@pytest.mark.parametrize(
    "query",
    [
        "/admin/training/trainingrun/?status__exact=%00",
        "/admin/training/trainingrun/?q=%00",
        "/admin/training/checkpoint/?architecture__exact=%00",
        "/admin/training/checkpoint/?q=%00",
    ],
)
def test_a_nul_character_in_a_training_lists_address_gets_the_admins_error_page_not_a_500(
    client, staff_user, queued_run, make_checkpoint, query
):
    # PostgreSQL refuses a NUL in any text it is sent; SQLite took it, and found nothing.
    make_checkpoint()
    client.force_login(staff_user)

    response = client.get(query)

    assert response.status_code == 302 and response["Location"].endswith("?e=1")


def test_a_run_whose_loss_diverged_shows_why_on_its_page_its_list_row_and_its_progress_endpoint(
    client, staff_user, diverged_run
):
    client.force_login(staff_user)
    page = client.get(reverse("admin:training_trainingrun_change", args=[diverged_run.pk]))
    assert page.status_code == 200
    assert f'<p class="errornote">{diverged_run.error}</p>' in page.content.decode()
    assert diverged_run.error.startswith("Training diverged: ")
    listing = client.get(reverse("admin:training_trainingrun_changelist"))
    change_url = reverse("admin:training_trainingrun_change", args=[diverged_run.pk])
    assert listing.status_code == 200 and change_url in listing.content.decode()
    progress = client.get(reverse("admin:training_trainingrun_progress", args=[diverged_run.pk]))
    assert progress.status_code == 200
    assert progress.json()["status"] == "failed" and "lower the learning rate" in progress.json()["error"]


def test_the_page_of_a_run_that_does_not_exist_goes_to_the_admins_index_saying_so(client, staff_user):
    client.force_login(staff_user)
    page = client.get(reverse("admin:training_trainingrun_change", args=[99999]), follow=True)
    assert page.redirect_chain[-1][0] == "/admin/"
    assert "Training run with ID “99999” doesn’t exist. Perhaps it was deleted?" in page.content.decode()
