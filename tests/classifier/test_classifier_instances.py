"""Instances built positionally are the ones the keyword constructor builds."""
from __future__ import annotations

import datetime as dt
import hashlib
import itertools
import uuid

import pytest
from django.db.models.expressions import DatabaseDefault
from django.db.models.fields.files import FieldFile
from django.utils import timezone

from classifier.instances import instances_new
from classifier.models import Prediction, Upload, upload_image_path
from classifier.services.files import _uploads_build
from classifier.services.predictions import published_now
from classifier.validation import ValidatedImage
from mnistsite.database_now import Now


def _upload_built_one_by_one(*, owner, image, source, sample_set="", label=None) -> Upload:
    # The keyword construction the batch replaced, kept as the reference.
    upload = Upload(
        owner=owner, original_name=image.original_name, format=image.format, size=image.size,
        stored_size=len(image.content), width=image.width, height=image.height, sha256=image.sha256, source=source,
        sample_set=sample_set, label=label, created_at=timezone.now(),
    )
    upload.image.name = upload_image_path(upload, "upload.png")
    return upload


def _same_instance(new, old) -> None:
    """The same values of the same types, the same state and the same cached related objects."""
    ours, theirs = dict(vars(new)), dict(vars(old))
    state, old_state = ours.pop("_state"), theirs.pop("_state")
    assert ours.keys() == theirs.keys()
    for name, value in ours.items():
        expected = theirs[name]
        assert type(value) is type(expected), name
        if isinstance(value, FieldFile):
            assert (value.name, value.field) == (expected.name, expected.field), name
            assert value.instance is new and expected.instance is old
        elif isinstance(value, DatabaseDefault):
            assert value.expression == expected.expression and value.output_field is expected.output_field, name
        else:
            assert value == expected, name
    assert (state.adding, state.db) == (old_state.adding, old_state.db)
    assert state.fields_cache.keys() == old_state.fields_cache.keys()
    for name, related in state.fields_cache.items():
        assert related is old_state.fields_cache[name], name


@pytest.fixture
def predictable(monkeypatch):
    """The clock and uuid4 give the same sequence to whichever construction is run after a reset."""
    start = dt.datetime(2024, 12, 31, 23, 59, 59, 999990, tzinfo=dt.UTC)

    def reset():
        moments = (start + dt.timedelta(microseconds=i) for i in itertools.count())
        ids = (uuid.UUID(int=i, version=4) for i in itertools.count(1))
        monkeypatch.setattr(timezone, "now", lambda: next(moments))
        monkeypatch.setattr(uuid, "uuid4", lambda: next(ids))

    return reset


def _images(count: int) -> list[ValidatedImage]:
    return [
        ValidatedImage(
            content=b"p" * (i * 37 % 500), original_name=["", "a.png", "ü ß.jpeg", "x" * 255][i % 4],
            format=["PNG", "JPEG", "GIF", "WEBP"][i % 4], size=i * 1013, width=i % 7, height=28 + i,
            sha256=hashlib.sha256(bytes([i])).hexdigest(),
        )
        for i in range(count)
    ]


@pytest.mark.django_db
@pytest.mark.parametrize("source", list(Upload.Source))
@pytest.mark.parametrize("sample_set, label", [("", None), ("mnist", 0), ("other", 9), ("", 3)])
def test_uploads_built_in_a_batch_are_the_ones_the_keyword_constructor_builds(
    user, predictable, source, sample_set, label
):
    for count in (1, 2, 13):
        images = _images(count)
        predictable()
        new = _uploads_build(owner=user, images=images, source=source, sample_set=sample_set, label=label)
        predictable()
        old = [
            _upload_built_one_by_one(owner=user, image=image, source=source, sample_set=sample_set, label=label)
            for image in images
        ]
        assert len(new) == count
        for a, b in zip(new, old, strict=True):
            _same_instance(a, b)
            assert a.owner is user and a._state.db == "default"
        # Each its own moment, as one by one: the clock is read once an upload.
        assert len({upload.created_at for upload in new}) == count


