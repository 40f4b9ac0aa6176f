"""A local HTTP server with hostile behaviours, for fetcher tests (binds loopback addresses only).

Every request is logged (path, Host header, client) so tests can check what reached which server.
Paths (query parameters in brackets):

  /img/<seed>.jpg  /png/<seed>.png  /octet/<seed>    good images (deterministic per seed)
  /redirect[to, code]  /chain/<n>  /loop  /loopa  /loopb  /redir_file  /redir_noloc
  /endless  /big_declared  /big_stream  /lie_long  /lie_short  /drip  /drip_headers  /stall
  /html  /html_as_png  /text_jpeg  /truncated.jpg  /polyglot.gif  /bomb.png  /bomb_header.png
  /gzip_bomb  /tiff  /svg  /tiny.png
  /429[key, n, after]  /429_long  /storm[key]  /flaky[key, n]  /404
  /noai  /noai_scoped  /noai_other  /noai_multi
  /json[name]  /text[name]  /status[code]     canned engine answers registered with ``add_json``
"""

from __future__ import annotations

import gzip
import io
import json
import socket
import struct
import threading
import time
import zlib
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Callable
from urllib.parse import parse_qs, urlsplit

import numpy as np
from PIL import Image

POLYGLOT_PAYLOAD = b"<script>alert('polyglot')</script>"
ZIP_MAGIC = b"PK\x03\x04"


def make_image(seed: int, w: int = 320, h: int = 240) -> Image.Image:
    """A smooth random picture; different seeds give clearly different dHashes."""
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 256, size=(6, 8, 3), dtype=np.uint8)
    return Image.fromarray(small).resize((w, h), Image.BICUBIC)


def encode(img: Image.Image, fmt: str, **kw: Any) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **kw)
    return buf.getvalue()


def jpeg_bytes(seed: int, w: int = 320, h: int = 240) -> bytes:
    return encode(make_image(seed, w, h), "JPEG", quality=90)


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def bomb_header_png(w: int = 100_000, h: int = 100_000) -> bytes:
    """A PNG header that declares a huge image (and a tiny, useless IDAT)."""
    ihdr = struct.pack(">IIBBBBB", w, h, 1, 0, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", ihdr)
            + _png_chunk(b"IDAT", zlib.compress(b"\x00" * 64)) + _png_chunk(b"IEND", b""))


