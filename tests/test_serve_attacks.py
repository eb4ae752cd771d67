"""``poster serve`` attacked as an outsider would, on a loopback port: hostile images, body sizes,
many parts, slow clients, floods, the API key on every route, CORS, leaky errors.

Every load here goes to 127.0.0.1 only, is bounded in count and time, and stops by itself.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import io
import socket
import struct
import time
from pathlib import Path

import pytest

pytest.importorskip("fastapi", reason="poster serve needs the 'serve' extra (fastapi, uvicorn, python-multipart)")
pytest.importorskip("uvicorn", reason="poster serve needs uvicorn")
httpx = pytest.importorskip("httpx", reason="the serve tests talk HTTP with httpx")
from PIL import Image  # noqa: E402

from poster.serve.loadtest import server_process  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
ASTRONAUT = ROOT / "examples" / "astronaut.jpg"
KEY = "s3cret-Key-42"
ALLOWED = "http://allowed.example"
CLIENT_TIMEOUT = 3  # seconds a client may take to send its request head, and its body


@pytest.fixture(scope="module")
def guarded():
    """Small limits, so that every refusal is cheap to provoke: 1 MiB per image, 3 MiB in flight,
    six connections, a client timeout of a few seconds, one CORS origin."""
    with server_process("--max-upload-mb", "1", "--max-pixels", "20", "--workers", "1", "--max-queue", "8",
                        "--max-inflight-mb", "3", "--max-connections", "6", "--client-timeout", str(CLIENT_TIMEOUT),
                        "--cors-origin", ALLOWED) as (base, proc):
        yield base


@pytest.fixture(scope="module")
def keyed():
    """An API key (from the environment) and a queue of one image."""
    with server_process("--max-queue", "1", "--workers", "1", env={"POSTER_API_KEY": KEY}) as (base, proc):
        yield base, proc


def _encode(fmt: str, image: Image.Image, **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **options)
    return buffer.getvalue()


SMALL = Image.new("RGB", (64, 48), (120, 30, 200))


def _jpeg_declaring(width: int, height: int) -> bytes:
    data = bytearray(_encode("JPEG", SMALL))
    sof = data.index(b"\xff\xc0")
    struct.pack_into(">HH", data, sof + 5, height, width)
    return bytes(data)


def _webp_declaring(width: int, height: int) -> bytes:
    """A lossless WebP whose VP8L header says ``width`` x ``height`` (14 bits each, minus one)."""
    data = bytearray(_encode("WEBP", SMALL, lossless=True))
    at = data.index(b"VP8L") + 8
    assert data[at] == 0x2F
    bits = int.from_bytes(data[at + 1:at + 5], "little")
    bits = (bits & ~((1 << 28) - 1)) | (width - 1) | ((height - 1) << 14)
    data[at + 1:at + 5] = bits.to_bytes(4, "little")
    return bytes(data)


def _gif_declaring(width: int, height: int) -> bytes:
    data = bytearray(_encode("GIF", SMALL.convert("P")))
    struct.pack_into("<HH", data, 6, width, height)  # the logical screen
    return bytes(data)


def _animated_gif(frames: int) -> bytes:
    pictures = [Image.new("P", (64, 48), i % 256) for i in range(frames)]
    return _encode("GIF", pictures[0], save_all=True, append_images=pictures[1:])


def _many_page_tiff(pages: int) -> bytes:
    page = Image.new("L", (4, 4), 7)
    return _encode("TIFF", page, save_all=True, append_images=[page] * (pages - 1))


HOSTILE = {
    "jpeg-declaring-65000x65000": (lambda: _jpeg_declaring(65000, 65000), 413, "declares 4,225 MP"),
    "webp-declaring-16384x16384": (lambda: _webp_declaring(16384, 16384), 413, "declares 268 MP"),
    "gif-screen-65535x65535": (lambda: _gif_declaring(65535, 65535), 413, "declares 4,295 MP"),
    "truncated-jpeg": (lambda: _encode("JPEG", SMALL)[:300], 400, "cannot decode"),
    "truncated-png": (lambda: _encode("PNG", SMALL)[:60], 400, "cannot decode"),
    "html-page": (lambda: b"<!doctype html><html><body>not an image</body></html>", 400, "cannot decode"),
    "zero-bytes": (lambda: b"", 400, "empty"),
}


@pytest.mark.parametrize("case", list(HOSTILE))
def test_hostile_image_is_refused_from_its_header_and_the_server_goes_on(guarded, case):
    make, status, words = HOSTILE[case]
    r = httpx.post(f"{guarded}/v1/predict", content=make(), headers={"Content-Type": "image/png"}, timeout=60)
    assert r.status_code == status, r.text
    assert words in r.json()["error"]
    _assert_serving(guarded)


@pytest.mark.parametrize("make", [lambda: _animated_gif(400), lambda: _many_page_tiff(2000)], ids=["gif-400-frames", "tiff-2000-pages"])
def test_animated_gif_and_many_page_tiff_decode_only_the_first_picture(guarded, make):
    data = make()
    assert len(data) < 2**20
    r = httpx.post(f"{guarded}/v1/predict?detector=none", content=data, headers={"Content-Type": "image/gif"},
                   timeout=60)
    assert r.status_code == 200, r.text
    assert (r.json()["width"], r.json()["height"]) in ((64, 48), (4, 4))


def test_body_at_the_limit_is_read_and_one_byte_more_is_refused(guarded):
    limit = 2**20  # --max-upload-mb 1
    at_limit = b"\xff\xd8" + b"\x00" * (limit - 2)
    for send in (_raw, _multipart):
        r = send(guarded, at_limit)
        assert r.status_code == 400 and "cannot decode" in r.json()["error"], (send.__name__, r.text)
        r = send(guarded, at_limit + b"\x00")
        assert r.status_code == 413 and "upload too large" in r.json()["error"], (send.__name__, r.text)
    _assert_serving(guarded)


def _raw(base: str, data: bytes) -> httpx.Response:
    return httpx.post(f"{base}/v1/predict", content=data, headers={"Content-Type": "image/jpeg"}, timeout=60)


def _multipart(base: str, data: bytes) -> httpx.Response:
    return httpx.post(f"{base}/v1/predict", files={"file": ("a.jpg", data, "image/jpeg")}, timeout=60)


def test_batch_with_too_many_parts_is_refused_before_any_is_decoded(guarded):
    tiny = _encode("PNG", SMALL)
    r = httpx.post(f"{guarded}/v1/predict/batch", files=[("files", (f"{i}.png", tiny, "image/png")) for i in range(17)],
                   timeout=60)
    assert r.status_code == 400 and "files" in r.json()["error"].lower(), r.text
    fields = [("files", ("a.png", tiny, "image/png"))] + [(f"f{i}", (None, "x")) for i in range(500)]
    r = httpx.post(f"{guarded}/v1/predict/batch", files=fields, timeout=60)
    assert r.status_code == 400 and "fields" in r.json()["error"].lower(), r.text
    r = httpx.post(f"{guarded}/v1/predict/batch", files=[("files", (f"{i}.png", tiny, "image/png")) for i in range(8)],
                   timeout=60)  # as many as the queue (8) takes
    assert r.status_code == 200 and len(r.json()["results"]) == 8
    _assert_serving(guarded)


def _open_request(base: str, head: str) -> socket.socket:
    """A connection that has sent ``head`` (a request head, whole or in part) and then nothing more."""
    host, port = base.removeprefix("http://").split(":")
    conn = socket.create_connection((host, int(port)), timeout=30)
    conn.sendall(head.encode())
    return conn


def _post_head(length: int) -> str:
    return (f"POST /v1/predict HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: image/jpeg\r\n"
            f"Content-Length: {length}\r\n\r\n")


def _wait_closed(conn: socket.socket, seconds: float) -> bytes:
    """What the server sends before it closes ``conn`` (it must close it within ``seconds``)."""
    conn.settimeout(seconds)
    received = b""
    try:
        while chunk := conn.recv(65536):
            received += chunk
    except TimeoutError:
        pytest.fail(f"the server kept a silent connection open for more than {seconds} s")
    finally:
        conn.close()
    return received


def test_bytes_in_flight_are_bounded_across_requests(guarded):
    """Three uploads of 1 MiB announced and not yet sent fill the 3 MiB budget: a fourth is answered
    503 with Retry-After at once, without its body being read; once they go, uploads are taken again."""
    held = [_open_request(guarded, _post_head(2**20) + "x" * 100) for _ in range(3)]
    try:
        time.sleep(0.5)  # let the server read their heads
        r = _raw(guarded, ASTRONAUT.read_bytes())
        assert r.status_code == 503, r.text
        assert r.headers["retry-after"] == "1" and "in flight" in r.json()["error"]
        ready = httpx.get(f"{guarded}/readyz", timeout=10)  # a balancer sends its traffic elsewhere meanwhile
        assert ready.status_code == 503 and "bytes in flight" in ready.json()["error"]
    finally:
        for conn in held:
            conn.close()
    _assert_serving(guarded)
    assert httpx.get(f"{guarded}/readyz", timeout=10).json()["bytes_in_flight"] == 0


def test_slow_clients_are_cut_after_the_client_timeout(guarded):
    """A head that never ends, an idle connection, and a body that stops half way are all closed by
    the server within the client timeout (the body one with a 408)."""
    trickled = _open_request(guarded, "POST /v1/predict HTTP/1.1\r\nHost: 127.0.0.1\r\n")
    idle = _open_request(guarded, "")
    stalled = _open_request(guarded, _post_head(5000) + "x" * 100)
    bound = CLIENT_TIMEOUT + 10
    assert _wait_closed(trickled, bound) == b""
    assert _wait_closed(idle, bound) == b""
    answer = _wait_closed(stalled, bound)
    assert answer.startswith(b"HTTP/1.1 408") and b"did not arrive" in answer, answer
    _assert_serving(guarded)


def test_connections_are_bounded_in_number(guarded):
    """Six silent connections (--max-connections 6) make the server answer 503 to the next request
    rather than hold more; when the client timeout has closed them, it answers again."""
    silent = [_open_request(guarded, "") for _ in range(6)]
    try:
        time.sleep(0.5)
        r = _raw(guarded, ASTRONAUT.read_bytes())
        assert r.status_code == 503
    finally:
        for conn in silent:
            conn.close()
    deadline = time.monotonic() + 20
    while _raw(guarded, ASTRONAUT.read_bytes()).status_code != 200:  # the server sees the closes soon after
        assert time.monotonic() < deadline, "the server did not come back after the connections closed"
        time.sleep(0.2)


def test_flood_from_many_threads_gets_503_with_retry_after_and_the_server_comes_back(keyed):
    base, proc = keyed
    image = ASTRONAUT.read_bytes()

    def client(_):
        answers = []
        for _ in range(3):
            r = httpx.post(f"{base}/v1/predict", content=image, timeout=60,
                           headers={"Content-Type": "image/jpeg", "X-API-Key": KEY})
            answers.append((r.status_code, r.headers.get("retry-after"), r.json().get("error", "")))
        return answers

    with concurrent.futures.ThreadPoolExecutor(24) as pool:
        answers = [a for thread in pool.map(client, range(24)) for a in thread]
    assert len(answers) == 72 and proc.poll() is None
    codes = {status for status, _, _ in answers}
    assert codes <= {200, 503} and 200 in codes and 503 in codes, codes
    assert all(retry == "1" and "busy" in error for status, retry, error in answers if status == 503)
    ready = httpx.get(f"{base}/readyz", timeout=10).json()
    assert ready["status"] == "ready" and ready["queue_depth"] == 0 and ready["bytes_in_flight"] == 0


PROTECTED = [("POST", "/v1/predict"), ("POST", "/v1/predict/batch"), ("GET", "/v1/model"), ("GET", "/metrics"),
             ("HEAD", "/v1/model"), ("HEAD", "/metrics"), ("POST", "/v1/model"), ("PUT", "/v1/predict"),
             ("OPTIONS", "/v1/predict"), ("GET", "/v1/predict"), ("GET", "//v1/model"), ("GET", "/v1/model/"),
             ("GET", "/V1/MODEL"), ("GET", "/v1/%6dodel"), ("GET", "/static/../v1/model")]
PUBLIC = ["/", "/docs", "/openapi.json", "/static/app.js", "/healthz", "/readyz"]


def test_no_route_answers_data_without_the_api_key(keyed):
    base, _ = keyed
    with httpx.Client(base_url=base, timeout=30) as client:
        for method, path in PROTECTED:
            r = client.request(method, path, content=ASTRONAUT.read_bytes(), headers={"Content-Type": "image/jpeg"})
            assert r.status_code in (401, 404, 405) or (r.status_code == 307 and r.headers["location"].endswith(
                "/v1/model")), (method, path, r.status_code)
            assert b"architecture" not in r.content and b"poster_requests_total" not in r.content, (method, path)
        for path in PUBLIC:  # the page, the API description and the probes are public, and hold no secret
            r = client.get(path)
            assert r.status_code == 200 and KEY.encode() not in r.content, path
        assert "X-API-Key" in str(client.get("/openapi.json").json()["components"]["securitySchemes"])


def test_api_key_is_compared_exactly_and_the_header_name_is_case_insensitive(keyed):
    base, _ = keyed
    refused = [KEY.upper(), KEY.lower(), KEY[:-1], KEY + "x", KEY + "\t" + KEY, KEY[1:], "", KEY[:1]]
    for given in refused:
        r = httpx.get(f"{base}/v1/model", headers={"X-API-Key": given}, timeout=30)
        assert r.status_code == 401 and KEY not in r.text, repr(given)
    for name in ("X-API-Key", "x-api-key", "X-API-KEY"):
        assert httpx.get(f"{base}/v1/model", headers={name: KEY}, timeout=30).status_code == 200, name
    # the HTTP parser drops the optional whitespace around a header value (RFC 9110, 5.5): the same key
    for value in (f"  {KEY}\t", f"\t{KEY}  "):  # (sent by hand: httpx refuses such a value)
        conn = _open_request(base, f"GET /v1/model HTTP/1.1\r\nHost: x\r\nX-API-Key:{value}\r\nConnection: close\r\n\r\n")
        assert _wait_closed(conn, 30).startswith(b"HTTP/1.1 200"), repr(value)
    two = httpx.get(f"{base}/v1/model", headers=[("X-API-Key", "wrong"), ("X-API-Key", KEY)], timeout=30)
    assert two.status_code == 401  # the first value counts; a second cannot smuggle the key past a wrong one


def test_api_key_check_is_a_constant_time_comparison(monkeypatch):
    """The comparison goes through ``hmac.compare_digest`` on every request, right key or wrong."""
    import hmac

    from fastapi import HTTPException

    from poster.serve.app import ServeConfig, _api_key_check

    calls = []
    real = hmac.compare_digest
    monkeypatch.setattr(hmac, "compare_digest", lambda a, b: calls.append((a, b)) or real(a, b))
    check = _api_key_check(ServeConfig(api_key=KEY))
    asyncio.run(check(KEY))
    for wrong in ("x", KEY[:-1] + "!"):
        with pytest.raises(HTTPException):
            asyncio.run(check(wrong))
    assert len(calls) == 3 and calls[0] == (KEY.encode(), KEY.encode())


def test_cors_allows_only_the_configured_origin(guarded, keyed):
    preflight = {"Access-Control-Request-Method": "POST", "Access-Control-Request-Headers": "x-api-key,content-type"}
    ok = httpx.options(f"{guarded}/v1/predict", headers={"Origin": ALLOWED, **preflight}, timeout=30)
    assert ok.status_code == 200 and ok.headers["access-control-allow-origin"] == ALLOWED
    assert "x-api-key" in ok.headers["access-control-allow-headers"].lower()
    evil = httpx.options(f"{guarded}/v1/predict", headers={"Origin": "http://evil.example", **preflight}, timeout=30)
    assert evil.status_code == 400 and "access-control-allow-origin" not in evil.headers
    r = httpx.get(f"{guarded}/healthz", headers={"Origin": "http://evil.example"}, timeout=30)
    assert "access-control-allow-origin" not in r.headers
    base, _ = keyed  # no --cors-origin: no origin at all
    for origin in (ALLOWED, "null", base):
        r = httpx.options(f"{base}/v1/predict", headers={"Origin": origin, **preflight}, timeout=30)
        assert "access-control-allow-origin" not in r.headers and r.status_code in (401, 405), origin


def test_error_bodies_name_no_path_and_hold_no_traceback(guarded):
    boundary = "XyZ"
    cases = [
        ("GET", "/no/such/route", {}, b""),
        ("DELETE", "/v1/predict", {}, b""),
        ("POST", "/v1/predict", {"Content-Type": f"multipart/form-data; boundary={boundary}"},
         f"--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"a.jpg\"\r\n\r\nabc".encode()),
        ("POST", "/v1/predict", {"Content-Type": "multipart/form-data"}, b"no boundary at all"),
        ("POST", "/v1/predict?top_k=1e999", {"Content-Type": "image/jpeg"}, ASTRONAUT.read_bytes()),
        ("POST", "/v1/predict", {"Content-Type": "image/jpeg"}, b"\xff\xd8\xff\xe0" + b"\x00" * 200),
        ("GET", "/static/../../../../etc/passwd", {}, b""),
        ("GET", "/static/%2e%2e/%2e%2e/app.py", {}, b""),
    ]
    for method, path, headers, body in cases:
        r = httpx.request(method, f"{guarded}{path}", headers=headers, content=body, timeout=30)
        assert r.status_code >= 400, (method, path, r.status_code)
        text = r.text
        assert "Traceback" not in text and str(ROOT) not in text and ".py" not in text, (method, path, text)
        assert "root:" not in text, (method, path)
        if r.headers.get("content-type", "").startswith("application/json"):
            assert set(r.json()) == {"error", "status"}, (method, path, text)
    _assert_serving(guarded)


def _assert_serving(base: str) -> None:
    r = httpx.post(f"{base}/v1/predict", content=ASTRONAUT.read_bytes(), headers={"Content-Type": "image/jpeg"},
                   timeout=60)
    assert r.status_code == 200 and r.json()["faces"][0]["label"] == "happy", r.text


@pytest.mark.parametrize("option, value, message", [
    ("--max-inflight-mb", "0", "--max-upload-mb, --max-pixels and --max-inflight-mb must be positive"),
    ("--max-connections", "0", "--max-connections must be at least 1"),
    ("--client-timeout", "0", "--client-timeout must be between 0 and 3600 seconds"),
    ("--client-timeout", "nan", "--client-timeout must be between 0 and 3600 seconds"),
])
def test_new_limits_are_checked_in_one_line(option, value, message, capsys):
    from poster.cli import main

    assert main(["serve", option, value]) == 1  # refused before any model is loaded or port bound
    assert capsys.readouterr().err.strip() == f"error: {message}"


@pytest.mark.slow
def test_flood_measurement_runs_bounded_on_loopback():
    """A small ``python -m poster.serve.loadtest --flood`` (docs/reliability.md has the full one):
    every answer is 200 or 503, and the RSS figures are measured."""
    from poster.serve.loadtest import flood, worst_case_upload

    image = worst_case_upload(megapixels=4, mebibytes=0.9)
    assert 0.85 * 2**20 < len(image) < 0.9 * 2**20
    report = flood(image, clients=8, floods=2, options=["--max-upload-mb", "1", "--max-inflight-mb", "2",
                                                        "--workers", "1"], settle=1.0)
    for burst in report["floods"]:
        assert set(burst["answers"]) <= {"200", "503"} and "200" in burst["answers"], burst
        assert burst["peak_rss_mib"] >= report["rss_mib_start"] > 0
