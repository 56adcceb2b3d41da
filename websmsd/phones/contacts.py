"""Which PJSIP endpoints can take a message now: their contacts, from AMI.  Pure Python.

What Asterisk 22 says (measured, /work/helpers/asterisk-findings.md), and how it is read:

- A REGISTER gives `PeerStatus: Reachable` and `ContactStatus: NonQualified` (qualify
  off) or `NonQualified` then `Reachable` after the OPTIONS ping (qualify on); a refresh
  gives nothing.  An un-REGISTER or an expiry gives `PeerStatus: Unreachable` and
  `ContactStatus: Removed`.  A phone that stops answering the qualify gives
  `PeerStatus: Unreachable` and `ContactStatus: Unreachable`: its contact stays, and
  MessageSend to it still answers Success, so such a phone counts as not registered (a
  message to it would vanish).  One contact replacing another (a new port) gives
  `NonQualified` for the new one and `Removed` for the old one, and no PeerStatus.
- So: a contact whose last ContactStatus is anything but Removed or Unreachable makes
  its endpoint reachable.  PeerStatus is per endpoint: Unreachable marks every contact
  unreachable; Reachable counts only until a ContactStatus of that endpoint says more.
- `PJSIPShowContacts` (write class `system`) lists the contacts at login (a contact's
  `Endpoint`, `Uri`, `Status`); answered `No Contacts found` (an error) when there is
  none.  Without permission for it, every endpoint is *unknown* until an event or a
  MessageSend tells: MessageSend fails at once (`Message failed to send.`) for an
  endpoint without contact.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, Iterable, List, Optional, Tuple

__all__ = ["Registrations", "PhoneState", "Change"]

# The contact statuses that mean "no message gets through this contact".
_GONE = "removed"
_DEAD = "unreachable"
# Stand-in contacts, for what says "reachable" without naming a contact (PeerStatus
# Reachable, a MessageSend that went through): the next ContactStatus of that endpoint
# says more and replaces them.
_PEER = "(PeerStatus)"
_SENT = "(MessageSend)"


@dataclass
class PhoneState:
    endpoint: str
    # True: a reachable contact; False: none; None: not known (no listing allowed, no
    # event and no MessageSend since websmsd logged in).
    registered: Optional[bool] = None
    since: Optional[float] = None  # when `registered` took its value
    why: str = "not known yet"  # what told us, for the status page
    contacts: Dict[str, str] = field(default_factory=dict)  # URI -> last status


Change = Tuple[str, Optional[bool]]  # (endpoint, registered now)


class Registrations:
    """The registration state of the endpoints we deliver to.  Feed it what AMI says;
    each feeding returns the endpoints whose `registered` changed."""

    def __init__(self, endpoints: Iterable[str], now: Optional[float] = None):
        self.phones: Dict[str, PhoneState] = {e: PhoneState(e, since=now) for e in endpoints}

    def state(self, endpoint: str) -> Optional[PhoneState]:
        return self.phones.get(endpoint)

    def registered(self, endpoint: str) -> Optional[bool]:
        p = self.phones.get(endpoint)
        return None if p is None else p.registered

    # -- what can change it -------------------------------------------------------------

    def listed(self, items: Iterable[Any], now: float) -> List[Change]:
        """A PJSIPShowContacts answer (its ContactList events; none: nothing registered):
        the whole truth at that moment."""
        found: Dict[str, Dict[str, str]] = {e: {} for e in self.phones}
        for item in items:
            endpoint = (_get(item, "Endpoint") or _aor_of(_get(item, "ObjectName"))).strip()
            if endpoint in found:
                uri = (_get(item, "Uri") or _get(item, "URI") or "?").strip()
                found[endpoint][uri] = (_get(item, "Status") or "Unknown").strip()
        changes = []
        for endpoint, contacts in found.items():
            p = self.phones[endpoint]
            p.contacts = contacts
            listed = ", ".join(f"{s}" for s in sorted(set(contacts.values()))) or "no contact"
            changes += self._settle(p, now, f"PJSIPShowContacts: {listed}")
        return changes

    def unknown(self, now: float, why: str) -> List[Change]:
        """Nothing can be listed (no permission): every endpoint not known until told."""
        changes = []
        for p in self.phones.values():
            p.contacts = {}
            changes += self._set(p, None, now, why)
        return changes

    def event(self, packet: Any, now: float) -> List[Change]:
        """A ContactStatus or PeerStatus event (others are ignored)."""
        name = (_get(packet, "Event") or "").strip().lower()
        if name == "contactstatus":
            endpoint = (_get(packet, "EndpointName") or "").strip()
            if endpoint not in self.phones:
                endpoint = (_get(packet, "AOR") or "").strip()
            p = self.phones.get(endpoint)
            if p is None:
                return []
            uri = (_get(packet, "URI") or "?").strip()
            status = (_get(packet, "ContactStatus") or "").strip()
            _drop_stand_ins(p.contacts)
            if status.lower() == _GONE:
                p.contacts.pop(uri, None)
            else:
                p.contacts[uri] = status or "Unknown"
            return self._settle(p, now, f"ContactStatus {status or '?'} {uri}")
        if name == "peerstatus":
            peer = (_get(packet, "Peer") or "").strip()
            if not peer.upper().startswith("PJSIP/"):
                return []
            p = self.phones.get(peer[len("PJSIP/"):])
            if p is None:
                return []
            status = (_get(packet, "PeerStatus") or "").strip()
            if status.lower() == "reachable":
                if p.registered:
                    return []
                p.contacts[_PEER] = status
            elif status.lower() in (_DEAD, "unregistered", "rejected"):
                _drop_stand_ins(p.contacts)
                for uri in p.contacts:
                    p.contacts[uri] = "Unreachable"
            else:
                return []
            return self._settle(p, now, f"PeerStatus {status}")
        return []

    def learned(self, endpoint: str, registered: bool, now: float, why: str) -> List[Change]:
        """What a MessageSend showed: success (it has a contact) or `Message failed to
        send.` (none, or no such endpoint)."""
        p = self.phones.get(endpoint)
        if p is None or p.registered is registered:
            return []  # nothing new (and the event that told it stays the reason shown)
        if not registered:
            p.contacts = {}
        elif not _reachable(p.contacts):
            p.contacts[_SENT] = "Reachable"
        return self._set(p, registered, now, why)

    # -- helpers --------------------------------------------------------------------------

    def _settle(self, p: PhoneState, now: float, why: str) -> List[Change]:
        return self._set(p, _reachable(p.contacts), now, why)

    @staticmethod
    def _set(p: PhoneState, registered: Optional[bool], now: float, why: str) -> List[Change]:
        p.why = why
        if registered is p.registered:
            return []
        p.registered, p.since = registered, now
        return [(p.endpoint, registered)]


def _drop_stand_ins(contacts: Dict[str, str]) -> None:
    for uri in (_PEER, _SENT):
        contacts.pop(uri, None)


def _reachable(contacts: Dict[str, str]) -> bool:
    return any(status.lower() not in (_GONE, _DEAD) for status in contacts.values())


def _aor_of(object_name: Optional[str]) -> str:
    """A ContactList's ObjectName is `<aor>;@<hash>`."""
    return (object_name or "").partition(";@")[0]


def _get(item: Any, name: str) -> Optional[str]:
    if isinstance(item, dict):
        for key, value in item.items():
            if key.lower() == name.lower():
                return value
        return None
    return item.get(name)
