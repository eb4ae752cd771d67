"""The settings of ``poster serve``, in one place and importable without torch or FastAPI: the
command line reads every flag default from ``ServeConfig`` (tests/test_cli_options.py checks each)."""

from __future__ import annotations

from dataclasses import dataclass, field

__all__ = ["ServeConfig"]


@dataclass
class ServeConfig:
    """Server settings (``poster serve`` options).  The app reads the limits; ``host``, ``port``,
    ``max_connections`` and ``log_level`` go to uvicorn."""

    max_batch: int = 16             # faces per model call
    max_wait_ms: float = 10.0       # how long a batch may wait for faces still being detected
    max_queue: int = 64             # images admitted at once; more are answered 503 + Retry-After
    workers: int = 2                # threads decoding and detecting
    max_upload_mb: float = 10.0     # per image
    max_files: int = 16             # per /v1/predict/batch request
    max_pixels: int = 40_000_000    # declared image size refused above this
    max_inflight_mb: float = 256.0  # request bodies held at once, all requests together; more: 503 + Retry-After
    client_timeout: float = 20.0    # seconds a client may take to send a request head, and again its body
    api_key: str | None = None
    cors_origins: list[str] = field(default_factory=list)
    host: str = "127.0.0.1"         # this machine only unless asked
    port: int = 8000
    max_connections: int = 256      # open connections at once; more are answered 503 by uvicorn
    log_level: str = "info"
