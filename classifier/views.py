"""Pages and small JSON/image endpoints for uploading, watching results and browsing history."""
from __future__ import annotations

import hashlib
import io
import logging
import math
import re
import sys
import time

from django.conf import settings
from django.contrib import messages
from django.core.exceptions import BadRequest, RequestDataTooBig, SuspiciousOperation, TooManyFilesSent, ValidationError
from django.core.paginator import Paginator
from django.db import InterfaceError, OperationalError
from django.http import (
    FileResponse,
    Http404,
    HttpRequest,
    HttpResponse,
    JsonResponse,
    StreamingHttpResponse,
    UnreadablePostError,
)
from django.http.multipartparser import MultiPartParserError
from django.shortcuts import redirect, render
from django.template.defaultfilters import pluralize
from django.urls import reverse
from django.utils import timezone
from django.utils.cache import get_conditional_response
from django.utils.http import quote_etag
from django.utils.log import log_response
from django.views.decorators.cache import never_cache
from django.views.decorators.csrf import csrf_exempt, csrf_protect
from django.views.decorators.http import require_http_methods, require_safe
from PIL import Image

from classifier import exports, selectors, services, slots, thumbnails, throttling
from classifier.forms import FeedbackForm, HistoryFilterForm, UploadForm, UploadsDeleteForm
from classifier.models import INPUT_SIDE, Prediction, Upload
from classifier.request_body import FILE_NAME_TOO_LONG, file_name_too_long
from classifier.validation import FilesRejectedError, allowance_weight
from mnistsite.form_pages import form_sent_again

logger = logging.getLogger(__name__)

HISTORY_PAGE_SIZE = 20


def _upload_page(
    request: HttpRequest,
    form: UploadForm,
    *,
    errors: list[str],
    refused_files: list[int] = (),
    files_sent: bool = True,
    stored_unknown: bool = False,
    status: int = 200,
) -> HttpResponse:
    received = len(request.FILES.getlist("files")) if refused_files else 0
    # A file form the browser sent itself (the page's script sends its own, and keeps the files chosen) comes back
    # with its file input emptied: what was not refused has to be chosen again. A drawing is no file form, and a
    # form sent with no file chosen forgot none.
    files_forgotten = (
        bool(errors)
        and files_sent
        and not stored_unknown
        and request.method == "POST"
        and request.content_type == "multipart/form-data"
        and request.headers.get("X-Requested-With") != "XMLHttpRequest"
        and (not refused_files or received > len(refused_files))
    )
    return render(
        request,
        "classifier/upload.html",
        {
            "form": form,
            "errors": errors,
            "stored_unknown": stored_unknown,
            "files_forgotten": files_forgotten,
            # Where each refused file stood among those received: the page's script marks them in the selection it
            # kept, if the server received as many as were chosen (the parser drops a part whose name it cannot use).
            "refused_files": " ".join(str(index) for index in refused_files),
            # Asked only of a body that was read: one Django refused to read raises again when asked.
            "files_received": received,
            "max_files": settings.UPLOAD_MAX_FILES,
            "max_bytes": settings.UPLOAD_MAX_BYTES,
            "max_mb": settings.UPLOAD_MAX_BYTES // (1024 * 1024),
        },
        status=status,
    )


def _uploaded_go_to(request: HttpRequest, url: str) -> HttpResponse:
    """Where an accepted upload leads: a redirect, or for the page's own script the address to go to.

    The script sends the form itself, to keep the chosen files when they are refused. A redirect would be
    followed inside that request, the next page fetched twice, and its one-time message spent on the first.
    """
    if request.headers.get("X-Requested-With") == "XMLHttpRequest":
        return JsonResponse({"location": url})
    return redirect(url)


UNREADABLE_BODY = "The upload could not be read; please send it again."


def _unreadable_body(request: HttpRequest) -> tuple[str, int] | None:
    """Why Django refused to read the upload's body, and the status that says so; None when it read it.

    Django reads the body when the form's fields are first asked for, and refuses some bodies whole (more files than
    DATA_UPLOAD_MAX_NUMBER_FILES, a part's headers too long, fields past DATA_UPLOAD_MAX_MEMORY_SIZE) with an exception
    that would otherwise end on the bare 400 page, which cannot say which limit was met.
    """
    try:
        request.POST  # reading the fields reads the files too
    except TooManyFilesSent:
        # Django stops at the first file too many: how many more were chosen is not known.
        message = (
            f"You chose more than {settings.DATA_UPLOAD_MAX_NUMBER_FILES} files; at most {settings.UPLOAD_MAX_FILES} "
            "can be sent at once. Choose fewer and send them again."
        )
        return message, 400
    except RequestDataTooBig:
        # Only fields count towards that limit, not files: on this page, only a drawing comes to as much.
        return "The drawing is too large.", 413
    except MultiPartParserError as exc:
        if file_name_too_long(exc):
            return FILE_NAME_TOO_LONG, 400
        logger.warning("upload refused before it could be read: %s", exc)
        return UNREADABLE_BODY, 400
    except (SuspiciousOperation, BadRequest) as exc:
        logger.warning("upload refused before it could be read: %s", exc)
        return UNREADABLE_BODY, 400
    except UnreadablePostError as exc:
        # The sender went away mid-body (a closed tab, a lost connection): nobody is left to read the answer.
        logger.info("upload body cut off by its sender: %s", exc)
        return UNREADABLE_BODY, 400
    return None


