"""Prediction endpoints: upload images (optionally waiting for the digits), list, inspect, correct and delete them."""
from __future__ import annotations

import logging

from django.core.exceptions import ValidationError as DjangoValidationError
from django.db import DatabaseError
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, OpenApiResponse, extend_schema
from rest_framework import exceptions, status
from rest_framework.generics import GenericAPIView
from rest_framework.metadata import SimpleMetadata
from rest_framework.negotiation import BaseContentNegotiation
from rest_framework.renderers import JSONRenderer
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from api import idempotency, responses, selectors
from api.errors import ServiceUnavailable, WriteStageMixin, validation_error_response
from api.pagination import PAGE_QUERY_PARAMETERS
from api.parsers import MultiPartParser
from api.query import QueryParametersCheckedMixin
from api.serializers import (
    FeedbackSerializer,
    PredictionBatchSerializer,
    PredictionFilterSerializer,
    PredictionSerializer,
    PredictionUploadSerializer,
    WaitQuerySerializer,
    predictions_represent,
)
from api.throttling import (
    RETRY_AFTER,
    UPLOAD_FIELDS,
    AllowanceHeadersMixin,
    UploadRateThrottle,
    allowance_headers,
    uploaded_weight,
)
from classifier import completion
from classifier import selectors as classifier_selectors
from classifier import services as classifier_services
from classifier import views as classifier_views
from classifier.idempotency import IdempotencyKeyInUseError, IdempotentUpload
from classifier.models import Prediction, Upload
from classifier.throttling import UploadRateError, upload_allowance_give_back, upload_allowance_spend

logger = logging.getLogger(__name__)


def _uploaded_files(request: Request) -> tuple[list[tuple], str]:
    """The files of both upload fields, and the field name to blame in errors."""
    files, used = [], []
    for name in UPLOAD_FIELDS:
        found = request.FILES.getlist(name)
        if not found and name in request.data:
            raise exceptions.ValidationError({name: [exceptions.ErrorDetail("Send a file, not text.", code="not_a_file")]})
        files += [(file, file.name) for file in found]
        used += [name] if found else []
    if not files:
        raise exceptions.ValidationError(
            {"images": [exceptions.ErrorDetail("Send at least one file, in `image` or `images`.", code="no_files")]}
        )
    return files, used[0] if len(used) == 1 else "images"


def _one_image_checked(request: Request) -> None:
    """Refuses several files under `image`, which takes one.

    Several there are more likely a mistake (a loop sending each file under it) than a request for all of them.
    """
    count = len(request.FILES.getlist("image"))
    if count > 1:
        raise exceptions.ValidationError({"image": [exceptions.ErrorDetail(
            f"`image` takes one file and {count} were sent: send several as `images`.", code="too_many_files")]})


def _prediction_or_404(request: Request, prediction_id: int) -> Prediction:
    prediction = classifier_selectors.prediction_get_for_user(user=request.user, prediction_id=prediction_id)
    if prediction is None:
        raise exceptions.NotFound("No such prediction.")
    return prediction


def _represent(request: Request, predictions) -> list[dict]:
    return predictions_represent(predictions, request=request)


