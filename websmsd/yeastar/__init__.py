"""Yeastar TG GSM gateways (TG100/200/400/800/1600).

`tg` is the pure protocol layer: AMI event and command-output parsing, SMS and USSD
command building, multi-part reassembly, and the WebCGI HTTP API's URLs and answers.
`messages` (pure too) turns websmsd's messages into send commands and received SMS into
messages.  `webcgi` is the Twisted client for the WebCGI API, tolerant of the device's
malformed HTTP headers.  `service` is the channel: one AMI session per TG (websmsd.ami's
client), a route per GSM port.
"""
