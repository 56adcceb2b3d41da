"""Routing is policy in one pure module: plain function calls, no reactor."""

import pytest

from websmsd.config import loads
from websmsd.config.ini import ConfigError
from websmsd.config.route import RouteRule, RouteSettings
from websmsd.routing import NO_INTERFACE, Interface, Router, router_for

SIM1 = Interface("sim1", "goip", ("+46 70-123 45 67",))
SIM2 = Interface("sim2", "goip", ("+46701234568",))
TW = Interface("tw", "itsp", ("+12025550100",))
VOIPMS = Interface("voipms", "itsp", compact=True)
RULES = RouteSettings(rules=(RouteRule("se", ("+46", "0046"), ("sim1", "sim2")),
                             RouteRule("se-mobile", ("+467",), ("sim2", "tw")),
                             RouteRule("us", ("+1",), ("voipms", "tw"))),
                      default=("tw",))


def test_websms_index_names_any_interface_and_only_that_one():
    router = Router([TW, SIM1, SIM2], RULES)
    d = router.outbound("+46701112222", "+12025550100", "sim1")
    assert (d.routes, d.reason) == (("goip:sim1",), "WEBSMS_INDEX names interface 'sim1'")
    d = router.outbound("+1555", "+1666", "nope")
    assert d.routes == () and "no interface named 'nope'" in d.reason


def test_the_longest_prefix_wins_and_its_list_is_the_fallback_chain():
    router = Router([TW, SIM1, SIM2, VOIPMS], RULES)
    assert router.outbound("+46812345678", "100").routes == ("goip:sim1", "goip:sim2")
    assert router.outbound("+46701112222", "100").routes == ("goip:sim2", "itsp:tw")
    assert router.outbound("004681234", "100").routes == ("goip:sim1", "goip:sim2")
    assert router.outbound("+12065550100", "100").routes == ("itsp:voipms", "itsp:tw")
    d = router.outbound("+4412345", "100")
    assert (d.routes, d.reason) == (("itsp:tw",), "the default of [route]")


def test_a_reply_leaves_through_the_interface_that_owns_the_sender():
    router = Router([TW, SIM1, SIM2], RULES)
    # Configured: the SIM's own number (however it is written).
    d = router.outbound("+12065550100", "+46701234567")
    assert d.routes[0] == "goip:sim1" and "+46701234567 is a number of interface 'sim1'" in d.reason
    assert d.fallback == ("itsp:tw",)  # then the rule of the destination (or the default)
    # Learned: the store saw the last message to +15550001111 come in on tw's webhook.
    d = router.outbound("+46812345678", "+15550001111", came_in_on="webhook:tw")
    assert d.routes == ("itsp:tw", "goip:sim1", "goip:sim2")
    d = router.outbound("+46812345678", "+15550001111", came_in_on="goip:sim2")
    assert d.routes == ("goip:sim2", "goip:sim1")
    # A webhook interface without a sending twin owns nothing.
    assert router.outbound("+4412", "+1555", came_in_on="webhook:other").routes == ("itsp:tw",)
    # replies = no: the destination alone decides.
    quiet = Router([TW, SIM1, SIM2], RouteSettings(RULES.rules, RULES.default, replies=False))
    assert quiet.outbound("+12065550100", "+46701234567").routes == ("itsp:tw",)


def test_without_route_section_the_first_interface_carries_everything():
    assert Router([TW, SIM1]).outbound("+46701112222", "100").routes == ("itsp:tw",)
    d = Router([]).outbound("+1555", "+1666")
    assert (d.routes, d.reason, d.interface) == ((), NO_INTERFACE, None)


def test_inbound_goes_to_the_pbx_route():
    assert Router([TW]).inbound("+1555") == "callfile"
    assert Router([TW], inbound_route="ami").inbound("+1555") == "ami"


def test_route_section_from_websms_conf():
    settings = loads('''
[websms]
url_host [tw] = https://api.example.com
url_host [b]  = https://api.example.net
number [b]    = +12025550183
[route]
prefix [us]   = +1
via [us]      = b, tw
default       = tw
replies       = no
[astqueue]
''', "websms.conf")
    assert settings.route == RouteSettings(rules=(RouteRule("us", ("+1",), ("b", "tw")),),
                                           default=("tw",), replies=False)
    router = router_for(settings)
    assert router.outbound("+12065550100", "+12025550183").routes == ("itsp:b", "itsp:tw")
    assert router.outbound("+4670", "+12025550183").routes == ("itsp:tw",)


@pytest.mark.parametrize("text, where", [
    ("via [us] = nope\nprefix [us] = +1", "websms.conf:4: via[us]: no interface named 'nope'"),
    ("default = nope", "websms.conf:4: default: no interface named 'nope'"),
    ("prefix [us] = +1", "websms.conf:4: prefix[us]: rule 'us' has no via [us]"),
    ("via [us] = tw", "websms.conf:4: via[us]: rule 'us' has no prefix [us]"),
    ("prefix [us] = 1-800\nvia [us] = tw", "websms.conf:4: prefix[us]: '1-800' is not a number prefix"),
    ("prefix = +1", "websms.conf:4: prefix: prefix belongs to a named rule"),
    ("default [x] = tw", "websms.conf:4: default[x]: cannot be indexed"),
    ("prefix [a] = +1\nvia [a] = tw\nprefix [b] = +1\nvia [b] = tw",
     "websms.conf:6: prefix[b]: prefix +1 is also in rule 'a'"),
])
def test_route_section_errors_name_file_and_line(text, where):
    with pytest.raises(ConfigError) as e:
        loads(f"[websms]\nurl_host [tw] = https://api.example.com\n[route]\n{text}\n[astqueue]\n",
              "websms.conf")
    assert str(e.value).startswith(where), str(e.value)
