"""A real HTTP receiver of webhooks on 127.0.0.1, for the tests: it records every request, checks
each signature with the Standard Webhooks reference library (``standardwebhooks`` from PyPI, not the
gateway's code), and answers as a test scripts it: a status (with headers), a delay, or a dropped
connection."""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from standardwebhooks.webhooks import Webhook, WebhookVerificationError

SECRET = "whsec_" + "MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"  # base64 of 24 bytes


@dataclass
class Received:
    path: str
    headers: dict[str, str]
    body: bytes
    time: float
    verified: bool
    answered: int = 0  # the status answered; 0: the connection was dropped

    @property
    def id(self) -> str:
        return self.headers["webhook-id"]

    @property
    def job(self) -> dict[str, Any]:
        return json.loads(self.body)


@dataclass
class Answer:
    status: int = 200
    headers: dict[str, str] = field(default_factory=dict)
    delay: float = 0.0
    drop: bool = False  # close the connection without answering


class Receiver:
    def __init__(self, secret: str = SECRET) -> None:
        self.verifier = Webhook(secret)
        self.received: list[Received] = []
        self.script: list[Answer] = []  # answers to give, in order; then `default`
        self.default = Answer()
        self.in_flight = 0
        self._lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                headers = {k.lower(): v for k, v in self.headers.items()}
                try:
                    receiver.verifier.verify(body, headers)
                    verified = True
                except WebhookVerificationError:
                    verified = False
                with receiver._lock:
                    answer = receiver.script.pop(0) if receiver.script else receiver.default
                    receiver.in_flight += 1
                entry = Received(self.path, headers, body, time.time(), verified)
                try:
                    if answer.delay:
                        time.sleep(answer.delay)
                    if answer.drop:
                        self.connection.shutdown(socket.SHUT_RDWR)
                        self.close_connection = True
                    else:
                        self.send_response(answer.status)
                        for name, value in answer.headers.items():
                            self.send_header(name, value)
                        self.send_header("Content-Length", "2")
                        self.end_headers()
                        self.wfile.write(b"ok")
                        entry.answered = answer.status
                finally:
                    with receiver._lock:
                        receiver.in_flight -= 1
                        receiver.received.append(entry)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def url(self, path: str = "/hook") -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def start(self) -> Receiver:
        self._thread.start()
        return self

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def of(self, job_id: str) -> list[Received]:
        with self._lock:
            return [r for r in self.received if r.job.get("id") == job_id]

    def wait_for(self, condition: Callable[[], object], what: str, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while not condition():
            assert time.monotonic() < deadline, f"timed out waiting for {what}; received: {self.received}"
            time.sleep(0.02)


def webhook_config(*prefixes: str, **settings: object) -> str:
    """The [webhooks] table of a test gateway: these prefixes, 127.0.0.1 allowed, the test secret."""
    table = {"allowed_prefixes": list(prefixes), "allowed_networks": ["127.0.0.1/32"], "secret": SECRET,
             "backoff_initial_seconds": 0.2, "poll_interval_seconds": 0.1, **settings}
    lines = ["[webhooks]", *(f"{key} = {json.dumps(value)}" for key, value in table.items())]
    return "\n".join(lines) + "\n"
