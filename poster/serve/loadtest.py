"""A bounded load test of ``poster serve`` (loopback only): ``python -m poster.serve.loadtest``.

It starts the server as a child process on a free 127.0.0.1 port and measures, in one run:

* ``serial``: one client, one request at a time -- every model call is a batch of 1 (what a
  request-per-call service gets);
* ``concurrent``: ``--clients`` clients for ``--seconds`` -- the server micro-batches their faces;

then prints requests/s, p50/p99 latency, errors, the server's peak and start/end RSS and the
batch sizes it used, and the throughput ratio concurrent / serial.  ``--json FILE`` writes it all.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import json
import os
import re
import socket
import subprocess
import sys
import tempfile
import threading
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import httpx

ROOT = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def server_process(*options: str, env: dict[str, str] | None = None, timeout: float = 120.0) -> Iterator[tuple[str, subprocess.Popen]]:
    """``(base_url, process)`` of ``poster serve`` started with ``options`` on a free loopback port,
    once ``/readyz`` answers; the process is stopped on exit.  Its output goes to ``process.log``
    (a temporary file)."""
    port = free_port()
    full_env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_WAIT_POLICY": "PASSIVE", **(env or {})}
    log = tempfile.TemporaryFile(mode="w+")  # a file, not a pipe: a pipe nobody reads could block the server
    proc = subprocess.Popen([sys.executable, "-m", "poster", "serve", "--host", "127.0.0.1", "--port", str(port),
                             "--log-level", "warning", *options], env=full_env, cwd=str(ROOT),
                            stdout=log, stderr=subprocess.STDOUT, text=True)
    proc.log = log
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + timeout
        while True:
            if proc.poll() is not None:
                log.seek(0)
                raise RuntimeError(f"poster serve exited with {proc.returncode}: {log.read()}")
            try:
                if httpx.get(f"{base}/readyz", timeout=2.0).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError("poster serve did not become ready in time")
            time.sleep(0.2)
        yield base, proc
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


def memory_kib(pid: int) -> dict[str, int]:
    """Current (VmRSS) and peak (VmHWM) resident memory of a process, in KiB (Linux)."""
    found = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            found[key] = int(value.split()[0])
    return found


@contextmanager
def _sampling_rss(pid: int, every: float = 0.5) -> Iterator[list[int]]:
    """RSS samples (KiB) of ``pid`` taken every ``every`` seconds while the block runs."""
    samples: list[int] = []
    done = threading.Event()

    def sample() -> None:
        while not done.wait(every):
            samples.append(memory_kib(pid)["VmRSS"])

    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    try:
        yield samples
    finally:
        done.set()
        thread.join()


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))] if ordered else float("nan")


def drive(base: str, image: bytes, clients: int, seconds: float, query: str = "",
          max_requests: int = 100_000) -> dict:
    """``clients`` threads posting ``image`` back to back for ``seconds``; latency and status stats."""
    latencies: list[float] = []
    errors: list[str] = []
    labels: set[str] = set()
    lock = threading.Lock()
    stop_at = time.monotonic() + seconds

    def client() -> None:
        with httpx.Client(timeout=60.0) as http:
            while time.monotonic() < stop_at:
                with lock:
                    if len(latencies) + len(errors) >= max_requests:
                        return
                started = time.perf_counter()
                try:
                    r = http.post(f"{base}/v1/predict{query}", content=image, headers={"Content-Type": "image/jpeg"})
                    ok = r.status_code == 200
                    detail = "" if ok else f"{r.status_code} {r.text[:100]}"
                    found = {f["label"] for f in r.json()["faces"]} if ok else set()
                except httpx.HTTPError as exc:
                    ok, detail, found = False, repr(exc), set()
                with lock:
                    (latencies.append(time.perf_counter() - started) if ok else errors.append(detail))
                    labels.update(found)

    started = time.perf_counter()
    threads = [threading.Thread(target=client) for _ in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - started
    return {"clients": clients, "seconds": round(wall, 2), "requests": len(latencies), "errors": len(errors),
            "error_samples": errors[:3], "requests_per_s": round(len(latencies) / wall, 2),
            "p50_ms": round(_percentile(latencies, 0.5) * 1000, 1),
            "p99_ms": round(_percentile(latencies, 0.99) * 1000, 1), "labels": sorted(labels)}


def batch_sizes(base: str, headers: dict | None = None) -> dict[str, int]:
    """The server's ``poster_batch_size`` histogram: {le: cumulative count} and the total."""
    text = httpx.get(f"{base}/metrics", headers=headers).text
    found = dict(re.findall(r'poster_batch_size_bucket\{le="([^"]+)"\} (\d+)', text))
    return {k: int(v) for k, v in found.items()}


def _merge(phases: list[dict]) -> dict:
    """Totals of several rounds of one phase (latency percentiles are kept per round: the worst is shown)."""
    requests = sum(p["requests"] for p in phases)
    seconds = sum(p["seconds"] for p in phases)
    return {"clients": phases[0]["clients"], "seconds": round(seconds, 2), "requests": requests,
            "errors": sum(p["errors"] for p in phases), "requests_per_s": round(requests / seconds, 2),
            "p50_ms": max(p["p50_ms"] for p in phases), "p99_ms": max(p["p99_ms"] for p in phases),
            "labels": sorted(set().union(*(p["labels"] for p in phases))),
            "error_samples": [e for p in phases for e in p["error_samples"]][:3]}