# The security code is in the body: checked by _upload_read once the body could be read. A body that could not is
# answered first, unchecked, with the page and why: that stores and changes nothing, so a forged one gains nothing.
@csrf_exempt
@require_http_methods(["GET", "HEAD", "POST"])
def upload(request: HttpRequest) -> HttpResponse:
    if request.method == "POST":
        unreadable = _unreadable_body(request)
        if unreadable is not None:
            message, status = unreadable
            return _upload_page(request, UploadForm(), errors=[message], status=status)
    return _upload_read(request)


@csrf_protect
def _upload_read(request: HttpRequest) -> HttpResponse:
    form = UploadForm(request.POST or None, request.FILES or None)
    errors: list[str] = []
    refused_files: list[int] = []
    refused: throttling.UploadRateError | None = None
    forbidden = False
    if request.method == "POST":
        if form.is_valid():
            files, source = form.submissions()
            try:
                throttling.upload_allowance_spend(user_id=request.user.pk, images=allowance_weight(files))
                predictions = services.predictions_submit(owner=request.user, files=files, source=source)
            except throttling.UploadRateError as exc:
                refused, errors = exc, [str(exc)]
            except ValidationError as exc:
                errors = list(exc.messages)
                refused_files = exc.file_indexes if isinstance(exc, FilesRejectedError) else []
            except (OperationalError, InterfaceError):
                # The database is out of reach, which passes, and no row was stored (nor a file kept): say so instead
                # of a bare 500 page. Other database errors are bugs, answered as such.
                return _error_logged(_service_unavailable(request, form), request,
                                     "upload failed: the database is unavailable")
            except services.UploadOutcomeUnknownError:
                # No Retry-After: sending the same images again is what the history must be checked for first.
                response = _service_unavailable(
                    request, form, retry_after=None, message=services.UPLOAD_OUTCOME_UNKNOWN, stored_unknown=True
                )
                return _error_logged(response, request,
                                     "upload failed: the database stopped answering, and whether it stored it is not "
                                     "known")
            except services.StorageFullError:
                response = _service_unavailable(
                    request, form, retry_after=300,
                    message="The server is short of storage space and nothing was stored. Please try again later.",
                )
                # The service logs the full volume as an error once a minute; each refusal is a warning, not one
                # more error an upload.
                log_response("%s: %s (the media volume is nearly full)", response.reason_phrase, request.path,
                             response=response, request=request, level="warning")
                return response
            except services.UploadStorageError:
                response = _service_unavailable(request, form)
                # The service logged the storage's failure as an error, with its traceback, as it met it.
                log_response("%s: %s (the images could not be stored)", response.reason_phrase, request.path,
                             response=response, request=request, level="warning")
                return response
            except (services.UploadQuotaError, services.UploadOwnerDeletedError) as exc:
                forbidden, errors = True, [str(exc)]
            else:
                if len(predictions) == 1:
                    return _uploaded_go_to(request, reverse("classifier:prediction_detail", args=[predictions[0].pk]))
                messages.success(request, f"{len(predictions)} images uploaded; their predictions appear below.")
                batch = ",".join(str(item.upload_id) for item in predictions)
                return _uploaded_go_to(request, f"{reverse('classifier:history')}?batch={batch}")
        else:
            errors = [message for field_errors in form.errors.values() for message in field_errors]
    response = _upload_page(
        request, form, errors=errors, refused_files=refused_files, files_sent=bool(request.FILES.getlist("files")),
        status=400 if errors else 200,
    )
    if forbidden:
        # The owner's to resolve, not the server's: a 4xx (a 5xx would be logged as a server error), as cloud
        # storage APIs answer a full quota; or their account is gone.
        response.status_code = 403
    if refused is not None and refused.retry_after is not None:
        response.status_code = 429
        response["Retry-After"] = str(math.ceil(refused.retry_after))
    return response


def _error_logged(response: HttpResponse, request: HttpRequest, message: str, *args: object) -> HttpResponse:
    """``response``, with the error being handled logged once, here, with its traceback: Django would otherwise log
    the same 503 again, as a second error without it."""
    log_response(message, *args, response=response, request=request, logger=logger, level="error",
                 exception=sys.exc_info()[1])
    return response


def _service_unavailable(
    request: HttpRequest,
    form: UploadForm,
    *,
    message: str = "The service is temporarily unavailable and nothing was stored. Please try again in a minute.",
    retry_after: int | None = 30,
    stored_unknown: bool = False,
) -> HttpResponse:
    response = _upload_page(request, form, errors=[message], stored_unknown=stored_unknown, status=503)
    if retry_after is not None:
        response["Retry-After"] = str(retry_after)
    return response


