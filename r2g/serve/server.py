"""The HTTP side of `r2g serve`: the standard library's threading server, one page, a small JSON API, and one
worker thread that runs every request on the model in arrival order (requests queue; none run concurrently
on the one model, and a waiting request holds only its upload's bytes).

    GET  /             the page (page.html)
    GET  /api/run      the run's facts: base LLM, mode, steps, best validation scores, device, precision, defaults
    GET  /api/studies  the test split's study ids
    POST /api/generate {"files": [{"name", "data": base64}], "settings": {...}}  → a report, labels, sources
                       + "folder": {"name", "subfolders"} when the files are a study folder's: its images are
                       picked, checked and ordered here (folder_views), whatever the page did
    POST /api/study    {"id", "settings": {...}}                                  → the same, + reference and scores

Every failure a request can cause (a bad upload, a bad setting) answers 400 with {"error": message naming the
file}; anything else answers 500 with the error's text, and the server goes on serving.
"""

from __future__ import annotations

import base64
import binascii
import json
import sys
import traceback
from concurrent.futures import ThreadPoolExecutor
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from importlib.resources import files

from r2g.errors import R2GError
from r2g.serve.run import ServedRun, folder_views

# An upload's body: two views of the largest chest DICOMs (≈ 4,300² × 16 bit ≈ 37 MB each) in base64, with room.
MAX_BODY = 128 * 2**20


class Server(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 64  # the listen backlog: 20 clients connecting at once must not be refused

    def __init__(self, address: tuple[str, int], served: ServedRun, log=print):
        super().__init__(address, Handler)
        self.served, self.log = served, log
        self.model_queue = ThreadPoolExecutor(max_workers=1, thread_name_prefix="r2g-model")
        self.page = files("r2g.serve").joinpath("page.html").read_bytes()

    def run_queued(self, job, *args):
        """`job(*args)` on the model's one worker thread, after every request that arrived before it."""
        return self.model_queue.submit(job, *args).result()

    def server_close(self) -> None:
        super().server_close()
        self.model_queue.shutdown(wait=False, cancel_futures=True)


class Handler(BaseHTTPRequestHandler):
    server: Server
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args) -> None:  # noqa: A002 (the base class's name)
        self.server.log(f"{self.address_string()} {format % args}")

    # ------------------------------------------------------------------------------------------- replies
    def _send(self, status: int, body: bytes, content_type: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")  # reports of patients' images: not for any cache
        self.end_headers()
        self.wfile.write(body)

    def _json(self, status: int, payload: dict) -> None:
        self._send(status, json.dumps(payload).encode(), "application/json")

    def _error(self, status: int, message: str) -> None:
        self._json(status, {"error": message})

    # ------------------------------------------------------------------------------------------- routes
    def do_GET(self) -> None:  # noqa: N802 (the base class's name)
        served = self.server.served
        if self.path in ("/", "/index.html"):
            self._send(HTTPStatus.OK, self.server.page, "text/html; charset=utf-8")
        elif self.path == "/api/run":
            self._json(HTTPStatus.OK, {**served.facts(), "max_upload_bytes": MAX_BODY})
        elif self.path == "/api/studies":
            self._json(HTTPStatus.OK, {"split": served.split, "ids": sorted(served.studies),
                                       "error": served.studies_error})
        else:
            self._error(HTTPStatus.NOT_FOUND, f"{self.path}: no such page")

    def do_POST(self) -> None:  # noqa: N802
        routes = {"/api/generate": self._generate, "/api/study": self._study}
        if self.path not in routes:
            self._error(HTTPStatus.NOT_FOUND, f"{self.path}: no such endpoint")
            return
        try:
            body = self._read_body()
            answer = routes[self.path](body)
        except R2GError as e:
            self._error(HTTPStatus.BAD_REQUEST, str(e))
            return
        except Exception as e:  # noqa: BLE001 one request's failure must not end the server
            traceback.print_exc(file=sys.stderr)
            self._error(HTTPStatus.INTERNAL_SERVER_ERROR, f"internal error: {type(e).__name__}: {e}")
            return
        self._json(HTTPStatus.OK, answer.to_dict())

    def _read_body(self) -> dict:
        try:
            length = int(self.headers.get("Content-Length") or 0)
        except ValueError:
            length = -1
        if length <= 0:
            raise R2GError("empty request: send JSON")
        if length > MAX_BODY:
            self.close_connection = True  # the body stays unread: the connection cannot be reused
            raise R2GError(f"upload of {length / 2**20:.0f} MiB is over the limit of {MAX_BODY / 2**20:.0f} MiB")
        try:
            body = json.loads(self.rfile.read(length))
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise R2GError(f"request is not JSON ({e})") from None
        if not isinstance(body, dict):
            raise R2GError("request must be a JSON object")
        return body

    def _generate(self, body: dict):
        uploads = []
        for i, item in enumerate(body.get("files") or []):
            name = str(item.get("name") or f"upload {i + 1}") if isinstance(item, dict) else f"upload {i + 1}"
            try:
                uploads.append((name, base64.b64decode(item["data"], validate=True)))
            except (KeyError, TypeError, binascii.Error):
                raise R2GError(f"{name}: upload not base64 data") from None
        folder = body.get("folder")
        if folder is None:
            return self.server.run_queued(self.server.served.upload, uploads, body.get("settings"))
        if not isinstance(folder, dict) or not isinstance(folder.get("subfolders", []), list):
            raise R2GError('folder: must be {"name": ..., "subfolders": [...]}')
        name = str(folder.get("name") or "dropped")
        # Checked before the queue: a wrong folder is answered at once, not after the reports queued before it.
        views, ignored = folder_views(name, uploads, [str(s) for s in folder.get("subfolders", [])],
                                      self.server.served.cfg.data.max_views)
        answer = self.server.run_queued(self.server.served.upload, views, body.get("settings"))
        answer.folder = {"name": name, "views": [n for n, _ in views], "ignored": ignored}
        return answer

    def _study(self, body: dict):
        return self.server.run_queued(self.server.served.study, str(body.get("id", "")), body.get("settings"))
