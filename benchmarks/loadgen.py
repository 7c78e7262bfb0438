"""A small closed-loop HTTP load generator: N client threads, keep-alive connections, per-request timings."""
from __future__ import annotations

import http.client
import io
import statistics
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlparse


def mnist_pngs(data_dir: Path, count: int, *, invert: bool = False) -> list[bytes]:
    """The first ``count`` MNIST test digits as PNG files (dark ink on white with ``invert``)."""
    from PIL import Image

    from training.ml.data import load_split

    images = []
    for pixels in load_split(data_dir, split="test").images[:count].numpy():
        buffer = io.BytesIO()
        Image.fromarray(255 - pixels if invert else pixels).save(buffer, format="PNG")
        images.append(buffer.getvalue())
    return images


def multipart(files: Sequence[tuple[str, str, bytes]]) -> tuple[bytes, str]:
    """Encode (field, filename, content) triples as multipart/form-data; returns (body, content type)."""
    boundary = uuid.uuid4().hex
    parts = []
    for name, filename, content in files:
        parts.append(
            f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"; filename="{filename}"\r\n'
            f"Content-Type: application/octet-stream\r\n\r\n".encode() + content + b"\r\n"
        )
    parts.append(f"--{boundary}--\r\n".encode())
    return b"".join(parts), f"multipart/form-data; boundary={boundary}"


@dataclass
class Record:
    """One request: when it started (wall clock, comparable with the server's timestamps), status and body."""

    started: float
    elapsed_ms: float
    status: int
    body: bytes


@dataclass
class Result:
    latencies_ms: list[float] = field(default_factory=list)
    images: int = 0
    statuses: dict[int, int] = field(default_factory=dict)
    seconds: float = 0.0
    records: list[Record] = field(default_factory=list)

    def summary(self) -> dict:
        ordered = sorted(self.latencies_ms)

        def pct(p: float) -> float | None:
            return round(ordered[min(len(ordered) - 1, int(p * len(ordered)))], 2) if ordered else None

        return {
            "requests": len(ordered),
            "images": self.images,
            "seconds": round(self.seconds, 3),
            "images_per_second": round(self.images / self.seconds, 1) if self.seconds else None,
            "latency_ms": {"p50": pct(0.50), "p95": pct(0.95), "p99": pct(0.99),
                           "mean": round(statistics.fmean(ordered), 2) if ordered else None},
            "statuses": {str(k): v for k, v in sorted(self.statuses.items())},
        }


def run_load(
    *,
    base_url: str,
    path: str,
    requests: Sequence[tuple[bytes, str, int]],
    concurrency: int,
    headers: Sequence[dict[str, str]] = ({},),
    keep_records: bool = False,
    accept: Callable[[int, bytes], bool] = lambda status, body: 200 <= status < 300,
) -> Result:
    """POST each (body, content type, image count) once, from `concurrency` threads; time each request.

    Client i sends ``headers[i]`` (the last of them when there are fewer): its own credentials, say.
    """
    target = urlparse(base_url)
    result = Result()
    lock = threading.Lock()
    queue = list(enumerate(requests))
    queue.reverse()

    def client(index: int) -> None:
        sent = {**headers[min(index, len(headers) - 1)]}
        conn = http.client.HTTPConnection(target.hostname, target.port, timeout=60)
        while True:
            with lock:
                if not queue:
                    break
                _, (body, content_type, images) = queue.pop()
            started_wall, started = time.time(), time.perf_counter()
            try:
                conn.request("POST", path, body=body, headers={"Content-Type": content_type, **sent})
                response = conn.getresponse()
                payload = response.read()
                status = response.status
            except (OSError, http.client.HTTPException):
                conn.close()
                conn = http.client.HTTPConnection(target.hostname, target.port, timeout=60)
                status, payload = 599, b""
            elapsed = (time.perf_counter() - started) * 1000
            with lock:
                result.statuses[status] = result.statuses.get(status, 0) + 1
                if accept(status, payload):
                    result.latencies_ms.append(elapsed)
                    result.images += images
                if keep_records:
                    result.records.append(Record(started_wall, elapsed, status, payload))
        conn.close()

    threads = [threading.Thread(target=client, args=(index,)) for index in range(concurrency)]
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    result.seconds = time.perf_counter() - started
    return result