def _prediction_or_404(request: HttpRequest, pk: int) -> Prediction:
    prediction = selectors.prediction_get_for_user(user=request.user, prediction_id=pk)
    if prediction is None:
        raise Http404("No such prediction.")
    return prediction


def confidence_percent(confidence: float | None) -> int | None:
    """The confidence as a whole percentage, rounded down (static/js/result.js and history.js do the same).

    Rounded to the nearest, 0.697 would read "70% confident" beside "not sure: below 70%". A billionth of a
    percent absorbs binary fractions such as 0.29 * 100 = 28.999999999999996, far finer than a float32 softmax
    output can fall below a threshold.
    """
    return None if confidence is None else math.floor(confidence * 100 + 1e-9)


def probability_percent(probability: float) -> float:
    """A probability as a percentage to a tenth, rounded down as ``confidence_percent`` is (result.js the same).

    Rounded to the nearest, the top bar of a 0.6996 answer would read 70.0% beside "69% confident". The margin is
    ``confidence_percent``'s, a tenth as fine, so the bar always reads the headline's percentage or more.
    """
    return math.floor(probability * 1000 + 1e-8) / 10


def _queue_stalled() -> bool:
    """Whether predictions wait on a queue that no worker is taking, as the API's ``wait`` tells it."""
    return selectors.prediction_queue_stalled(stalled_after_s=settings.PREDICTION_WAIT_STALLED_AFTER_SECONDS)


def prediction_payload(prediction: Prediction, *, queue_stalled: bool | None = None) -> dict:
    """What the result and history pages read of a prediction; ``queue_stalled`` read once for many, or else here."""
    threshold = settings.LOW_CONFIDENCE_THRESHOLD
    done = prediction.status == Prediction.Status.DONE
    return {
        "id": prediction.pk,
        "upload_id": prediction.upload_id,
        "status": prediction.status,
        "finished": prediction.status in (Prediction.Status.DONE, Prediction.Status.FAILED),
        "digit": prediction.digit,
        "confidence": prediction.confidence,
        "low_confidence": bool(done and prediction.confidence is not None and prediction.confidence < threshold),
        "several_digits": bool(done and prediction.several_digits),
        "probabilities": prediction.probabilities,
        "error": prediction.error,
        # The page still waits, and says that nothing will come until a worker is back (static/js/result.js).
        # Only a pending prediction waits on the queue: one a worker took, or finished, does not.
        "queue_stalled": prediction.status == Prediction.Status.PENDING
        and (_queue_stalled() if queue_stalled is None else queue_stalled),
        "no_digit": Prediction.failed_for_want_of_a_digit(status=prediction.status, error=prediction.error),
        "feedback": prediction.feedback,
        "checkpoint_id": prediction.checkpoint_id,
        "device": prediction.device,
        "queue_ms": prediction.queue_ms,
        "compute_ms": prediction.compute_ms,
        "input_image_url": (
            reverse("classifier:prediction_input", args=[prediction.pk]) if prediction.input_pixels else None
        ),
    }


def digit_article(digit: int) -> str:
    """The article a digit takes, which goes by how it is read aloud: "a 7", but "an 8"."""
    return "an" if digit == 8 else "a"


def digit_with_article(digit: int) -> str:
    return f"{digit_article(digit)} {digit}"


@require_safe
def prediction_detail(request: HttpRequest, pk: int) -> HttpResponse:
    prediction = _prediction_or_404(request, pk)
    newer = None
    if prediction.status == Prediction.Status.FAILED:
        # Tried again, it points at the newer result instead of offering a "Try again" that would only lead there.
        newest = selectors.prediction_latest_for_upload(upload=prediction.upload)
        newer = newest if newest is not None and newest.pk != prediction.pk else None
    probabilities = prediction.probabilities or [None] * 10
    bars = [
        {"digit": digit, "probability": p, "percent": probability_percent(p) if p is not None else 0}
        for digit, p in enumerate(probabilities)
    ]
    return render(
        request,
        "classifier/result.html",
        {
            "prediction": prediction,
            "upload": prediction.upload,
            "bars": bars,
            "payload": prediction_payload(prediction),
            "confidence_percent": confidence_percent(prediction.confidence),
            "threshold": settings.LOW_CONFIDENCE_THRESHOLD,
            "digits": range(10),
            "feedback_article": digit_article(prediction.feedback) if prediction.feedback is not None else "",
            "newer": newer,
        },
    )


@never_cache
@require_safe
def prediction_json(request: HttpRequest, pk: int) -> JsonResponse:
    return JsonResponse(prediction_payload(_prediction_or_404(request, pk)))


