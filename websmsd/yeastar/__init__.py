"""Yeastar TG GSM gateways (TG100/200/400/800/1600).

`tg` is the pure protocol layer: AMI event and command-output parsing, SMS and USSD
command building, multi-part reassembly, and the WebCGI HTTP API's URLs and answers.
`webcgi` is the Twisted client for the WebCGI API, tolerant of the device's malformed
HTTP headers.  The AMI session itself is websmsd.asterisk's AMI client.
"""
