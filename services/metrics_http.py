"""A minimal ``/metrics`` endpoint for workers (Prometheus text exposition format).

A worker that has figures to export (the gateway's per-version live metrics
and verdict counts) renders them on its own thread into bytes; the server
thread only serves the last rendering, so it never reads state another
thread is changing. Only ``GET /metrics`` exists: anything else is a 404,
and a request is never allowed to take the worker down.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

log = logging.getLogger(__name__)

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


def serve_metrics(
    render: Callable[[], bytes], *, host: str = "127.0.0.1", port: int = 0
) -> ThreadingHTTPServer:
    """Serve ``render()`` at ``GET /metrics`` on a daemon thread; the server
    (``server.server_address`` has the port; ``server.shutdown()`` stops it).

    Raises
    ------
    OSError
        The address cannot be bound.
    """

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            if self.path.split("?", 1)[0] != "/metrics":
                self.send_error(404, "only GET /metrics is served here")
                return
            try:
                body = render()
            except Exception:  # a rendering bug must not stop the worker
                log.exception("rendering /metrics failed")
                self.send_error(500, "rendering the metrics failed (see the worker's log)")
                return
            self.send_response(200)
            self.send_header("Content-Type", CONTENT_TYPE)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: object) -> None:
            log.debug("metrics http: " + format, *args)

    server = ThreadingHTTPServer((host, port), Handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, name="metrics-http", daemon=True)
    thread.start()
    return server