@never_cache
@require_safe
def predictions_json(request: HttpRequest) -> JsonResponse:
    """``prediction_json``'s answers for several of the user's predictions (``?id=1&id=2``, a history page's worth at
    most): the history page asks once a poll, not once a row. A prediction deleted meanwhile is left out."""
    try:
        ids = {int(value) for value in request.GET.getlist("id")}
    except ValueError:
        ids = set()
    if not ids or len(ids) > HISTORY_PAGE_SIZE or not all(0 < pk < 2**63 for pk in ids):
        return JsonResponse({"error": f"Ask for 1 to {HISTORY_PAGE_SIZE} predictions by id: ?id=1&id=2."}, status=400)
    predictions = selectors.prediction_list_for_user(user=request.user, prediction_ids=ids)
    waiting = any(prediction.status == Prediction.Status.PENDING for prediction in predictions)
    stalled = waiting and _queue_stalled()
    return JsonResponse({"predictions": [prediction_payload(prediction, queue_stalled=stalled)
                                         for prediction in predictions]})


@require_http_methods(["GET", "HEAD", "POST"])
def prediction_feedback(request: HttpRequest, pk: int) -> HttpResponse:
    prediction = _prediction_or_404(request, pk)
    if request.method != "POST":
        # The digits are offered only once the prediction is done.
        offered = prediction.status == Prediction.Status.DONE
        return form_sent_again(
            request, page=reverse("classifier:prediction_detail", args=[prediction.pk]),
            message="Nothing was recorded: choose the right digit again." if offered else None,
        )
    form = FeedbackForm(request.POST)
    if not form.is_valid():
        messages.error(request, "Feedback must be a digit from 0 to 9.")
        return redirect("classifier:prediction_detail", pk=pk)
    try:
        services.prediction_feedback_set(prediction=prediction, digit=form.cleaned_data["digit"])
    except Prediction.DoesNotExist:
        raise Http404("No such prediction.") from None
    if form.cleaned_data["digit"] is None:
        messages.info(request, "Feedback cleared.")
    else:
        messages.success(request, f"Thanks! Recorded that this is {digit_with_article(form.cleaned_data['digit'])}.")
    return redirect("classifier:prediction_detail", pk=pk)


@require_http_methods(["GET", "HEAD", "POST"])
def prediction_retry(request: HttpRequest, pk: int) -> HttpResponse:
    prediction = _prediction_or_404(request, pk)
    answer = selectors.prediction_retry_answer(prediction=prediction)
    if request.method != "POST":
        # Never a run of the model: a GET changes nothing. The page says whether "Try again" is still to be pressed.
        offered = answer is None and not Prediction.failed_for_want_of_a_digit(
            status=prediction.status, error=prediction.error
        )
        return form_sent_again(
            request, page=reverse("classifier:prediction_detail", args=[(answer or prediction).pk]),
            message="The model was not run again: press Try again to run it." if offered else None,
        )
    if answer is not None:
        return redirect("classifier:prediction_detail", pk=answer.pk)
    if not _model_run_allowed(request):
        return redirect("classifier:prediction_detail", pk=pk)
    try:
        newest, made = services.prediction_retry(prediction=prediction)
    except Prediction.DoesNotExist:
        throttling.upload_allowance_give_back(user_id=request.user.pk, images=1)
        raise Http404("No such prediction.") from None
    if not made:
        # Another try (a second tab) made it between the look above and the upload's lock: this one made nothing.
        throttling.upload_allowance_give_back(user_id=request.user.pk, images=1)
    return redirect("classifier:prediction_detail", pk=newest.pk)


def _model_run_allowed(request: HttpRequest) -> bool:
    """Spend one upload of the allowance on another run of the model; False, the reason shown, when refused.

    "Try again" and "Read it now" run the model as an upload does, so a loop of them is throttled like uploads.
    """
    try:
        throttling.upload_allowance_spend(user_id=request.user.pk, images=1)
    except throttling.UploadRateError as exc:
        messages.error(request, str(exc))
        return False
    return True


def _cache_headers(response: HttpResponse, *, etag: str) -> HttpResponse:
    # Private pictures: shared caches must not keep them, and a browser asks again before each use (answered by a
    # cheap 304 while nothing changed), so a picture deleted in another tab is never shown from its cache.
    response["Cache-Control"] = "private, no-cache"
    response["ETag"] = etag
    return response


def _not_modified(request: HttpRequest, *, etag: str) -> HttpResponse | None:
    """A 304 when the browser's copy is current; None when the picture must be sent."""
    # A picture has no modification date, so If-Unmodified-Since is to be ignored (RFC 9110, 13.1.4): Django's check
    # would fail every one with a 412.
    request.META.pop("HTTP_IF_UNMODIFIED_SINCE", None)
    response = get_conditional_response(request, etag=etag)
    return None if response is None else _cache_headers(response, etag=etag)


def _private_png(response: HttpResponse, *, filename: str, etag: str) -> HttpResponse:
    response["Content-Disposition"] = f'inline; filename="{filename}"'
    response["X-Content-Type-Options"] = "nosniff"
    return _cache_headers(response, etag=etag)


# Seconds after which a picture the storage could not read is worth asking for again.
IMAGE_UNREADABLE_RETRY_AFTER_S = 30


