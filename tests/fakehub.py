"""A loopback stand-in for the ModelScope hub: the two routes ``snapshot_download`` uses.

    GET /api/v1/models/{owner}/{name}/repo/files?Revision=R&Recursive=True -> the file list
    GET /api/v1/models/{owner}/{name}/repo?Revision=R&FilePath=P            -> the bytes (Range honoured)

Everything else is a 404 (modelscope's acceleration probe expects that). Faults for tests:
``cut`` serves the first request of a file only halfway and drops the connection; ``lie``
lists a wrong sha256 for a file. ``requests`` records (path, Range header) of every call.
"""

from __future__ import annotations

import hashlib
import json
import threading
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class FakeHub:
    def __init__(self) -> None:
        self.models: dict[str, dict[str, bytes]] = {}
        self.cut: set[str] = set()
        self.lie: set[str] = set()
        self.requests: list[tuple[str, str | None]] = []
        self._served_cut: set[str] = set()
        hub = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: object) -> None:
                pass

            def _json(self, code: int, body: dict) -> None:
                data = json.dumps(body).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_HEAD(self) -> None:  # noqa: N802 - http.server's naming
                self.do_GET()

            def do_GET(self) -> None:  # noqa: N802
                url = urllib.parse.urlparse(self.path)
                query = dict(urllib.parse.parse_qsl(url.query))
                parts = url.path.strip("/").split("/")
                hub.requests.append((self.path, self.headers.get("Range")))
                if len(parts) >= 6 and parts[:3] == ["api", "v1", "models"] and parts[5] == "repo":
                    model_id = f"{parts[3]}/{parts[4]}"
                    files = hub.models.get(model_id)
                    if files is None:
                        return self._json(404, {"Code": 10010205001, "Message": f"model {model_id} not found",
                                                "Success": False})
                    if len(parts) == 7 and parts[6] == "files":
                        return self._json(200, {"Code": 200, "Success": True, "Data": {"Files": [
                            {"Name": p.rsplit("/", 1)[-1], "Path": p, "Type": "blob", "Size": len(b),
                             "Sha256": ("0" * 64) if p in hub.lie else hashlib.sha256(b).hexdigest(),
                             "Revision": query.get("Revision", "master")}
                            for p, b in sorted(files.items())]}})
                    if len(parts) == 6 and "FilePath" in query:
                        return self._file(model_id, query["FilePath"], files)
                return self._json(404, {"Code": 404, "Message": "not found", "Success": False})

            def _file(self, model_id: str, path: str, files: dict[str, bytes]) -> None:
                body = files.get(path)
                if body is None:
                    return self._json(404, {"Code": 404, "Message": f"{path} not found", "Success": False})
                start, status = 0, 200
                rng = self.headers.get("Range")
                if rng and rng.startswith("bytes="):
                    start = int(rng[6:].split("-")[0] or 0)
                    status = 206
                chunk = body[start:]
                self.send_response(status)
                self.send_header("Content-Type", "application/octet-stream")
                self.send_header("Content-Length", str(len(chunk)))
                if status == 206:
                    self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
                self.end_headers()
                key = f"{model_id}/{path}"
                if path in hub.cut and key not in hub._served_cut:
                    hub._served_cut.add(key)
                    self.wfile.write(chunk[: len(chunk) // 2])
                    self.wfile.flush()
                    self.close_connection = True
                    self.connection.shutdown(2)
                    return
                self.wfile.write(chunk)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def __enter__(self) -> FakeHub:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()
