"""The page of ``poster serve`` in a real browser: Debian's headless Chromium driven by Playwright.

Nothing is downloaded: Playwright drives ``/usr/bin/chromium`` (``apt-get install chromium``).  The
camera test feeds Chromium's fake capture device from a Y4M video made of the sample photo.
Screenshots are kept as test artefacts (pytest's tmp folder; also ``$POSTER_ARTIFACTS`` when set).
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest

CHROMIUM = Path("/usr/bin/chromium")
if not CHROMIUM.is_file():
    pytest.skip(f"{CHROMIUM} is absent (apt-get install chromium): no browser to test the page with",
                allow_module_level=True)
pytest.importorskip("fastapi", reason="poster serve needs the 'serve' extra")
sync_api = pytest.importorskip("playwright.sync_api", reason="the browser tests drive Chromium with playwright")
httpx = pytest.importorskip("httpx", reason="the favicon is fetched with httpx")

from poster.serve.loadtest import server_process  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
ASTRONAUT = ROOT / "examples" / "astronaut.jpg"
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
        "--no-first-run", "--disable-sync", "--disable-dev-shm-usage"]


@pytest.fixture(scope="module")
def server():
    with server_process("--max-batch", "8") as (base, _):
        yield base


def _keep(screenshot: Path) -> None:
    folder = os.environ.get("POSTER_ARTIFACTS")
    if folder:
        Path(folder).mkdir(parents=True, exist_ok=True)
        shutil.copy(screenshot, Path(folder) / screenshot.name)


def write_y4m(path: Path, image_bgr: np.ndarray, frames: int = 8) -> Path:
    """A Y4M (YUV4MPEG2, 4:2:0) video of ``frames`` copies of an image, as Chromium's fake camera reads."""
    h, w = (s - s % 2 for s in image_bgr.shape[:2])
    i420 = cv2.cvtColor(np.ascontiguousarray(image_bgr[:h, :w]), cv2.COLOR_BGR2YUV_I420).tobytes()
    with open(path, "wb") as f:
        f.write(f"YUV4MPEG2 W{w} H{h} F10:1 Ip A1:1 C420jpeg\n".encode())
        for _ in range(frames):
            f.write(b"FRAME\n" + i420)
    return path


def _browser(playwright, extra: list[str] = ()):
    return playwright.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=[*ARGS, *extra])


def test_page_uploads_a_photo_and_draws_the_label(server, tmp_path):
    with sync_api.sync_playwright() as p:
        browser = _browser(p)
        try:
            # bypass_csp: Playwright's own probes are evaluated strings, which the page's policy forbids
            page = browser.new_page(viewport={"width": 1100, "height": 700}, bypass_csp=True)
            outside = []
            page.on("request", lambda req: outside.append(req.url) if not req.url.startswith(server) else None)
            page.goto(server + "/")
            page.wait_for_function("document.getElementById('model-info').textContent.includes('poster_v1_tiny')")
            page.set_input_files("#file-input", str(ASTRONAUT))
            page.wait_for_function("document.getElementById('canvas').dataset.labels === 'happy'", timeout=60_000)
            assert page.inner_text("#results").startswith("happy")
            assert "latency" in page.inner_text("#readout") and "ms" in page.inner_text("#readout")
            size = page.evaluate("[document.getElementById('canvas').width, document.getElementById('canvas').height]")
            assert size == [512, 512]
            # the label tag is drawn above the face box: its pixels carry the 'happy' class colour (#f58230)
            tag = page.evaluate("Array.from(document.getElementById('canvas').getContext('2d')"
                                ".getImageData(180, 45, 4, 4).data.slice(0, 3))")
            assert np.allclose(tag, [245, 130, 48], atol=40), tag
            shot = page.screenshot(path=str(tmp_path / "serve-page-photo.png"))
            assert shot and outside == [], f"the page fetched from elsewhere: {outside}"
            _keep(tmp_path / "serve-page-photo.png")
        finally:
            browser.close()