def test_uploads_of_an_unsaved_owner_route_both_to_the_database_as_the_keyword_constructor_does(
    django_user_model, predictable
):
    owners = [django_user_model(username="a"), django_user_model(username="b")]
    predictable()
    (new,) = _uploads_build(owner=owners[0], images=_images(1), source="file")
    predictable()
    old = _upload_built_one_by_one(owner=owners[1], image=_images(1)[0], source="file")
    assert new.owner is owners[0] and old.owner is owners[1]
    old._state.fields_cache["owner"] = owners[0]
    _same_instance(new, old)
    assert owners[0]._state.db == owners[1]._state.db == "default"


@pytest.mark.django_db
@pytest.mark.parametrize("published", [True, False])
def test_predictions_built_in_a_batch_are_the_ones_the_keyword_constructor_builds(user, predictable, published):
    predictable()
    uploads = _uploads_build(owner=user, images=_images(9), source="api")
    for count in (1, 9):
        common = published_now() if published else {}
        new = instances_new(Prediction, rows=[{"upload": upload} for upload in uploads[:count]], common=common)
        old = [Prediction(upload=upload, **common) for upload in uploads[:count]]
        for a, b, upload in zip(new, old, uploads[:count], strict=True):
            _same_instance(a, b)
            assert a.upload is upload
            assert a.published_at is (common["published_at"] if published else None)
        # The database default is a new expression for each, as the constructor asks for it each time.
        assert len({id(prediction.created_at) for prediction in new}) == count


def test_every_field_of_a_prediction_given_or_not_is_set_as_the_keyword_constructor_sets_it():
    from training.models import Checkpoint

    checkpoint = Checkpoint(pk=4, epoch=1, architecture="mlp", path="p", sha256="0" * 64, size=1)
    upload = Upload(pk=8)
    values = {
        "status": Prediction.Status.DONE, "digit": 3, "confidence": 0.5, "probabilities": [0.1] * 10,
        "input_pixels": bytes(784), "device": "cpu", "queue_ms": 1.5, "compute_ms": None, "error": "e",
        "several_digits": True, "feedback": 2, "publish_attempts": 4, "attempts": 1, "published_at": Now(),
        "started_at": timezone.now(), "finished_at": None, "claim_token": uuid.uuid4(), "id": 12,
    }
    for size in range(len(values) + 1):
        for names in itertools.islice(itertools.combinations(values, size), 40):
            for related in ({"upload": upload}, {"upload": upload, "checkpoint": checkpoint}, {"upload_id": 8},
                            {"checkpoint_id": None}):
                rows = [{name: values[name] for name in names}, {name: values[name] for name in names}]
                new = instances_new(Prediction, rows=rows, common=related)
                old = [Prediction(**related, **row) for row in rows]
                for a, b in zip(new, old, strict=True):
                    _same_instance(a, b)


def test_names_the_positional_plan_cannot_place_go_to_the_keyword_constructor_with_its_errors():
    upload = Upload(pk=1)
    with pytest.raises(TypeError, match="unexpected keyword"):
        instances_new(Prediction, rows=[{"upload": upload, "nonsense": 1}], common={})
    with pytest.raises(TypeError, match="multiple values"):
        instances_new(Prediction, rows=[{"upload": upload}], common={"upload": upload})
    with pytest.raises(ValueError, match="must be a"):
        instances_new(Prediction, rows=[{"upload": Prediction()}], common={})
    # Rows naming different fields each get what they name.
    a, b = instances_new(Prediction, rows=[{"digit": 1}, {"error": "e"}], common={})
    assert (a.digit, a.error, b.digit, b.error) == (1, "", None, "e")
    assert instances_new(Prediction, rows=[], common={"digit": 1}) == []
