"""The route `ami:<endpoint>`: a message to one PBX phone, with AMI MessageSend.

Each part goes as `Action: MessageSend`, `To: pjsip:<endpoint>`, `From: <sender>`,
`Base64Body` (base64 keeps CR/LF, leading blanks and emoji, which a plain `Body:` loses).
Asterisk puts the From in the user part of its own From URI: the phone sees
`<sip:+15551234567@pbx>`, and an alphanumeric sender as `<sip:My%20Bank@pbx>` (measured
on Asterisk 22).
An AMI line holds at most 1,024 bytes, so one MessageSend carries at most 756 bytes of
text: a longer text goes in parts marked `(1/3) `..., cut between grapheme clusters
(websmsd.textsplit), one after the other, each only once Asterisk has answered the one
before.  The message's `progress` counts the parts that went, so a retry resumes where
it stopped instead of sending the first parts twice.

Asterisk's answer is the result:
- `Response: Success` for every part: delivered to the phone.  (It means PJSIP sent the
  MESSAGE to a registered contact; AMI reports nothing of the phone's own answer.)
- `Message failed to send.`: the endpoint has no contact (or does not exist).  If the
  phone's state was not known (no contact listing allowed), it is now known: not
  registered; the route pauses until a ContactStatus says it registered, and no attempt
  is spent.  If it was known to be registered, a transient failure: retried with
  backoff, then failed with Asterisk's reason.
- no session, or the phone known not registered: the route pauses (no attempt).
- no answer in time, or the session lost before the answer: a transient failure that
  says the part may have reached the phone (a retry could show it twice).
"""

from __future__ import annotations

from typing import Any, List, Optional

from twisted.internet import defer

from websmsd.ami.client import ActionLost, ActionTimeout, NotConnected
from websmsd.ami.protocol import MESSAGE_SEND_MAX_BODY_BYTES, AMIEncodeError, message_send
from websmsd.channel import Outcome, route_name
from websmsd.message import Message
from websmsd.text import one_line
from websmsd.textsplit import split_marked

KIND = "ami"
FAILED_TO_SEND = "message failed to send"


def parts_of(body: str, limit: int = MESSAGE_SEND_MAX_BODY_BYTES) -> List[bytes]:
    """The UTF-8 parts one MessageSend each, in order."""
    return [part.encode("utf-8") for part in split_marked(body, limit)]


class PhoneSink:
    """A Sink (websmsd.channel) for one endpoint.

    `channel` gives the AMI session (`ami`), what is known of the phones
    (`registrations`), `learned(endpoint, registered, why)` to record what a
    MessageSend showed, `denied(reason)` when Asterisk refuses MessageSend itself, and
    `hold(endpoint)` to make sure the route is down before a message waits."""

    def __init__(self, endpoint: str, channel: Any):
        self.endpoint = endpoint
        self.channel = channel
        self.route = route_name(KIND, endpoint)

    def send(self, message: Message) -> defer.Deferred:
        return defer.ensureDeferred(self._send(message))

    async def _send(self, message: Message) -> Outcome:
        channel = self.channel
        parts = parts_of(message.body)
        done = min(message.progress, len(parts))
        progress: Optional[int] = done or None
        if channel.registrations.registered(self.endpoint) is False:
            return self._wait(progress)
        for n in range(done, len(parts)):
            try:
                fields = message_send(f"pjsip:{self.endpoint}", message.sender, parts[n])
                result = await channel.ami.action("MessageSend", fields)
            except NotConnected:
                return self._wait(progress)
            except AMIEncodeError as e:
                return Outcome.failed(f"cannot be sent over AMI: {e}", permanent=True,
                                      progress=progress)
            except (ActionTimeout, ActionLost) as e:
                return Outcome.failed(f"{e} (part {n + 1} may have reached the phone)",
                                      progress=progress)
            if not result.ok:
                answer = one_line(result.message or result.response.response or "Error", 200)
                return self._refused(answer, progress)
            done = n + 1
            progress = done
            channel.learned(self.endpoint, True, "MessageSend: Success")
        how = f" in {len(parts)} parts" if len(parts) > 1 else ""
        return Outcome.delivered(f"Asterisk sent it to the phone{how} (MessageSend)",
                                 progress=len(parts))

    def _refused(self, answer: str, progress: Optional[int]) -> Outcome:
        channel = self.channel
        if "permission denied" in answer.lower():
            channel.denied(f"Asterisk refused MessageSend: {answer} (manager.conf: the"
                           " user needs write = message)")
            return self._wait(progress)
        if FAILED_TO_SEND in answer.lower():
            known = channel.registrations.registered(self.endpoint)
            if known is not True:
                # Never told it registered: now we know it has no contact.
                channel.learned(self.endpoint, False, f"MessageSend: {answer}")
                return self._wait(progress)
        return Outcome.failed(f"Asterisk: {answer}", progress=progress)

    def _wait(self, progress: Optional[int]) -> Outcome:
        # Not an attempt: the route is down now, so this message waits with the others,
        # in order, and goes once the phone is back.
        self.channel.hold(self.endpoint)
        return Outcome.later(0.0, f"waiting for phone {self.endpoint}", progress=progress)
