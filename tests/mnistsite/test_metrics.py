"""/metrics: the queue, recent latencies and feedback, training runs, the active model and the mail owed, in
Prometheus's format, for a token."""
import datetime as dt

import pytest
from django.conf import settings
from django.utils import timezone
from prometheus_client.parser import text_string_to_metric_families

from accounts.models import EmailAddressState, EmailChangeNotice
from classifier import services
from classifier.models import Prediction, Upload
from mnistsite.database_now import Now
from mnistsite.metrics import metrics_text
from training.models import Checkpoint, TrainingRun

pytestmark = pytest.mark.django_db

TOKEN = "scrape-8d1c0f2e6b7a49c3a5d4e2f1b0c9d8e7"


@pytest.fixture
def metrics_on(settings):
    settings.METRICS_TOKEN = TOKEN
    settings.METRICS_WINDOW_SECONDS = 300


def _scrape(client, **headers):
    return client.get("/metrics", HTTP_AUTHORIZATION=f"Bearer {TOKEN}", **headers)


def _samples(text: str) -> dict[tuple[str, tuple], float]:
    """Every sample as Prometheus's own parser reads it, keyed by name and sorted labels."""
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def _prediction(upload, *, status, created_at, queue_ms=None, compute_ms=None, digit=None, feedback=None):
    prediction = Prediction.objects.create(upload=upload, status=status, queue_ms=queue_ms, compute_ms=compute_ms,
                                           digit=digit, feedback=feedback)
    Prediction.objects.filter(pk=prediction.pk).update(created_at=created_at)
    return prediction


def _upload(owner):
    return Upload.objects.create(owner=owner, original_name="d.png", format="PNG", size=1, width=28, height=28,
                                 sha256="0" * 64, source=Upload.Source.API, image="uploads/d.png")


@pytest.fixture
def upload(user):
    return _upload(user)


def test_metrics_are_off_until_a_token_is_set(client, settings):
    settings.METRICS_TOKEN = ""
    assert _scrape(client).status_code == 404


@pytest.mark.parametrize("authorization", [None, "Bearer wrong-token", f"Token {TOKEN}", f"Basic {TOKEN}", "Bearer"])
def test_a_scraper_without_the_right_bearer_token_gets_401(client, metrics_on, authorization):
    headers = {"HTTP_AUTHORIZATION": authorization} if authorization is not None else {}
    response = client.get("/metrics", **headers)
    assert response.status_code == 401
    assert response.headers["WWW-Authenticate"].startswith("Bearer")
    assert b"mnistsite_" not in response.content


