"""websmsd.phones.contacts: who is registered, from the events and listings a real
Asterisk 22.10.1 gave (/work/helpers/asterisk-findings.md section 2; the field sets are
those of the captures)."""

from __future__ import annotations

import pytest

from websmsd.ami.protocol import AMIParser, Packet
from websmsd.phones.contacts import Registrations


def packet(**fields) -> Packet:
    return Packet(tuple((k, v) for k, v in fields.items()))


def contact_status(status, uri="sip:alice@127.0.0.1:43613", aor="alice", endpoint="alice"):
    return packet(Event="ContactStatus", Privilege="system,all", URI=uri, ContactStatus=status,
                  AOR=aor, EndpointName=endpoint, RoundtripUsec="0")


def peer_status(status, peer="PJSIP/alice"):
    return packet(Event="PeerStatus", Privilege="system,all", ChannelType="PJSIP", Peer=peer,
                  PeerStatus=status)


def contact_list(endpoint="alice", uri="sip:alice@127.0.0.1:43613", status="NonQualified",
                 name="alice;@f2808715a2e2ca38c03cdf40f2193638"):
    return packet(Event="ContactList", ObjectType="contact", ObjectName=name, ViaAddr="127.0.0.1",
                  Endpoint=endpoint, ViaPort="43613", Uri=uri, QualifyFrequency="0",
                  ExpirationTime="1796167259", Status=status, RoundtripUsec="N/A")


def feed(reg, *packets, now=100.0):
    changes = []
    for p in packets:
        changes += reg.event(p, now)
    return changes


def test_register_with_qualify_off_then_unregister():
    reg = Registrations(["alice", "bob"], now=1.0)
    assert reg.registered("alice") is None  # nothing known before a listing or an event
    # REGISTER: PeerStatus Reachable, then ContactStatus NonQualified (qualify off).
    assert feed(reg, peer_status("Reachable")) == [("alice", True)]
    assert feed(reg, contact_status("NonQualified")) == []
    state = reg.state("alice")
    assert state.contacts == {"sip:alice@127.0.0.1:43613": "NonQualified"}
    assert state.since == 100.0 and "NonQualified" in state.why
    # Un-REGISTER (or expiry): PeerStatus Unreachable, then ContactStatus Removed.
    assert feed(reg, peer_status("Unreachable"), now=200.0) == [("alice", False)]
    assert feed(reg, contact_status("Removed"), now=200.0) == []
    assert reg.state("alice").contacts == {} and reg.state("alice").since == 200.0
    assert reg.registered("bob") is None


def test_register_with_qualify_on():
    reg = Registrations(["alice"])
    changes = feed(reg, contact_status("NonQualified"), peer_status("Reachable"),
                   contact_status("Reachable"))
    assert changes == [("alice", True)]
    assert reg.state("alice").contacts == {"sip:alice@127.0.0.1:43613": "Reachable"}


def test_a_phone_that_stops_answering_the_qualify_counts_as_gone():
    # Its contact stays (and MessageSend to it still answers Success): nothing would
    # reach the phone, so its messages wait.
    reg = Registrations(["bob"])
    feed(reg, contact_status("Reachable", "sip:bob@127.0.0.1:43905", "bob", "bob"))
    assert feed(reg, peer_status("Unreachable", "PJSIP/bob"),
                contact_status("Unreachable", "sip:bob@127.0.0.1:43905", "bob", "bob")) == [
        ("bob", False)]
    assert reg.state("bob").contacts == {"sip:bob@127.0.0.1:43905": "Unreachable"}
    assert feed(reg, contact_status("Reachable", "sip:bob@127.0.0.1:43905", "bob", "bob")) == [
        ("bob", True)]


def test_a_new_contact_replacing_the_old_one_keeps_the_phone_registered():
    # max_contacts 1, remove_existing: NonQualified for the new URI, Removed for the old,
    # and no PeerStatus.
    reg = Registrations(["alice"])
    feed(reg, peer_status("Reachable"), contact_status("NonQualified"))
    changes = feed(reg, contact_status("NonQualified", "sip:alice@127.0.0.1:50000"),
                   contact_status("Removed"))
    assert changes == [] and reg.registered("alice") is True
    assert list(reg.state("alice").contacts) == ["sip:alice@127.0.0.1:50000"]


def test_several_contacts_one_leaving():
    reg = Registrations(["bob"])
    a, b = "sip:bob@127.0.0.1:1", "sip:bob@127.0.0.1:2;transport=tcp"
    feed(reg, contact_status("NonQualified", a, "bob", "bob"),
         contact_status("NonQualified", b, "bob", "bob"))
    assert feed(reg, contact_status("Removed", a, "bob", "bob")) == []
    assert feed(reg, contact_status("Removed", b, "bob", "bob")) == [("bob", False)]


