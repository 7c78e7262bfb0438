"""The admin's start form: what a web process loads to show and read it."""
import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]

# Every URL's view imported, the start form shown and read, the API's start request read: what a web process does
# to start a run, in a fresh interpreter, since this one has torch loaded already.
_START_A_RUN_AS_THE_WEB_DOES = """
import json, sys
import django
django.setup()
from django.urls import get_resolver
get_resolver().url_patterns
from api.serializers import TrainingRunCreateSerializer
from training.forms import TrainingRunStartForm
form = TrainingRunStartForm(data={"architecture": "mlp", "seed": 0, "device": "auto"})
form.as_p()
serializer = TrainingRunCreateSerializer(data={"architecture": "cnn"})
print(json.dumps({
    "form": [form.is_valid(), form.cleaned_data.get("epochs")],
    "api": [serializer.is_valid(), serializer.validated_data.get("epochs")],
    "torch": "torch" in sys.modules,
}))
"""


def test_starting_a_run_from_the_admin_or_the_api_loads_no_torch_into_the_web_process():
    # torch takes some 700 MB and seconds to import: the web only reads the recipes' defaults.
    environment = {**os.environ, "DJANGO_SETTINGS_MODULE": "mnistsite.settings.test"}
    finished = subprocess.run(
        [sys.executable, "-c", _START_A_RUN_AS_THE_WEB_DOES], cwd=REPO, env=environment, capture_output=True,
        text=True, timeout=120, check=True,
    )
    outcome = json.loads(finished.stdout.strip().splitlines()[-1])
    assert outcome == {"form": [True, 5], "api": [True, 4], "torch": False}