def test_metrics_report_the_queue_recent_latencies_training_runs_the_active_model_and_free_space(client, metrics_on, upload):
    now = timezone.now()
    _prediction(upload, status="pending", created_at=now - dt.timedelta(seconds=42))
    _prediction(upload, status="pending", created_at=now - dt.timedelta(seconds=3))
    _prediction(upload, status="running", created_at=now - dt.timedelta(seconds=2))
    for queue_ms, compute_ms in [(10, 1), (20, 2), (30, 3), (40, 4)]:
        _prediction(upload, status="done", created_at=now - dt.timedelta(seconds=60), queue_ms=queue_ms,
                    compute_ms=compute_ms)
    _prediction(upload, status="failed", created_at=now - dt.timedelta(seconds=60))
    # Older than the window: left out of the recent figures.
    _prediction(upload, status="done", created_at=now - dt.timedelta(hours=2), queue_ms=9000, compute_ms=900)
    running = TrainingRun.objects.create(status="running", epochs=4, batch_size=128, learning_rate=0.1, progress=0.25)
    TrainingRun.objects.create(status="queued", epochs=4, batch_size=128, learning_rate=0.1)
    Checkpoint.objects.create(run=running, epoch=1, architecture="cnn", path="runs/1/final.pt", sha256="0" * 64,
                              size=1, test_accuracy=0.9954, validation_accuracy=0.9962, is_active=True)

    response = _scrape(client)

    assert response.status_code == 200
    assert response["Content-Type"] == "text/plain; version=0.0.4; charset=utf-8"
    assert "no-store" in response["Cache-Control"]
    samples = _samples(response.content.decode())
    assert samples[("mnistsite_predictions_waiting", (("status", "pending"),))] == 2
    assert samples[("mnistsite_predictions_waiting", (("status", "running"),))] == 1
    assert 42 <= samples[("mnistsite_prediction_oldest_pending_seconds", ())] < 60
    assert samples[("mnistsite_metrics_window_seconds", ())] == 300
    assert samples[("mnistsite_predictions_recent", (("status", "done"),))] == 4
    assert samples[("mnistsite_predictions_recent", (("status", "failed"),))] == 1
    # A backlog shows here too: the window's predictions still waiting.
    assert samples[("mnistsite_predictions_recent", (("status", "pending"),))] == 2
    assert samples[("mnistsite_predictions_recent", (("status", "running"),))] == 1
    # Interpolated between ranks, as PostgreSQL's percentile_cont does: the same figures on every database.
    assert samples[("mnistsite_prediction_queue_seconds", (("quantile", "0.5"),))] == pytest.approx(0.025)
    assert samples[("mnistsite_prediction_queue_seconds", (("quantile", "0.95"),))] == pytest.approx(0.0385)
    assert samples[("mnistsite_prediction_compute_seconds", (("quantile", "0.95"),))] == pytest.approx(0.00385)
    assert samples[("mnistsite_training_runs", (("status", "running"),))] == 1
    assert samples[("mnistsite_training_runs", (("status", "queued"),))] == 1
    assert samples[("mnistsite_training_runs", (("status", "failed"),))] == 0
    assert samples[("mnistsite_training_run_progress", (("run", str(running.pk)),))] == 0.25
    checkpoint = Checkpoint.objects.get()
    assert samples[("mnistsite_active_checkpoint_info",
                    (("architecture", "cnn"), ("checkpoint", str(checkpoint.pk))))] == 1
    assert samples[("mnistsite_active_checkpoint_test_accuracy", ())] == 0.9954
    assert samples[("mnistsite_active_checkpoint_validation_accuracy", ())] == 0.9962
    assert samples[("mnistsite_media_free_bytes", ())] > 0
    assert samples[("mnistsite_media_min_free_bytes", ())] == settings.UPLOAD_MIN_FREE_MB * 2**20
    # This machine's volumes count their files (ext4, overlay on it).
    assert samples[("mnistsite_media_free_files", ())] > 0
    assert samples[("mnistsite_media_min_free_files", ())] == settings.UPLOAD_MIN_FREE_FILES


def test_the_minimum_free_bytes_reported_is_the_threshold_uploads_are_refused_below_in_mebibytes(settings):
    settings.UPLOAD_MIN_FREE_MB = 5

    samples = _samples(metrics_text(now=timezone.now()))

    assert samples[("mnistsite_media_min_free_bytes", ())] == 5 * 1024 * 1024


def test_an_active_checkpoint_that_predates_the_validation_split_reports_no_validation_accuracy():
    run = TrainingRun.objects.create(status="succeeded", epochs=1, batch_size=128, learning_rate=0.1)
    Checkpoint.objects.create(run=run, epoch=1, architecture="cnn", path="runs/1/final.pt", sha256="0" * 64,
                              size=1, test_accuracy=0.99, validation_accuracy=None, is_active=True)

    samples = _samples(metrics_text(now=timezone.now()))

    assert samples[("mnistsite_active_checkpoint_test_accuracy", ())] == 0.99
    assert not any(name == "mnistsite_active_checkpoint_validation_accuracy" for name, _ in samples)


@pytest.mark.parametrize("authorization", [f"bearer {TOKEN}", f"BEARER {TOKEN}", f"Bearer {TOKEN} "])
def test_a_scraper_is_let_in_whatever_the_case_of_the_bearer_scheme_and_spaces_around_its_token(
    client, metrics_on, authorization
):
    assert client.get("/metrics", HTTP_AUTHORIZATION=authorization).status_code == 200


def test_an_idle_service_reports_zeros_and_no_latency_figures_rather_than_failing():
    samples = _samples(metrics_text(now=timezone.now()))
    assert samples[("mnistsite_predictions_waiting", (("status", "pending"),))] == 0
    assert samples[("mnistsite_prediction_oldest_pending_seconds", ())] == 0
    queue_p50 = samples[("mnistsite_prediction_queue_seconds", (("quantile", "0.5"),))]
    assert queue_p50 != queue_p50  # NaN: no observation, as Prometheus's summaries say it
    assert not any(name.startswith("mnistsite_active_checkpoint") for name, _ in samples)