def test_a_peerstatus_reachable_alone_is_replaced_by_what_contactstatus_says():
    reg = Registrations(["alice"])
    assert feed(reg, peer_status("Reachable")) == [("alice", True)]
    # A Removed for some contact: the stand-in goes, and no contact is left.
    assert feed(reg, contact_status("Removed")) == [("alice", False)]


def test_listing_at_login():
    reg = Registrations(["alice", "bob", "carol"])
    changes = reg.listed([
        contact_list(),
        contact_list("bob", "sip:bob@127.0.0.1:5070", "Unreachable", "bob;@ab"),
        # No Endpoint field: the AOR from ObjectName stands in.
        packet(Event="ContactList", ObjectName="carol;@cd", Uri="sip:carol@h", Status="Reachable"),
        contact_list("mallory", "sip:m@h"),  # not one of ours
    ], now=5.0)
    assert sorted(changes) == [("alice", True), ("bob", False), ("carol", True)]
    assert "PJSIPShowContacts" in reg.state("alice").why
    assert reg.listed([], now=6.0) == [("alice", False), ("carol", False)]
    assert reg.state("alice").why == "PJSIPShowContacts: no contact"


def test_listing_not_allowed_leaves_every_phone_unknown():
    reg = Registrations(["alice", "bob"])
    reg.listed([contact_list()], now=1.0)
    assert reg.unknown(2.0, "no listing") == [("alice", None), ("bob", None)]
    assert reg.registered("alice") is None and reg.registered("bob") is None
    assert reg.state("alice").contacts == {} and reg.state("bob").why == "no listing"
    assert reg.unknown(3.0, "no listing") == []


def test_what_a_messagesend_shows():
    reg = Registrations(["alice"])
    assert reg.learned("alice", False, 1.0, "MessageSend: Message failed to send.") == [
        ("alice", False)]
    assert reg.learned("alice", False, 2.0, "again") == []
    assert reg.state("alice").why == "MessageSend: Message failed to send."
    assert reg.learned("alice", True, 3.0, "MessageSend: Success") == [("alice", True)]
    # The next ContactStatus says more than the stand-in a MessageSend left.
    assert feed(reg, contact_status("Removed")) == [("alice", False)]
    assert reg.learned("nobody", True, 4.0, "x") == []


def test_events_of_other_endpoints_and_kinds_are_ignored():
    reg = Registrations(["alice"])
    assert feed(reg, peer_status("Reachable", "SIP/alice"), peer_status("Reachable", "PJSIP/bob"),
                contact_status("NonQualified", aor="bob", endpoint="bob"),
                packet(Event="FullyBooted", Status="Fully Booted"),
                packet(Event="ContactStatus"), packet(Event="PeerStatus"),
                peer_status("Lagged")) == []
    assert reg.registered("alice") is None
    # The AOR names the endpoint when EndpointName is empty.
    assert feed(reg, contact_status("Created", endpoint="")) == [("alice", True)]


def test_events_straight_from_the_wire():
    # As AMIParser hands them over: the bytes Asterisk 22 wrote on REGISTER.
    raw = (b"Event: PeerStatus\r\nPrivilege: system,all\r\nChannelType: PJSIP\r\n"
           b"Peer: PJSIP/alice\r\nPeerStatus: Reachable\r\n\r\n"
           b"Event: ContactStatus\r\nPrivilege: system,all\r\nURI: sip:alice@127.0.0.1:43613\r\n"
           b"ContactStatus: NonQualified\r\nAOR: alice\r\nEndpointName: alice\r\n"
           b"RoundtripUsec: 0\r\n\r\n")
    parser = AMIParser(expect_banner=False)
    packets = []
    for i in range(len(raw)):  # byte by byte
        packets += parser.feed(raw[i:i + 1])
    reg = Registrations(["alice"])
    assert feed(reg, *packets) == [("alice", True)]
    assert reg.state("alice").contacts == {"sip:alice@127.0.0.1:43613": "NonQualified"}


@pytest.mark.parametrize("junk", [
    {"Event": "ContactStatus", "EndpointName": "alice", "URI": "", "ContactStatus": ""},
    {"Event": "ContactStatus", "EndpointName": "alice\r\n", "ContactStatus": "Removed"},
    {"Event": "PeerStatus", "Peer": "PJSIP/", "PeerStatus": "Reachable"},
    {"Event": "contactstatus", "endpointname": "alice", "contactstatus": "nonqualified"},
])
def test_odd_events_never_raise(junk):
    reg = Registrations(["alice"])
    reg.event(junk, 1.0)
    assert reg.registered("alice") in (None, True, False)
