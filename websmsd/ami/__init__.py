"""The Asterisk Manager Interface: a sans-IO parser and encoder (`protocol`) and a
reconnecting client (`client`), shared by the PBX's own Asterisk (delivery to phones,
registrations) and the Yeastar TG gateways (their AMI-like SMS API)."""
