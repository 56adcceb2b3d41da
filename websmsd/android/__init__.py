"""Android phones as SMS gateways: the protocol layer of three apps.

- `smssync`: Ushahidi SMSsync (v3.1.1).  The phone posts received SMS to a Sync URL that
  websmsd serves and polls the same URL (`?task=send`, `?task=sent`, `?task=result`).
- `medic`: the medic/CHT "SMS Gateway" app and the SysCo/multiOTP fork.  The phone posts
  `{"messages": [...], "updates": [...]}` to one URL and reads the SMS to send from the answer.
- `smsgate`: "SMS Gateway for Android" (capcom6) in Local Server mode.  Here the phone is
  the HTTP server: websmsd posts SMS to it and polls its inbox and message states.

`smssync`, `medic`, `basicauth`, `answer`, `smsgate` (the protocol) and `smsgate_inbox`
(its inbox reader) import nothing from Twisted; `smsgate_client.SMSGateClient` is the only
I/O here (treq).  The facts behind every
rule are in the project's notes on these apps (android-gateways.md), read from the apps'
source code.
"""
