"""The ASGI application of ``poster serve`` (FastAPI): routes, limits, API key, metrics.

``create_app(engine, config)`` returns the app; ``poster.commands.serve`` runs it with uvicorn.
Requests carry image bytes only (multipart field ``file``, or the raw body with an ``image/*``
content type); no request can name a file on the server.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import torch
from fastapi import Depends, FastAPI, HTTPException, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, PlainTextResponse
from fastapi.security import APIKeyHeader
from fastapi.staticfiles import StaticFiles
from starlette.datastructures import UploadFile

from .batcher import MicroBatcher
from .config import ServeConfig
from .engine import DETECTORS, InferenceEngine, InputRejected, PredictOptions
from .guards import ByteBudget, return_free_memory
from .metrics import ServerMetrics

log = logging.getLogger("poster.serve")

STATIC_DIR = Path(__file__).resolve().parent / "static"
API_KEY_HEADER = "X-API-Key"
KNOWN_ROUTES = ("/", "/v1/predict", "/v1/predict/batch", "/v1/model", "/healthz", "/readyz", "/metrics",
                "/docs", "/openapi.json")
# The page may only talk to this server and load its own files: no CDN, nothing leaves the machine.
PAGE_POLICY = ("default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' blob: data:; "
               "media-src 'self' blob: mediastream:; connect-src 'self'; frame-ancestors 'none'")


def upload_too_large(limit_mb: float) -> HTTPException:
    """The 413 answer (an HTTPException, so FastAPI's handlers answer it; no exception class of our own)."""
    return HTTPException(413, f"upload too large: the limit is {limit_mb:g} MiB per image")


def busy_with_bytes() -> HTTPException:
    return HTTPException(503, "the server is busy (too many upload bytes in flight); retry shortly",
                         headers={"Retry-After": "1", "Connection": "close"})


class BodyLimit:
    """Pure ASGI middleware: refuse bodies over the route's byte limit (declared or streamed), charge
    every body to the server-wide ``budget`` of bytes in flight (the announced length before a byte is
    read), and answer 408 to a body that has not arrived ``timeout`` seconds after its head."""

    def __init__(self, app, limit_of, limit_mb: float, budget: ByteBudget, timeout: float) -> None:
        self.app = app
        self.limit_of = limit_of
        self.limit_mb = limit_mb  # for the message
        self.budget = budget
        self.timeout = timeout

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        limit = self.limit_of(scope["path"])
        declared = dict(scope.get("headers") or ()).get(b"content-length")
        declared = int(declared) if declared is not None and declared.isdigit() else 0
        if declared > limit:
            return await _refuse(upload_too_large(self.limit_mb), scope, receive, send, close=True)
        if not self.budget.take(declared):
            return await _refuse(busy_with_bytes(), scope, receive, send)
        charged, received, complete = declared, 0, False
        deadline = asyncio.get_running_loop().time() + self.timeout

        async def counting_receive():
            nonlocal charged, received, complete
            if complete:  # the body is in: what follows (a disconnect) may take any time
                return await receive()
            try:
                message = await asyncio.wait_for(receive(), max(0.0, deadline - asyncio.get_running_loop().time()))
            except asyncio.TimeoutError:
                raise HTTPException(408, f"the request body did not arrive within {self.timeout:g} s",
                                    headers={"Connection": "close"}) from None
            complete = message["type"] != "http.request" or not message.get("more_body", False)
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    raise upload_too_large(self.limit_mb)
                if received > charged:  # a streamed (or under-announced) body is charged as it comes
                    if not self.budget.take(received - charged):
                        raise busy_with_bytes()
                    charged = received
            return message

        try:
            await self.app(scope, counting_receive, send)
        finally:
            self.budget.give(charged)


async def _refuse(error: HTTPException, scope, receive, send, close: bool = False) -> None:
    """Answer ``error`` before the app sees the request (its body unread, so the connection closes)."""
    headers = {**(error.headers or {}), **({"Connection": "close"} if close else {})}
    await JSONResponse({"error": error.detail, "status": error.status_code}, status_code=error.status_code,
                       headers=headers)(scope, receive, send)


class RequestMetrics:
    """Pure ASGI middleware: count every answer and time it, labelled by a fixed route name."""

    def __init__(self, app, metrics: ServerMetrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        started = time.perf_counter()
        status = 500

        async def remember_status(message):
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, remember_status)
        finally:
            path = scope["path"]
            route = path if path in KNOWN_ROUTES else "/static" if path.startswith("/static") else "other"
            self.metrics.observe_request(scope["method"], route, status, time.perf_counter() - started)


class Server:
    """State shared by the routes: engine, batcher, admission counter, metrics."""

    def __init__(self, engine: InferenceEngine, config: ServeConfig) -> None:
        self.engine = engine
        self.config = config
        self.metrics = ServerMetrics(config.max_queue)
        self.admitted = 0     # images admitted and not yet answered
        self.at_model = 0     # of those, images whose faces wait for (or are in) a model batch
        self.ready = False
        self.inflight = ByteBudget(int(config.max_inflight_mb * 2**20))
        self._trim_due = False
        self.prep_pool = ThreadPoolExecutor(max_workers=max(1, config.workers), thread_name_prefix="poster-prep")
        self.batcher = MicroBatcher(engine.probabilities, max_batch=config.max_batch,
                                    max_wait=config.max_wait_ms / 1000.0, busy=self.faces_on_the_way,
                                    on_batch=self.metrics.observe_batch)

    async def start(self) -> None:
        await self.batcher.start()
        size = self.engine.recognizer.meta.input.input_size
        warm = torch.zeros(1, 3, size, size)
        await asyncio.get_running_loop().run_in_executor(self.prep_pool, self.engine.probabilities, warm)
        self.ready = True

    async def stop(self) -> None:
        self.ready = False
        await self.batcher.stop()
        self.prep_pool.shutdown(wait=False, cancel_futures=True)

    def faces_on_the_way(self) -> bool:
        """True while admitted images are still being uploaded, decoded or detected: a batch that
        waits a moment will take their faces too."""
        return self.admitted > self.at_model

    def admit(self, images: int) -> None:
        """Take ``images`` places in the bounded queue, or refuse with 503 + Retry-After."""
        if self.admitted + images > self.config.max_queue:
            self.metrics.rejected_full += 1
            raise HTTPException(503, "the server is busy (queue full); retry shortly", headers={"Retry-After": "1"})
        self.admitted += images
        self.metrics.queue_depth = self.admitted

    def release(self, images: int) -> None:
        self.admitted -= images
        self.metrics.queue_depth = self.admitted
        if self.admitted == 0 and not self._trim_due:
            self._trim_due = True
            asyncio.get_running_loop().call_later(1.0, self._trim_when_idle)

    def _trim_when_idle(self) -> None:
        """A burst leaves its uploads' and decoded images' pages in glibc's heap (measured: the RSS of
        a flood stayed); once nothing is in progress they go back to the system."""
        self._trim_due = False
        if self.admitted == 0 and self.inflight.used == 0:
            return_free_memory()

    async def recognise(self, data: bytes, options: PredictOptions) -> dict[str, Any]:
        started = time.perf_counter()
        prepared = await asyncio.get_running_loop().run_in_executor(self.prep_pool, self.engine.prepare, data, options)
        self.at_model += 1
        try:
            probabilities = await self.batcher.submit(prepared.tensors)
        finally:
            self.at_model -= 1
        self.metrics.observe_image(len(prepared.faces))
        return self.engine.record(prepared, probabilities, options.top_k, (time.perf_counter() - started) * 1000)


def _error(status: int, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"error": message, "status": status}, status_code=status, headers=headers)


