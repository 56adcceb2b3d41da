"""GoIP GSM gateways: the UDP "SMS server" protocol and the web API."""
