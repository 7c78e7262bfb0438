"""Staff endpoints: start, watch and cancel training runs; list and activate checkpoints."""
from __future__ import annotations

from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, OpenApiResponse, extend_schema
from rest_framework import exceptions, status
from rest_framework.generics import GenericAPIView
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from api import responses, selectors
from api.errors import Conflict, WriteStageMixin
from api.pagination import PAGE_QUERY_PARAMETERS
from api.permissions import STAFF_ONLY, StaffWithModelPermissions, TokenScopeAllows
from api.query import QueryParametersCheckedMixin
from api.serializers import CheckpointSerializer, TrainingRunCreateSerializer, TrainingRunSerializer
from training import services as training_services
from training.models import Checkpoint, TrainingRun

STAFF_ERRORS = {
    401: responses.UNAUTHENTICATED,
    403: responses.error(STAFF_ONLY + " Each action also needs the permission it needs in the admin.",
                         code="permission_denied"),
    503: responses.UNAVAILABLE,
}


def _run_or_404(run_id: int) -> TrainingRun:
    run = selectors.training_run_get_or_none(run_id=run_id)
    if run is None:
        raise exceptions.NotFound("No such training run.")
    return run


def _checkpoint_or_404(checkpoint_id: int) -> Checkpoint:
    checkpoint = selectors.checkpoint_get_or_none(checkpoint_id=checkpoint_id)
    if checkpoint is None:
        raise exceptions.NotFound("No such checkpoint.")
    return checkpoint


def _run_data(request: Request, run: TrainingRun) -> dict:
    return TrainingRunSerializer(run, context={"request": request}).data


@extend_schema(tags=["training runs"])
class TrainingRunListCreateApi(QueryParametersCheckedMixin, WriteStageMixin, GenericAPIView):
    permission_classes = [TokenScopeAllows, StaffWithModelPermissions]
    # Sent again after it was applied, it would start a second run.
    resend_safe = False
    required_permissions = {"GET": ["training.view_trainingrun"], "POST": ["training.add_trainingrun"]}
    # Only OPTIONS and the browsable API's form use it, to describe the body of POST.
    serializer_class = TrainingRunCreateSerializer
    query_parameters = {"GET": PAGE_QUERY_PARAMETERS}

    def get_queryset(self):
        # The browsable API asks a list view for its queryset, to offer filters.
        return selectors.training_run_list_with_checkpoints()

    @extend_schema(
        operation_id="training_runs_list",
        summary="List training runs",
        description="Every training run, newest first, paginated, with its progress and the checkpoints it saved.",
        responses={200: TrainingRunSerializer(many=True), 400: responses.INVALID_PAGING,
                   404: responses.error("No such page.", code="not_found"), **STAFF_ERRORS},
    )
    def get(self, request: Request) -> Response:
        newest_id = self.paginator.newest_id_get(request, newest_now=selectors.training_run_newest_id)
        page = self.paginate_queryset(selectors.training_run_list_with_checkpoints(newest_id=newest_id))
        return self.get_paginated_response(TrainingRunSerializer(page, many=True, context={"request": request}).data)

    @extend_schema(
        operation_id="training_runs_create",
        summary="Start a training run",
        description="Queues a run for the training worker. Omitted hyper-parameters come from the architecture's "
        "tuned recipe (training.ml.config.TrainConfig.default_for).",
        request=TrainingRunCreateSerializer,
        parameters=[
            OpenApiParameter("Location", OpenApiTypes.URI, OpenApiParameter.HEADER, response=[202],
                             description="The new run in the API (its `url`), to follow its progress."),
        ],
        responses={
            202: TrainingRunSerializer,
            400: responses.INVALID,
            **STAFF_ERRORS,
            503: responses.error(
                "The database is out of reach: before the run was stored (`service_unavailable`, nothing was stored: "
                "retry after the Retry-After header's seconds), or while it was (`outcome_unknown`, no Retry-After: "
                "list the training runs before sending it again, which would start a second run).",
                code="service_unavailable"),
        },
    )
    def post(self, request: Request) -> Response:
        body = TrainingRunCreateSerializer(data=request.data)
        body.is_valid(raise_exception=True)
        self.write_begins()
        run = training_services.training_run_create(created_by=request.user, **body.validated_data)
        data = _run_data(request, _run_or_404(run.pk))
        return Response(data, status=status.HTTP_202_ACCEPTED, headers={"Location": data["url"]})


@extend_schema(tags=["training runs"])
class TrainingRunDetailApi(QueryParametersCheckedMixin, APIView):
    permission_classes = [TokenScopeAllows, StaffWithModelPermissions]
    required_permissions = {"GET": ["training.view_trainingrun"]}

    @extend_schema(
        operation_id="training_runs_retrieve",
        summary="One training run with its progress and metrics",
        responses={200: TrainingRunSerializer, 404: responses.NOT_FOUND, **STAFF_ERRORS},
    )
    def get(self, request: Request, run_id: int) -> Response:
        return Response(_run_data(request, _run_or_404(run_id)))


