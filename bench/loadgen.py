"""HTTP load generator for the webhook benchmarks (a process of its own).

Sends POST webhooks (form or JSON) to 127.0.0.1 over keep-alive HTTP/1.1 connections,
each with a unique token as its Body, and writes what happened to a JSON file:

    /usr/bin/python3 bench/loadgen.py --port 8080 --count 5000 --conns 16 --out r.json

Two modes:

* closed loop (default): `--conns` connections, each sends its next request as soon as
  the previous answer is in, until `--count` requests are sent or `--duration` is up;
* open loop (`--rate R`): request i is due at start + i/R whatever happened before
  (no coordinated omission); a free connection takes it, or a new one is opened.  The
  latency counted is from the moment the request was due to its answer ("sched"), and
  also from the moment it was written ("service").

It is plain asyncio with hand-written HTTP/1.1 framing (no library parses anything),
which is what gives the most requests per CPU second here.  A server that closes the
connection after each answer (PHP's built-in server, `--close`) is followed: the
client reconnects.  Tokens of 200 answers are listed in the output file ("acked"), so
the caller can check that each has exactly one call file.

Only talks to 127.0.0.1; bounded by --count and --duration; stops by itself.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time
from typing import List, Optional


class Response:
    __slots__ = ("status", "close")

    def __init__(self, status: int, close: bool):
        self.status = status
        self.close = close


class HTTPConn(asyncio.Protocol):
    """One client connection; `request(data)` writes data and returns a future Response."""

    def __init__(self) -> None:
        self.transport: Optional[asyncio.Transport] = None
        self.buf = bytearray()
        self.waiter: Optional[asyncio.Future] = None
        self.closed = False
        self._head: Optional[tuple] = None  # (status, length or None, close, chunked)

    def connection_made(self, transport) -> None:
        self.transport = transport

    def connection_lost(self, exc) -> None:
        self.closed = True
        w = self.waiter
        if w is not None and not w.done():
            head = self._head
            if head is not None and head[1] is None and not head[3]:
                # Body delimited by the end of the connection (HTTP/1.0 style).
                w.set_result(Response(head[0], True))
            else:
                w.set_exception(ConnectionError(f"connection lost: {exc}"))
        self.waiter = None

    def request(self, data: bytes) -> asyncio.Future:
        fut = asyncio.get_running_loop().create_future()
        if self.closed:
            fut.set_exception(ConnectionError("connection closed"))
            return fut
        self.waiter = fut
        self.transport.write(data)
        return fut

    def data_received(self, data: bytes) -> None:
        buf = self.buf
        buf += data
        while True:
            if self._head is None:
                end = buf.find(b"\r\n\r\n")
                if end < 0:
                    return
                head = bytes(buf[:end]).lower()
                del buf[: end + 4]
                status = int(head[9:12])
                length = None
                close = head.startswith(b"http/1.0")
                chunked = False
                for line in head.split(b"\r\n")[1:]:
                    name, _, value = line.partition(b":")
                    if name == b"content-length":
                        length = int(value)
                    elif name == b"connection":
                        v = value.strip()
                        close = v == b"close" or (close and v != b"keep-alive")
                    elif name == b"transfer-encoding" and b"chunked" in value:
                        chunked = True
                self._head = (status, length, close, chunked)
            status, length, close, chunked = self._head
            if chunked:
                # Consume whole chunks; done at the zero-size chunk.
                while True:
                    eol = buf.find(b"\r\n")
                    if eol < 0:
                        return
                    size = int(bytes(buf[:eol]).split(b";")[0], 16)
                    if size == 0:  # last chunk, optional trailers, empty line
                        end = buf.find(b"\r\n\r\n", eol)
                        if end < 0:
                            return
                        del buf[: end + 4]
                        break
                    if len(buf) < eol + 2 + size + 2:
                        return
                    del buf[: eol + 2 + size + 2]
            elif length is None:
                return  # until the connection closes
            else:
                if len(buf) < length:
                    return
                del buf[:length]
            self._head = None
            w, self.waiter = self.waiter, None
            if w is not None and not w.done():
                w.set_result(Response(status, close))
            if close and self.transport is not None:
                self.transport.close()


class Generator:
    def __init__(self, a: argparse.Namespace):
        self.a = a
        self.host = "127.0.0.1"
        path = a.path.encode()
        self.head_base = (
            b"POST " + path + b" HTTP/1.1\r\nHost: 127.0.0.1:" + str(a.port).encode()
            + b"\r\nUser-Agent: websmsd-bench\r\n"
            + (b"Connection: close\r\n" if a.close else b"")
        )
        self.ctype = (b"application/json" if a.kind == "json"
                      else b"application/x-www-form-urlencoded")
        self.statuses: dict = {}
        self.errors = 0
        self.error_kinds: dict = {}
        self.connects = 0
        self.acked: List[str] = []
        self.lat: List[float] = []  # service latency: written -> answered (s)
        self.sched_lat: List[float] = []  # open loop: due -> answered (s)
        self.sent = 0
        self.t_first: Optional[float] = None  # wall clock of the first request written
        self.t_last: Optional[float] = None  # wall clock of the last answer
        self.idle: List[HTTPConn] = []

    def body(self, token: str) -> bytes:
        a = self.a
        if a.kind == "json":
            return json.dumps({"To": a.to, "From": a.sender, "Body": token},
                              separators=(",", ":")).encode()
        return (f"To={a.to.replace('+', '%2B')}&From={a.sender.replace('+', '%2B')}"
                f"&Body={token}").encode()

    def request_bytes(self, token: str) -> bytes:
        body = self.body(token)
        return (self.head_base + b"Content-Type: " + self.ctype + b"\r\nContent-Length: "
                + str(len(body)).encode() + b"\r\n\r\n" + body)

    async def connect(self) -> HTTPConn:
        loop = asyncio.get_running_loop()
        _, conn = await loop.create_connection(HTTPConn, self.host, self.a.port)
        self.connects += 1
        return conn

    def _error(self, e: BaseException) -> None:
        self.errors += 1
        k = type(e).__name__
        self.error_kinds[k] = self.error_kinds.get(k, 0) + 1

    async def one(self, conn: Optional[HTTPConn], i: int) -> Optional[HTTPConn]:
        """Send request i on conn (or a new connection); return a reusable conn or None."""
        token = f"{self.a.prefix}{i:06d}"
        data = self.request_bytes(token)
        try:
            if conn is None or conn.closed:
                conn = await self.connect()
            t0 = time.perf_counter()
            if self.t_first is None:
                self.t_first = time.time()
            self.sent += 1
            resp = await asyncio.wait_for(conn.request(data), self.a.timeout)
        except (OSError, ConnectionError, asyncio.TimeoutError) as e:
            self._error(e)
            if conn is not None and conn.transport is not None:
                conn.transport.close()
            return None
        now = time.perf_counter()
        self.lat.append(now - t0)
        self.t_last = time.time()
        self.statuses[resp.status] = self.statuses.get(resp.status, 0) + 1
        if resp.status == 200:
            self.acked.append(token)
        if resp.close or conn.closed:
            return None
        return conn

    async def closed_loop(self) -> None:
        a = self.a
        deadline = time.perf_counter() + a.duration
        counter = iter(range(a.count))

        async def worker() -> None:
            conn = None
            for i in counter:
                if time.perf_counter() > deadline:
                    break
                conn = await self.one(conn, i)
            if conn is not None:
                conn.transport.close()

        await asyncio.gather(*(worker() for _ in range(a.conns)))

    async def open_loop(self) -> None:
        a = self.a
        start = time.perf_counter() + 0.05
        pending = set()
        pool: List[Optional[HTTPConn]] = []
        # Open the connections first so that connection set-up is not in the figures.
        for _ in range(a.conns):
            pool.append(await self.connect())

        async def fire(i: int, due: float) -> None:
            conn = pool.pop() if pool else None
            conn = await self.one(conn, i)
            self.sched_lat.append(time.perf_counter() - due)
            if conn is not None:
                pool.append(conn)

        loop_deadline = start + a.duration
        for i in range(a.count):
            due = start + i / a.rate
            if due > loop_deadline:
                break
            delay = due - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            t = asyncio.ensure_future(fire(i, due))
            pending.add(t)
            t.add_done_callback(pending.discard)
        if pending:
            await asyncio.wait(pending, timeout=a.timeout + 5)
        for c in pool:
            if c is not None and c.transport is not None:
                c.transport.close()

    def run(self) -> dict:
        cpu0 = os.times()
        t0 = time.perf_counter()
        if self.a.rate:
            asyncio.run(self.open_loop())
        else:
            asyncio.run(self.closed_loop())
        elapsed = time.perf_counter() - t0
        cpu1 = os.times()
        answered = len(self.lat)
        active = None
        if self.t_first is not None and self.t_last is not None:
            active = self.t_last - self.t_first
        return {
            "sent": self.sent,
            "answered": answered,
            "statuses": {str(k): v for k, v in sorted(self.statuses.items())},
            "errors": self.errors,
            "error_kinds": self.error_kinds,
            "connects": self.connects,
            "elapsed": elapsed,
            "active": active,
            "t_first": self.t_first,
            "t_last": self.t_last,
            "cpu": (cpu1.user - cpu0.user) + (cpu1.system - cpu0.system),
            "lat": self.lat,
            "sched_lat": self.sched_lat,
            "acked": self.acked,
        }


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--path", default="/")
    p.add_argument("--kind", choices=("form", "json"), default="form")
    p.add_argument("--conns", type=int, default=16)
    p.add_argument("--count", type=int, default=5000)
    p.add_argument("--duration", type=float, default=60.0, help="cap in seconds")
    p.add_argument("--rate", type=float, default=0.0, help="open loop at this many req/s")
    p.add_argument("--close", action="store_true", help="Connection: close on each request")
    p.add_argument("--prefix", default="tok", help="token prefix (unique per run)")
    p.add_argument("--to", default="+15550001000")
    p.add_argument("--sender", default="+16660002000")
    p.add_argument("--timeout", type=float, default=30.0, help="per request, seconds")
    p.add_argument("--start-at", type=float, default=0.0,
                   help="wall-clock time to start at (to start several processes together)")
    p.add_argument("--out", required=True, help="JSON file to write the results to")
    a = p.parse_args(argv)
    if a.start_at:
        delay = a.start_at - time.time()
        if delay > 0:
            time.sleep(delay)
    result = Generator(a).run()
    with open(a.out, "w") as f:
        json.dump(result, f)
    return 0


if __name__ == "__main__":
    sys.exit(main())