def _image_response(file, *, filename: str, etag: str) -> HttpResponse:
    try:
        handle = file.open("rb")
    except (FileNotFoundError, ValueError):
        raise Http404("The image file is gone.") from None
    except OSError:
        # The media volume out of reach (unmounted, a network share gone): it passes, as a database outage does.
        logger.warning("could not read the image %s", file.name, exc_info=True)
        response = HttpResponse("The image cannot be read at the moment; try again shortly.", status=503,
                                content_type="text/plain; charset=utf-8")
        response["Retry-After"] = str(IMAGE_UNREADABLE_RETRY_AFTER_S)
        return response
    return _private_png(
        FileResponse(handle, content_type="image/png", filename=filename), filename=filename, etag=etag
    )


def _etag(value: bytes) -> str:
    return quote_etag(hashlib.sha256(value).hexdigest()[:32])


@require_safe
def upload_image(request: HttpRequest, pk: int) -> HttpResponse:
    item = selectors.upload_get_for_viewer(user=request.user, upload_id=pk)
    if item is None or not item.image:
        raise Http404("No such image.")
    # A stored picture is never rewritten, and each is written under a new name: the name identifies its content.
    etag = _etag(item.image.name.encode())
    return _not_modified(request, etag=etag) or _image_response(
        item.image, filename=f"upload-{item.pk}.png", etag=etag
    )


@require_safe
def upload_image_scaled(request: HttpRequest, pk: int, side: int) -> HttpResponse:
    """The stored picture at most ``side`` pixels each way: what a list row or a result page shows, in a fraction of
    the bytes of a photo's stored copy."""
    if side not in thumbnails.SIDES:
        raise Http404("No such size.")
    item = selectors.upload_get_for_viewer(user=request.user, upload_id=pk)
    if item is None or not item.image:
        raise Http404("No such image.")
    etag = _etag(f"{item.image.name}@{side}".encode())
    not_modified = _not_modified(request, etag=etag)
    if not_modified is not None:
        return not_modified
    filename = f"upload-{item.pk}-{side}.png"
    try:
        scaled = services.upload_image_scaled_get(name=item.image.name, side=side)
    except (FileNotFoundError, ValueError):
        raise Http404("The image file is gone.") from None
    except OSError:
        # The storage out of reach, or a stored file no longer a PNG: the full picture's answer says which.
        scaled = None
    if scaled is None:
        return _image_response(item.image, filename=filename, etag=etag)
    return _private_png(HttpResponse(scaled, content_type="image/png"), filename=filename, etag=etag)


@require_safe
def prediction_input(request: HttpRequest, pk: int) -> HttpResponse:
    prediction = selectors.prediction_get_for_viewer(user=request.user, prediction_id=pk)
    if prediction is None or not prediction.input_pixels:
        raise Http404("No such image.")
    etag = _etag(bytes(prediction.input_pixels))
    not_modified = _not_modified(request, etag=etag)
    if not_modified is not None:
        return not_modified
    picture = Image.frombytes("L", (INPUT_SIDE, INPUT_SIDE), bytes(prediction.input_pixels))
    out = io.BytesIO()
    picture.save(out, format="PNG")
    return _private_png(
        HttpResponse(out.getvalue(), content_type="image/png"),
        filename=f"prediction-{prediction.pk}-input.png",
        etag=etag,
    )


@require_http_methods(["GET", "HEAD", "POST"])
def upload_detail(request: HttpRequest, pk: int) -> HttpResponse:
    """An upload's newest prediction; for one without any (an administrator deleted them), a page that offers one."""
    item = selectors.upload_get_for_user(user=request.user, upload_id=pk)
    if item is None:
        raise Http404("No such upload.")
    prediction = selectors.prediction_latest_for_upload(upload=item)
    if prediction is not None:
        # Also the answer to a second "Read it now" (a double click, another tab): nothing more is made or spent.
        return redirect("classifier:prediction_detail", pk=prediction.pk)
    if request.method == "POST":
        if not _model_run_allowed(request):
            return redirect("classifier:upload_detail", pk=pk)
        try:
            prediction = services.upload_read(upload=item)
        except Upload.DoesNotExist:
            raise Http404("No such upload.") from None
        return redirect("classifier:prediction_detail", pk=prediction.pk)
    return render(request, "classifier/upload_unread.html", {"upload": item})


@require_http_methods(["GET", "HEAD", "POST"])
def upload_delete(request: HttpRequest, pk: int) -> HttpResponse:
    item = selectors.upload_get_for_user(user=request.user, upload_id=pk)
    if item is None:
        raise Http404("No such upload.")
    if request.method == "POST":
        name = item.original_name or f"upload {item.pk}"
        services.upload_delete(upload=item)
        messages.success(request, f"Deleted “{name}” and its images.")
        return redirect(_safe_next(request) or reverse("classifier:history"))
    # The history page it was asked from (its filters and page), for Cancel and for after the deletion.
    back = _safe_next(request, request.GET.get("next", ""))
    return render(request, "classifier/upload_confirm_delete.html", {"upload": item, "back": back})