def _upload_schema(field_name: str, many: bool) -> dict[str, Any]:
    item = {"type": "string", "format": "binary"}
    prop = {"type": "array", "items": item} if many else item
    content: dict[str, Any] = {"multipart/form-data": {"schema": {"type": "object", "required": [field_name],
                                                                  "properties": {field_name: prop}}}}
    if not many:
        content["image/*"] = {"schema": item}
    return {"requestBody": {"required": True, "content": content}}


async def _read_form_files(request: Request, name: str, max_files: int) -> list[bytes]:
    try:
        form = await request.form(max_files=max_files, max_fields=100)
    except HTTPException:
        raise
    except Exception as exc:  # a malformed multipart body
        raise HTTPException(400, f"malformed multipart body: {exc}") from exc
    try:
        parts = form.getlist(name)
        if not parts:
            raise HTTPException(422, f"missing multipart field '{name}' (the image file)")
        if not all(isinstance(p, UploadFile) for p in parts):
            raise HTTPException(422, f"multipart field '{name}' must be a file, not text")
        return [await p.read() for p in parts]
    finally:
        await form.close()


async def _read_images(request: Request, field_name: str, max_files: int) -> list[bytes]:
    """The uploaded images' bytes: multipart field(s) ``field_name``, or a raw ``image/*`` body."""
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if content_type == "multipart/form-data":
        return await _read_form_files(request, field_name, max_files)
    if content_type.startswith("image/") and max_files == 1:
        return [await request.body()]
    wanted = "multipart/form-data" + (" or an image/* body" if max_files == 1 else "")
    raise HTTPException(415, f"unsupported content type {content_type or '(none)'!r}: send {wanted}")