@extend_schema(tags=["predictions"])
class PredictionListCreateApi(QueryParametersCheckedMixin, WriteStageMixin, AllowanceHeadersMixin, GenericAPIView):
    # An upload never calls write_begins: classifier_services.predictions_submit either stores nothing or raises
    # UploadOutcomeUnknownError (as it does when the rows were stored and could not be read back), so a 503 from any
    # other error may say that nothing was stored.
    parser_classes = [MultiPartParser]
    # Only OPTIONS uses it, to describe the upload body; POST reads the files itself.
    serializer_class = PredictionUploadSerializer
    query_parameters = {
        "GET": (*PredictionFilterSerializer().fields, *PAGE_QUERY_PARAMETERS), "POST": tuple(WaitQuerySerializer().fields)
    }
    idempotent_upload: IdempotentUpload | None = None
    # An upload sent again with its Idempotency-Key: the predictions the first one made, to answer with.
    replayed: list[Prediction] | None = None

    def _upload_allowance_spend(self, request: Request) -> None:
        # Spent in the handler, not among the view's throttles (which every request passes, repeats too): only
        # once the request is known to be a new upload, as a repeat spends nothing.
        throttle = UploadRateThrottle()
        if not throttle.allow_request(request, self):
            self.throttled(request, throttle.wait())

    def _replayed_after_race(self, request: Request) -> list[Prediction]:
        # Another request with the key stored its uploads while this one was under way (the database's unique
        # constraint made this one's insert wait for it, then refused it): answered as a repeat sent just after,
        # and what it spent of the allowance goes back (nothing, when the allowance was not counted).
        if self.upload_allowance is not None:
            upload_allowance_give_back(user_id=request.user.pk, images=uploaded_weight(request))
            self.upload_allowance = None
        self.replayed = idempotency.predictions_replayed(request=request, idempotency=self.idempotent_upload)
        if self.replayed is None:
            raise idempotency.key_in_use()
        return self.replayed

    def get_queryset(self):
        # The browsable API asks a list view for its queryset, to offer filters.
        return selectors.prediction_list_for_user(user=self.request.user)

    @extend_schema(
        operation_id="predictions_list",
        summary="List your predictions",
        description="Your own predictions, newest first, paginated. Dates are inclusive days in the site's time zone. "
        "With `latest=true`, only your uploads' current results: each upload's newest prediction, not those a retry "
        "replaced.",
        parameters=[PredictionFilterSerializer],
        responses={200: PredictionSerializer(many=True), 400: responses.INVALID, **responses.COMMON,
                   404: responses.error("No such page.", code="not_found")},
    )
    def get(self, request: Request) -> Response:
        query = PredictionFilterSerializer(data=request.query_params)
        query.is_valid(raise_exception=True)
        newest_id = self.paginator.newest_id_get(
            request, newest_now=lambda: selectors.prediction_newest_id_for_user(user=request.user)
        )
        queryset = selectors.prediction_list_for_user(
            user=request.user, filters=selectors.PredictionFilters(**query.validated_data), newest_id=newest_id
        )
        page = self.paginate_queryset(queryset)
        return self.get_paginated_response(_represent(request, page))

    @extend_schema(
        operation_id="predictions_create",
        summary="Upload images for prediction",
        description=(
            "Upload one image (`image`) or several (`images`, repeated). Every file is checked first; when one is "
            "rejected nothing is stored. Each image gets a pending prediction that a worker computes.\n\n"
            "Without `wait` the answer comes at once (202). With `wait=SECONDS` the request blocks until every "
            "prediction is done or failed (200) or the time is up (202 with what is known so far). It stops "
            "waiting early (202) when the queue is stalled: some prediction has been pending for "
            "`PREDICTION_WAIT_STALLED_AFTER_SECONDS` (10 by default) and no worker has started one since. Each "
            "waiting request holds one of the server's few threads: while `PREDICTION_WAITS_PER_USER` (4 by "
            "default) of your requests have waited over a second, another stops waiting after its first second (202)."
            "\n\n"
            "Throttled per user by the number of images, a large picture counting one for each million pixels "
            "(`UPLOAD_PIXELS_PER_IMAGE`; scope `uploads`).\n\n"
            "With an `Idempotency-Key` header the upload can be sent again safely (after a timeout, a lost "
            "connection or an `outcome_unknown`): a repeat stores and counts nothing and answers with the first "
            "request's predictions as they are now, with `Idempotent-Replayed: true`, 200 or 202 by the same rule."
        ),
        parameters=[WaitQuerySerializer, idempotency.KEY_PARAMETER, idempotency.REPLAYED_RESPONSE_HEADER,
                    *allowance_headers(statuses=[200, 202, 429]), RETRY_AFTER],
        request={"multipart/form-data": PredictionUploadSerializer},
        responses={
            200: OpenApiResponse(PredictionBatchSerializer, description="Every prediction finished (done or failed)."),
            202: OpenApiResponse(PredictionBatchSerializer, description="Accepted; some predictions still run."),
            400: responses.error("A file is not an acceptable image (not_image, truncated, empty, "
                                 "blank, too_many_pixels, bloated), too many files were sent, or several under "
                                 "`image` (too_many_files), none (no_files), text where a file belongs (not_a_file), "
                                 "a file's name too long to read (file_name_too_long), a body that cannot be read "
                                 "(parse_error, too_many_fields), `wait` is invalid (invalid) or sent twice "
                                 "(repeated), another query parameter is sent (unknown), or the `Idempotency-Key` is "
                                 "invalid (idempotency_key_invalid).",
                                 code="not_image", field="image"),
            409: idempotency.CONFLICT,
            422: idempotency.REUSED,
            413: responses.error("A file is larger than the upload limit, or the request as a whole is.",
                                 code="too_large", field="image"),
            411: responses.error("The body was sent without a Content-Length (Transfer-Encoding: chunked); nothing "
                                 "was stored or counted: send it with one.", code="length_required"),
            415: responses.error("The body must be multipart/form-data.", code="unsupported_media_type"),
            429: responses.THROTTLED,
            **responses.COMMON,
            503: responses.error("The database or the storage is out of reach (`service_unavailable`, nothing was "
                                 "stored), the media volume is nearly full (`storage_full`, nothing was stored): retry after the "
                                 "Retry-After header's seconds. Or the database stopped answering mid-insert "
                                 "(`outcome_unknown`, no Retry-After): look in the history before sending again.",
                                 code="service_unavailable"),
            403: responses.error("Not allowed (a read-only token: `permission_denied`), these images would take "
                                 "your uploads past `UPLOAD_QUOTA_MB` (`quota_exceeded`, nothing was stored: delete "
                                 "some to make room), or your account was deleted while they were being stored "
                                 "(`account_deleted`, nothing was stored).", code="quota_exceeded"),
        },
    )
    def post(self, request: Request) -> Response:
        # A malformed `wait`, several files under `image` or a malformed Idempotency-Key (or one sent before with
        # another request) are refused before the upload is counted against the allowance; a repeat counts nothing.
        query = WaitQuerySerializer(data=request.query_params)
        query.is_valid(raise_exception=True)
        _one_image_checked(request)
        self.idempotent_upload = idempotency.idempotent_upload_read(request)
        if self.idempotent_upload is not None:
            self.replayed = idempotency.predictions_replayed(request=request, idempotency=self.idempotent_upload)
        created = self.replayed
        if created is None:
            self._upload_allowance_spend(request)
            files, field = _uploaded_files(request)
            try:
                created = classifier_services.predictions_submit(
                    owner=request.user, files=files, source=Upload.Source.API, idempotency=self.idempotent_upload
                )
            except DjangoValidationError as exc:
                return validation_error_response(exc, field=field)
            except IdempotencyKeyInUseError:
                created = self._replayed_after_race(request)
            except classifier_services.UploadOwnerDeletedError as exc:
                raise exceptions.PermissionDenied(str(exc), code="account_deleted") from exc
        wait = query.validated_data.get("wait") or 0
        try:
            if wait:
                completion.predictions_wait_finished(
                    prediction_ids=[prediction.pk for prediction in created], timeout=wait, user_id=request.user.pk
                )
            predictions = selectors.predictions_reload(predictions=created)
        except DatabaseError:
            # The uploads are stored: answering 503 ("nothing was stored") would make the client send them again.
            logger.warning("could not read back predictions %s; answering with them as stored",
                           [prediction.pk for prediction in created], exc_info=True)
            predictions = created
        finished = all(p.status in Prediction.FINISHED for p in predictions)
        response = Response(
            {"predictions": _represent(request, predictions)},
            status=status.HTTP_200_OK if finished else status.HTTP_202_ACCEPTED,
        )
        if self.replayed is not None:
            response[idempotency.REPLAYED_HEADER] = "true"
        return response


