"""Staff endpoints for training runs and checkpoints: permissions, defaults, bounds, cancel and activate."""
from __future__ import annotations

from urllib.parse import urlencode

import pytest
from django.contrib.admin.models import LogEntry

from tests.api.conftest import client_for
from tests.training.conftest import train_a_diverging_run
from training.models import Checkpoint, TrainingRun

pytestmark = pytest.mark.django_db

RUNS = "/api/v1/training-runs/"
CHECKPOINTS = "/api/v1/checkpoints/"


@pytest.fixture
def queued_run(staff_user) -> TrainingRun:
    from training.services import training_run_create

    return training_run_create(
        created_by=staff_user, architecture="mlp", epochs=1, batch_size=50, learning_rate=1e-3, enqueue=False
    )


def test_staff_start_a_run_with_the_recipe_defaults_and_get_202(staff_client, staff_user):
    from training.ml.config import TrainConfig

    response = staff_client.post(RUNS, {"architecture": "mlp"}, format="json")

    assert response.status_code == 202, response.json()
    body = response.json()
    recipe = TrainConfig.default_for("mlp")
    run = TrainingRun.objects.get(pk=body["id"])
    assert (run.epochs, run.batch_size, run.learning_rate, run.augment) == (
        recipe.epochs, recipe.batch_size, recipe.lr, recipe.augment
    )
    assert run.created_by == staff_user
    assert body["status"] == "queued" and body["url"].endswith(f"/api/v1/training-runs/{run.pk}/")


def test_a_run_takes_every_hyper_parameter_given(staff_client):
    body = {"architecture": "cnn", "epochs": 2, "batch_size": 64, "learning_rate": 0.05, "seed": 7,
            "augment": False, "activate_on_success": True, "train_subset": 500}

    response = staff_client.post(RUNS, body, format="json")

    assert response.status_code == 202
    run = TrainingRun.objects.get(pk=response.json()["id"])
    assert (run.architecture, run.epochs, run.batch_size, run.learning_rate, run.seed, run.augment,
            run.activate_on_success, run.train_subset) == ("cnn", 2, 64, 0.05, 7, False, True, 500)


def _post_as(client, body: dict, content_type: str):
    if content_type == "json":
        return client.post(RUNS, body, format="json")
    if content_type == "multipart":
        return client.post(RUNS, body, format="multipart")
    return client.post(RUNS, urlencode(body), content_type="application/x-www-form-urlencoded")


@pytest.mark.parametrize("content_type", ["json", "form", "multipart"])
def test_a_run_that_does_not_mention_augmentation_gets_the_recipes_in_every_content_type(staff_client, content_type):
    # Form data has no "false" for an unticked box, only silence: that silence must not turn the CNN's off.
    for architecture, augmented in (("cnn", True), ("mlp", False)):
        response = _post_as(staff_client, {"architecture": architecture}, content_type)

        assert response.status_code == 202, response.json()
        assert TrainingRun.objects.get(pk=response.json()["id"]).augment is augmented, architecture


@pytest.mark.parametrize("content_type", ["json", "form", "multipart"])
def test_augmentation_asked_for_explicitly_wins_over_the_recipe_in_every_content_type(staff_client, content_type):
    for architecture, augment in (("cnn", False), ("mlp", True)):
        response = _post_as(staff_client, {"architecture": architecture, "augment": augment}, content_type)

        assert response.status_code == 202, response.json()
        assert TrainingRun.objects.get(pk=response.json()["id"]).augment is augment, architecture


def test_staff_can_open_the_run_and_checkpoint_lists_in_the_browsable_api_with_the_start_form(staff_client, queued_run):
    runs = staff_client.get(RUNS, HTTP_ACCEPT="text/html")
    checkpoints = staff_client.get(CHECKPOINTS, HTTP_ACCEPT="text/html")

    assert (runs.status_code, checkpoints.status_code) == (200, 200)
    assert runs["Content-Type"].startswith("text/html") and 'name="augment"' in runs.content.decode()


def test_a_run_that_does_not_mention_activation_is_not_activated_in_form_data_either(staff_client):
    response = _post_as(staff_client, {"architecture": "mlp"}, "form")

    assert response.status_code == 202
    assert TrainingRun.objects.get(pk=response.json()["id"]).activate_on_success is False


