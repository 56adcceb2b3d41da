"""Provider presets: what `preset = NAME` in websms.conf fills in.

A preset is data: for [websms] (sending) and [websmsd] (the webhook), the websms.conf
keys and the text an owner would otherwise write, taken from the provider's public API
documentation (named next to each).  `websmsd.config` reads these texts with the very
readers and checks it applies to the file's own values, so a preset can set nothing a
file could not; and any key the file gives for that interface (plain, or with the
interface's [index]) wins over the preset.

The owner still writes what is theirs: credentials (auth_user, auth_secret, sig_secret),
the webhook's url_path, numbers, and what a preset lists in `needs` (an account's host
or path, an application id) when the provider builds those from the account.

`{auth_user}` in a value stands for the interface's auth_user, percent-encoded: the
providers that put the account id in the URL (Twilio, SignalWire, Plivo, Sinch) use the
same id as the HTTP Basic user, or (Sinch, whose token is a bearer) name no user at all.

Pure Python, no Twisted, no I/O.
"""

from __future__ import annotations

from dataclasses import field
from typing import Dict, Mapping, Optional, Tuple
from urllib.parse import quote

from websmsd.record import frozen

__all__ = ["Preset", "PRESETS", "NAMES", "AUTH_USER", "get", "fill"]

AUTH_USER = "{auth_user}"

# Keys a preset never sets: the owner's credentials and certificates, and, for the
# webhook, where this PBX is reached (its path, allow-lists, proxy, public URL) and who
# it is (a fixed recipient).
OWNER_KEYS = {
    "websms": frozenset({"auth_user", "auth_secret", "tls_ca", "preset"}),
    "websmsd": frozenset({
        "sig_secret", "sig_url", "remt_addr", "url_path", "prox_addr", "prox_header",
        "val_to", "preset",
    }),
}


@frozen
class Preset:
    name: str
    title: str
    docs: Tuple[str, ...]  # the pages the values follow
    websms: Mapping[str, str] = field(default_factory=dict)
    websmsd: Mapping[str, str] = field(default_factory=dict)
    # Keys the owner must still write for the preset to work, with what to write; a
    # missing one is a warning (check-config, and the log at start).
    websms_needs: Mapping[str, str] = field(default_factory=dict)
    websmsd_needs: Mapping[str, str] = field(default_factory=dict)
    auth_user: str = ""  # what {auth_user} is at this provider
    sig_secret: str = ""  # what sig_secret is at this provider
    portal: str = ""  # where the webhook URL goes in the provider's portal
    url_suffix: str = ""  # appended to the webhook URL (a provider-side template)

    def section(self, section: str) -> Mapping[str, str]:
        return self.websms if section == "websms" else self.websmsd

    def needs(self, section: str) -> Mapping[str, str]:
        return self.websms_needs if section == "websms" else self.websmsd_needs


def fill(text: str, auth_user: Optional[str]) -> str:
    """A preset value with {auth_user} replaced (the caller checks auth_user is set)."""
    if AUTH_USER not in text:
        return text
    return text.replace(AUTH_USER, quote(auth_user or "", safe=""))


# Status callbacks whose form fields are Twilio's (SignalWire's compatibility API too).
_TWILIO_WEBHOOK = {
    "key_lookup": "path",
    "key_to": "To",
    "key_from": "From",
    "key_body": "Body",
    "key_id": "MessageSid",
    "key_media": "MediaUrl*",
    # An incoming message says SmsStatus=received; a status callback about one we sent
    # carries MessageStatus (queued, sent, delivered, undelivered, failed).
    "msg_filter": "SmsStatus=received",
    "dlr_filter": "MessageStatus",
    "dlr_id": "MessageSid",
    "dlr_status": "MessageStatus",
    "dlr_reason": "ErrorCode",
    # An empty TwiML document: no auto-reply.
    "resp_ack": "<Response></Response>",
    "resp_type": "text/xml",
}