def test_page_before_the_first_photo_after_an_error_and_without_a_face(server, tmp_path):
    icon = httpx.get(server + "/favicon.ico", timeout=30)
    assert icon.status_code == 200 and icon.headers["content-type"] == "image/x-icon"
    assert icon.content[:4] == b"\x00\x00\x01\x00"  # an ICO file
    assert '"loading' not in httpx.get(server + "/", timeout=30).text  # no claim that only the script can keep
    ok, blank = cv2.imencode(".png", np.full((64, 64, 3), 128, np.uint8))
    with sync_api.sync_playwright() as p:
        browser = _browser(p)
        try:
            page = browser.new_page(viewport={"width": 1100, "height": 700}, bypass_csp=True)
            failed = []
            page.on("response", lambda r: failed.append(r.url) if r.status >= 400 else None)
            page.goto(server + "/")
            page.wait_for_function("document.getElementById('model-info').textContent.includes('poster_v1_tiny')")
            # before the first photo: a hint where the picture will be, not a blank dark area
            assert page.is_visible("#hint") and not page.is_visible("#canvas")
            assert "Drop a photo" in page.inner_text("#hint")
            page.screenshot(path=str(tmp_path / "serve-page-empty.png"))
            _keep(tmp_path / "serve-page-empty.png")

            page.set_input_files("#file-input", str(ASTRONAUT))
            page.wait_for_function("document.getElementById('canvas').dataset.labels === 'happy'", timeout=60_000)
            assert page.is_visible("#canvas") and not page.is_visible("#hint")

            # an error: the previous photo and its result leave the screen, the error stays
            page.set_input_files("#file-input", {"name": "broken.jpg", "mimeType": "image/jpeg",
                                                 "buffer": b"this is not an image"})
            page.wait_for_function("document.getElementById('status').textContent.length > 0 && "
                                   "document.getElementById('status').textContent !== 'recognising…'",
                                   timeout=60_000)
            assert not page.is_visible("#canvas") and page.is_visible("#hint")
            assert page.inner_text("#results") == "" and page.get_attribute("#canvas", "data-labels") == ""
            assert page.inner_text("#status").startswith("broken.jpg: ") and "ms" not in page.inner_text("#readout")
            page.screenshot(path=str(tmp_path / "serve-page-error.png"))
            _keep(tmp_path / "serve-page-error.png")

            # no face: said once, not numbered as a face
            page.set_input_files("#file-input", {"name": "blank.png", "mimeType": "image/png",
                                                 "buffer": blank.tobytes()})
            page.wait_for_function("!document.getElementById('no-face').hidden", timeout=60_000)
            assert page.inner_text("#no-face") == "no face found"
            assert page.eval_on_selector_all("#results li", "items => items.length") == 0
            assert page.inner_text("#status") == "" and page.is_visible("#canvas")
            assert failed == [], f"answered with an error status: {failed}"
            page.screenshot(path=str(tmp_path / "serve-page-no-face.png"))
            _keep(tmp_path / "serve-page-no-face.png")
        finally:
            browser.close()


def test_fake_webcam_gets_live_labels(server, tmp_path):
    video = write_y4m(tmp_path / "astronaut.y4m", cv2.imread(str(ASTRONAUT)))
    camera = ["--use-fake-device-for-media-stream", "--use-fake-ui-for-media-stream",
              f"--use-file-for-fake-video-capture={video}"]
    with sync_api.sync_playwright() as p:
        browser = _browser(p, camera)
        try:
            context = browser.new_context(viewport={"width": 1100, "height": 700}, bypass_csp=True)
            context.grant_permissions(["camera"], origin=server)
            page = context.new_page()
            page.goto(server + "/")
            page.click("#camera-start")
            page.wait_for_function("document.getElementById('canvas').dataset.labels === 'happy'", timeout=60_000)
            # frames keep coming at a steady rate: several answers, and the FPS readout shows a rate
            page.wait_for_function("Number(document.getElementById('readout').dataset.answers) >= 4", timeout=60_000)
            fps = float(page.inner_text("#readout").split("fps")[1])
            assert fps > 0.5, page.inner_text("#readout")
            assert page.is_disabled("#camera-start") and not page.is_disabled("#camera-stop")
            page.screenshot(path=str(tmp_path / "serve-page-webcam.png"))
            _keep(tmp_path / "serve-page-webcam.png")
            page.click("#camera-stop")
            assert not page.is_disabled("#camera-start")
        finally:
            browser.close()
