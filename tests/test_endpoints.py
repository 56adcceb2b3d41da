"""websmsd.endpoints.tcp_client: an IP address is connected to as it is, with no name
lookup (HostnameEndpoint's getaddrinfo runs in a thread of the reactor's pool)."""

from __future__ import annotations

from twisted.internet.endpoints import HostnameEndpoint
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.testing import MemoryReactorClock

from websmsd.endpoints import tcp_client


def _connect(host: str):
    reactor = MemoryReactorClock()
    endpoint = tcp_client(reactor, host, 2775, timeout=7)
    endpoint.connect(Factory.forProtocol(Protocol))
    return reactor, endpoint


def test_an_ipv4_or_ipv6_address_connects_at_once_without_a_lookup():
    for host in ("127.0.0.1", "192.0.2.10", "::1", "2001:db8::5"):
        reactor, _ = _connect(host)
        # The connection attempt is there at once: nothing was resolved first.
        [(got_host, port, _factory, timeout, _bind)] = reactor.tcpClients
        assert (got_host, port, timeout) == (host, 2775, 7)


def test_a_name_goes_through_hostname_endpoint():
    reactor = MemoryReactorClock()
    endpoint = tcp_client(reactor, "goip.example.com", 2775)
    assert isinstance(endpoint, HostnameEndpoint)
    assert not isinstance(tcp_client(reactor, "10.0.0.1", 1), HostnameEndpoint)
