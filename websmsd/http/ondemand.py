"""A listener's factory built when its first connection comes.

The status page and API are twisted.web resources; twisted.web.server and the pages cost
a Raspberry Pi about 3 MB that a daemon nobody has looked at yet need not hold.  The
listener listens from the start (its port is taken, check-config and systemd see it up);
`OnFirstConnection` builds the real factory (a twisted.web Site) on the first accepted
connection, before any byte of it is read, and hands every connection to it from then
on.  The first connection costs the imports (once, a few tens of milliseconds).
"""

from __future__ import annotations

from typing import Any, Callable, Optional

from twisted.internet.interfaces import IProtocolFactory, IProtocolNegotiationFactory
from twisted.internet.protocol import Protocol
from twisted.logger import Logger
from zope.interface import implementer

log = Logger()


@implementer(IProtocolFactory, IProtocolNegotiationFactory)
class OnFirstConnection:
    """A protocol factory standing for `build()`'s until the first connection.

    Every port listening with it counts as one of the real factory's ports (doStart /
    doStop), as if it had listened with the real one from the start.
    """

    def __init__(self, build: Callable[[], Any], name: str = "Site") -> None:
        self._build = build
        self._name = name
        self._ports = 0
        self.factory: Optional[Any] = None

    def logPrefix(self) -> str:
        return self._name

    def acceptableProtocols(self) -> list:
        # HTTP/1.1 over TLS: the sites here speak nothing else (and Twisted 26 answers a
        # client's ALPN offer with an alert when the factory names no protocol).
        return [b"http/1.1"]

    def doStart(self) -> None:
        self._ports += 1
        if self.factory is not None:
            self.factory.doStart()

    def doStop(self) -> None:
        self._ports -= 1
        if self.factory is not None:
            self.factory.doStop()

    def buildProtocol(self, addr: Any) -> Any:
        factory = self.factory
        if factory is None:
            try:
                factory = self._build()
            except Exception:
                # Answer this connection 503 and try again with the next.  Not None: a
                # TLS listener's wrapper would wrap None and fail in the port, which
                # then stops listening.
                log.failure("{name}: cannot be built; answered 503", name=self._name)
                return _Unavailable()
            self.factory = factory
            log.info("{name}: built for its first connection", name=self._name)
            for _ in range(self._ports):
                factory.doStart()
        return factory.buildProtocol(addr)


class _Unavailable(Protocol):
    """Reads the request's head (at most 16 KiB), answers 503 and closes: the client
    reads the answer instead of a reset for an unread request."""

    BODY = b"unavailable: it could not be built (see the daemon's log)\n"
    ANSWER = (b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: text/plain; charset=utf-8\r\n"
              b"Content-Length: %d\r\nConnection: close\r\n\r\n%s" % (len(BODY), BODY))

    def __init__(self) -> None:
        self._head = b""

    def dataReceived(self, data: bytes) -> None:
        if self._head is None:
            return
        self._head += data
        if b"\r\n\r\n" in self._head or b"\n\n" in self._head or len(self._head) > 16384:
            self._head = None
            self.transport.write(self.ANSWER)
            self.transport.loseConnection()
