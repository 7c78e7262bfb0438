"""How many intra-op threads training uses: torch's own default, even in a process that changed it."""

from __future__ import annotations

import os
from pathlib import Path

_THREAD_VARIABLES = ("OMP_NUM_THREADS", "MKL_NUM_THREADS")


def _usable_cpus() -> set[int]:
    if hasattr(os, "sched_getaffinity"):
        return set(os.sched_getaffinity(0))
    return set(range(os.cpu_count() or 1))


def _physical_cores(cpus: set[int]) -> int:
    # Two hyper-threads of one core count once: torch sizes its pool by cores, as they do not add to its throughput.
    cores = set()
    for cpu in cpus:
        topology = Path(f"/sys/devices/system/cpu/cpu{cpu}/topology")
        try:
            cores.add(((topology / "physical_package_id").read_text(), (topology / "core_id").read_text()))
        except OSError:
            return len(cpus)  # no topology to read (not Linux, or hidden): every CPU counts
    return len(cores)


def default_num_threads() -> int:
    """The intra-op thread count torch starts a fresh process with, on this host.

    After ``torch.set_num_threads`` (an inference worker sets 1) torch cannot tell its
    default any more, so it is worked out again the way torch works it out: the
    physical cores among the CPUs this process may run on, or fewer where
    ``MKL_NUM_THREADS`` (else ``OMP_NUM_THREADS``) asks for fewer.
    """
    cores = max(_physical_cores(_usable_cpus()), 1)
    asked = None
    for name in _THREAD_VARIABLES:  # the later wins, as in torch
        try:
            value = int(os.environ.get(name, ""))
        except ValueError:
            continue
        if value > 0:
            asked = value
    return min(cores, asked) if asked else cores