def test_metrics_report_how_long_the_oldest_queued_training_run_has_waited_since_it_was_last_queued():
    now = timezone.now()
    recipe = dict(epochs=4, batch_size=128, learning_rate=0.1)
    assert _samples(metrics_text(now=now))[("mnistsite_training_run_oldest_queued_seconds", ())] == 0
    TrainingRun.objects.create(status="running", created_at=now - dt.timedelta(hours=3), **recipe)
    TrainingRun.objects.create(status="queued", created_at=now - dt.timedelta(seconds=90), **recipe)
    # Queued again a minute after its trainer stopped beating; created long before.
    TrainingRun.objects.create(status="queued", created_at=now - dt.timedelta(hours=2),
                               heartbeat_at=now - dt.timedelta(seconds=240), **recipe)
    assert 240 <= _samples(metrics_text(now=now))[("mnistsite_training_run_oldest_queued_seconds", ())] < 250


def test_the_oldest_queued_training_runs_wait_is_counted_on_the_databases_clock_not_the_web_hosts(monkeypatch):
    TrainingRun.objects.create(status="queued", created_at=Now() - dt.timedelta(seconds=90), epochs=1,
                               batch_size=128, learning_rate=0.1)
    right_time = timezone.now
    for skew in (dt.timedelta(minutes=-10), dt.timedelta(minutes=10)):
        monkeypatch.setattr(timezone, "now", lambda skew=skew: right_time() + skew)
        waited = _samples(metrics_text(now=timezone.now()))[("mnistsite_training_run_oldest_queued_seconds", ())]
        assert 90 <= waited < 100, skew


def test_metrics_are_answered_by_address_and_over_plain_http_in_production_like_the_probes(client, metrics_on,
                                                                                            settings):
    settings.ALLOWED_HOSTS = ["digits.example.com"]
    settings.SECURE_SSL_REDIRECT = True
    assert _scrape(client, HTTP_HOST="10.0.0.7:8000").status_code == 200
    assert client.get("/accounts/login/", HTTP_HOST="10.0.0.7:8000").status_code == 400


def test_refused_scrapes_are_logged_at_most_once_a_minute(client, metrics_on, caplog):
    from mnistsite import metrics

    metrics._last_refusal_logged[0] = float("-inf")
    with caplog.at_level("WARNING", logger="mnistsite.metrics"):
        for _ in range(5):
            assert client.get("/metrics", HTTP_AUTHORIZATION="Bearer wrong").status_code == 401
    assert sum("refused a metrics scrape" in record.getMessage() for record in caplog.records) == 1


@pytest.mark.parametrize(("authorization", "why"), [
    (None, "no Authorization header"),
    (f"Token {TOKEN}", "an Authorization header of another scheme than Bearer"),
    ("Bearer almost-the-token-but-one-character-off-0123", "a wrong bearer token"),
])
def test_a_refused_scrape_is_logged_saying_why_but_never_the_token_sent(client, metrics_on, caplog, authorization,
                                                                        why):
    from mnistsite import metrics

    metrics._last_refusal_logged[0] = float("-inf")
    headers = {"HTTP_AUTHORIZATION": authorization} if authorization is not None else {}
    with caplog.at_level("WARNING", logger="mnistsite.metrics"):
        assert client.get("/metrics", **headers).status_code == 401
    (line,) = [record.getMessage() for record in caplog.records if record.name == "mnistsite.metrics"]
    assert line == f"refused a metrics scrape with {why} (repeats within a minute not logged)"
    assert "almost-the-token" not in caplog.text


def test_latency_quantiles_are_typed_as_summaries_so_prometheus_reads_their_quantile_label():
    types = {family.name: family.type for family in text_string_to_metric_families(metrics_text(now=timezone.now()))}
    assert types["mnistsite_prediction_queue_seconds"] == "summary"
    assert types["mnistsite_prediction_compute_seconds"] == "summary"
    assert types["mnistsite_predictions_waiting"] == "gauge"