# Browsers drop tabs and line breaks anywhere in an address, which Django's check does not: "/\t//evil.example"
# passes it as a path, and a browser goes to evil.example. The addresses the site makes have none, nor spaces.
_NOT_IN_NEXT = re.compile(r"[\x00-\x20\x7f]")


def _safe_next(request: HttpRequest, target: str | None = None) -> str | None:
    """``target`` (by default the POST's ``next``) when it is an address on this site, else None."""
    from django.utils.http import url_has_allowed_host_and_scheme

    target = request.POST.get("next", "") if target is None else target
    if _NOT_IN_NEXT.search(target):
        return None
    if target and url_has_allowed_host_and_scheme(target, allowed_hosts={request.get_host()}, require_https=False):
        return target
    return None


def _history_filters(request: HttpRequest) -> tuple[HistoryFilterForm, selectors.UploadFilters]:
    form = HistoryFilterForm(request.GET or None)
    if not form.is_bound:
        return form, selectors.UploadFilters()
    # A field that is not understood is left out of cleaned_data and named on the page; the others still apply.
    form.is_valid()
    data = form.cleaned_data
    return form, selectors.UploadFilters(
        digit=data.get("digit"),
        status=data.get("status") or None,
        date_from=data.get("date_from"),
        date_to=data.get("date_to"),
        upload_ids=data.get("batch", ()),
    )


def _history_newest(request: HttpRequest) -> int | None:
    """The newest upload a history page's links list up to (``newest``); None when not given or not a row's id."""
    try:
        newest = int(request.GET.get("newest", ""))
    except ValueError:
        return None
    return newest if 0 <= newest < 2**63 else None


@require_safe
def history(request: HttpRequest) -> HttpResponse:
    form, filters = _history_filters(request)
    # The pages past the first, their downloads and "Delete all" hold the uploads stored up to the first page's newest:
    # counted with those stored since, every row would move down and the next page show some of this one's again.
    pinned = _history_newest(request)
    newest_id = selectors.upload_newest_id_for_user(user=request.user) if pinned is None else pinned
    queryset = selectors.upload_list_for_user(user=request.user, filters=filters, newest_id=newest_id)
    page = Paginator(queryset.values_list("pk", flat=True), HISTORY_PAGE_SIZE).get_page(request.GET.get("page"))
    query = request.GET.copy()
    query.pop("page", None)
    # "Select all on this page" without JavaScript: a link to the same page with every row ticked.
    select_all = query.pop("select", None) == ["page"]
    # "Older" keeps to the uploads counted here; the first page, "Newer" from the second, is the history as it is now.
    pages, latest = query.copy(), query.copy()
    pages["newest"] = str(newest_id)
    latest.pop("newest", None)
    if pinned is not None and not page.paginator.count:
        # Every upload counted then is gone (deleted from this page): not "nothing yet" while newer ones are there.
        return redirect(request.path + (f"?{latest.urlencode()}" if latest else ""))
    uploads = selectors.upload_list_page(ids=list(page.object_list))
    for item in uploads:
        item.latest_confidence_percent = confidence_percent(item.latest_confidence)
    unfinished = (Prediction.Status.PENDING, Prediction.Status.RUNNING)
    # Where a deletion leads back to: this page, its rows no longer ticked.
    here = request.GET.copy()
    here.pop("select", None)
    return render(
        request,
        "classifier/history.html",
        {
            "form": form,
            "page": page,
            "uploads": uploads,
            "query": query.urlencode(),
            "pages_query": pages.urlencode(),
            "latest_query": latest.urlencode(),
            "filtered": any([filters.digit is not None, filters.status, filters.date_from, filters.date_to]),
            "batch": filters.upload_ids,
            "threshold": settings.LOW_CONFIDENCE_THRESHOLD,
            "select_all": select_all,
            "here": request.path + (f"?{here.urlencode()}" if here else ""),
            # "Delete all N" deletes the N counted now, not uploads stored after this page was shown.
            "newest_id": newest_id,
            # Without JavaScript nothing updates the rows still waiting: the page reloads itself until they finish.
            "reloading": any(item.latest_status in unfinished for item in uploads),
            # Rows queued on a queue no worker takes, as the result page says it (static/js/history.js keeps it current).
            "queue_stalled": any(item.latest_status == Prediction.Status.PENDING for item in uploads) and _queue_stalled(),
        },
    )


# A deletion by filters starts no batch after this many seconds, so that its request ends well within
# GUNICORN_TIMEOUT even on slow shared storage; the uploads left are offered for deletion again.
UPLOADS_DELETE_SECONDS = 20.0


@require_http_methods(["GET", "POST"])
def uploads_delete(request: HttpRequest) -> HttpResponse:
    """Delete many uploads: those ticked on a history page, or all that match its filters (this address's query).

    The first request, a GET for the filters' uploads or a POST of the ticked ones, answers with a confirmation
    page, which changes nothing; its form's POST, ``confirmed``, deletes. The page's script asks in place instead.
    """
    try:
        return _uploads_delete(request)
    except (OperationalError, InterfaceError):
        # Out of reach before the deletion began (those during it are answered by _uploads_delete_confirmed).
        response = _uploads_delete_unavailable(
            request, "The service is temporarily unavailable and nothing was deleted. Please try again in a minute."
        )
        return _error_logged(response, request, "deletion of uploads failed: the database is unavailable")