@pytest.mark.parametrize(
    "body",
    [
        {"architecture": "resnet"},
        {"epochs": 0},
        {"epochs": 101},
        {"batch_size": 0},
        {"batch_size": 10**6},
        {"learning_rate": 0},
        {"learning_rate": 11},
        {"learning_rate": "nan"},
        {"seed": -1},
        {"seed": 2**40},
        {"train_subset": 0},
        {"device": "tpu"},
    ],
)
def test_out_of_bounds_hyper_parameters_are_400_naming_the_field(staff_client, body):
    response = staff_client.post(RUNS, body, format="json")

    assert response.status_code == 400, response.json()
    assert response.json()["error"]["field"] == next(iter(body))
    assert not TrainingRun.objects.exists()


@pytest.mark.parametrize(
    "body",
    [
        {"activate_on_success": 0.0},
        {"activate_on_success": 1},
        {"augment": 0.0},
        {"augment": 1.0},
        {"augment": "1"},
        {"activate_on_success": "0"},
        {"epochs": 3.0},
        {"batch_size": "64.0"},
        {"train_subset": 500.0},
        {"learning_rate": True},
        {"epochs": True},
    ],
    ids=str,
)
def test_a_number_where_a_flag_belongs_a_flag_where_a_number_does_or_a_fraction_for_a_whole_number_is_400(
    staff_client, body
):
    response = staff_client.post(RUNS, {"architecture": "mlp", **body}, format="json")

    assert response.status_code == 400, response.json()
    assert response.json()["error"]["field"] == next(iter(body))
    assert not TrainingRun.objects.exists()


@pytest.mark.parametrize(
    "body",
    [
        {"augment": "true"},
        {"augment": "false"},
        {"activate_on_success": "true"},
        {"activate_on_success": "on"},
        {"epochs": "1"},
        {"batch_size": "64"},
        {"seed": "0"},
        {"train_subset": "500"},
        {"learning_rate": "0.1"},
    ],
    ids=str,
)
def test_a_string_where_a_json_body_needs_a_flag_or_a_number_is_400(staff_client, body):
    response = staff_client.post(RUNS, {"architecture": "mlp", **body}, format="json")

    assert response.status_code == 400, response.json()
    error = response.json()["error"]
    assert (error["code"], error["field"]) == ("invalid", next(iter(body)))
    assert "not a string" in error["message"]
    assert not TrainingRun.objects.exists()


@pytest.mark.parametrize("content_type", ["multipart", "form"])
def test_form_data_writes_flags_and_numbers_as_words_and_digits(staff_client, content_type):
    body = {"architecture": "cnn", "epochs": "2", "batch_size": "64", "learning_rate": "0.05", "seed": "7",
            "augment": "false", "activate_on_success": "true", "train_subset": "500"}

    response = _post_as(staff_client, body, content_type)

    assert response.status_code == 202, response.json()
    run = TrainingRun.objects.get(pk=response.json()["id"])
    assert (run.epochs, run.batch_size, run.learning_rate, run.seed, run.augment, run.activate_on_success,
            run.train_subset) == (2, 64, 0.05, 7, False, True, 500)


@pytest.mark.parametrize("learning_rate", ["1_0", " 0.5", "0.5 ", "nan", "inf", "0x1"])
def test_form_data_writes_a_number_as_json_would_or_it_is_400(staff_client, learning_rate):
    response = _post_as(staff_client, {"architecture": "mlp", "learning_rate": learning_rate}, "form")

    assert response.status_code == 400, response.json()
    assert response.json()["error"]["field"] == "learning_rate"
    assert not TrainingRun.objects.exists()


def test_a_form_field_sent_twice_is_400_naming_it_since_which_was_meant_is_not_known(staff_client):
    response = staff_client.post(
        RUNS, "architecture=mlp&epochs=3&epochs=4", content_type="application/x-www-form-urlencoded"
    )

    assert response.status_code == 400
    error = response.json()["error"]
    assert (error["code"], error["field"]) == ("repeated", "epochs")
    assert error["message"] == "`epochs` was sent 2 times; send it once."
    assert not TrainingRun.objects.exists()


