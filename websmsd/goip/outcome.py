"""What one GoIP send or USSD attempt achieved (shared by the UDP and the web channel).

Pure: imports nothing from Twisted.
"""

from __future__ import annotations

from typing import Optional

from websmsd.record import frozen


@frozen
class SendOutcome:
    """The result of one attempt to send one SMS through one GoIP line.

    ok: the GoIP reported the SMS sent.
    permanent: it was not, and sending the same message again cannot help (the number
        or the text cannot be sent at all).  A failure that is not permanent may be
        retried later, through this line or another.
    reason: one line for the log and the status page; it never holds a password or
        the text of the SMS.
    provider_id: the GoIP's id of the SMS when it gave one: the UDP `sms_no` (which a
        later DELIVER report names, unique per line only) or the web API's smskey.
    down: the line cannot be used now (not registered, GSM logged out, unreachable,
        password refused); a dispatcher should pause the route rather than burn retries.
    maybe_sent: the outcome is unknown and the SMS may have gone out (the GoIP was told
        to send and then went silent, or the web status never became final).  Retrying
        may send it twice.
    auth_failed: the GoIP refused websmsd's password or user: a configuration error that
        lasts until someone fixes the settings (`down` is then True as well).
    """

    ok: bool
    permanent: bool = False
    reason: str = ""
    provider_id: Optional[str] = None
    down: bool = False
    maybe_sent: bool = False
    auth_failed: bool = False


class UssdError(Exception):
    """A USSD request got no usable answer; str(error) says why in one line."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason
