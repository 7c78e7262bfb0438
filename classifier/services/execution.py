"""Running the model on claimed predictions: claim, run, store the results, or hand the claims back."""
from __future__ import annotations

import logging
import math
import os
import time
import uuid
from collections.abc import Iterator

from celery.exceptions import SoftTimeLimitExceeded

from django.conf import settings
from django.core.files.storage import storages
from django.db import IntegrityError, transaction
from django.db.models import F
from django.db.models.functions import Greatest
from django.utils import timezone
from PIL import Image

from classifier import completion, statements
from classifier.models import Prediction, Upload
from classifier.png import open_png
from classifier.services.predictions import running_stale_after
from mnistsite.database_connections import connection_reopen_if_lost, is_transient
from mnistsite.storage import MediaStorage

logger = logging.getLogger(__name__)


PREPARE_FAILED_ERROR = "The image could not be prepared for the model. Try another picture."


class ModelUnavailableError(Exception):
    """This worker cannot load the active checkpoint; the predictions it claimed were handed back."""


class CheckpointDeletedError(Exception):
    """The checkpoint a batch was claimed with was deleted (after another was activated) before its results were
    stored: the batch is taken again with the active one."""


def _prediction_fail(*, prediction: Prediction, error: str, checkpoint_id: int | None = None) -> Prediction:
    prediction.status = Prediction.Status.FAILED
    prediction.error = error
    prediction.checkpoint_id = checkpoint_id
    prediction.finished_at = timezone.now()
    return prediction


def _open_upload_image(name: str) -> Image.Image:
    return open_png(_stored_bytes(name))


def _stored_bytes(name: str) -> bytes:
    # The storage itself, not default_storage's lazy proxy, whose every attribute costs a lookup of its own.
    storage = storages["default"]
    if type(storage) is not MediaStorage:
        with storage.open(name, "rb") as stored:
            return stored.read()
    # The file read straight from its path: Django's File wrapper and Python's buffered file doubled the cost of
    # reading a digit's few hundred bytes. A missing file raises FileNotFoundError all the same.
    fd = os.open(storage.path(name), os.O_RDONLY | getattr(os, "O_BINARY", 0))
    try:
        chunks = []
        while chunk := os.read(fd, 1 << 16):
            chunks.append(chunk)
    finally:
        os.close(fd)
    return b"".join(chunks)


def prediction_execute(*, prediction_id: int) -> Prediction | None:
    """Run the model on one pending prediction; None when it was already claimed or finished."""
    finished = predictions_execute(prediction_ids=[prediction_id])
    return finished[0] if finished else None


def predictions_execute(*, prediction_ids: list[int]) -> list[Prediction]:
    """Run the model on these predictions, in batches topped up with other waiting ones; returns those finished here.

    Safe to call twice with the same ids: each claim is atomic and a finished
    prediction is never recomputed, so the second call returns nothing.
    """
    if not prediction_ids:
        return []
    remaining, finished = set(prediction_ids), []
    while remaining:
        _model_loads_before_claiming()
        # Locked with SKIP LOCKED, so two workers never claim the same prediction; ours already running
        # (and not stale) or finished are left alone, so a redelivered message never recomputes a result.
        token = uuid.uuid4()
        try:
            batch, checkpoint_id = statements.predictions_claim(
                prediction_ids=sorted(remaining),
                limit=settings.INFERENCE_BATCH_SIZE,
                stale_after_s=running_stale_after().total_seconds(),
                max_attempts=settings.PREDICTION_MAX_ATTEMPTS,
                token=token,
            )
        except Exception as exc:
            if is_transient(exc):
                # The claim may have committed and its answer been lost with the connection: what it marked would
                # wait for the stale limit, then run one at a time, each claim counted. Handed back, uncounted,
                # the task's retry takes them at once.
                _claim_release(token=token)
            raise
        try:
            results = _predictions_run(predictions=batch, checkpoint_id=checkpoint_id) if batch else []
        except CheckpointDeletedError:
            # Staff deleted the model the claim named: no fault of the images, so taken again, uncounted, with the
            # checkpoint active now.
            logger.warning("checkpoint %s was deleted while predictions %s ran with it; taking them again",
                           checkpoint_id, [prediction.pk for prediction in batch])
            _predictions_release(predictions=batch, uncount=True)
            continue
        except Exception as exc:
            if isinstance(exc, ModelUnavailableError):
                _model_load_failed_at[0] = time.monotonic()
                _predictions_hand_back(predictions=batch, counted_ids=remaining)
            elif is_transient(exc):
                # Handing the claims back, uncounted, lets the task's retry or a redelivery claim them at once.
                _predictions_release(predictions=batch, uncount=True)
            raise
        ours = [prediction for prediction in results if prediction.pk in remaining]
        if not ours:
            # The rest are running elsewhere or finished; whatever rode along is done too.
            break
        finished += ours
        remaining -= {prediction.pk for prediction in ours}
    if not finished:
        logger.info("predictions %s are already running or finished; nothing to do", prediction_ids)
    return finished