def _uploads_delete(request: HttpRequest) -> HttpResponse:
    filter_form, filters = _history_filters(request)
    # The query holds the filters, and for a confirmation page asked for by a link or a redirect, the history page
    # it leads back to (``next``), which a POST sends in its form instead.
    params = request.GET.copy()
    asked_from = params.pop("next", [""])[-1]
    query = params.urlencode()
    history_url = reverse("classifier:history") + (f"?{query}" if query else "")
    back = _safe_next(request) or _safe_next(request, asked_from) or history_url
    if request.method == "GET" and not request.GET:
        # Not a page's "Delete all", whose address always names the history page it was asked from: the log-in page
        # leading back here after the ticked rows were sent with the session ended (their POST is not sent again).
        # Taken as "Delete all", it would ask to delete every upload in their place.
        messages.info(request, "Nothing was deleted: tick the uploads to delete again, or use “Delete all”.")
        return redirect(history_url)
    if request.method == "GET":
        newest = _history_newest(request)
        if newest is None:
            newest = selectors.upload_newest_id_for_user(user=request.user)
        choice = {"matching": True, "newest": newest, "upload": (), "confirmed": False}
    else:
        form = UploadsDeleteForm(request.POST)
        if not form.is_valid():
            messages.error(request, next(iter(form.errors.values()))[0])
            return redirect(back)
        choice = form.cleaned_data
    if choice["matching"] and filter_form.errors:
        # Left out on the history page, a filter not understood would widen "all that match" to more uploads.
        messages.error(request, "The filters could not be read, so nothing was deleted. Correct them and try again.")
        return redirect(back)
    if not choice["matching"] and not choice["upload"]:
        messages.error(request, "Select the uploads to delete first.")
        return redirect(back)
    if not choice["confirmed"]:
        return _uploads_delete_confirmation(
            request, filter_form=filter_form, filters=filters, choice=choice, back=back, history_url=history_url
        )
    if choice["matching"]:
        # Uploads that came to match since the count was confirmed (a prediction finished, "status: done") were not
        # agreed to, and which of them they are cannot be told: the person is asked again, with the new count, on a
        # page of its own (the GET confirmation, counted afresh), so that reloading it sends no deletion again.
        counted = selectors.upload_count_for_user(user=request.user, filters=filters, newest_id=choice["newest"])
        if counted > choice["count"]:
            messages.warning(request, f"Nothing was deleted: more uploads match now than the {choice['count']} "
                                      "you confirmed. Look at them again before deleting.")
            # With the page it came from (its number, its rows ticked or not), which the filters alone do not say.
            # Never an address without a query, which is not taken for a confirmation (see above).
            if back != history_url or not params:
                params["next"] = back
            again = params.urlencode(safe="/")
            return redirect(reverse("classifier:uploads_delete") + (f"?{again}" if again else ""))
    try:
        return _uploads_delete_confirmed(request, filters=filters, choice=choice, back=back)
    except services.UploadsDeleteInterruptedError as exc:
        response = _uploads_delete_unavailable(
            request, f"The database stopped answering partway through: {exc.deleted} upload{pluralize(exc.deleted)} "
            f"{pluralize(exc.deleted, 'was,were')} deleted, the others not. Please look at your history and try "
            "again in a minute.",
        )
        return _error_logged(response, request, "deletion of uploads stopped after %s: the database stopped answering",
                             exc.deleted)
    except (OperationalError, InterfaceError):
        response = _uploads_delete_unavailable(
            request, "The database stopped answering during the deletion, so some uploads may have been deleted and "
            "others not. Please look at your history and try again in a minute.",
        )
        return _error_logged(response, request, "deletion of uploads failed: the database stopped answering")


def _uploads_delete_confirmed(
    request: HttpRequest, *, filters: selectors.UploadFilters, choice: dict, back: str
) -> HttpResponse:
    if choice["matching"]:
        deadline = time.monotonic() + UPLOADS_DELETE_SECONDS
        deleted = services.uploads_delete(
            owner=request.user, filters=filters, newest_id=choice["newest"], limit=choice["count"], deadline=deadline
        )
        # Counted again only when some may be left: the deadline stopped it, or it reached the confirmed number.
        timed_out, reached = time.monotonic() >= deadline, deleted >= choice["count"]
        left = (
            selectors.upload_count_for_user(user=request.user, filters=filters, newest_id=choice["newest"])
            if timed_out or reached else 0
        )
    else:
        deleted, left, reached = services.uploads_delete(owner=request.user, upload_ids=choice["upload"]), 0, False
    if deleted:
        messages.success(request, f"Deleted {deleted} upload{pluralize(deleted)}.")
    elif choice["matching"] and (filters.digit is not None or filters.status):
        # Only a digit or a status changes after an upload is stored: the uploads counted may be there still.
        messages.info(request, "Nothing was deleted: none of the uploads you confirmed match these filters any more.")
    else:
        messages.info(request, "Nothing was deleted: those uploads were already gone.")
    if left and reached:
        messages.warning(
            request, f"{left} more upload{pluralize(left)} came to match while the deletion ran and "
            f"{pluralize(left, 'was,were')} left, as you confirmed {choice['count']}. Delete again to remove "
            f"{pluralize(left, 'it,them')} too."
        )
    elif left:
        messages.warning(
            request, f"{left} more upload{pluralize(left)} still match{pluralize(left, 'es,')}: there were too many "
            "to delete at once. Delete them again to go on."
        )
    return redirect(back)


def _uploads_delete_unavailable(request: HttpRequest, message: str) -> HttpResponse:
    response = render(request, "classifier/uploads_delete_unavailable.html", {"message": message}, status=503)
    response["Retry-After"] = "30"
    return response


def _uploads_delete_confirmation(
    request: HttpRequest,
    *,
    filter_form: HistoryFilterForm,
    filters: selectors.UploadFilters,
    choice: dict,
    back: str,
    history_url: str,
) -> HttpResponse:
    if choice["matching"]:
        uploads = []
        count = selectors.upload_count_for_user(user=request.user, filters=filters, newest_id=choice["newest"])
    else:
        uploads = list(selectors.upload_list_selected_for_user(user=request.user, upload_ids=choice["upload"]))
        count = len(uploads)
    if not count:
        messages.info(request, "Nothing was deleted: no uploads of yours match." if choice["matching"] else
                      "Nothing was deleted: those uploads were already gone.")
        return redirect(back)
    return render(
        request,
        "classifier/uploads_confirm_delete.html",
        {
            "count": count,
            "matching": choice["matching"],
            "newest": choice["newest"],
            # Shown, and sent on, only the selected uploads that are still there and the user's.
            "uploads": uploads,
            "shown": uploads[:HISTORY_PAGE_SIZE],
            "criteria": _filters_described(filter_form, filters) if choice["matching"] else [],
            "back": back,
            # The uploads that match, listed with the same filters.
            "history": history_url,
        },
    )


def _filters_described(form: HistoryFilterForm, filters: selectors.UploadFilters) -> list[str]:
    """The filters in words, for the confirmation page: ["read as a 7", "whose status is “queued”"]."""
    described = []
    if filters.upload_ids:
        described.append("in the batch you were looking at")
    if filters.digit is not None:
        described.append(f"read as {digit_with_article(filters.digit)}")
    if filters.status:
        described.append(f"whose status is “{dict(form.fields['status'].choices)[filters.status].lower()}”")
    if filters.date_from:
        described.append(f"uploaded on {filters.date_from:%Y-%m-%d} or later")
    if filters.date_to:
        described.append(f"uploaded on {filters.date_to:%Y-%m-%d} or earlier")
    return described


_EXPORTS = {"csv": ("text/csv; charset=utf-8", exports.history_csv), "zip": ("application/zip", exports.history_zip)}


# How long an export's slot stays held without a word from its stream (renewed as it goes): the most it stays
# counted after its process was killed.
EXPORT_SLOT_HOLD_S = 60.0
# A refused export's Retry-After: exports of a small history end within it.
EXPORT_BUSY_RETRY_AFTER_S = 10


@require_safe
def history_export(request: HttpRequest, kind: str) -> HttpResponse:
    """The history as shown with the same filters, streamed: a CSV of the results, or a ZIP with the images too."""
    content_type, render_rows = _EXPORTS[kind]
    _, filters = _history_filters(request)
    slot = {"kind": "export", "user_id": request.user.pk, "limit": settings.HISTORY_EXPORTS_PER_USER,
            "hold_s": EXPORT_SLOT_HOLD_S}
    token = slots.user_slot_take(**slot)
    if token is None:
        return _history_export_busy(request)
    try:
        rows = selectors.upload_export_rows(user=request.user, filters=filters, newest_id=_history_newest(request))
        response = StreamingHttpResponse(slots.UserSlotStream(render_rows(rows), **slot, token=token),
                                         content_type=content_type)
    except BaseException:
        slots.user_slot_give_back(kind="export", user_id=request.user.pk, token=token)
        raise
    name = f"mnistsite-history-{timezone.localdate():%Y-%m-%d}.{kind}"
    response["Content-Disposition"] = f'attachment; filename="{name}"'
    response["Cache-Control"] = "private, no-store"
    return response


def _history_export_busy(request: HttpRequest) -> HttpResponse:
    limit = settings.HISTORY_EXPORTS_PER_USER
    response = render(request, "classifier/history_export_busy.html",
                      {"limit": limit, "retry_after": EXPORT_BUSY_RETRY_AFTER_S}, status=429)
    response["Retry-After"] = str(EXPORT_BUSY_RETRY_AFTER_S)
    return response