def real_bomb_png(side: int = 12_000) -> bytes:
    """A real 1-bit PNG of ``side`` x ``side`` zeros: tiny on the wire, 144M pixels decoded."""
    row = b"\x00" + b"\x00" * ((side + 7) // 8)
    comp = zlib.compressobj(9)
    body = b"".join(comp.compress(row) for _ in range(side)) + comp.flush()
    ihdr = struct.pack(">IIBBBBB", side, side, 1, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", ihdr) + _png_chunk(b"IDAT", body) + _png_chunk(b"IEND", b"")


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: "_Server"

    def log_message(self, *args: Any) -> None:  # quiet
        pass

    def handle(self) -> None:
        try:
            super().handle()
        except (ConnectionError, OSError):
            pass

    # -- helpers
    def _send(self, status: int, body: bytes, ctype: str = "image/jpeg",
              headers: list[tuple[str, str]] | None = None, length: int | None = None) -> None:
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body) if length is None else length))
        for k, v in headers or []:
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(body)
        self.wfile.flush()

    def _redirect(self, location: str | None, code: int = 302) -> None:
        self.send_response(code)
        if location is not None:
            self.send_header("Location", location)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def _count(self, key: str) -> int:
        with self.server.lock:
            self.server.counters[key] = self.server.counters.get(key, 0) + 1
            return self.server.counters[key]

    def do_POST(self) -> None:  # engine endpoints accept POST too
        n = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(n) if n else b""
        self._log(body)
        self._route()

    def do_GET(self) -> None:
        self._log(b"")
        self._route()

    def _log(self, body: bytes) -> None:
        with self.server.lock:
            self.server.log.append({"path": self.path, "host": self.headers.get("Host"),
                                    "client": self.client_address[0], "t": time.monotonic(),
                                    "method": self.command, "headers": dict(self.headers.items()),
                                    "body": body})

    def _route(self) -> None:
        parts = urlsplit(self.path)
        path, q = parts.path, {k: v[-1] for k, v in parse_qs(parts.query).items()}
        srv = self.server
        if path in srv.routes:
            srv.routes[path](self, q)
            return
        if path.startswith("/img/"):
            seed = int(path[5:].split(".")[0])
            self._send(200, jpeg_bytes(seed))
        elif path.startswith("/png/"):
            seed = int(path[5:].split(".")[0])
            self._send(200, encode(make_image(seed), "PNG"), "image/png")
        elif path.startswith("/octet/"):
            self._send(200, jpeg_bytes(int(path[7:])), "application/octet-stream")
        elif path == "/redirect":
            self._redirect(q.get("to", "/img/1.jpg"), int(q.get("code", "302")))
        elif path.startswith("/chain/"):
            n = int(path[7:])
            self._redirect(f"/chain/{n - 1}") if n > 0 else self._send(200, jpeg_bytes(4242))
        elif path == "/loop":
            self._redirect("/loop")
        elif path == "/loopa":
            self._redirect("/loopb", 301)
        elif path == "/loopb":
            self._redirect("/loopa", 307)
        elif path == "/redir_file":
            self._redirect("file:///etc/passwd")
        elif path == "/redir_noloc":
            self._redirect(None)
        elif path == "/endless":
            self._endless()
        elif path == "/big_declared":
            self.send_response(200)
            self.send_header("Content-Type", "image/jpeg")
            self.send_header("Content-Length", str(10 ** 10))
            self.end_headers()
            self.wfile.write(jpeg_bytes(1)[:100])
            self.close_connection = True
        elif path == "/big_stream":
            self._chunked(total=50 * 1024 * 1024)
        elif path == "/lie_long":
            data = jpeg_bytes(11)
            self._send(200, data, length=len(data) + 5000)
            self.close_connection = True
        elif path == "/lie_short":
            data = jpeg_bytes(12)
            self._send(200, data, length=len(data) // 2)
            self.close_connection = True
        elif path == "/drip":
            self._drip()
        elif path == "/drip_headers":
            self._drip_headers()
        elif path == "/stall":
            time.sleep(srv.stall_s)
            self.close_connection = True
        elif path == "/html":
            self._send(200, b"<html><body>hello</body></html>", "text/html; charset=utf-8")
        elif path == "/html_as_png":
            self._send(200, b"<html><body>not a png</body></html>" * 10, "image/png")
        elif path == "/text_jpeg":
            self._send(200, jpeg_bytes(13), "text/plain")
        elif path == "/truncated.jpg":
            data = jpeg_bytes(14, 640, 480)
            self._send(200, data[: len(data) // 2])
        elif path == "/polyglot.gif":
            gif = encode(make_image(15).convert("P"), "GIF")
            self._send(200, gif + POLYGLOT_PAYLOAD + ZIP_MAGIC + b"\x00" * 64, "image/gif")
        elif path == "/bomb.png":
            self._send(200, srv.real_bomb, "image/png")
        elif path == "/bomb_header.png":
            self._send(200, bomb_header_png(), "image/png")
        elif path == "/gzip_bomb":
            self._send(200, srv.gzip_bomb, "image/jpeg", headers=[("Content-Encoding", "gzip")])
        elif path == "/tiff":
            self._send(200, encode(make_image(16), "TIFF"), "image/tiff")
        elif path == "/svg":
            self._send(200, b"<svg xmlns='http://www.w3.org/2000/svg'/>", "image/svg+xml")
        elif path == "/tiny.png":
            self._send(200, encode(Image.new("RGB", (1, 1)), "PNG"), "image/png")
        elif path == "/429":
            key = q.get("key", "429")
            if self._count(key) <= int(q.get("n", "1")):
                self._send(429, b"slow down", "text/plain", headers=[("Retry-After", q.get("after", "1"))])
            else:
                self._send(200, jpeg_bytes(17))
        elif path == "/429_long":
            self._count("429_long")
            self._send(429, b"slow down", "text/plain", headers=[("Retry-After", "3600")])
        elif path == "/storm":
            self._count(q.get("key", "storm"))
            self._send(503, b"unavailable", "text/plain")
        elif path == "/flaky":
            key = q.get("key", "flaky")
            if self._count(key) <= int(q.get("n", "2")):
                self._send(500, b"oops", "text/plain")
            else:
                self._send(200, jpeg_bytes(18))
        elif path == "/noai":
            self._send(200, jpeg_bytes(19), headers=[("X-Robots-Tag", "noai")])
        elif path == "/noai_scoped":
            self._send(200, jpeg_bytes(20), headers=[("X-Robots-Tag", "ie-env: noimageai")])
        elif path == "/noai_other":
            self._send(200, jpeg_bytes(21), headers=[("X-Robots-Tag", "otherbot: noai, noimageai")])
        elif path == "/noai_multi":
            self._send(200, jpeg_bytes(22), headers=[("X-Robots-Tag", "googlebot: noindex"),
                                                     ("X-Robots-Tag", "noimageai")])
        elif path == "/json":
            status, body = srv.json_answers[q.get("name", "")]
            self._send(status, body, "application/json")
        elif path == "/text":
            self._send(200, srv.json_answers[q.get("name", "")][1], "text/html")
        elif path == "/status":
            self._send(int(q.get("code", "500")), b"{}", "application/json")
        else:
            self._send(404, b"not found", "text/plain")

    def _endless(self) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "image/jpeg")
        self.send_header("Connection", "close")
        self.end_headers()
        self.close_connection = True
        head = jpeg_bytes(1)[:200]
        self.wfile.write(head)
        block = b"\x00" * 65536
        t0 = time.monotonic()
        while time.monotonic() - t0 < 20:
            self.wfile.write(block)

    def _chunked(self, total: int) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "image/jpeg")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        block = b"\x00" * 65536
        sent = 0
        while sent < total:
            self.wfile.write(b"%x\r\n" % len(block) + block + b"\r\n")
            sent += len(block)
        self.wfile.write(b"0\r\n\r\n")

    def _drip(self) -> None:
        data = jpeg_bytes(23)
        self.send_response(200)
        self.send_header("Content-Type", "image/jpeg")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.flush()
        self.close_connection = True
        t0 = time.monotonic()
        for i in range(len(data)):
            if time.monotonic() - t0 > 20:
                break
            self.wfile.write(data[i:i + 1])
            self.wfile.flush()
            time.sleep(0.05)

    def _drip_headers(self) -> None:
        self.close_connection = True
        raw = b"HTTP/1.1 200 OK\r\nContent-Type: image/jpeg\r\n" + b"X-Pad: " + b"a" * 5000 + b"\r\n"
        t0 = time.monotonic()
        for i in range(len(raw)):
            if time.monotonic() - t0 > 20:
                break
            self.wfile.write(raw[i:i + 1])
            self.wfile.flush()
            time.sleep(0.05)


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 128

    def __init__(self, addr: tuple, family: int = socket.AF_INET) -> None:
        self.address_family = family
        self.lock = threading.Lock()
        self.log: list[dict[str, Any]] = []
        self.counters: dict[str, int] = {}
        self.routes: dict[str, Callable[[_Handler, dict], None]] = {}
        self.json_answers: dict[str, tuple[int, bytes]] = {}
        self.stall_s = 10.0
        self.real_bomb = b""
        self.gzip_bomb = b""
        self.connections = 0
        super().__init__(addr, _Handler)

    def get_request(self):  # count accepted connections
        conn = super().get_request()
        with self.lock:
            self.connections += 1
        return conn


class HostileServer:
    """Start with ``HostileServer("127.0.0.1")``; ``.port``, ``.url(path)``, ``.log``, ``.stop()``."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0, bombs: bool = False,
                 tls: tuple[str, str] | None = None) -> None:
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self.host = host
        self.server = _Server((host, port), family)
        self.port = self.server.server_address[1]
        self.scheme = "http"
        self.sni: list[str | None] = []
        if tls is not None:
            import ssl

            ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            ctx.load_cert_chain(*tls)
            ctx.sni_callback = lambda sock, name, c: self.sni.append(name)
            self.server.socket = ctx.wrap_socket(self.server.socket, server_side=True,
                                                 do_handshake_on_connect=False)
            self.scheme = "https"
        if bombs:
            self.server.real_bomb = real_bomb_png()
            buf = io.BytesIO()
            with gzip.GzipFile(fileobj=buf, mode="wb", compresslevel=9, mtime=0) as gz:
                chunk = b"\x00" * (1 << 20)
                for _ in range(64):
                    gz.write(chunk)
            self.server.gzip_bomb = buf.getvalue()
        self.thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05},
                                       daemon=True)
        self.thread.start()

    @property
    def netloc(self) -> str:
        h = f"[{self.host}]" if ":" in self.host else self.host
        return f"{h}:{self.port}"

    def url(self, path: str) -> str:
        return f"{self.scheme}://{self.netloc}{path}"

    @property
    def log(self) -> list[dict[str, Any]]:
        with self.server.lock:
            return list(self.server.log)

    @property
    def connections(self) -> int:
        with self.server.lock:
            return self.server.connections

    def counter(self, key: str) -> int:
        with self.server.lock:
            return self.server.counters.get(key, 0)

    def add_json(self, name: str, payload: Any, status: int = 200) -> str:
        body = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
        self.server.json_answers[name] = (status, body)
        return self.url(f"/json?name={name}")

    def route(self, path: str, fn: Callable[[_Handler, dict], None]) -> None:
        self.server.routes[path] = fn

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
