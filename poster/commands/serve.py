"""``poster serve``: the REST API (``/v1/predict``, ``/v1/predict/batch``, ``/v1/model``, ``/healthz``,
``/readyz``, ``/metrics``, OpenAPI page at ``/docs``) and the browser page at ``/``."""

from __future__ import annotations

import argparse
import errno
import ipaddress
import logging
import os
import socket
import sys

from ..precision import REQUESTS
from ..errors import PosterError
from ..serve.config import ServeConfig

log = logging.getLogger("poster")

API_KEY_ENV = "POSTER_API_KEY"


# Every default lives on ServeConfig; the parser reads it from there (tests/test_cli_options.py).
DEFAULTS = ServeConfig()


def add_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "serve", help="serve a model over HTTP: REST API + a browser page with the webcam",
        description="Run an HTTP server (FastAPI + uvicorn) that recognises the expressions of the faces in "
                    "uploaded images. Requests from many clients are micro-batched. Open http://HOST:PORT/ "
                    "for the page, /docs for the API.")
    p.add_argument("-c", "--checkpoint", default=None,
                   help="weights file, release name, ONNX or TorchScript file (default: the bundled model)")
    p.add_argument("--host", default=DEFAULTS.host, help=f"address to listen on (default {DEFAULTS.host}: this machine only)")
    p.add_argument("--port", type=int, default=DEFAULTS.port, help=f"port (default {DEFAULTS.port}; 0: any free port)")
    p.add_argument("--device", default="auto", help="auto (CUDA if available), cpu, cuda, cuda:1, ...")
    p.add_argument("--runtime", default="auto", choices=("auto", "torch", "onnx", "torchscript"),
                   help="what runs the model (auto: by the file)")
    p.add_argument("--precision", default="auto", choices=REQUESTS,
                   help="PyTorch runtime, which runs BN-folded and channels-last as in predict: bf16 autocast or "
                        "fp32 (within 1e-4 of the exact function); auto (default): bf16 where it is native, else fp32")
    p.add_argument("--eager", action="store_true",
                   help="PyTorch runtime: run the model exactly as written in fp32 (no BN folding, no channels-last)")
    p.add_argument("--workers", type=int, default=DEFAULTS.workers,
                   help=f"threads decoding and detecting faces (default {DEFAULTS.workers})")
    p.add_argument("--max-batch", type=int, default=DEFAULTS.max_batch, help="faces per model call, gathered across "
                   f"requests (default {DEFAULTS.max_batch}; 1 disables micro-batching)")
    p.add_argument("--max-wait-ms", type=float, default=DEFAULTS.max_wait_ms,
                   help=f"how long a batch may wait for faces still being detected (default {DEFAULTS.max_wait_ms:g} ms)")
    p.add_argument("--max-queue", type=int, default=DEFAULTS.max_queue,
                   help=f"images in progress at once; more are answered 503 with Retry-After (default {DEFAULTS.max_queue})")
    p.add_argument("--max-upload-mb", type=float, default=DEFAULTS.max_upload_mb,
                   help=f"largest image upload in MiB (default {DEFAULTS.max_upload_mb:g})")
    p.add_argument("--max-pixels", type=float, default=DEFAULTS.max_pixels / 1e6,
                   help=f"largest image in megapixels, checked from the header before decoding (default "
                        f"{DEFAULTS.max_pixels / 1e6:g})")
    p.add_argument("--max-inflight-mb", type=float, default=DEFAULTS.max_inflight_mb,
                   help="upload bytes held at once, all requests together (announced sizes count before the body "
                        f"is read); more are answered 503 with Retry-After (default {DEFAULTS.max_inflight_mb:g} MiB)")
    p.add_argument("--max-connections", type=int, default=DEFAULTS.max_connections,
                   help=f"open connections at once; a request beyond them is answered 503 (default {DEFAULTS.max_connections})")
    p.add_argument("--client-timeout", type=float, default=DEFAULTS.client_timeout,
                   help="seconds a client may take to send a request head, and then its body; a connection "
                        f"silent that long is closed, a late body answered 408 (default {DEFAULTS.client_timeout:g})")
    p.add_argument("--api-key", default=DEFAULTS.api_key,
                   help=f"require this key in the X-API-Key header of every /v1 and /metrics request "
                        f"(better: set ${API_KEY_ENV}, which does not show in the process list)")
    p.add_argument("--cors-origin", action="append", default=DEFAULTS.cors_origins, metavar="ORIGIN",
                   help="allow browser pages from this origin to call the API (repeatable; default: none)")
    p.add_argument("--log-level", default=DEFAULTS.log_level, choices=("critical", "error", "warning", "info", "debug"))
    p.set_defaults(run=run)