@extend_schema(tags=["predictions"])
class PredictionDetailApi(QueryParametersCheckedMixin, WriteStageMixin, APIView):
    @extend_schema(
        operation_id="predictions_retrieve",
        summary="One of your predictions",
        description="One of your own predictions, as the list shows it; another user's, or one deleted, is a 404.",
        responses={200: PredictionSerializer, 404: responses.NOT_FOUND, **responses.COMMON},
    )
    def get(self, request: Request, prediction_id: int) -> Response:
        prediction = _prediction_or_404(request, prediction_id)
        return Response(PredictionSerializer(prediction, context={"request": request}).data)

    @extend_schema(
        operation_id="predictions_feedback",
        summary="Say which digit the image really shows",
        description="Records the digit the image really shows (`feedback`, 0 to 9), or clears it (`null`). The body "
        "must hold `feedback`.",
        request=FeedbackSerializer,
        responses={200: PredictionSerializer, 400: responses.INVALID, 404: responses.NOT_FOUND, **responses.COMMON},
    )
    def patch(self, request: Request, prediction_id: int) -> Response:
        prediction = _prediction_or_404(request, prediction_id)
        body = FeedbackSerializer(data=request.data)
        body.is_valid(raise_exception=True)
        self.write_begins()
        try:
            prediction = classifier_services.prediction_feedback_set(
                prediction=prediction, digit=body.validated_data["feedback"]
            )
        except classifier_services.PredictionFeedbackError as exc:
            raise exceptions.ValidationError({"feedback": [exceptions.ErrorDetail(str(exc), code="invalid")]}) from exc
        except Prediction.DoesNotExist:
            raise exceptions.NotFound("No such prediction.") from None
        return Response(PredictionSerializer(prediction, context={"request": request}).data)

    @extend_schema(
        operation_id="predictions_destroy",
        summary="Delete a prediction with its upload",
        description="Deletes the uploaded image, every prediction made for it and all their files.",
        responses={204: None, 404: responses.NOT_FOUND, **responses.COMMON},
    )
    def delete(self, request: Request, prediction_id: int) -> Response:
        prediction = _prediction_or_404(request, prediction_id)
        classifier_services.upload_delete(upload=prediction.upload)
        return Response(status=status.HTTP_204_NO_CONTENT)


