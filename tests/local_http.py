"""A file server on 127.0.0.1 for the download tests: serves a folder and records every path requested."""

from __future__ import annotations

import contextlib
import functools
import http.server
import threading
from pathlib import Path
from typing import Callable, Iterator


class QuietHandler(http.server.SimpleHTTPRequestHandler):
    """SimpleHTTPRequestHandler without a log line per request."""

    def log_message(self, *args: object) -> None:
        pass


@contextlib.contextmanager
def serve(folder: Path) -> Iterator[tuple[Callable[[str], str], list[str]]]:
    """(url of a subfolder by name, the request paths so far) while ``folder`` is served; stopped afterwards."""
    requests: list[str] = []

    class Handler(QuietHandler):
        def do_GET(self) -> None:
            requests.append(self.path)
            super().do_GET()

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Handler, directory=str(folder)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield (lambda name: f"http://127.0.0.1:{server.server_port}/{name}/"), requests
    finally:
        server.shutdown()
        server.server_close()
        thread.join()