# When this process last failed to load the active model (monotonic seconds); -inf while it has not.
_model_load_failed_at = [-math.inf]


def _model_loads_before_claiming() -> None:
    """In a process that recently failed to load the model, raise ModelUnavailableError unless it loads now.

    Nothing is claimed meanwhile: the message goes back for its retry, and healthy workers take the predictions.
    After MODEL_LOAD_RETRY_AFTER_SECONDS the process claims again, so that when no worker can load the model a
    prediction still reaches PREDICTION_MAX_ATTEMPTS hand-backs and fails with a message instead of waiting for ever.
    """
    if time.monotonic() - _model_load_failed_at[0] >= settings.MODEL_LOAD_RETRY_AFTER_SECONDS:
        return
    from classifier import inference
    from training.models import Checkpoint

    checkpoint_id = Checkpoint.objects.filter(is_active=True).values_list("pk", flat=True).first()
    try:
        _model_load(checkpoint_id=checkpoint_id)
    except inference.NoActiveCheckpointError:
        pass  # the claim fails the predictions with that message, as in a healthy worker
    _model_load_failed_at[0] = -math.inf


def _model_load(*, checkpoint_id: int | None, sha256: str | None = None):
    """The checkpoint's model; ModelUnavailableError when this worker cannot load it (see inference for the rest)."""
    from classifier import inference

    try:
        return inference.model_for_checkpoint_id(checkpoint_id=checkpoint_id, sha256=sha256)
    except (inference.NoActiveCheckpointError, SoftTimeLimitExceeded):
        raise
    except Exception as exc:
        if is_transient(exc):
            raise
        if (out_of_time := _time_limit_behind(exc)) is not None:
            # Reached while the file was read, and wrapped as a damaged checkpoint: not the model's fault either.
            raise out_of_time from None
        if _checkpoint_deleted(checkpoint_id=checkpoint_id):
            raise CheckpointDeletedError(f"checkpoint {checkpoint_id} was deleted") from exc
        # This worker's fault (a volume not mounted on its host, a damaged copy, a GPU error), not the images':
        # failing the batch would fail other people's predictions that a healthy worker can compute.
        logger.exception("could not load checkpoint %s in this worker", checkpoint_id)
        raise ModelUnavailableError(f"checkpoint {checkpoint_id} could not be loaded in this worker") from exc


