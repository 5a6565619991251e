"""A loopback HTTP server that answers like the Hugging Face Hub's file endpoints.

Enough of the protocol for ``huggingface_hub.hf_hub_download``: ``HEAD`` and ``GET`` on
``/{repo_id}/resolve/{revision}/{filename}`` (dataset repos under ``/datasets/``), with the
commit and ETag headers the client checks.  Tests point ``HF_ENDPOINT`` at it.
"""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

COMMIT = "0123456789abcdef0123456789abcdef01234567"


@dataclass
class FakeHub:
    """Files by ``(repo_id, filename)``.  A key in ``truncate`` has its next GET cut off
    half-way (the connection drops), as a flaky network would; Range requests resume.  A key
    in ``truncate_always`` has every GET cut off, as a broken network would."""

    files: dict[tuple[str, str], bytes] = field(default_factory=dict)
    truncate: set[tuple[str, str]] = field(default_factory=set)
    truncate_always: set[tuple[str, str]] = field(default_factory=set)
    requests: list[str] = field(default_factory=list)
    url: str = ""


def _handler(hub: FakeHub) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args: object) -> None:  # keep test output clean
            pass

        def _lookup(self) -> tuple[tuple[str, str] | None, bytes | None]:
            path = self.path.split("?")[0].removeprefix("/datasets")
            if "/resolve/" not in path:
                return None, None
            repo, rest = path.lstrip("/").split("/resolve/", 1)
            _revision, filename = rest.split("/", 1)
            key = (repo, filename)
            return key, hub.files.get(key)

        def _headers(self, body: bytes, start: int = 0) -> None:
            etag = hashlib.sha256(body).hexdigest()
            self.send_response(206 if start else 200)
            self.send_header("Content-Type", "application/octet-stream")
            self.send_header("Content-Length", str(len(body) - start))
            if start:
                self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
            self.send_header("ETag", f'"{etag}"')
            self.send_header("X-Linked-Etag", f'"{etag}"')
            self.send_header("X-Linked-Size", str(len(body)))
            self.send_header("X-Repo-Commit", COMMIT)
            self.end_headers()

        def _missing(self, key: tuple[str, str] | None) -> None:
            """A missing file of a known repository is a 404; an unknown repository answers
            as the Hub does (401, so as not to reveal private repositories)."""
            known = key is not None and any(repo == key[0] for repo, _ in hub.files)
            self.send_response(404 if known else 401)
            self.send_header("X-Error-Code", "EntryNotFound" if known else "RepoNotFound")
            self.send_header("X-Error-Message", "Entry not found" if known else "Repo not found")
            self.send_header("Content-Length", "0")
            self.end_headers()

        def do_HEAD(self) -> None:
            hub.requests.append(f"HEAD {self.path}")
            key, body = self._lookup()
            if body is None:
                self._missing(key)
                return
            self._headers(body)

        def do_GET(self) -> None:
            hub.requests.append(f"GET {self.path}")
            key, body = self._lookup()
            if body is None:
                self._missing(key)
                return
            ranged = self.headers.get("Range", "")
            start = int(ranged.removeprefix("bytes=").split("-")[0]) if ranged else 0
            self._headers(body, start)
            if key in hub.truncate or key in hub.truncate_always:
                hub.truncate.discard(key)
                self.wfile.write(body[start : start + (len(body) - start) // 2])
                self.wfile.flush()
                self.close_connection = True
                return
            self.wfile.write(body[start:])

    return Handler


@contextmanager
def fake_hub() -> Iterator[FakeHub]:
    hub = FakeHub()
    server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(hub))
    hub.url = f"http://127.0.0.1:{server.server_address[1]}"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield hub
    finally:
        server.shutdown()
        server.server_close()