@extend_schema(tags=["predictions"])
class PredictionRetryApi(QueryParametersCheckedMixin, WriteStageMixin, AllowanceHeadersMixin, APIView):
    @extend_schema(
        operation_id="predictions_retry",
        summary="Run a failed prediction again",
        description=(
            "For a failed prediction that is its upload's newest: a new pending prediction of the same image (201), "
            "counted as an upload (scope `uploads`). Otherwise nothing is made or counted, and the answer is the "
            "upload's newest prediction (200), so a retry sent twice makes one."
        ),
        request=None,
        parameters=[
            OpenApiParameter("Location", OpenApiTypes.URI, OpenApiParameter.HEADER, response=[201],
                             description="The new prediction in the API (its `url`)."),
            *allowance_headers(statuses=[201, 429]),
            RETRY_AFTER,
        ],
        responses={201: PredictionSerializer, 200: PredictionSerializer, 404: responses.NOT_FOUND,
                   429: responses.THROTTLED, **responses.COMMON},
    )
    def post(self, request: Request, prediction_id: int) -> Response:
        prediction = _prediction_or_404(request, prediction_id)
        answer, made = classifier_selectors.prediction_retry_answer(prediction=prediction), False
        if answer is None:
            try:
                self.upload_allowance = upload_allowance_spend(user_id=request.user.pk, images=1)
            except UploadRateError as exc:
                self.upload_allowance = exc.allowance
                raise exceptions.Throttled(wait=exc.retry_after) from None
            self.write_begins()
            try:
                answer, made = classifier_services.prediction_retry(prediction=prediction)
            except Prediction.DoesNotExist:
                self._upload_allowance_give_back(request)
                raise exceptions.NotFound("No such prediction.") from None
            if not made:
                # Another retry (a second tab, the page) made it between the look above and the upload's lock: this
                # one made nothing, so it counts nothing, as a retry sent again does.
                self._upload_allowance_give_back(request)
        data = PredictionSerializer(answer, context={"request": request}).data
        if not made:
            return Response(data, status=status.HTTP_200_OK)
        # Without it, a 201 says that what it created is the request's own URL (RFC 9110, 15.3.2): the retry's.
        return Response(data, status=status.HTTP_201_CREATED, headers={"Location": data["url"]})

    def _upload_allowance_give_back(self, request: Request) -> None:
        if self.upload_allowance is not None:
            upload_allowance_give_back(user_id=request.user.pk, images=1)
            self.upload_allowance = None


class PreconditionFailed(exceptions.APIException):
    status_code = status.HTTP_412_PRECONDITION_FAILED
    default_detail = "`If-Match` names no ETag of this image as it is now; nothing was sent."
    default_code = "precondition_failed"