def _check(args: argparse.Namespace) -> None:
    if not 0 <= args.port <= 65535:
        raise PosterError("--port must be between 0 and 65535")
    for name in ("workers", "max_batch", "max_queue", "max_connections"):
        if getattr(args, name) < 1:
            raise PosterError(f"--{name.replace('_', '-')} must be at least 1")
    if args.max_wait_ms < 0:
        raise PosterError("--max-wait-ms must be >= 0")
    if not (args.max_upload_mb > 0 and args.max_pixels > 0 and args.max_inflight_mb > 0):
        raise PosterError("--max-upload-mb, --max-pixels and --max-inflight-mb must be positive")
    if not 0 < args.client_timeout <= 3600:
        raise PosterError("--client-timeout must be between 0 and 3600 seconds")


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_port_free(host: str, port: int) -> None:
    """Bind ``host:port`` for a moment, as uvicorn will (``SO_REUSEADDR``): a port in use is one line
    now, before the model loads, rather than uvicorn's traceback after it."""
    if port == 0:
        return
    try:
        family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM,
                                                             flags=socket.AI_PASSIVE)[0]
        with socket.socket(family, kind, proto) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            probe.bind(address)
    except OSError as exc:
        busy = exc.errno == errno.EADDRINUSE
        raise PosterError(f"cannot listen on {host}:{port}: "
                          + ("the port is in use (another poster serve?); choose another with --port" if busy
                             else exc.strerror or str(exc))) from None


def run(args: argparse.Namespace) -> int:
    _check(args)
    try:
        import uvicorn

        from ..serve.app import create_app
    except ImportError as exc:
        raise PosterError(f"poster serve needs FastAPI and uvicorn ({exc.name} is missing): "
                          "pip install 'poster-fer[serve]'") from exc
    from ..serve.engine import InferenceEngine, load_recognizer, model_display_name
    from ..serve.guards import client_timeout_protocol

    api_key = args.api_key or os.environ.get(API_KEY_ENV) or None
    if not is_loopback(args.host):
        print(f"warning: listening on {args.host}: other machines can reach this server"
              + ("" if api_key else f" and, without --api-key/${API_KEY_ENV}, use it freely"), file=sys.stderr)
    # Parallelism comes from the --workers threads (one image each) and the model's own threads;
    # OpenCV's thread pool inside each worker only oversubscribes the cores (measured: -10 % req/s)
    check_port_free(args.host, args.port)
    import cv2

    cv2.setNumThreads(1)
    recognizer = load_recognizer(args.checkpoint, device=args.device, runtime=args.runtime, precision=args.precision,
                                 eager=args.eager)
    engine = InferenceEngine(recognizer, model_display_name(args.checkpoint), max_pixels=int(args.max_pixels * 1e6))
    config = ServeConfig(max_batch=args.max_batch, max_wait_ms=args.max_wait_ms, max_queue=args.max_queue,
                         workers=args.workers, max_upload_mb=args.max_upload_mb,
                         max_pixels=int(args.max_pixels * 1e6), api_key=api_key, cors_origins=args.cors_origin,
                         max_inflight_mb=args.max_inflight_mb, client_timeout=args.client_timeout, host=args.host,
                         port=args.port, max_connections=args.max_connections, log_level=args.log_level)
    log.info("model %s (%s, classes %s) on %s, %s; max batch %d; API key %s", engine.model_name,
             recognizer.meta.arch, ", ".join(engine.class_names), recognizer.device, recognizer.engine, args.max_batch,
             "required" if api_key else "off")
    uvicorn.run(create_app(engine, config), host=args.host, port=args.port, log_level=args.log_level,
                server_header=False, timeout_graceful_shutdown=5, limit_concurrency=args.max_connections,
                http=client_timeout_protocol(args.client_timeout))
    return 0
