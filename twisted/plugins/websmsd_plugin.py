# No logic here: twistd only needs to find the ServiceMaker.  (No __init__.py in
# twisted/plugins: it is a namespace Twisted shares with every installed plugin.)
from twisted.application.service import ServiceMaker

websmsd = ServiceMaker(
    "websmsd",
    "websmsd.tap",
    "SMS bridge between Asterisk and ITSPs, GSM gateways and phones",
    "websmsd",
)
