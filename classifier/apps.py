"""App configuration for classifier."""
from django.apps import AppConfig


class ClassifierConfig(AppConfig):
    name = "classifier"
    verbose_name = "Classifier"

    def ready(self) -> None:
        from classifier import signals  # noqa: F401 - connects the receivers
