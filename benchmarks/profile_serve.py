"""`make bench-profile`: where the stack's Python time goes under an upload load, sampled with py-spy (JSON).

bench-serve says how much CPU each role spends per image; this says on what. It
starts the same stack and runs an upload load a few times over while py-spy
samples every web and worker process (only while they hold the GIL, so waits
on the database or the broker do not count). For each role it reports the
functions with the largest share of the samples: inclusive (the function and
everything it calls) and self (the function's own lines).
"""
from __future__ import annotations

import argparse
import json
import re
import shutil
import signal
import subprocess
import sys
import tempfile
from collections import Counter
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.bench_serve import DATA_DIR, upload_load  # noqa: E402
from benchmarks.cpu_usage import PROC, cpu_profile, cpu_snapshot, stat_fields  # noqa: E402
from benchmarks.loadgen import Result, mnist_pngs  # noqa: E402
from benchmarks.stack import running_stack  # noqa: E402

PROFILED_ROLES = ("web", "worker")
# py-spy names a frame "function (file.py:line)"; the same function on another line is the same function.
_LINE_NUMBER = re.compile(r":\d+\)$")


def _stacks(lines: Iterable[str]) -> Iterator[tuple[list[str], int]]:
    """Each stack of py-spy's collapsed output ("frame;frame;frame count") with its number of samples."""
    for line in lines:
        stack, _, count = line.strip().rpartition(" ")
        if stack and count.isdigit():
            yield [_LINE_NUMBER.sub(")", frame) for frame in stack.split(";")], int(count)


def collapsed_profile(lines: Iterable[str], *, top: int) -> dict:
    """The ``top`` functions by share of the samples, inclusive and self, largest first."""
    inclusive: Counter[str] = Counter()
    own: Counter[str] = Counter()
    total = 0
    for frames, samples in _stacks(lines):
        total += samples
        for frame in set(frames):  # a recursive function counts once per sample
            inclusive[frame] += samples
        own[frames[-1]] += samples

    def shares(counter: Counter[str]) -> list[dict]:
        return [{"function": frame, "share": round(count / total, 3)} for frame, count in counter.most_common(top)]

    return {"samples": total, "inclusive": shares(inclusive), "self": shares(own)}


def _session(pid: int) -> int | None:
    try:
        return int(stat_fields((PROC / str(pid) / "stat").read_text())[3])
    except OSError:
        return None  # exited meanwhile


def role_pids(roles: Iterable[str], *, sessions: Iterable[int]) -> dict[str, list[int]]:
    """The live processes of each role within these sessions, told apart as bench-serve's CPU accounting does."""
    sessions = set(sessions)
    found: dict[str, list[int]] = {role: [] for role in roles}
    for pid, (role, _) in cpu_snapshot().processes.items():
        if role in found and _session(pid) in sessions:
            found[role].append(pid)
    return {role: sorted(pids) for role, pids in found.items()}


@contextmanager
def sampling(pids: list[int], directory: Path, *, rate: int):
    """py-spy records each process while the block runs; yields the file each one has written by the end."""
    venv_spy = Path(sys.executable).with_name("py-spy")
    spy = str(venv_spy) if venv_spy.exists() else shutil.which("py-spy") or "py-spy"
    outputs = {pid: directory / f"{pid}.txt" for pid in pids}
    recorders = {
        pid: subprocess.Popen(
            [spy, "record", "--pid", str(pid), "--gil", "--nonblocking", "--rate", str(rate), "--format", "raw",
             "--output", str(path)],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
        )
        for pid, path in outputs.items()
    }
    try:
        yield outputs
    finally:
        for recorder in recorders.values():
            recorder.send_signal(signal.SIGINT)  # py-spy writes its file when interrupted
        # py-spy's first line says what went wrong; a backtrace follows.
        errors = {pid: (recorder.communicate(timeout=60)[1].decode().splitlines() or [""])[0]
                  for pid, recorder in recorders.items()}
    missing = [f"process {pid}: {errors[pid]}" for pid, path in outputs.items() if not path.exists()]
    if missing:
        raise RuntimeError("py-spy wrote no profile; it needs a running process and permission to trace it:\n"
                           + "\n".join(missing))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=1000)
    parser.add_argument("--per-request", type=int, default=1, help="images per upload request (1 to 32)")
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=3, help="times the load runs while sampled")
    parser.add_argument("--rate", type=int, default=200, help="samples per second per process")
    parser.add_argument("--top", type=int, default=40, help="functions listed per role")
    parser.add_argument("--stacks", type=Path, help="also write each role's collapsed stacks here (ROLE.txt), "
                        "the input flame graph tools take")
    args = parser.parse_args()
    images = mnist_pngs(DATA_DIR, args.images)
    with tempfile.TemporaryDirectory(prefix="bench-profile-") as tmp:
        workdir = Path(tmp)
        with running_stack(workdir / "stack") as stack:
            upload_load(stack, images, 1, 2)  # warm-up: model loaded, connections open
            upload_load(stack, images, args.per_request, args.concurrency)
            pids = role_pids(PROFILED_ROLES, sessions=stack.sessions)
            samples_dir = workdir / "samples"
            samples_dir.mkdir()
            before = cpu_snapshot()
            with sampling([pid for role in PROFILED_ROLES for pid in pids[role]], samples_dir, rate=args.rate) as files:
                loads = [upload_load(stack, images, args.per_request, args.concurrency) for _ in range(args.rounds)]
            summary = Result(
                latencies_ms=[ms for load in loads for ms in load.latencies_ms],
                images=sum(load.images for load in loads),
                statuses=dict(sum((Counter(load.statuses) for load in loads), Counter())),
                seconds=sum(load.seconds for load in loads),
            ).summary()
            summary["cpu"] = cpu_profile(before, cpu_snapshot(), images=summary["images"])
            profiles = {}
            for role in PROFILED_ROLES:
                lines = {pid: files[pid].read_text().splitlines() for pid in pids[role]}
                if args.stacks:
                    args.stacks.mkdir(parents=True, exist_ok=True)
                    (args.stacks / f"{role}.txt").write_text("".join(f"{line}\n" for pid in lines for line in lines[pid]))
                profiles[role] = collapsed_profile([line for pid in lines for line in lines[pid]], top=args.top)
                # A Celery worker's parent (Kombu, the pool) and its pool processes (the tasks) show apart here.
                profiles[role]["samples_per_process"] = {
                    str(pid): sum(samples for _, samples in _stacks(lines[pid])) for pid in lines
                }
    report = {
        "per_request": args.per_request,
        "concurrency": args.concurrency,
        # Sampling costs CPU of its own (it shows as "other"): read throughput from bench-serve, not from here.
        "load": summary,
        "python_time": profiles,
    }
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
