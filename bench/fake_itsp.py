"""A fake ITSP HTTP API for bench/fastagi.py: answers every request at once.

Plain asyncio with hand-written HTTP/1.1 framing (keep-alive, Content-Length bodies),
in a process of its own so that it takes no CPU from the benchmark's client.  Every
POST is answered `200 {"status":"success"}`; `GET /_count` answers the number of POSTs
received so far.

    /usr/bin/python3 bench/fake_itsp.py --port 8090
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys

ANSWER = b'{"status":"success"}'


class ITSP(asyncio.Protocol):
    posts = 0

    def connection_made(self, transport) -> None:
        self.transport = transport
        self.buf = bytearray()

    def data_received(self, data: bytes) -> None:
        buf = self.buf
        buf += data
        while True:
            end = buf.find(b"\r\n\r\n")
            if end < 0:
                return
            head = bytes(buf[:end]).lower()
            length = 0
            for line in head.split(b"\r\n")[1:]:
                name, _, value = line.partition(b":")
                if name == b"content-length":
                    length = int(value)
            if len(buf) < end + 4 + length:
                return
            del buf[: end + 4 + length]
            if head.startswith(b"get /_count"):
                body = str(ITSP.posts).encode()
            else:
                ITSP.posts += 1
                body = ANSWER
            self.transport.write(
                b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: "
                + str(len(body)).encode() + b"\r\n\r\n" + body
            )


async def serve(port: int) -> None:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(ITSP, "127.0.0.1", port)
    stop = loop.create_future()
    loop.add_signal_handler(signal.SIGTERM, stop.set_result, None)
    loop.add_signal_handler(signal.SIGINT, stop.set_result, None)
    async with server:
        await stop


def main(argv=None) -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--port", type=int, required=True)
    a = p.parse_args(argv)
    asyncio.run(serve(a.port))
    return 0


if __name__ == "__main__":
    sys.exit(main())
