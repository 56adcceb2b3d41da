"""The phone in the loop: the PBX's own PJSIP phones reached over its Asterisk's AMI.

- `contacts`: which phones are registered, from AMI events and listings (pure);
- `notices`: the short SIP MESSAGE a phone gets when an SMS it wrote is delivered or
  fails for good (pure);
- `sink`: the route `ami:<endpoint>`, MessageSend with Base64Body, long texts in parts;
- `service`: the AMI session, the routes up and down with their phones, status rows.
"""
