"""A JSON-over-HTTP server on 127.0.0.1 for tests that stand in for an OpenAI-compatible server."""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

Answer = tuple[int, dict[str, str], dict | None]


class Loopback:
    """Answers every POST with ``answer(body) -> (status, headers, JSON payload or None)``; keeps each
    request's JSON body in ``bodies``, in arrival order."""

    def __init__(self, answer: Callable[[dict], Answer]) -> None:
        self.bodies: list[dict] = []
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args) -> None:
                return

            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                owner.bodies.append(body)
                status, headers, payload = answer(body)
                data = json.dumps(payload).encode() if payload is not None else b""
                self.send_response(status)
                for name, value in {"Content-Type": "application/json", **headers}.items():
                    self.send_header(name, value)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        # a short poll: shutdown() waits up to one poll interval, which would add 0.5 s to every test
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)
        self.thread.start()

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()

    def __enter__(self) -> Loopback:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def completions_answer(model: str, choices: list[dict], usage: dict | None = None) -> Answer:
    """A 200 answer of ``/v1/completions`` holding ``choices`` (and ``usage`` where given)."""
    payload = {"id": "c", "object": "text_completion", "created": 0, "model": model, "choices": choices}
    return 200, {}, {**payload, **({"usage": usage} if usage is not None else {})}
