"""A small fault-injecting HTTP proxy for the S3 tests: it forwards every request to moto's server
and, for requests matching a rule, answers an error, stalls or drops the connection instead.

Rules match the HTTP method and a regular expression on the path (``/bucket/key?query``); each
may apply a limited number of times. Used by tests/test_catalogue_faults.py through the session
fixture ``fault_proxy`` (tests/conftest.py): one proxy per session, rules cleared between tests.
"""
from __future__ import annotations

import http.client
import re
import threading
import time
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlparse


@dataclass
class Rule:
    """What to do to matching requests: ``status`` (answer it, e.g. 503), ``stall_s`` (wait that
    long first, then forward), ``drop`` (close the connection without an answer)."""

    method: str | None
    path: re.Pattern
    status: int | None = None
    stall_s: float = 0.0
    drop: bool = False
    times: int | None = None
    hits: int = 0


class FaultProxy:
    """Forwards to ``upstream`` (``http://host:port``) on 127.0.0.1:<port>; see the module doc."""

    def __init__(self, upstream: str):
        self.upstream = urlparse(upstream)
        self.rules: list[Rule] = []
        self.requests: list[tuple[str, str]] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):  # quiet
                pass

            def _handle(self):
                body = self._body()
                rule = proxy._match(self.command, self.path)
                if rule is not None:
                    if rule.stall_s:
                        proxy._stop.wait(rule.stall_s)
                    if rule.drop:
                        self.close_connection = True
                        return
                    if rule.status:
                        payload = (f"<?xml version='1.0' encoding='UTF-8'?><Error><Code>ServiceUnavailable</Code>"
                                   f"<Message>injected fault</Message></Error>").encode()
                        self.send_response(rule.status)
                        self.send_header("Content-Type", "application/xml")
                        self.send_header("Content-Length", str(len(payload) if self.command != "HEAD" else 0))
                        self.end_headers()
                        if self.command != "HEAD":
                            self.wfile.write(payload)
                        return
                self._forward(body)

            def _body(self) -> bytes:
                if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
                    out = b""
                    while True:
                        size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                        if size == 0:
                            self.rfile.readline()
                            return out
                        out += self.rfile.read(size)
                        self.rfile.readline()
                n = int(self.headers.get("Content-Length") or 0)
                return self.rfile.read(n) if n else b""

            def _forward(self, body: bytes):
                conn = http.client.HTTPConnection(proxy.upstream.hostname, proxy.upstream.port, timeout=60)
                headers = {k: v for k, v in self.headers.items() if k.lower() not in ("transfer-encoding", "connection")}
                headers["Content-Length"] = str(len(body))
                conn.request(self.command, self.path, body=body, headers=headers)
                resp = conn.getresponse()
                data = resp.read()
                self.send_response(resp.status, resp.reason)
                for k, v in resp.getheaders():
                    if k.lower() not in ("transfer-encoding", "connection", "content-length", "server", "date"):
                        self.send_header(k, v)
                length = resp.getheader("Content-Length") if self.command == "HEAD" else str(len(data))
                self.send_header("Content-Length", length or "0")
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(data)
                conn.close()

            do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = _handle

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self._thread.start()

    def _match(self, method: str, path: str) -> Rule | None:
        with self._lock:
            self.requests.append((method, path))
            for rule in self.rules:
                if (rule.method is None or rule.method == method) and rule.path.search(path) and \
                        (rule.times is None or rule.hits < rule.times):
                    rule.hits += 1
                    return rule
        return None

    def add(self, path: str, method: str | None = "GET", **kwargs) -> Rule:
        """Add a rule for requests whose path matches the regular expression ``path``."""
        rule = Rule(method, re.compile(path), **kwargs)
        with self._lock:
            self.rules.append(rule)
        return rule

    def clear(self) -> None:
        """Remove every rule (stalled requests are let go) and forget the request log."""
        with self._lock:
            self.rules.clear()
            self.requests.clear()
        self._stop.set()
        time.sleep(0.05)
        self._stop.clear()

    def close(self) -> None:
        self.clear()
        self.server.shutdown()
        self.server.server_close()