def run(image_path: Path, clients: int, seconds: float, serial_seconds: float, options: list[str],
        query: str = "", rounds: int = 1) -> dict:
    """Serial and concurrent phases alternate ``rounds`` times (``seconds`` and ``serial_seconds`` in
    all), so that a change in the machine's other load hits both alike."""
    image = image_path.read_bytes()
    serial_rounds, concurrent_rounds = [], []
    with server_process(*options) as (base, proc):
        drive(base, image, 1, 0, query, max_requests=2)  # warm-up (first calls pay allocations)
        before = memory_kib(proc.pid)
        with _sampling_rss(proc.pid) as samples:
            for _ in range(rounds):
                serial_rounds.append(drive(base, image, 1, serial_seconds / rounds, query))
                concurrent_rounds.append(drive(base, image, clients, seconds / rounds, query))
        after = memory_kib(proc.pid)
        sizes = batch_sizes(base)
    serial, concurrent = _merge(serial_rounds), _merge(concurrent_rounds)
    half = samples[len(samples) // 2:] or samples
    ratio = concurrent["requests_per_s"] / serial["requests_per_s"] if serial["requests_per_s"] else float("nan")
    return {"image": image_path.name, "query": query, "server_options": options, "rounds": rounds,
            "serial": serial, "concurrent": concurrent, "throughput_ratio": round(ratio, 2),
            "ratio_per_round": [round(c["requests_per_s"] / s["requests_per_s"], 2) if s["requests_per_s"] else None
                                for s, c in zip(serial_rounds, concurrent_rounds)],
            "rss_mib_before": round(before["VmRSS"] / 1024, 1), "rss_mib_after": round(after["VmRSS"] / 1024, 1),
            "peak_rss_mib": round(after["VmHWM"] / 1024, 1),
            # flat memory: RSS over the second half of the run, lowest and highest sample
            "rss_mib_second_half": [round(min(half) / 1024, 1), round(max(half) / 1024, 1)] if half else None,
            "rss_mib_timeline": [round(v / 1024) for v in samples[::10]],  # every 5 s
            "batch_size_histogram": sizes, "cpus": os.cpu_count(), "load_average": list(os.getloadavg())}


def worst_case_upload(megapixels: float = 39.2, mebibytes: float = 10.0) -> bytes:
    """A JPEG of ``megapixels`` (a smooth gradient, so it is small) padded after its end marker to
    ``mebibytes`` minus framing: an upload as large, and a picture as large, as the defaults admit."""
    import io

    import numpy as np
    from PIL import Image

    width = int((megapixels * 1e6 * 5 / 4) ** 0.5)
    height = int(megapixels * 1e6 / width)
    row = np.linspace(0, 255, width, dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(np.repeat(np.tile(row, (height, 1))[:, :, None], 3, axis=2)).save(buffer, "JPEG", quality=90)
    data = buffer.getvalue()
    return data + b"\0" * max(0, int(mebibytes * 2**20) - 1024 - len(data))


def flood(image: bytes, clients: int, floods: int, options: list[str], settle: float = 4.0) -> dict:
    """``floods`` bursts of ``clients`` threads posting ``image`` once each, all at once, to a server on
    a loopback port: the answers' status codes, and the server's peak RSS and its RSS ``settle``
    seconds after each burst (what a flood leaves behind)."""
    rounds = []
    with server_process(*options) as (base, proc):
        start = memory_kib(proc.pid)["VmRSS"]

        def one(_: int) -> str:
            try:
                return str(httpx.post(f"{base}/v1/predict", content=image, headers={"Content-Type": "image/jpeg"},
                                      timeout=180).status_code)
            except httpx.HTTPError as exc:
                return type(exc).__name__

        for _ in range(floods):
            with concurrent.futures.ThreadPoolExecutor(clients) as pool:
                answers = list(pool.map(one, range(clients)))
            peak = memory_kib(proc.pid)["VmHWM"]
            time.sleep(settle)
            after = memory_kib(proc.pid)["VmRSS"]
            rounds.append({"answers": {c: answers.count(c) for c in sorted(set(answers))},
                           "peak_rss_mib": round(peak / 1024), "rss_mib_after": round(after / 1024)})
    return {"upload_mib": round(len(image) / 2**20, 2), "clients": clients, "server_options": options,
            "rss_mib_start": round(start / 1024), "floods": rounds}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--image", type=Path, default=ROOT / "examples" / "astronaut.jpg")
    p.add_argument("--clients", type=int, default=8)
    p.add_argument("--seconds", type=float, default=30.0)
    p.add_argument("--serial-seconds", type=float, default=15.0)
    p.add_argument("--rounds", type=int, default=3, help="serial and concurrent phases alternate this many times")
    p.add_argument("--detector", default="yunet", choices=("yunet", "none"))
    p.add_argument("--json", type=Path, default=None, help="also write the numbers here")
    p.add_argument("--flood", type=int, default=0, metavar="CLIENTS",
                   help="instead: 3 floods of CLIENTS uploads at once of a 39 MP JPEG padded to 10 MiB (the "
                        "defaults' worst case); prints the answers and the server's peak and settled RSS")
    p.add_argument("server_options", nargs="*", help="options for poster serve (after --)")
    args = p.parse_args(argv)
    if args.flood:
        print(json.dumps(flood(worst_case_upload(), args.flood, 3, args.server_options), indent=2))
        return 0
    query = "" if args.detector == "yunet" else f"?detector={args.detector}"
    report = run(args.image, args.clients, args.seconds, args.serial_seconds, args.server_options, query,
                 rounds=args.rounds)
    text = json.dumps(report, indent=2)
    print(text)
    if args.json is not None:
        from ..fileio import atomic_write_text

        atomic_write_text(args.json, text + "\n")
    return 0 if report["serial"]["errors"] == 0 and report["concurrent"]["errors"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