@extend_schema(tags=["training runs"])
class TrainingRunCancelApi(QueryParametersCheckedMixin, WriteStageMixin, APIView):
    permission_classes = [TokenScopeAllows, StaffWithModelPermissions]
    required_permissions = {"POST": ["training.change_trainingrun"]}

    @extend_schema(
        operation_id="training_runs_cancel",
        summary="Cancel a training run",
        description="A queued run is cancelled at once (200); a running one is asked to stop at its next step (202). A "
        "run cancelled already is answered 200 with the run, so the request may be sent again.",
        request=None,
        responses={
            200: OpenApiResponse(TrainingRunSerializer, description="Cancelled."),
            202: OpenApiResponse(TrainingRunSerializer, description="Cancellation requested; the run stops soon."),
            404: responses.NOT_FOUND,
            409: responses.error("The run has already succeeded or failed.", code="conflict"),
            **STAFF_ERRORS,
        },
    )
    def post(self, request: Request, run_id: int) -> Response:
        run = _run_or_404(run_id)
        self.write_begins()
        try:
            training_services.training_run_cancel(run=run, by=request.user)
        except training_services.TrainingRunStateError as exc:
            # Cancelled already (by this request sent before, its answer lost): the same answer again, so a
            # client may retry safely. A run that succeeded or failed cannot be cancelled.
            run = _run_or_404(run_id)
            if run.status != TrainingRun.Status.CANCELLED:
                raise Conflict(str(exc)) from exc
        run = _run_or_404(run_id)
        return Response(_run_data(request, run), status=status.HTTP_200_OK if run.is_finished else status.HTTP_202_ACCEPTED)


@extend_schema(tags=["checkpoints"])
class CheckpointListApi(QueryParametersCheckedMixin, GenericAPIView):
    permission_classes = [TokenScopeAllows, StaffWithModelPermissions]
    required_permissions = {"GET": ["training.view_checkpoint"]}
    serializer_class = CheckpointSerializer
    query_parameters = {"GET": PAGE_QUERY_PARAMETERS}

    def get_queryset(self):
        # The browsable API asks a list view for its queryset, to offer filters.
        return selectors.checkpoint_list()

    @extend_schema(
        operation_id="checkpoints_list",
        summary="List checkpoints",
        responses={200: CheckpointSerializer(many=True), 400: responses.INVALID_PAGING,
                   404: responses.error("No such page.", code="not_found"), **STAFF_ERRORS},
    )
    def get(self, request: Request) -> Response:
        newest_id = self.paginator.newest_id_get(request, newest_now=selectors.checkpoint_newest_id)
        page = self.paginate_queryset(selectors.checkpoint_list(newest_id=newest_id))
        return self.get_paginated_response(CheckpointSerializer(page, many=True).data)


@extend_schema(tags=["checkpoints"])
class CheckpointDetailApi(QueryParametersCheckedMixin, APIView):
    permission_classes = [TokenScopeAllows, StaffWithModelPermissions]
    required_permissions = {"GET": ["training.view_checkpoint"]}

    @extend_schema(
        operation_id="checkpoints_retrieve",
        summary="One checkpoint",
        responses={200: CheckpointSerializer, 404: responses.NOT_FOUND, **STAFF_ERRORS},
    )
    def get(self, request: Request, checkpoint_id: int) -> Response:
        return Response(CheckpointSerializer(_checkpoint_or_404(checkpoint_id)).data)


@extend_schema(tags=["checkpoints"])
class CheckpointActivateApi(QueryParametersCheckedMixin, WriteStageMixin, APIView):
    permission_classes = [TokenScopeAllows, StaffWithModelPermissions]
    required_permissions = {"POST": ["training.change_checkpoint"]}

    @extend_schema(
        operation_id="checkpoints_activate",
        summary="Make a checkpoint the active model",
        description="Inference uses it for every prediction from now on (promotion or roll-back).",
        request=None,
        responses={
            200: CheckpointSerializer,
            404: responses.NOT_FOUND,
            409: responses.error("The checkpoint's file is missing, changed or unreadable; the active model is "
                                 "unchanged.", code="conflict"),
            **STAFF_ERRORS,
        },
    )
    def post(self, request: Request, checkpoint_id: int) -> Response:
        checkpoint = _checkpoint_or_404(checkpoint_id)
        self.write_begins()
        try:
            checkpoint = training_services.checkpoint_activate(checkpoint=checkpoint, by=request.user)
        except training_services.CheckpointNotLoadableError as exc:
            raise Conflict(str(exc)) from exc
        return Response(CheckpointSerializer(checkpoint).data)