def test_every_web_process_reports_the_same_age_of_the_oldest_pending_prediction_whatever_its_hosts_clock(
        client, metrics_on, upload, monkeypatch):
    _prediction(upload, status="pending", created_at=timezone.now() - dt.timedelta(seconds=90))
    right_time = timezone.now
    for skew in (dt.timedelta(minutes=-10), dt.timedelta(minutes=10)):
        monkeypatch.setattr(timezone, "now", lambda skew=skew: right_time() + skew)
        samples = _samples(_scrape(client).content.decode())
        assert 90 <= samples[("mnistsite_prediction_oldest_pending_seconds", ())] < 100, skew
        assert samples[("mnistsite_predictions_recent", (("status", "pending"),))] == 1, skew


def test_a_prediction_created_on_a_web_host_whose_clock_runs_behind_is_not_reported_as_waiting_for_long(
        client, metrics_on, upload, monkeypatch):
    from classifier import services

    right_time = timezone.now
    monkeypatch.setattr(timezone, "now", lambda: right_time() - dt.timedelta(minutes=10))
    services.predictions_create(uploads=[upload], publish=False)
    monkeypatch.setattr(timezone, "now", right_time)
    # Dated by that host's clock it would have waited ten minutes already, and set off an alert on the queue.
    samples = _samples(_scrape(client).content.decode())
    assert 0 <= samples[("mnistsite_prediction_oldest_pending_seconds", ())] < 10
    assert samples[("mnistsite_predictions_recent", (("status", "pending"),))] == 1


def _feedback(samples) -> dict[str, float]:
    return {verdict: samples[("mnistsite_prediction_feedback_recent", (("verdict", verdict),))]
            for verdict in ("confirmed", "corrected")}


def test_feedback_on_the_windows_done_predictions_is_counted_once_an_image_by_whether_the_model_was_right(user):
    now = timezone.now()
    recent, old = now - dt.timedelta(seconds=60), now - dt.timedelta(hours=2)
    # Right, and said so.
    _prediction(_upload(user), status="done", created_at=recent, digit=3, feedback=3)
    # Wrong two hours ago; the re-run in the window carried the feedback forward, and read it right.
    rerun = _upload(user)
    _prediction(rerun, status="done", created_at=old, digit=1, feedback=7)
    (carried,) = services.predictions_rerun(uploads=[rerun], publish=False)
    Prediction.objects.filter(pk=carried.pk).update(status="done", digit=7)
    # Wrong twice within the window: one image, corrected once.
    twice = _upload(user)
    _prediction(twice, status="done", created_at=recent - dt.timedelta(seconds=30), digit=4, feedback=9)
    _prediction(twice, status="done", created_at=recent, digit=4, feedback=9)
    # Wrong, and a re-run carrying the feedback still pending: judged by the answer given.
    waiting = _upload(user)
    _prediction(waiting, status="done", created_at=recent, digit=2, feedback=5)
    _prediction(waiting, status="pending", created_at=now - dt.timedelta(seconds=5), feedback=5)
    # No feedback; feedback only on a prediction older than the window; a failed one.
    _prediction(_upload(user), status="done", created_at=recent, digit=8)
    _prediction(_upload(user), status="done", created_at=old, digit=6, feedback=0)
    _prediction(_upload(user), status="failed", created_at=recent, feedback=1)

    assert _feedback(_samples(metrics_text(now=timezone.now()))) == {"confirmed": 2, "corrected": 2}


def test_feedback_given_on_a_page_a_re_run_replaced_counts_for_the_newest_prediction_alone(user):
    upload = _upload(user)
    first = _prediction(upload, status="done", created_at=timezone.now() - dt.timedelta(seconds=90), digit=1)
    (second,) = services.predictions_rerun(uploads=[upload], publish=False)
    Prediction.objects.filter(pk=second.pk).update(status="done", digit=1)
    # Given from the first prediction's page: it reaches the second too.
    services.prediction_feedback_set(prediction=first, digit=1)
    assert set(Prediction.objects.values_list("feedback", flat=True)) == {1}
    assert _feedback(_samples(metrics_text(now=timezone.now()))) == {"confirmed": 1, "corrected": 0}


def _account(django_user_model, name, *, email, requested=None, claimed=None, confirmed="", active=True):
    account = django_user_model.objects.create_user(username=name, email=email, password="x", is_active=active)
    EmailAddressState.objects.create(user=account, confirmed_email=confirmed, link_requested_at=requested,
                                     link_last_requested_at=requested, link_claimed_at=claimed)
    return account


