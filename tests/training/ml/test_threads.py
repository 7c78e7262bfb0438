"""Training's thread count is torch's own default, worked out again in a process that changed it."""

import os
import subprocess
import sys

import pytest
import torch

from tests.processes import REPO
from training.ml.threads import default_num_threads

FRESH_PROCESS = (
    "import torch; from training.ml.threads import default_num_threads; "
    "print(torch.get_num_threads(), default_num_threads())"
)


@pytest.mark.parametrize(
    "variables",
    [{}, {"OMP_NUM_THREADS": "1"}, {"MKL_NUM_THREADS": "1", "OMP_NUM_THREADS": "2"}],
    ids=["no-variables", "omp-1", "mkl-wins-over-omp"],
)
def test_the_training_thread_count_is_what_torch_starts_a_fresh_process_with(variables):
    env = {key: value for key, value in os.environ.items() if key not in ("OMP_NUM_THREADS", "MKL_NUM_THREADS")}
    completed = subprocess.run(
        [sys.executable, "-c", FRESH_PROCESS], cwd=REPO, env={**env, **variables}, capture_output=True, text=True,
        timeout=120, check=True,
    )
    torch_default, ours = completed.stdout.split()
    assert ours == torch_default


def test_the_training_thread_count_does_not_follow_a_count_set_in_this_process():
    before = torch.get_num_threads()
    expected = default_num_threads()
    try:
        torch.set_num_threads(1)
        assert default_num_threads() == expected
    finally:
        torch.set_num_threads(before)
