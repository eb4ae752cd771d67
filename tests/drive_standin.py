"""A loopback HTTP server that behaves like Google Drive for the requests gdown makes.

``poster.checkpoint.hub`` sends every Google Drive request here when ``POSTER_GDRIVE_ORIGIN`` names it.
Each file id has a behaviour:

* ``direct``: ``/uc?id=`` answers with the file (``Content-Disposition: attachment``);
* ``confirm``: ``/uc?id=`` answers with Drive's large-file page (a ``download-form`` pointing at
  ``drive.usercontent.google.com/download`` with ``confirm`` and ``uuid``), which serves the file;
* ``quota``: Drive's "too many users" HTML error page;
* ``html_file``: an HTML page served as an attachment (saved instead of the weights);
* ``cut_once``: the first transfer stops half-way (connection closed), ranged requests then work;
* ``cut_always``: every transfer stops half-way;
* ``slow``: the file comes in small pieces with pauses;
* ``stall``: half the file, then nothing for longer than the client waits.

Folders: ``/embeddedfolderview?id=`` lists ``folders[id]`` (name -> file id) as Drive's embedded view.
"""

from __future__ import annotations

import html
import threading
import time
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class DriveStandIn:
    def __init__(self):
        self.files: dict[str, tuple[str, str, bytes]] = {}  # id -> (behaviour, file name, content)
        self.folders: dict[str, tuple[str, dict[str, str]]] = {}  # id -> (folder name, {file name: id})
        self.requests: list[tuple[str, str, str | None]] = []  # (host asked for, path, Range header)
        self.bodies_started: list[str] = []  # file ids whose content began to be sent
        self.lock = threading.Lock()
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.server.daemon_threads = True
        self.server.handle_error = lambda request, address: None  # cut connections are on purpose
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def origin(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def add_file(self, file_id: str, behaviour: str, name: str, content: bytes) -> None:
        self.files[file_id] = (behaviour, name, content)

    def __enter__(self) -> "DriveStandIn":
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()

    def _handler(self):
        standin = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):  # keep the test output clean
                pass

            def do_GET(self):
                url = urllib.parse.urlparse(self.path)
                query = {k: v[0] for k, v in urllib.parse.parse_qs(url.query).items()}
                with standin.lock:
                    standin.requests.append((self.headers.get("X-Original-Host", ""), self.path,
                                             self.headers.get("Range")))
                if url.path == "/embeddedfolderview":
                    return self._folder(query.get("id", ""))
                entry = standin.files.get(query.get("id", ""))
                if entry is None:
                    return self._page(404, "<html><head><title>Not Found</title></head><body>404</body></html>")
                behaviour, name, content = entry
                if url.path == "/uc":
                    if behaviour == "confirm":
                        return self._confirmation_page(query["id"], name)
                    if behaviour == "quota":
                        return self._page(200, _QUOTA_PAGE)
                    return self._file(query["id"], behaviour, name, content)
                if url.path == "/download" and query.get("confirm") and query.get("uuid"):
                    return self._file(query["id"], behaviour, name, content)
                return self._confirmation_page(query["id"], name)

            def _page(self, status: int, body: str) -> None:
                data = body.encode()
                self.send_response(status)
                self.send_header("Content-Type", "text/html; charset=utf-8")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def _confirmation_page(self, file_id: str, name: str) -> None:
                self._page(200, (
                    "<!DOCTYPE html><html><head><title>Google Drive - Virus scan warning</title></head><body>"
                    f"<p>{html.escape(name)} is too large for Google Drive to scan for viruses.</p>"
                    '<form id="download-form" action="https://drive.usercontent.google.com/download" method="get">'
                    '<input type="submit" value="Download anyway"/>'
                    f'<input type="hidden" name="id" value="{file_id}">'
                    '<input type="hidden" name="export" value="download">'
                    '<input type="hidden" name="confirm" value="t">'
                    '<input type="hidden" name="uuid" value="0b1c2d3e-standin"></form></body></html>'))

            def _folder(self, folder_id: str) -> None:
                if folder_id not in standin.folders:
                    return self._page(404, "<html><head><title>Not Found</title></head></html>")
                title, children = standin.folders[folder_id]
                links = "".join(f'<a href="https://drive.google.com/file/d/{fid}/view?usp=drive_web">'
                                f'{html.escape(name)}</a>' for name, fid in children.items())
                self._page(200, f"<html><head><title>{html.escape(title)}</title></head><body>{links}</body></html>")

            def _file(self, file_id: str, behaviour: str, name: str, content: bytes) -> None:
                start = 0
                ranged = self.headers.get("Range")
                if ranged and behaviour in ("cut_once", "cut_always", "direct", "confirm"):
                    start = int(ranged.split("=")[1].split("-")[0])
                with standin.lock:
                    first_transfer = file_id not in standin.bodies_started
                    standin.bodies_started.append(file_id)
                body = content[start:]
                self.send_response(206 if start else 200)
                self.send_header("Content-Type", "application/octet-stream")
                self.send_header("Content-Disposition", f'attachment; filename="{name}"')
                self.send_header("Content-Length", str(len(body)))
                self.send_header("ETag", '"standin-etag"')
                if start:
                    self.send_header("Content-Range", f"bytes {start}-{len(content) - 1}/{len(content)}")
                self.end_headers()
                half = len(body) // 2
                if behaviour == "cut_always" or (behaviour == "cut_once" and first_transfer and not start):
                    self.wfile.write(body[:half])
                    self.wfile.flush()
                    self.close_connection = True
                    return
                if behaviour == "stall":
                    self.wfile.write(body[:half])
                    self.wfile.flush()
                    time.sleep(3.0)
                    self.close_connection = True
                    return
                if behaviour == "slow":
                    step = max(1, len(body) // 8)
                    for i in range(0, len(body), step):
                        self.wfile.write(body[i:i + step])
                        self.wfile.flush()
                        time.sleep(0.15)
                    return
                self.wfile.write(body)

        return Handler


_QUOTA_PAGE = (
    "<!DOCTYPE html><html><head><title>Google Drive - Quota exceeded</title></head><body>"
    '<p class="uc-error-caption">Sorry, you can\'t view or download this file at this time.</p>'
    '<p class="uc-error-subcaption">Too many users have viewed or downloaded this file recently. Please try '
    "accessing the file again later.</p></body></html>")