def _notice(account, *, created_at, **finished):
    return EmailChangeNotice.objects.create(user=account, username=account.username, address="old@example.com",
                                            kind=EmailChangeNotice.REPLACED, created_at=created_at,
                                            queued_at=timezone.now(), **finished)


def _owed(samples) -> dict[str, tuple[float, float]]:
    return {kind: (samples[("mnistsite_email_owed", (("kind", kind),))],
                   samples[("mnistsite_email_oldest_owed_seconds", (("kind", kind),))])
            for kind in ("confirmation_link", "change_notice")}


def test_metrics_report_the_mail_owed_and_how_long_the_oldest_has_been_owed(client, metrics_on, django_user_model):
    now = timezone.now()
    assert _owed(_samples(_scrape(client).content.decode())) == {"confirmation_link": (0, 0), "change_notice": (0, 0)}
    _account(django_user_model, "waiting", email="w@example.com", requested=now - dt.timedelta(hours=2))
    # Being mailed now: owed until the mail server takes it.
    _account(django_user_model, "mailing", email="m@example.com", requested=now - dt.timedelta(seconds=30),
             claimed=now - dt.timedelta(seconds=5))
    # Asked for, but owed nothing: no message goes to these, and no sweep ever clears their request.
    _account(django_user_model, "confirmed", email="c@example.com", requested=now - dt.timedelta(days=3),
             confirmed="c@example.com")
    _account(django_user_model, "deactivated", email="d@example.com", requested=now - dt.timedelta(days=3),
             active=False)
    _account(django_user_model, "removed", email="", requested=now - dt.timedelta(days=3))
    notified = _account(django_user_model, "notified", email="n@example.com", confirmed="n@example.com")
    _notice(notified, created_at=now - dt.timedelta(hours=3))
    _notice(notified, created_at=now - dt.timedelta(hours=5), sent_at=now - dt.timedelta(hours=5))
    _notice(notified, created_at=now - dt.timedelta(days=2), given_up_at=now - dt.timedelta(days=1))

    owed = _owed(_samples(_scrape(client).content.decode()))

    assert owed["confirmation_link"][0] == 2
    assert 7200 <= owed["confirmation_link"][1] < 7260
    assert owed["change_notice"][0] == 1
    assert 10800 <= owed["change_notice"][1] < 10860


def test_the_mail_owed_and_the_feedback_are_read_through_index_ranges_not_a_scan_of_every_account_or_prediction(
        user):
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    from accounts.selectors import email_owed_stats
    from classifier.selectors import prediction_feedback_stats

    if connection.vendor != "postgresql":
        pytest.skip("the plan asked of PostgreSQL")
    now = timezone.now()
    _prediction(_upload(user), status="done", created_at=now - dt.timedelta(seconds=60), digit=3, feedback=3)
    # Many images read twice over a day, with fresh statistics: the planner weighs its indexes as on a real site (on
    # a handful of rows any index costs the same, and it picked the one that walks every done prediction).
    uploads = Upload.objects.bulk_create([
        Upload(owner=user, original_name="d.png", format="PNG", size=1, width=28, height=28, sha256="0" * 64,
               source=Upload.Source.API, image=f"uploads/{index}.png") for index in range(2000)])
    Prediction.objects.bulk_create([
        Prediction(upload=each, status="done", digit=1, created_at=now - dt.timedelta(hours=hours))
        for each in uploads for hours in (2, 20)])
    with connection.cursor() as cursor:
        cursor.execute(f"ANALYZE {Prediction._meta.db_table}")
    with CaptureQueriesContext(connection) as queries:
        email_owed_stats(now=now)
        prediction_feedback_stats(now=now, window=dt.timedelta(seconds=300))
    links, notices, feedback = [query["sql"] for query in queries.captured_queries]
    plans = []
    with connection.cursor() as cursor:
        # As on tables of many rows: a scan of every row costs more than the index.
        cursor.execute("SET LOCAL enable_seqscan = off")
        for sql in (links, notices, feedback):
            cursor.execute(f"EXPLAIN {sql}")
            plans.append("\n".join(row[0] for row in cursor.fetchall()))
    assert "email_address_state_link_owed" in plans[0], plans[0]
    assert "email_change_notice_unsent" in plans[1], plans[1]
    assert "prediction_upload_newest" in plans[2], plans[2]
    assert all("Seq Scan" not in plan for plan in plans), plans