def test_non_staff_get_403_on_every_staff_endpoint(user_client, queued_run, make_checkpoint):
    checkpoint, _ = make_checkpoint()
    calls = [
        ("get", RUNS), ("post", RUNS), ("get", f"{RUNS}{queued_run.pk}/"), ("post", f"{RUNS}{queued_run.pk}/cancel/"),
        ("get", CHECKPOINTS), ("get", f"{CHECKPOINTS}{checkpoint.pk}/"),
        ("post", f"{CHECKPOINTS}{checkpoint.pk}/activate/"),
    ]
    for method, url in calls:
        response = getattr(user_client, method)(url, {}, format="json")
        assert response.status_code == 403, (method, url)
        assert response.json()["error"]["code"] == "permission_denied"
    queued_run.refresh_from_db()
    assert queued_run.status == "queued"
    assert not Checkpoint.objects.filter(is_active=True).exists()


def _staff_with(django_user_model, *codenames: str):
    from django.contrib.auth.models import Permission

    member = django_user_model.objects.create_user(username="viewer", password="correct horse battery", is_staff=True)
    member.user_permissions.set(Permission.objects.filter(content_type__app_label="training", codename__in=codenames))
    return member


def test_staff_allowed_only_to_view_may_look_but_not_start_cancel_or_activate(
    django_user_model, queued_run, make_checkpoint
):
    checkpoint, _ = make_checkpoint()
    viewer = client_for(_staff_with(django_user_model, "view_trainingrun", "view_checkpoint"))

    for url in (RUNS, f"{RUNS}{queued_run.pk}/", CHECKPOINTS, f"{CHECKPOINTS}{checkpoint.pk}/"):
        assert viewer.get(url).status_code == 200, url
    for url, permission in (
        (RUNS, "training.add_trainingrun"),
        (f"{RUNS}{queued_run.pk}/cancel/", "training.change_trainingrun"),
        (f"{CHECKPOINTS}{checkpoint.pk}/activate/", "training.change_checkpoint"),
    ):
        response = viewer.post(url, {"architecture": "mlp"}, format="json")
        assert response.status_code == 403, url
        assert permission in response.json()["error"]["message"]
    queued_run.refresh_from_db()
    assert queued_run.status == "queued"
    assert TrainingRun.objects.count() == 1
    assert not Checkpoint.objects.filter(is_active=True).exists()


def test_staff_given_the_admin_permissions_may_start_cancel_and_activate(
    django_user_model, queued_run, make_checkpoint
):
    checkpoint, _ = make_checkpoint()
    operator_user = _staff_with(django_user_model, "add_trainingrun", "change_trainingrun", "change_checkpoint")
    operator = client_for(operator_user)

    started = operator.post(RUNS, {"architecture": "mlp"}, format="json")
    assert started.status_code == 202 and started["Location"] == started.json()["url"]
    run = TrainingRun.objects.get(pk=started.json()["id"])
    assert (run.status, run.architecture, run.created_by) == ("queued", "mlp", operator_user)
    cancelled = operator.post(f"{RUNS}{queued_run.pk}/cancel/")
    assert cancelled.status_code == 200 and cancelled.json()["status"] == "cancelled"
    queued_run.refresh_from_db()
    assert queued_run.status == "cancelled" and queued_run.finished_at is not None
    activated = operator.post(f"{CHECKPOINTS}{checkpoint.pk}/activate/")
    assert activated.status_code == 200 and activated.json()["is_active"] is True
    assert list(Checkpoint.objects.filter(is_active=True)) == [checkpoint]
    # Looking needs its own permission, as in the admin.
    assert operator.get(RUNS).status_code == 403
    # Each is in the admin's history, as the operator's doing.
    operators = LogEntry.objects.filter(user=operator_user).order_by("pk")
    assert [(entry.object_id, entry.get_change_message()) for entry in operators] == [
        (str(run.pk), "Started."),
        (str(queued_run.pk), "Cancelled."),
        (str(checkpoint.pk), "Activated, when none was active."),
    ]