def _options(top_k: int, min_face: float, detector: str, score_threshold: float) -> PredictOptions:
    return PredictOptions(top_k=top_k, min_face=min_face, detector=detector, score_threshold=score_threshold)


def create_app(engine: InferenceEngine, config: ServeConfig | None = None) -> FastAPI:
    """The FastAPI app serving ``engine`` (see the module docstring and ``docs`` at ``/docs``)."""
    config = config or ServeConfig()
    server = Server(engine, config)

    @asynccontextmanager
    async def lifespan(app):
        await server.start()
        try:
            yield
        finally:
            await server.stop()

    app = _new_fastapi(lifespan)
    app.state.server = server
    protected = [Depends(_api_key_check(config))]
    _add_error_handlers(app)
    _add_middleware(app, server)
    _add_prediction_routes(app, server, protected)
    _add_status_routes(app, server, protected)
    _add_page(app)
    return app


def _upload_limit(config: ServeConfig) -> int:
    """Bytes allowed for one image."""
    return int(config.max_upload_mb * 2**20)


def _api_key_check(config: ServeConfig):
    """The dependency that refuses a request without the server's API key (when it has one)."""
    key_header = APIKeyHeader(name=API_KEY_HEADER, auto_error=False, description="needed when the server has --api-key")

    # async: a plain ``def`` dependency would hop to a worker thread on every request
    async def require_key(given: str | None = Depends(key_header)) -> None:
        # compare_digest: the time taken must not tell how much of the key was right
        if config.api_key and not (given and hmac.compare_digest(given.encode(), config.api_key.encode())):
            raise HTTPException(401, f"missing or wrong API key (header {API_KEY_HEADER})")

    return require_key


def _add_middleware(app: FastAPI, server: Server) -> None:
    """CORS (when configured), the request-body limit and request metrics; the last added runs
    first, so metrics also count the requests the body limit refuses."""
    config = server.config
    per_image = _upload_limit(config)
    overhead = 64 * 1024  # multipart boundaries and headers

    def body_limit(path: str) -> int:
        return per_image * config.max_files + overhead if path == "/v1/predict/batch" else per_image + overhead

    if config.cors_origins:
        from fastapi.middleware.cors import CORSMiddleware

        app.add_middleware(CORSMiddleware, allow_origins=config.cors_origins, allow_methods=["GET", "POST"],
                           allow_headers=[API_KEY_HEADER, "Content-Type"])
    app.add_middleware(BodyLimit, limit_of=body_limit, limit_mb=config.max_upload_mb, budget=server.inflight,
                       timeout=config.client_timeout)
    app.add_middleware(RequestMetrics, metrics=server.metrics)


def _add_prediction_routes(app: FastAPI, server: Server, protected: list) -> None:
    """``/v1/predict`` (one image) and ``/v1/predict/batch`` (several)."""
    config = server.config
    per_image = _upload_limit(config)
    max_files = min(config.max_files, config.max_queue)  # a batch the queue can never take is refused as too many

    @app.post("/v1/predict", dependencies=protected, openapi_extra=_upload_schema("file", many=False),
              summary="Recognise the expressions of the faces in one image")
    async def predict(request: Request, top_k: int = Query(3, description="classes in each face's top_k list"),
                      min_face: float = Query(0.0, description="ignore faces smaller than this (pixels)"),
                      detector: str = Query("yunet", description=f"one of {', '.join(DETECTORS)}"),
                      score_threshold: float = Query(0.6, description="YuNet face score threshold")) -> dict:
        """The answer is the record ``poster predict`` writes to ``results.jsonl`` for the image:
        ``faces`` (box, landmarks, score, label, confidence, probabilities, top_k; empty when there is
        no face), ``width``, ``height``, ``model``, ``elapsed_ms``."""
        options = _options(top_k, min_face, detector, score_threshold)
        server.admit(1)
        try:
            (data,) = await _read_images(request, "file", max_files=1)
            if len(data) > per_image:  # the body limit leaves room for multipart framing; the image has none
                raise upload_too_large(config.max_upload_mb)
            # the record is plain JSON types already: sent as is, without FastAPI's encoder walking it
            return JSONResponse(await server.recognise(data, options))
        finally:
            server.release(1)

    @app.post("/v1/predict/batch", dependencies=protected, openapi_extra=_upload_schema("files", many=True),
              summary="Recognise the expressions in several images (multipart field 'files', repeated)")
    async def predict_batch(request: Request, top_k: int = 3, min_face: float = 0.0, detector: str = "yunet",
                            score_threshold: float = 0.6) -> dict:
        """``{"results": [...]}``: one record per file in order, or ``{"error", "status"}`` for a file that
        could not be used (the others are still answered)."""
        options = _options(top_k, min_face, detector, score_threshold)
        images = await _read_images(request, "files", max_files=max_files)
        too_big = [i for i, data in enumerate(images) if len(data) > per_image]
        server.admit(len(images))
        try:
            async def one(i: int, data: bytes) -> dict[str, Any]:
                if i in too_big:
                    return {"error": upload_too_large(config.max_upload_mb).detail, "status": 413}
                try:
                    return await server.recognise(data, options)
                except InputRejected as exc:
                    return {"error": str(exc), "status": exc.status}

            return JSONResponse({"results": list(await asyncio.gather(*(one(i, d) for i, d in enumerate(images))))})
        finally:
            server.release(len(images))


