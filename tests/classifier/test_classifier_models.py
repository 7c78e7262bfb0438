"""Models: rows load from what is stored in them, never from their files."""
import io

import pytest
from django.core.files.storage import default_storage

from classifier import services
from classifier.models import Upload

pytestmark = pytest.mark.django_db


def test_an_upload_recorded_without_its_size_loads_without_its_file_being_read(user, digit_png, published):
    # Width and height are the picture's as sent (a photo is stored smaller), written by validation; reading a list
    # of uploads must not open their files, nor fail on one whose file is gone.
    (prediction,) = services.predictions_submit(owner=user, files=[(io.BytesIO(digit_png(0)), "0.png")], source="file")
    Upload.objects.filter(pk=prediction.upload_id).update(width=0, height=0)
    default_storage.delete(prediction.upload.image.name)

    upload = Upload.objects.get(pk=prediction.upload_id)

    assert (upload.width, upload.height) == (0, 0)