_IMAGE_RESPONSES = {
    (200, "image/png"): OpenApiResponse(OpenApiTypes.BINARY, description="A PNG image."),
    304: responses.NOT_MODIFIED,
    404: responses.NOT_FOUND,
    412: responses.error("`If-Match` names no ETag of this image as it is now.", code="precondition_failed"),
    **responses.COMMON,
    503: responses.error("The database or the storage holding the images is out of reach for a moment; retry after "
                         "the number of seconds in the Retry-After header.", code="service_unavailable"),
}


# The image views answer conditional requests (the classifier's media view does): without these, a client built from
# the schema could neither read the ETag nor send it back, and the 304 and 412 above could never be asked for.
_IMAGE_HEADERS = [
    OpenApiParameter("If-None-Match", OpenApiTypes.STR, OpenApiParameter.HEADER, required=False,
                     description="The `ETag` of the copy the client holds: while the image is unchanged, a 304 "
                                 "without a body."),
    OpenApiParameter("If-Match", OpenApiTypes.STR, OpenApiParameter.HEADER, required=False,
                     description="Send the image only if its `ETag` is one of these; otherwise a 412."),
    OpenApiParameter("ETag", OpenApiTypes.STR, OpenApiParameter.HEADER, response=[200, 304],
                     description="The image's entity tag, for `If-None-Match`."),
    OpenApiParameter("Cache-Control", OpenApiTypes.STR, OpenApiParameter.HEADER, response=[200, 304],
                     enum=["private, no-cache"],
                     description="Private: no shared cache keeps it, and a client asks again (`If-None-Match`) before "
                                 "each use."),
]


class _PngMetadata(SimpleMetadata):
    """OPTIONS on an image view: it answers a PNG (an error in JSON) and reads no body."""

    def determine_metadata(self, request, view) -> dict:
        metadata = super().determine_metadata(request, view)
        metadata["renders"] = ["image/png", *metadata["renders"]]
        return metadata


class _PngOrErrorNegotiation(BaseContentNegotiation):
    """The image views answer a PNG, or an error in the JSON envelope, whatever the client's Accept header says.

    DRF would otherwise match ``Accept: image/png`` against its JSON renderers and answer 406.
    """

    def select_parser(self, request, parsers):
        return parsers[0] if parsers else None

    def select_renderer(self, request, renderers, format_suffix=None):
        return renderers[0], renderers[0].media_type


class _PngApi(QueryParametersCheckedMixin, APIView):
    """An image view: the PNG comes from the classifier's view; DRF renders only errors and OPTIONS, in JSON."""

    content_negotiation_class = _PngOrErrorNegotiation
    renderer_classes = [JSONRenderer]
    # It reads no body.
    parser_classes: list = []
    metadata_class = _PngMetadata

    @staticmethod
    def _served(view, request: Request, **kwargs):
        """``view``'s answer to ``request``: the PNG, a 304, or an error raised for the API's envelope."""
        response = view(request._request, **kwargs)
        if response.status_code == status.HTTP_503_SERVICE_UNAVAILABLE:
            # The storage out of reach for a moment (the view logged it): its words and its wait, in the envelope.
            raise ServiceUnavailable(response.content.decode(), wait=int(response["Retry-After"]))
        # Django's conditional check answers a failed If-Match with a bare 412; the API answers it in its envelope.
        if response.status_code == status.HTTP_412_PRECONDITION_FAILED:
            raise PreconditionFailed()
        return response


@extend_schema(tags=["predictions"])
class PredictionImageApi(_PngApi):
    """The uploaded image, served by the classifier's own media view once the API has authenticated the caller."""

    @extend_schema(operation_id="predictions_image", summary="The uploaded image (PNG)", responses=_IMAGE_RESPONSES,
                   parameters=_IMAGE_HEADERS)
    def get(self, request: Request, prediction_id: int):
        prediction = _prediction_or_404(request, prediction_id)
        return self._served(classifier_views.upload_image, request, pk=prediction.upload_id)


@extend_schema(tags=["predictions"])
class PredictionInputImageApi(_PngApi):
    """The 28x28 picture the model saw, served by the classifier's media view."""

    @extend_schema(operation_id="predictions_input_image", summary="The 28x28 model input (PNG)",
                   responses=_IMAGE_RESPONSES,
                   parameters=_IMAGE_HEADERS)
    def get(self, request: Request, prediction_id: int):
        prediction = _prediction_or_404(request, prediction_id)
        return self._served(classifier_views.prediction_input, request, pk=prediction.pk)
