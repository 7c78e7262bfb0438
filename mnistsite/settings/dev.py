"""Settings for a developer's laptop: DEBUG on unless the environment says otherwise."""
import os

os.environ.setdefault("DEBUG", "true")

from mnistsite.settings.base import *  # noqa: E402,F403
