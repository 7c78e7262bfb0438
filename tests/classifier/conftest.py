"""Classifier test fixtures, defined in tests/classifier/fixtures.py so the browser tests share them."""
from tests.classifier.fixtures import (  # noqa: F401
    active_checkpoint,
    always_seven_model_file,
    digit_png,
    fresh_model_cache,
    mnist_image,
    mnist_test_split,
    register_checkpoint,
    trained_model_file,
)