def _add_status_routes(app: FastAPI, server: Server, protected: list) -> None:
    """``/v1/model``, ``/healthz``, ``/readyz`` and ``/metrics``."""
    config = server.config

    @app.get("/v1/model", dependencies=protected, summary="The model: architecture, classes, input, source")
    async def model() -> dict:
        return {**server.engine.describe(), "max_batch": config.max_batch}

    @app.get("/healthz", summary="Liveness: the process answers")
    async def healthz() -> dict:
        return {"status": "ok"}

    @app.get("/readyz", summary="Readiness: model loaded and warm, queue not full")
    async def readyz():
        if not server.ready:
            return _error(503, "the model is still loading", {"Retry-After": "1"})
        if server.admitted >= config.max_queue:
            return _error(503, "the queue is full", {"Retry-After": "1"})
        if server.inflight.used >= server.inflight.limit:
            return _error(503, "too many upload bytes in flight", {"Retry-After": "1"})
        return {"status": "ready", "queue_depth": server.admitted, "queue_capacity": config.max_queue,
                "bytes_in_flight": server.inflight.used}

    @app.get("/metrics", dependencies=protected, response_class=PlainTextResponse,
             summary="Prometheus metrics (text format)")
    async def metrics() -> PlainTextResponse:
        return PlainTextResponse(server.metrics.render(), media_type="text/plain; version=0.0.4")


def _add_page(app: FastAPI) -> None:
    """The browser page at ``/`` and its files under ``/static``."""

    @app.get("/", include_in_schema=False)
    async def page() -> FileResponse:
        return FileResponse(STATIC_DIR / "index.html", headers={"Content-Security-Policy": PAGE_POLICY,
                                                               "Cache-Control": "no-cache"})

    @app.get("/favicon.ico", include_in_schema=False)
    async def favicon() -> FileResponse:  # browsers ask for it whatever the page says
        return FileResponse(STATIC_DIR / "favicon.ico", media_type="image/x-icon")

    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")


def _new_fastapi(lifespan) -> FastAPI:
    """FastAPI with its OpenAPI page (``/docs``) served from local files when fastapi-offline is
    installed (the stock page loads Swagger UI from a CDN); ``/openapi.json`` in any case."""
    from .. import __version__

    options = dict(title="poster", version=__version__, lifespan=lifespan,
                   description="Facial expression recognition with POSTER models. Send image bytes; "
                               "get the faces, their boxes and expression probabilities.")
    try:
        from fastapi_offline import FastAPIOffline
    except ImportError:
        return FastAPI(docs_url=None, redoc_url=None, **options)
    return FastAPIOffline(redoc_url=None, static_url="/static-docs", **options)


def _add_error_handlers(app: FastAPI) -> None:
    """Every error is JSON ``{"error": message, "status": code}``; none is a traceback."""

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, exc: HTTPException):
        return _error(exc.status_code, str(exc.detail), getattr(exc, "headers", None))

    from starlette.exceptions import HTTPException as StarletteHTTPException

    @app.exception_handler(StarletteHTTPException)
    async def starlette_error(request: Request, exc: StarletteHTTPException):
        return _error(exc.status_code, str(exc.detail), getattr(exc, "headers", None))

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError):
        problems = "; ".join(f"{'.'.join(str(p) for p in e.get('loc', ()))}: {e.get('msg')}" for e in exc.errors())
        return _error(422, f"invalid request: {problems}")

    @app.exception_handler(InputRejected)
    async def rejected(request: Request, exc: InputRejected):
        return _error(exc.status, str(exc))

    @app.exception_handler(Exception)
    async def unexpected(request: Request, exc: Exception):
        log.error("internal error on %s %s: %s: %s", request.method, request.url.path, type(exc).__name__, exc)
        return _error(500, "internal server error")
