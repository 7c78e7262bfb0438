"""App configuration for classifier."""
from django.apps import AppConfig


class ClassifierConfig(AppConfig):
    name = "classifier"
    verbose_name = "Classifier"

    def ready(self) -> None:
        from classifier import signals  # noqa: F401 - connects the receivers
        from mnistsite.database_types import timestamptz_loader_register

        # Here because mnistsite is no installed app: every web and worker process sets up this one.
        timestamptz_loader_register()