def test_head_and_options_need_the_view_permission_that_get_needs(django_user_model, queued_run):
    from django.contrib.auth.models import Permission

    member = _staff_with(django_user_model, "add_trainingrun")
    client = client_for(member)
    urls = (RUNS, f"{RUNS}{queued_run.pk}/")

    assert [(client.head(url).status_code, client.options(url).status_code) for url in urls] == [(403, 403)] * 2
    member.user_permissions.add(Permission.objects.get(content_type__app_label="training", codename="view_trainingrun"))
    assert [(client.head(url).status_code, client.options(url).status_code) for url in urls] == [(200, 200)] * 2


def test_staff_who_may_start_runs_but_not_change_checkpoints_cannot_ask_for_activation_when_done(django_user_model):
    starter = client_for(_staff_with(django_user_model, "add_trainingrun"))

    refused = starter.post(RUNS, {"architecture": "mlp", "activate_on_success": True}, format="json")
    assert refused.status_code == 400
    assert refused.json()["error"]["field"] == "activate_on_success"
    assert not TrainingRun.objects.exists()
    assert starter.post(RUNS, {"architecture": "mlp"}, format="json").status_code == 202


def test_anonymous_callers_get_401_on_staff_endpoints(api_client):
    for url in (RUNS, CHECKPOINTS):
        response = api_client.get(url)
        assert response.status_code == 401
        assert response["WWW-Authenticate"] == "Token"


def test_staff_list_and_inspect_runs(staff_client, queued_run):
    listing = staff_client.get(RUNS).json()
    detail = staff_client.get(f"{RUNS}{queued_run.pk}/").json()

    assert [item["id"] for item in listing["results"]] == [queued_run.pk]
    for key in ("status", "progress", "current_epoch", "current_step", "eta_seconds", "metrics", "validation_accuracy",
                "test_accuracy", "duration_seconds", "error"):
        assert key in detail
    assert detail["created_by"] == "staff"


def test_staff_choose_how_many_runs_and_checkpoints_a_page_holds(staff_client, staff_user, make_checkpoint):
    from training.services import training_run_create

    for _ in range(3):
        training_run_create(created_by=staff_user, architecture="mlp", epochs=1, batch_size=50, learning_rate=1e-3,
                            enqueue=False)
        make_checkpoint()

    for url in (RUNS, CHECKPOINTS):
        page = staff_client.get(url, {"page_size": 2}).json()
        assert page["count"] == 3 and len(page["results"]) == 2 and "page_size=2" in page["next"], url
        refused = staff_client.get(url, {"page_size": 101})
        assert refused.status_code == 400 and refused.json()["error"]["field"] == "page_size", url


def test_a_missing_run_is_404(staff_client):
    assert staff_client.get(f"{RUNS}999999/").status_code == 404
    assert staff_client.post(f"{RUNS}999999/cancel/").status_code == 404


def test_cancelling_a_queued_run_cancels_it_at_once(staff_client, queued_run):
    response = staff_client.post(f"{RUNS}{queued_run.pk}/cancel/")

    assert response.status_code == 200
    assert response.json()["status"] == "cancelled"


def test_cancelling_a_running_run_asks_it_to_stop(staff_client, queued_run):
    TrainingRun.objects.filter(pk=queued_run.pk).update(status="running")

    response = staff_client.post(f"{RUNS}{queued_run.pk}/cancel/")

    assert response.status_code == 202
    assert response.json()["cancel_requested"] is True


def test_cancelling_a_finished_run_is_409(staff_client, queued_run):
    TrainingRun.objects.filter(pk=queued_run.pk).update(status="succeeded")

    response = staff_client.post(f"{RUNS}{queued_run.pk}/cancel/")

    assert response.status_code == 409
    assert response.json()["error"]["code"] == "conflict"


def test_cancelling_a_run_again_gets_the_same_answer_so_a_lost_answer_can_be_asked_for_again(staff_client, queued_run):
    first = staff_client.post(f"{RUNS}{queued_run.pk}/cancel/")
    again = staff_client.post(f"{RUNS}{queued_run.pk}/cancel/")

    assert (first.status_code, again.status_code) == (200, 200)
    assert again.json() == first.json() and again.json()["status"] == "cancelled"