def _predictions_run(*, predictions: list[Prediction], checkpoint_id: int | None) -> list[Prediction]:
    from classifier import inference

    try:
        # The claim read the active checkpoint's digest with its id: the cached model is checked without a query.
        loaded = _model_load(checkpoint_id=checkpoint_id, sha256=predictions[0].active_checkpoint_sha256)
    except inference.NoActiveCheckpointError as exc:
        return _predictions_save([_prediction_fail(prediction=p, error=str(exc)) for p in predictions])

    readable: list[Prediction] = []

    def stored_images() -> Iterator[Image.Image]:
        # Read one at a time as preprocessing asks for them: a batch of large pictures is never all in memory.
        for prediction in predictions:
            try:
                image = _open_upload_image(prediction.upload_image)
            except SoftTimeLimitExceeded:
                raise
            except FileNotFoundError:
                if not Upload.objects.filter(pk=prediction.upload_id).exists():
                    # Its owner deleted it, file and all, while the batch ran: nothing is left to answer.
                    logger.info("upload %s was deleted while its prediction was computed", prediction.upload_id)
                    continue
                logger.exception("stored image of prediction %s is missing", prediction.pk)
                _prediction_fail(
                    prediction=prediction, error="The stored image could not be read.", checkpoint_id=checkpoint_id
                )
                continue
            except Exception:  # noqa: BLE001 - a missing or damaged stored file fails this prediction only
                logger.exception("stored image of prediction %s could not be read", prediction.pk)
                _prediction_fail(
                    prediction=prediction, error="The stored image could not be read.", checkpoint_id=checkpoint_id
                )
                continue
            readable.append(prediction)
            yield image
            del image  # released before the next one is read

    # Out of time is not a bad image: the batch stays claimed, and after a lost worker's wait it is taken up
    # again, one prediction at a time.
    try:
        results = inference.predict_images(loaded=loaded, images=stored_images(), interrupts=(SoftTimeLimitExceeded,))
    except SoftTimeLimitExceeded:
        raise
    except Exception as exc:
        if is_transient(exc):
            raise
        # Each image's own failure is its result; what fails the whole batch is the model or its device (a GPU
        # out of memory or in an error state), as for a model that cannot load: the batch goes back, whole,
        # and this process loads the model afresh before it claims again.
        logger.exception("the model failed on a batch with checkpoint %s; handing the predictions back", checkpoint_id)
        inference.model_forget(checkpoint_id=checkpoint_id)
        raise ModelUnavailableError(f"checkpoint {checkpoint_id} failed in this worker") from exc
    finished = timezone.now()
    for prediction, result in zip(readable, results, strict=True):
        if isinstance(result, inference.EmptyImageError):
            _prediction_fail(
                prediction=prediction,
                error=f"{Prediction.NO_DIGIT_ERROR} {result}.",
                checkpoint_id=checkpoint_id,
            )
        elif isinstance(result, Exception):
            logger.error("prediction %s could not be preprocessed: %r", prediction.pk, result)
            # The exception's own text is for the log: it speaks of the code, not of the picture.
            _prediction_fail(prediction=prediction, error=PREPARE_FAILED_ERROR, checkpoint_id=checkpoint_id)
        else:
            prediction.input_pixels = result.input_pixels
            prediction.status = Prediction.Status.DONE
            prediction.checkpoint_id = checkpoint_id
            prediction.digit = result.digit
            prediction.confidence = result.confidence
            prediction.probabilities = result.probabilities
            prediction.device = str(loaded.device)
            prediction.queue_ms = (prediction.started_at - prediction.created_at).total_seconds() * 1000
            prediction.compute_ms = result.compute_ms
            prediction.several_digits = result.several_digits
            prediction.error = ""
            prediction.finished_at = finished
    try:
        return _predictions_save(predictions)
    except IntegrityError as exc:
        # The results name the checkpoint, which a deletion (waiting on nothing the worker holds) took meanwhile.
        if _checkpoint_deleted(checkpoint_id=checkpoint_id):
            raise CheckpointDeletedError(f"checkpoint {checkpoint_id} was deleted") from exc
        raise


def _checkpoint_deleted(*, checkpoint_id: int | None) -> bool:
    from training.models import Checkpoint

    return checkpoint_id is not None and not Checkpoint.objects.filter(pk=checkpoint_id).exists()


def _predictions_save(predictions: list[Prediction]) -> list[Prediction]:
    """Store a batch's results in one go, announced to waiting requests when they commit; returns those stored.

    A prediction claimed again meanwhile (this worker stalled past the stale limit) keeps the newer claim's result.
    """
    stored = statements.prediction_results_update(predictions=predictions, notify_channel=completion.CHANNEL)
    unstored = [prediction.pk for prediction in predictions if prediction.pk not in stored]
    if unstored:
        # Deleted with their uploads meanwhile (their owner's choice), or claimed again: only the latter is news.
        left = set(Prediction.objects.filter(pk__in=unstored).values_list("pk", flat=True))
        unstored = [pk for pk in unstored if pk in left]
    if unstored:
        logger.warning(
            "predictions %s were claimed again while this worker computed them; their results here are dropped",
            sorted(unstored),
        )
    return [prediction for prediction in predictions if prediction.pk in stored]


