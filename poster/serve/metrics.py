"""Prometheus text-format metrics for ``poster serve`` (``GET /metrics``), with no dependency.

Label values come only from a fixed set (route templates, status codes), never from what a client
sends, so the number of series -- and the memory they take -- stays bounded over any run.
"""

from __future__ import annotations

import threading
from collections import defaultdict

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128)


class Histogram:
    """Cumulative-bucket histogram (Prometheus ``le`` semantics)."""

    def __init__(self, buckets: tuple[float, ...]) -> None:
        self.buckets = tuple(buckets)
        self.counts = [0] * len(self.buckets)
        self.total = 0
        self.sum = 0.0

    def observe(self, value: float) -> None:
        for i, bound in enumerate(self.buckets):
            if value <= bound:
                self.counts[i] += 1
        self.total += 1
        self.sum += value

    def lines(self, name: str, labels: str = "") -> list[str]:
        sep = "," if labels else ""
        out = [f'{name}_bucket{{{labels}{sep}le="{_number(b)}"}} {c}' for b, c in zip(self.buckets, self.counts)]
        out.append(f'{name}_bucket{{{labels}{sep}le="+Inf"}} {self.total}')
        braces = f"{{{labels}}}" if labels else ""
        out += [f"{name}_sum{braces} {self.sum:.6f}", f"{name}_count{braces} {self.total}"]
        return out


def _number(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else repr(float(value))


class ServerMetrics:
    """Requests, errors, latency, model batch sizes and times, faces, queue depth."""

    def __init__(self, queue_capacity: int) -> None:
        self._lock = threading.Lock()
        self.requests: dict[tuple[str, str, int], int] = defaultdict(int)
        self.latency: dict[str, Histogram] = {}
        self.batch_sizes = Histogram(BATCH_BUCKETS)
        self.batch_seconds = Histogram(LATENCY_BUCKETS)
        self.faces = 0
        self.images = 0
        self.rejected_full = 0
        self.queue_depth = 0
        self.queue_capacity = queue_capacity

    def observe_request(self, method: str, route: str, status: int, seconds: float) -> None:
        with self._lock:
            self.requests[(method, route, status)] += 1
            self.latency.setdefault(route, Histogram(LATENCY_BUCKETS)).observe(seconds)

    def observe_batch(self, size: int, seconds: float) -> None:
        with self._lock:
            self.batch_sizes.observe(size)
            self.batch_seconds.observe(seconds)

    def observe_image(self, faces: int) -> None:
        with self._lock:
            self.images += 1
            self.faces += faces

    def render(self) -> str:
        with self._lock:
            lines = ["# HELP poster_requests_total HTTP requests answered, by method, route and status.",
                     "# TYPE poster_requests_total counter"]
            for (method, route, status), n in sorted(self.requests.items()):
                lines.append(f'poster_requests_total{{method="{method}",route="{route}",status="{status}"}} {n}')
            lines += ["# HELP poster_request_errors_total HTTP requests answered with a 4xx or 5xx status.",
                      "# TYPE poster_request_errors_total counter"]
            errors: dict[tuple[str, int], int] = defaultdict(int)
            for (_, route, status), n in self.requests.items():
                if status >= 400:
                    errors[(route, status)] += n
            for (route, status), n in sorted(errors.items()):
                lines.append(f'poster_request_errors_total{{route="{route}",status="{status}"}} {n}')
            lines += ["# HELP poster_request_duration_seconds Time from request to answer, by route.",
                      "# TYPE poster_request_duration_seconds histogram"]
            for route, hist in sorted(self.latency.items()):
                lines += hist.lines("poster_request_duration_seconds", f'route="{route}"')
            lines += ["# HELP poster_batch_size Faces per model batch (micro-batching across requests).",
                      "# TYPE poster_batch_size histogram", *self.batch_sizes.lines("poster_batch_size"),
                      "# HELP poster_batch_duration_seconds Model time per batch.",
                      "# TYPE poster_batch_duration_seconds histogram",
                      *self.batch_seconds.lines("poster_batch_duration_seconds"),
                      "# HELP poster_images_total Images recognised.", "# TYPE poster_images_total counter",
                      f"poster_images_total {self.images}",
                      "# HELP poster_faces_total Faces recognised.", "# TYPE poster_faces_total counter",
                      f"poster_faces_total {self.faces}",
                      "# HELP poster_queue_depth Images admitted and not yet answered.",
                      "# TYPE poster_queue_depth gauge", f"poster_queue_depth {self.queue_depth}",
                      "# HELP poster_queue_capacity Images admitted at most at once (--max-queue); more get 503.",
                      "# TYPE poster_queue_capacity gauge", f"poster_queue_capacity {self.queue_capacity}",
                      "# HELP poster_rejected_busy_total Requests refused with 503 because the queue was full.",
                      "# TYPE poster_rejected_busy_total counter", f"poster_rejected_busy_total {self.rejected_full}"]
        return "\n".join(lines) + "\n"
