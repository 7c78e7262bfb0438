"""API routes: version 1 endpoints, the OpenAPI schema and its Swagger UI, all answered by DRF itself."""
from django.contrib.auth.decorators import login_not_required
from django.urls import include, path, re_path
from rest_framework.permissions import AllowAny

from api import predictions, training
from api.errors import NoSuchEndpointApi
from api.schema import SchemaApi, SchemaDocsApi

app_name = "api"


def _api(view_class, **initkwargs):
    # The site-wide LoginRequiredMiddleware would answer anonymous callers with a redirect to the log-in page;
    # DRF must answer instead, with 401 and WWW-Authenticate.
    return login_not_required(view_class.as_view(**initkwargs))


v1 = [
    path("predictions/", _api(predictions.PredictionListCreateApi), name="prediction-list"),
    path("predictions/<int:prediction_id>/", _api(predictions.PredictionDetailApi), name="prediction-detail"),
    path("predictions/<int:prediction_id>/retry/", _api(predictions.PredictionRetryApi), name="prediction-retry"),
    path("predictions/<int:prediction_id>/image/", _api(predictions.PredictionImageApi), name="prediction-image"),
    path(
        "predictions/<int:prediction_id>/input/", _api(predictions.PredictionInputImageApi), name="prediction-input-image"
    ),
    path("training-runs/", _api(training.TrainingRunListCreateApi), name="training-run-list"),
    path("training-runs/<int:run_id>/", _api(training.TrainingRunDetailApi), name="training-run-detail"),
    path("training-runs/<int:run_id>/cancel/", _api(training.TrainingRunCancelApi), name="training-run-cancel"),
    path("checkpoints/", _api(training.CheckpointListApi), name="checkpoint-list"),
    path("checkpoints/<int:checkpoint_id>/", _api(training.CheckpointDetailApi), name="checkpoint-detail"),
    path(
        "checkpoints/<int:checkpoint_id>/activate/", _api(training.CheckpointActivateApi), name="checkpoint-activate"
    ),
]

urlpatterns = [
    path("v1/", include(v1)),
    # The schema and its UI are public: they describe the API, never anyone's data.
    path("schema/", _api(SchemaApi, permission_classes=[AllowAny]), name="schema"),
    path(
        "docs/",
        # A page, not an endpoint: OPTIONS would describe it through its HTML renderer, which has no template for that.
        _api(SchemaDocsApi, url_name="api:schema", permission_classes=[AllowAny],
             http_method_names=["get", "head"]),
        name="docs",
    ),
    # [\s\S] rather than ".": a path with a newline in it must land here too, not on Django's HTML 404.
    re_path(r"^[\s\S]*$", _api(NoSuchEndpointApi), name="no-such-endpoint"),
]