def test_the_schema_says_a_run_shows_its_epochs_validation_accuracy_and_its_final_models_test_accuracy(api_client):
    schema = api_client.get("/api/schema/", HTTP_ACCEPT="application/vnd.oai.openapi+json").json()["components"]
    run = schema["schemas"]["TrainingRun"]["properties"]
    assert "5,000 validation images" in run["validation_accuracy"]["description"]
    assert "latest finished epoch" in run["validation_accuracy"]["description"]
    assert "of the final model, measured once" in run["test_accuracy"]["description"]
    checkpoint = schema["schemas"]["Checkpoint"]["properties"]
    assert "what checkpoints are compared by" in checkpoint["validation_accuracy"]["description"]
    assert "test_accuracy" in checkpoint


def test_staff_list_checkpoints_and_activate_one(staff_client, make_checkpoint):
    first, _ = make_checkpoint(activate=True)
    second, _ = make_checkpoint()

    listing = staff_client.get(CHECKPOINTS).json()
    response = staff_client.post(f"{CHECKPOINTS}{second.pk}/activate/")

    assert {item["id"] for item in listing["results"]} == {first.pk, second.pk}
    assert all({"validation_accuracy", "test_accuracy"} <= set(item) for item in listing["results"])
    assert response.status_code == 200 and response.json()["is_active"] is True
    assert list(Checkpoint.objects.filter(is_active=True)) == [second]
    assert staff_client.get(f"{CHECKPOINTS}{first.pk}/").json()["is_active"] is False


def test_activating_a_checkpoint_whose_file_is_gone_is_409_and_keeps_the_active_one(
    staff_client, make_checkpoint, settings
):
    active, _ = make_checkpoint(activate=True)
    gone, _ = make_checkpoint()
    (settings.CHECKPOINT_DIR / gone.path).unlink()
    response = staff_client.post(f"{CHECKPOINTS}{gone.pk}/activate/")
    assert response.status_code == 409
    assert response.json()["error"]["code"] == "conflict" and "cannot be loaded" in response.json()["error"]["message"]
    assert list(Checkpoint.objects.filter(is_active=True)) == [active]


def test_the_409_for_a_checkpoint_file_that_is_gone_names_it_relative_to_the_checkpoint_dir(
    staff_client, make_checkpoint, settings
):
    gone, _ = make_checkpoint()
    (settings.CHECKPOINT_DIR / gone.path).unlink()

    message = staff_client.post(f"{CHECKPOINTS}{gone.pk}/activate/").json()["error"]["message"]

    assert f"checkpoint {gone.path} does not exist" in message
    assert str(settings.CHECKPOINT_DIR) not in message and str(settings.CHECKPOINT_DIR.resolve()) not in message
    assert message.endswith("; the active model is unchanged.")


def test_activating_a_missing_checkpoint_is_404(staff_client):
    assert staff_client.post(f"{CHECKPOINTS}999999/activate/").status_code == 404


def test_the_browsable_api_form_can_leave_augmentation_to_the_recipe_or_turn_it_on_or_off(staff_client):
    page = staff_client.get(RUNS, HTTP_ACCEPT="text/html").content.decode()
    select = page[page.index('<select class="form-control" name="augment">'):]
    select = select[: select.index("</select>")]
    assert [line.split('"')[1] for line in select.split("<option value=")[1:]] == ["", "true", "false"]

    for architecture, chosen, augmented in (("cnn", "false", False), ("mlp", "true", True), ("cnn", "", True)):
        response = _post_as(staff_client, {"architecture": architecture, "augment": chosen}, "form")

        assert response.status_code == 202, response.json()
        assert TrainingRun.objects.get(pk=response.json()["id"]).augment is augmented, (architecture, chosen)


def test_a_run_whose_loss_diverged_is_listed_and_shown_as_failed_saying_why(staff_client):
    diverged_run = train_a_diverging_run()
    listing = staff_client.get(RUNS)
    detail = staff_client.get(f"{RUNS}{diverged_run.pk}/")

    assert listing.status_code == 200 and detail.status_code == 200
    assert [item["id"] for item in listing.json()["results"]] == [diverged_run.pk]
    body = detail.json()
    assert body["status"] == "failed" and body["finished"] is True and body["checkpoints"] == []
    assert body["error"].startswith("Training diverged: the training loss became")
    assert body["eta_seconds"] is None and body["test_accuracy"] is None and body["metrics"] == []