_PRESETS = (
    Preset(
        name="twilio",
        title="Twilio Programmable Messaging",
        docs=(
            "https://www.twilio.com/docs/messaging/api/message-resource#create-a-message-resource",
            "https://www.twilio.com/docs/usage/webhooks/messaging-webhooks",
            "https://www.twilio.com/docs/messaging/guides/track-outbound-message-status",
            "https://www.twilio.com/docs/usage/webhooks/webhooks-security",
        ),
        websms={
            # POST /2010-04-01/Accounts/{AccountSid}/Messages.json, a form, HTTP Basic
            # AccountSid:AuthToken; 201 with the Message resource, its id in "sid".
            "url_host": "https://api.twilio.com",
            "url_path": "/2010-04-01/Accounts/{auth_user}/Messages.json",
            "encoding": "form",
            "method": "POST",
            "auth_method": "basic",
            "key_to": "To",
            "key_from": "From",
            "key_body": "Body",
            "resp_id": "sid",
        },
        websmsd={**_TWILIO_WEBHOOK, "sig_method": "twilio"},
        auth_user="your Account SID (AC...)",
        sig_secret="your Auth Token, the auth_secret of [websms]",
        portal="Console > Phone Numbers > Active numbers > your number > Messaging:"
               " 'A message comes in', Webhook, HTTP POST",
    ),
    Preset(
        name="signalwire",
        title="SignalWire (Compatibility / LaML API)",
        docs=(
            "https://developer.signalwire.com/compatibility-api/rest/entities/messages/",
            "https://developer.signalwire.com/guides/how-to-configure-your-webhook/",
            "https://developer.signalwire.com/guides/webhook-security",
        ),
        websms={
            # Twilio's Messages resource under https://<space>.signalwire.com/api/laml,
            # HTTP Basic ProjectID:API token; the answer's id is "sid" (a UUID).
            "url_path": "/api/laml/2010-04-01/Accounts/{auth_user}/Messages.json",
            "encoding": "form",
            "method": "POST",
            "auth_method": "basic",
            "key_to": "To",
            "key_from": "From",
            "key_body": "Body",
            "resp_id": "sid",
        },
        websms_needs={"url_host": "https://YOUR-SPACE.signalwire.com (your Space URL)"},
        # SignalWire signs with X-SignalWire-Signature (its Signing Key), which websmsd's
        # twilio check does not read: no sig_method by default (see README).
        websmsd=dict(_TWILIO_WEBHOOK),
        auth_user="your Project ID",
        portal="Dashboard > Phone Numbers > your number > Edit Settings > Messaging Settings:"
               " 'When a message comes in', LaML Webhooks, POST",
    ),
    Preset(
        name="telnyx",
        title="Telnyx Messaging (API v2)",
        docs=(
            "https://developers.telnyx.com/docs/messaging/messages/send-message",
            "https://developers.telnyx.com/docs/messaging/messages/receiving-webhooks",
            "https://support.telnyx.com/en/articles/4334722-how-to-leverage-webhooks",
        ),
        websms={
            # POST /v2/messages, JSON from/to/text, Bearer API key; {"data": {"id": ...}}.
            "url_host": "https://api.telnyx.com",
            "url_path": "/v2/messages",
            "encoding": "json",
            "method": "POST",
            "auth_method": "bearer",
            "key_to": "to",
            "key_from": "from",
            "key_body": "text",
            "resp_id": "data.id",
        },
        websmsd={
            # Keys are exact places from the document root, never searched.
            "key_lookup": "path",
            # {"data": {"event_type": "message.received" | "message.finalized" | ...,
            # "payload": {"id", "from": {"phone_number"}, "to": [{"phone_number",
            # "status"}], "text", "media": [{"url"}], "errors": [{"detail"}]}}}
            "key_to": "data.payload.to.0.phone_number",
            "key_from": "data.payload.from.phone_number",
            "key_body": "data.payload.text",
            "key_id": "data.payload.id",
            "key_media": "data.payload.media.*.url",
            "msg_filter": "data.event_type=message.received",
            "dlr_filter": "data.event_type=message.finalized",
            "dlr_id": "data.payload.id",
            "dlr_status": "data.payload.to.0.status",
            "dlr_reason": "data.payload.errors.0.detail",
            "sig_method": "telnyx",
        },
        sig_secret="the public key shown in the portal under Keys & Credentials > Public Key",
        portal="Portal > Messaging > your messaging profile > Inbound: Webhook URL",
    ),
    Preset(
        name="vonage",
        title="Vonage Messages API (SMS channel)",
        docs=(
            "https://developer.vonage.com/en/api/messages",
            "https://developer.vonage.com/en/messages/concepts/signed-webhooks",
        ),
        websms={
            # POST /v1/messages, JSON message_type/text/to/from/channel, numbers in E.164
            # without "+", HTTP Basic API key:secret; 202 {"message_uuid": ...}.
            "url_host": "https://api.nexmo.com",
            "url_path": "/v1/messages",
            "encoding": "json",
            "method": "POST",
            "auth_method": "basic",
            "key_to": "to",
            "key_from": "from",
            "key_body": "text",
            "val_numform": "no+",
            "val_static": "message_type=text,channel=sms",
            "resp_id": "message_uuid",
        },
        websmsd={
            # Keys are exact places from the document root, never searched.
            "key_lookup": "path",
            # Inbound: {"channel": "sms", "message_type": "text", "message_uuid", "to",
            # "from", "text", ...}; status: {"message_uuid", "status": submitted |
            # delivered | rejected | undeliverable, "error": {...}}.  Signed with a JWT
            # (HS256, the account's signature secret) in Authorization: Bearer.
            "key_to": "to",
            "key_from": "from",
            "key_body": "text",
            "key_id": "message_uuid",
            "msg_filter": "message_type=text",
            "dlr_filter": "status",
            "dlr_id": "message_uuid",
            "dlr_status": "status",
            "dlr_reason": "error.detail",
            "sig_method": "vonage",
        },
        sig_secret="your signature secret, shown in the Dashboard under API Settings",
        portal="Dashboard > Applications > your application > Messages: Inbound URL and"
               " Status URL (POST); API Settings > SMS settings: Messages API",
    ),
    Preset(
        name="plivo",
        title="Plivo Messaging",
        docs=(
            "https://www.plivo.com/docs/messaging/api/message/send-a-message",
            "https://www.plivo.com/docs/messaging/api/message/handling-incoming",
            "https://www.plivo.com/docs/messaging/api/message/message-status-callbacks",
        ),
        websms={
            # POST /v1/Account/{auth_id}/Message/, JSON src/dst/text, HTTP Basic
            # auth_id:auth_token; 202 {"message_uuid": [...]}.
            "url_host": "https://api.plivo.com",
            "url_path": "/v1/Account/{auth_user}/Message/",
            "encoding": "json",
            "method": "POST",
            "auth_method": "basic",
            "key_to": "dst",
            "key_from": "src",
            "key_body": "text",
            "resp_id": "message_uuid.0",
        },
        websmsd={
            # Keys are exact places from the document root, never searched.
            "key_lookup": "path",
            # Incoming: form From, To, Text, Type, MessageUUID (Media1... for MMS); a
            # status callback adds Status and ErrorCode, which an incoming one lacks.
            "key_to": "To",
            "key_from": "From",
            "key_body": "Text",
            "key_id": "MessageUUID",
            "key_media": "Media[0-9]*",
            "dlr_filter": "Status",
            "dlr_id": "MessageUUID",
            "dlr_status": "Status",
            "dlr_reason": "ErrorCode",
            # Plivo reads the message_url's answer as Plivo XML.
            "resp_ack": "<Response></Response>",
            "resp_type": "application/xml",
            # V3 only: V2 signs neither the query nor the body.
            "sig_method": "plivo-v3",
        },
        auth_user="your Auth ID",
        sig_secret="your Auth Token, the auth_secret of [websms]",
        portal="Console > Messaging > Applications > your application: Message URL (POST);"
               " link the number to the application",
    ),
    Preset(
        name="bandwidth",
        title="Bandwidth Messaging API v2",
        docs=(
            "https://dev.bandwidth.com/docs/messaging/createMessage",
            "https://dev.bandwidth.com/docs/messaging/webhooks",
        ),
        websms={
            # POST /api/v2/users/{accountId}/messages, JSON to (a list)/from/text/
            # applicationId, HTTP Basic API user; 202 with "id".
            "url_host": "https://messaging.bandwidth.com",
            "encoding": "json",
            "method": "POST",
            "auth_method": "basic",
            "key_to": "to[]",
            "key_from": "from",
            "key_body": "text",
            "resp_id": "id",
        },
        websms_needs={
            "url_path": "/api/v2/users/YOUR-ACCOUNT-ID/messages",
            "val_static": '"applicationId=YOUR-MESSAGING-APPLICATION-ID"',
        },
        websmsd={
            # Keys are exact places from the document root, never searched.
            "key_lookup": "path",
            # A JSON array of events: {"type": "message-received" | "message-delivered" |
            # "message-failed" | ..., "description", "message": {"id", "owner", "from",
            # "to": [...], "text", "media": [...], "direction": "in" | "out"}}.
            "key_to": "message.owner",
            "key_from": "message.from",
            "key_body": "message.text",
            "key_id": "message.id",
            "key_media": "message.media",
            "msg_filter": "type=message-received",
            "dlr_filter": "message.direction=out",
            "dlr_id": "message.id",
            "dlr_status": "type",
            "dlr_reason": "description",
        },
        portal="Dashboard > Applications > your messaging application: Callback URL",
    ),
    Preset(
        name="sinch",
        title="Sinch SMS REST API",
        docs=(
            "https://developers.sinch.com/docs/sms/api-reference/sms/tag/Batches/",
            "https://developers.sinch.com/docs/sms/api-reference/sms/tag/Webhooks/",
        ),
        websms={
            # POST /xms/v1/{service_plan_id}/batches, JSON from/to (a list)/body, Bearer
            # API token; 201 with the batch "id".  Per-recipient delivery reports carry
            # that batch id.  The US region; EU accounts set url_host.
            "url_host": "https://us.sms.api.sinch.com",
            "url_path": "/xms/v1/{auth_user}/batches",
            "encoding": "json",
            "method": "POST",
            "auth_method": "bearer",
            "key_to": "to[]",
            "key_from": "from",
            "key_body": "body",
            "val_static": "delivery_report=per_recipient",
            "resp_id": "id",
        },
        websmsd={
            # Keys are exact places from the document root, never searched.
            "key_lookup": "path",
            "key_to": "to",
            "key_from": "from",
            "key_body": "body",
            "key_id": "id",
            "msg_filter": "type=mo_text",
            "dlr_filter": "type=recipient_delivery_report_sms",
            "dlr_id": "batch_id",
            "dlr_status": "status",
            "dlr_reason": "code",
        },
        auth_user="your service plan ID (it goes in the URL; the token is auth_secret)",
        portal="Dashboard > SMS > APIs > your service plan: Callback URL",
    ),
    Preset(
        name="46elks",
        title="46elks",
        docs=(
            "https://46elks.com/docs/send-sms",
            "https://46elks.com/docs/receive-sms",
            "https://46elks.com/docs/sms-delivery-reports",
        ),
        websms={
            # POST /a1/sms, form from/to/message, HTTP Basic API username:password;
            # the answer's "id".
            "url_host": "https://api.46elks.com",
            "url_path": "/a1/sms",
            "encoding": "form",
            "method": "POST",
            "auth_method": "basic",
            "key_to": "to",
            "key_from": "from",
            "key_body": "message",
            "resp_id": "id",
        },
        websmsd={
            # Keys are exact places from the document root, never searched.
            "key_lookup": "path",
            # Incoming: form direction=incoming, id, from, to, message, created.
            # Delivery reports (whendelivered): form id, status, delivered.  A non-empty
            # answer to an incoming SMS is sent back as a reply SMS: resp_ack stays "".
            "key_to": "to",
            "key_from": "from",
            "key_body": "message",
            "key_id": "id",
            "msg_filter": "direction=incoming",
            "dlr_filter": "status",
            "dlr_id": "id",
            "dlr_status": "status",
            "resp_ack": "",
        },
        portal="Dashboard > Numbers > your number: sms_url (and whendelivered per message)",
    ),
    Preset(
        name="zadarma",
        title="Zadarma",
        docs=(
            "https://zadarma.com/en/support/api/",  # Methods: /v1/sms/send/
            "https://zadarma.com/en/support/api/#api_webhooks",  # notifications: SMS
        ),
        websms={
            # POST /v1/sms/send/, form number/message/caller_id, Authorization
            # key:signature; {"status": "success", ...}.
            "url_host": "https://api.zadarma.com",
            "url_path": "/v1/sms/send/",
            "encoding": "form",
            "method": "POST",
            "auth_method": "zadarma",
            "key_to": "number",
            "key_from": "caller_id",
            "key_body": "message",
            "resp_check": "status=success",
        },
        websmsd={
            # Keys are exact places from the document root, never searched.
            "key_lookup": "path",
            # Zadarma checks the URL with ?zd_echo=... first, then posts
            # event=SMS&result={"caller_id", "caller_did", "text"} with a Signature
            # over `result` alone: the message is read from it alone.
            "key_to": "result.caller_did",
            "key_from": "result.caller_id",
            "key_body": "result.text",
            "key_echo": "zd_echo",
            "msg_filter": "event=SMS",
            "sig_method": "zadarma",
        },
        sig_secret="your API secret, the auth_secret of [websms]",
        portal="Personal account > Settings > Integrations and API > Notifications:"
               " 'Incoming SMS' notification URL",
    ),
    Preset(
        name="voipms",
        title="VoIP.ms",
        docs=(
            "https://voip.ms/m/apidocs.php",
            "https://wiki.voip.ms/article/SMS-MMS",
        ),
        websms={
            # GET /api/v1/rest.php?api_username=&api_password=&method=sendSMS&did=&dst=
            # &message=; {"status": "success", "sms": 23434}.
            "url_host": "https://voip.ms",
            "url_path": "/api/v1/rest.php",
            "encoding": "form",
            "method": "GET",
            "auth_method": "query",
            "key_user": "api_username",
            "key_secret": "api_password",
            "key_to": "dst",
            "key_from": "did",
            "key_body": "message",
            "val_static": "method=sendSMS",
            "resp_check": "status=success",
            "resp_id": "sms",
        },
        websmsd={
            # Keys are exact places from the document root, never searched.
            "key_lookup": "path",
            # The SMS URL Callback is a GET of the URL the owner writes in the portal,
            # with {TO} {FROM} {MESSAGE} {ID} {TIMESTAMP} replaced; it expects "ok".
            "key_to": "to",
            "key_from": "from",
            "key_body": "message",
            "key_id": "id",
            "resp_ack": "ok",
            "resp_type": "text/plain",
        },
        portal="Portal > DID Numbers > Manage DIDs > your DID > SMS/MMS: enable"
               " 'SMS URL Callback' (and 'URL Callback Retry'), paste the URL as shown",
        url_suffix="?to={TO}&from={FROM}&message={MESSAGE}&id={ID}&date={TIMESTAMP}",
    ),
    Preset(
        name="flowroute",
        title="Flowroute Messaging (v2.1)",
        docs=(
            "https://developer.flowroute.com/api/messages/v2.1/send-an-sms/",
            "https://developer.flowroute.com/api/messages/v2.1/receive-an-sms",
            "https://developer.flowroute.com/docs/receive-an-inbound-message",
        ),
        websms={
            # POST /v2.1/messages, JSON to/from/body as 11-digit NANP numbers, HTTP Basic
            # access key:secret key; 202 {"data": {"id": "mdr2-..."}}.
            "url_host": "https://api.flowroute.com",
            "url_path": "/v2.1/messages",
            "encoding": "json",
            "method": "POST",
            "auth_method": "basic",
            "key_to": "to",
            "key_from": "from",
            "key_body": "body",
            "num_country": "US",
            "val_numform": "no+",
            "resp_id": "data.id",
        },
        websmsd={
            # Keys are exact places from the document root, never searched.
            "key_lookup": "path",
            # {"to", "from", "body", "id"}, flat (v2) or under data.attributes with the
            # id at data.id (v2.1): names found at any depth read both.
            "key_to": "to",
            "key_from": "from",
            "key_body": "body",
            "key_id": "id",
        },
        portal="Manage portal > Preferences > API Control > Messaging: SMS Callback URL",
    ),
    Preset(
        name="clicksend",
        title="ClickSend SMS (REST v3)",
        docs=(
            "https://developers.clicksend.com/docs/messaging/sms",
            "https://developers.clicksend.com/docs/automations/sms",
        ),
        websms={
            # POST /v3/sms/send, JSON {"messages": [{"to", "from", "body", "source"}]},
            # HTTP Basic username:API key; response_code "SUCCESS" and
            # data.messages[].message_id.
            "url_host": "https://rest.clicksend.com",
            "url_path": "/v3/sms/send",
            "encoding": "json",
            "method": "POST",
            "auth_method": "basic",
            "key_to": "messages.0.to",
            "key_from": "messages.0.from",
            "key_body": "messages.0.body",
            "val_static": "messages.0.source=websmsd",
            "resp_check": "response_code=SUCCESS",
            "resp_id": "data.messages.0.message_id",
        },
        websmsd={
            # Keys are exact places from the document root, never searched.
            "key_lookup": "path",
            # Inbound rule with action URL (webhook_type post): form from, to, body,
            # message_id, timestamp, custom_string...; a delivery receipt rule posts
            # message_id, status, status_code, status_text, error_text...
            "key_to": "to",
            "key_from": "from",
            "key_body": "body",
            "key_id": "message_id",
            "dlr_filter": "status",
            "dlr_id": "message_id",
            "dlr_status": "status",
            "dlr_reason": "status_text",
        },
        portal="Dashboard > Messaging > Settings > Inbound SMS Rules (and Delivery Reports):"
               " action URL, POST",
    ),
    # -- sending only -----------------------------------------------------------------
    Preset(
        name="infobip",
        title="Infobip SMS API (sending only)",
        docs=("https://www.infobip.com/docs/api/channels/sms/send-sms-message",),
        websms={
            # POST https://{base}.api.infobip.com/sms/2/text/advanced, Authorization:
            # App <API key>, JSON messages[].destinations[].to/from/text.
            "url_path": "/sms/2/text/advanced",
            "encoding": "json",
            "method": "POST",
            "auth_method": "header",
            "auth_header": "Authorization",
            "auth_scheme": "App",
            "key_to": "messages.0.destinations.0.to",
            "key_from": "messages.0.from",
            "key_body": "messages.0.text",
            "val_numform": "no+",
            "resp_id": "messages.0.messageId",
        },
        websms_needs={"url_host": "https://YOUR-BASE.api.infobip.com (your API base URL)"},
    ),
    Preset(
        name="bird",
        title="Bird / MessageBird REST API (sending only)",
        docs=("https://developers.messagebird.com/api/sms-messaging/#send-outbound-sms",),
        websms={
            "url_host": "https://rest.messagebird.com",
            "url_path": "/messages",
            "encoding": "json",
            "method": "POST",
            "auth_method": "header",
            "auth_scheme": "AccessKey",
            "key_to": "recipients[]",
            "key_from": "originator",
            "key_body": "body",
            "val_numform": "no+",
            "resp_id": "id",
        },
    ),
    Preset(
        name="bulkvs",
        title="BulkVS messageSend (sending only)",
        docs=("https://portal.bulkvs.com/api/v1.0/documentation",),
        websms={
            "url_host": "https://portal.bulkvs.com",
            "url_path": "/api/v1.0/messageSend",
            "encoding": "json",
            "method": "POST",
            "auth_method": "basic",
            "key_to": "To[]",
            "key_from": "From",
            "key_body": "Message",
            "val_numform": "no+",
        },
    ),
    Preset(
        name="sipgate",
        title="sipgate.io web SMS (sending only)",
        docs=("https://api.sipgate.com/v2/doc#/sessions/sendWebSms",),
        websms={
            # No sender field: key_from names smsId, which val_static then sets to the
            # web-SMS extension (s0, s1...) the owner gives in val_static.
            "url_host": "https://api.sipgate.com",
            "url_path": "/v2/sessions/sms",
            "encoding": "json",
            "method": "POST",
            "auth_method": "basic",
            "key_to": "recipient",
            "key_from": "smsId",
            "key_body": "message",
        },
        websms_needs={"val_static": '"smsId=s0" (your web-SMS extension)'},
        auth_user="your personal access token id",
    ),
)

PRESETS: Dict[str, Preset] = {preset.name: preset for preset in _PRESETS}
NAMES: Tuple[str, ...] = tuple(PRESETS)


def get(name: str) -> Optional[Preset]:
    """The preset called `name` (any case), or None."""
    return PRESETS.get(name.strip().lower())