def _time_limit_behind(exc: BaseException | None) -> SoftTimeLimitExceeded | None:
    """The task's time limit, when it set off ``exc`` (a library's own error wrapping it)."""
    seen: set[int] = set()  # a chain can loop (``raise exc from exc``)
    while exc is not None and id(exc) not in seen:
        if isinstance(exc, SoftTimeLimitExceeded):
            return exc
        seen.add(id(exc))
        exc = exc.__cause__ or exc.__context__
    return None


def _claim_release(*, token: uuid.UUID) -> None:
    """Hand back, uncounted, whatever the claim made with ``token`` marked running; its answer was lost.

    Its rows are known only by that token, which this process drew for the claim and no other claim holds: the
    time the database stamped on them never reached this process.
    """
    connection_reopen_if_lost()
    try:
        Prediction.objects.filter(status=Prediction.Status.RUNNING, claim_token=token).update(
            status=Prediction.Status.PENDING, started_at=None, attempts=Greatest(F("attempts") - 1, 0)
        )
    except Exception:  # noqa: BLE001 - with the database gone the stale-running rule takes over
        logger.warning("could not release the predictions claimed with %s", token, exc_info=True)


def _predictions_release(*, predictions: list[Prediction], uncount: bool, model_hand_back: bool = False) -> None:
    """Hand claimed predictions back to the queue, each only while it is still held by the claim that took it.

    ``uncount``: the claim does not count as an attempt (the images were not at
    fault). ``model_hand_back``: it counts as a hand-back by a worker that could
    not run the model instead. A claim taken over by another worker meanwhile is
    left alone.
    """
    changes = {"status": Prediction.Status.PENDING, "started_at": None}
    if uncount:
        changes["attempts"] = Greatest(F("attempts") - 1, 0)
    if model_hand_back:
        changes["model_hand_backs"] = F("model_hand_backs") + 1
    connection_reopen_if_lost()
    try:
        _claimed_update(predictions=predictions, **changes)
    except Exception:  # noqa: BLE001 - with the database gone the stale-running rule takes over
        logger.warning("could not release predictions %s", [p.pk for p in predictions], exc_info=True)


def _claimed_update(*, predictions: list[Prediction], **changes) -> None:
    """Apply ``changes`` to each prediction only while the claim that took it still holds it."""
    by_claim: dict[int, list[int]] = {}
    for prediction in predictions:
        by_claim.setdefault(prediction.attempts, []).append(prediction.pk)
    for attempts, ids in by_claim.items():
        Prediction.objects.filter(pk__in=ids, status=Prediction.Status.RUNNING, attempts=attempts).update(**changes)


def _predictions_hand_back(*, predictions: list[Prediction], counted_ids: set[int]) -> None:
    """After this worker could not run the model: back to the queue, for a worker that can.

    None of them counts an attempt: no image was worked on, and the sweeper
    fails a prediction whose attempts run out as an image that kills its
    worker. The hand-back of a prediction the message asked for
    (``counted_ids``) is counted apart (``model_hand_backs``), so that when no
    worker can load the model (its file damaged or gone everywhere) it fails
    with a message after PREDICTION_MAX_ATTEMPTS of them instead of waiting for
    ever. Those that only topped the batch up are not counted there either:
    their own messages count for them.
    """
    counted = [p for p in predictions if p.pk in counted_ids]
    out_of_tries = [p for p in counted if p.model_hand_backs + 1 >= settings.PREDICTION_MAX_ATTEMPTS]
    if out_of_tries:
        # Users see this text; the reason (file paths, hashes) is in the workers' logs.
        error = (
            f"The model could not be loaded by the workers that took this prediction "
            f"({settings.PREDICTION_MAX_ATTEMPTS} tries); an administrator can find out why in their logs."
        )
        with transaction.atomic():
            # The failing hand-back counts like the others, so the row shows every one of them.
            _claimed_update(predictions=out_of_tries, model_hand_backs=F("model_hand_backs") + 1)
            _predictions_save([_prediction_fail(prediction=p, error=error) for p in out_of_tries])
    failed = {p.pk for p in out_of_tries}
    _predictions_release(predictions=[p for p in counted if p.pk not in failed], uncount=True, model_hand_back=True)
    _predictions_release(predictions=[p for p in predictions if p.pk not in counted_ids], uncount=True)
