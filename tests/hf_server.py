"""A small Hugging Face Hub stand-in on 127.0.0.1 for `specdec models pull` tests.

It answers what huggingface_hub (2.x, file_download.py and utils/_http.py) asks when it
downloads one file, `GET`/`HEAD /{owner}/{name}/resolve/{revision}/{filename}`:

- the metadata HEAD needs `X-Repo-Commit` and an ETag; for LFS files the real Hub answers
  302 with `X-Linked-Etag` (the file's sha256) and `X-Linked-Size`, and a `Location` on a
  CDN host that huggingface_hub does not follow during the HEAD but downloads from. The
  stand-in does the same, with `localhost` playing the CDN host for `127.0.0.1`;
- the download GET may carry `Range: bytes=N-` when it resumes after a dropped connection;
- errors carry `X-Error-Code` (`EntryNotFound` with a 404, `RepoNotFound` with a 401),
  which huggingface_hub turns into its RemoteEntryNotFoundError / RepositoryNotFoundError.

Failure modes for tests: `die_after_bytes` sends that many bytes of a file, then drops the
connection and stops listening, like a server that crashed mid-download; `corrupt` serves
other bytes than the sha256 it announces.
"""

from __future__ import annotations

import hashlib
import re
import socket
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import unquote

COMMIT = hashlib.sha1(b"specdec test repo").hexdigest()
_RESOLVE = re.compile(r"^/(?P<repo>[^/]+/[^/]+)/resolve/(?P<revision>[^/]+)/(?P<filename>.+)$")
_LFS = re.compile(r"^/lfs/(?P<sha256>[0-9a-f]{64})$")


@dataclass
class HubStandIn:
    """files: {(repo, filename): content}. Use as a context manager; `url` is HF_ENDPOINT."""

    files: dict[tuple[str, str], bytes]
    die_after_bytes: int | None = None
    corrupt: bool = False
    requests: list[tuple[str, str, str | None]] = field(default_factory=list)  # method, path, Range

    def __post_init__(self) -> None:
        # The "CDN" serves by content hash and names the file in Content-Disposition, as the Hub's does.
        self.by_sha256 = {
            hashlib.sha256(content).hexdigest(): (filename.rsplit("/", 1)[-1], content)
            for (_, filename), content in self.files.items()
        }
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), _make_handler(self))
        self._server.daemon_threads = True
        self.port = self._server.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._stopped = threading.Event()

    def __enter__(self) -> HubStandIn:
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def stop(self) -> None:
        """Stop listening: later connections are refused."""
        if not self._stopped.is_set():
            self._stopped.set()
            self._server.shutdown()
            self._server.server_close()


def _make_handler(hub: HubStandIn) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def do_HEAD(self) -> None:
            self._answer(send_body=False)

        def do_GET(self) -> None:
            self._answer(send_body=True)

        def log_message(self, format: str, *args: object) -> None:
            """Quiet: pytest shows the test's own output."""

        def _answer(self, send_body: bool) -> None:
            path = unquote(self.path.split("?", 1)[0])
            hub.requests.append((self.command, path, self.headers.get("Range")))
            if resolve := _RESOLVE.match(path):
                self._resolve(resolve["repo"], resolve["filename"])
            elif lfs := _LFS.match(path):
                self._send_content(hub.by_sha256.get(lfs["sha256"]), send_body)
            else:
                self._error(404, "EntryNotFound")

        def _resolve(self, repo: str, filename: str) -> None:
            if not any(known_repo == repo for known_repo, _ in hub.files):
                self._error(401, "RepoNotFound")
                return
            content = hub.files.get((repo, filename))
            if content is None:
                self._error(404, "EntryNotFound")
                return
            sha256 = hashlib.sha256(content).hexdigest()
            self.send_response(302)
            self.send_header("Location", f"http://localhost:{hub.port}/lfs/{sha256}")
            self.send_header("X-Repo-Commit", COMMIT)
            self.send_header("X-Linked-Etag", f'"{sha256}"')
            self.send_header("X-Linked-Size", str(len(content)))
            self.send_header("ETag", f'"{hashlib.sha1(content).hexdigest()}"')
            self.send_header("Content-Length", "0")
            self.end_headers()

        def _send_content(self, named_content: tuple[str, bytes] | None, send_body: bool) -> None:
            if named_content is None:
                self._error(404, "EntryNotFound")
                return
            filename, content = named_content
            if hub.corrupt:
                content = bytes([content[0] ^ 0xFF]) + content[1:]
            start = _range_start(self.headers.get("Range"))
            body = content[start:]
            self.send_response(206 if start else 200)
            self.send_header("Content-Disposition", f'attachment; filename="{filename}";')
            if start:
                self.send_header("Content-Range", f"bytes {start}-{len(content) - 1}/{len(content)}")
            self.send_header("Content-Length", str(len(body)))
            self.send_header("Accept-Ranges", "bytes")
            self.end_headers()
            if not send_body:
                return
            if hub.die_after_bytes is None:
                self.wfile.write(body)
                return
            self.wfile.write(body[: hub.die_after_bytes])
            self.wfile.flush()
            self.connection.shutdown(socket.SHUT_RDWR)
            threading.Thread(target=hub.stop, daemon=True).start()

        def _error(self, status: int, error_code: str) -> None:
            self.send_response(status)
            self.send_header("X-Error-Code", error_code)
            if error_code == "EntryNotFound":  # the repository exists, so the Hub names its commit
                self.send_header("X-Repo-Commit", COMMIT)
            self.send_header("Content-Length", "0")
            self.end_headers()

    return Handler


def _range_start(range_header: str | None) -> int:
    if range_header is None:
        return 0
    match = re.fullmatch(r"bytes=(\d+)-", range_header.strip())
    return int(match.group(1)) if match else 0
