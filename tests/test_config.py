"""websms.conf reader: PHP ini syntax, key names old and new, interfaces, checks, report."""

import ipaddress
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from websmsd.config import ConfigError, load, loads, parse_ini, report, resp_check_pattern
from websmsd.config import (
    AstQueueSettings,
    DaemonSettings,
    InboundInterface,
    InboundSettings,
    OutboundInterface,
    OutboundSettings,
    NO_OUTBOUND,
)

FIXTURES = Path(__file__).parent / "fixtures" / "config"
PATH = "websms.conf"


def conf(text, environ=None):
    """Settings from an indented snippet, in an empty environment unless given one."""
    return loads(textwrap.dedent(text).lstrip("\n"), PATH, environ={} if environ is None else environ)


def ini(text, environ=None):
    """What PHP's parse_ini_file(file, true) would return for the snippet."""
    return parse_ini(textwrap.dedent(text).lstrip("\n"), PATH, environ or {}).as_dict()


def refused(text, line, key, *words, environ=None):
    """Assert that the snippet is refused at `line` for `key`, with `words` in the reason."""
    with pytest.raises(ConfigError) as caught:
        conf(text, environ)
    error = caught.value
    located(error, line, key)
    for word in words:
        assert word in error.message, str(error)
    return error


def located(error, line, key):
    """Assert that a ConfigError names PATH, `line` and `key`, in its attributes and text."""
    assert (error.path, error.line, error.key) == (PATH, line, key), str(error)
    prefix = PATH if line is None else f"{PATH}:{line}"
    assert str(error) == ": ".join(part for part in (prefix, key, error.message) if part)


def warned(settings, *words):
    """The one warning containing all `words`."""
    found = [w for w in settings.warnings if all(word in w for word in words)]
    assert len(found) == 1, settings.warnings
    return found[0]


def fixture(name, environ=None):
    return load(FIXTURES / name, environ={} if environ is None else environ)


# ---------------------------------------------------------------------------------------
# ConfigError


def test_config_error_text_omits_missing_parts():
    assert str(ConfigError("a.conf", 3, "url_host", "bad")) == "a.conf:3: url_host: bad"
    assert str(ConfigError("a.conf", 3, None, "bad")) == "a.conf:3: bad"
    assert str(ConfigError("a.conf", None, "WEBSMSD_PORT", "bad")) == "a.conf: WEBSMSD_PORT: bad"
    assert str(ConfigError("a.conf", None, None, "bad")) == "a.conf: bad"
    error = ConfigError("a.conf", 3, "k", "m")
    assert (error.path, error.line, error.key, error.message) == ("a.conf", 3, "k", "m")


# ---------------------------------------------------------------------------------------
# PHP ini syntax


@pytest.mark.parametrize(
    "word, value",
    [("yes", "1"), ("YES", "1"), ("True", "1"), ("on", "1"),
     ("no", ""), ("No", ""), ("false", ""), ("OFF", ""), ("none", ""), ("None", ""), ("null", ""),
     ("NULL", "")],
)
def test_unquoted_boolean_words_become_1_or_empty(word, value):
    assert ini(f"[s]\nk = {word}\n") == {"s": {"k": value}}


@pytest.mark.parametrize("word", ["yes", "no", "none", "null", "off"])
def test_quoted_boolean_words_stay_words(word):
    assert ini(f'[s]\nk = "{word}"\n') == {"s": {"k": word}}


@pytest.mark.parametrize("text", ["no+", "yesterday", "nonexistent", "on-call", "offset"])
def test_words_merely_starting_like_booleans_are_text(text):
    assert ini(f"[s]\nk = {text}\n") == {"s": {"k": text}}


def test_values_comments_and_whitespace():
    assert ini(
        """
        ; a full-line comment
        [s]
          a   =   spaced value	 ; trailing comment
        b = x;comment without a space
        c =
        d = ""
        e = "  kept  "   ; after the quotes
        f = a[b]
        g = $literal dollar
        h = 'raw ${HOME} \\" stays'
        """,
        {"HOME": "/root"},
    ) == {"s": {"a": "spaced value", "b": "x", "c": "", "d": "", "e": "  kept  ", "f": "a[b]",
                "g": "$literal dollar", "h": 'raw ${HOME} \\" stays'}}


def test_double_quoted_escapes_are_phps():
    # Only \" \\ and \$ are unescaped; every other backslash stays (endpoint strings need it).
    value = ini(r'''
        [s]
        k = "say \"hi\" \\ \$HOME \n tcp\:80"
        ''')["s"]["k"]
    assert value == r'say "hi" \ $HOME \n tcp\:80'


def test_double_quoted_value_may_span_lines():
    settings = conf('[websmsd]\nresp_ack = "<Response>\n</Response>"\nkey_to = dst\n')
    assert settings.inbound.default.resp_ack == "<Response>\n</Response>"
    assert settings.inbound.default.key_to == "dst"
    # Lines are still counted right after a multi-line value.
    refused('[websmsd]\nresp_ack = "a\nb"\nbogus = 1\n', 4, "bogus", "unknown key")


def test_environment_variables_are_substituted():
    environ = {"ITSP_USER": "u1", "ITSP_SECRET": "p w", "EMPTY": ""}
    assert ini(
        """
        [s]
        a = ${ITSP_USER}
        b = "${ITSP_SECRET}"
        c = pre-${ITSP_USER}-post
        d = ${UNSET_VARIABLE}
        e = "${ ITSP_USER }"
        f = "\\${ITSP_USER}"
        """,
        environ,
    ) == {"s": {"a": "u1", "b": "p w", "c": "pre-u1-post", "d": "", "e": "u1", "f": "${ITSP_USER}"}}
    # A substituted yes stays the word: PHP turns only the literal word into a boolean.
    assert ini("[s]\na = ${V}\n", {"V": "yes"}) == {"s": {"a": "yes"}}


def test_default_environment_is_os_environ(monkeypatch):
    monkeypatch.setenv("WEBSMSD_TEST_USER", "from-os")
    monkeypatch.setenv("WEBSMSD_PORT", "8081")
    settings = loads("[websms]\nauth_user = ${WEBSMSD_TEST_USER}\nauth_secret = s\n"
                     "url_host = https://itsp.example\n")
    assert settings.outbound.interfaces[0].auth_user == "from-os"
    assert settings.daemon.webhook_listen == ("tcp:8081",)


def test_hash_lines_are_skipped_with_a_warning():
    settings = conf("# not a PHP comment\n[websmsd]\n#key_to = x\n")
    assert settings.inbound.default.key_to == "To"
    assert len([w for w in settings.warnings if "'#' starts no comment" in w]) == 2
    assert warned(settings, f"{PATH}:3:", "'#'")


def test_bom_and_crlf_are_accepted(tmp_path):
    path = tmp_path / "websms.conf"
    path.write_bytes(
        b"\xef\xbb\xbf[websms]\r\nurl_host = https://api.example.com\r\n"
        b"auth_user = u ; c\r\nauth_secret = \"s\"\r\n\r\n[websmsd]\r\nbogus = 1\r\n"
    )
    with pytest.raises(ConfigError) as caught:
        load(path, environ={})
    assert (caught.value.line, caught.value.key) == (7, "bogus")  # CRLF counted as one line
    path.write_bytes(path.read_bytes().replace(b"bogus = 1", b"key_to = dst"))
    settings = load(path, environ={})
    interface = settings.outbound.interfaces[0]
    assert (interface.url_host, interface.auth_user, interface.auth_secret) == (
        "https://api.example.com", "u", "s")
    assert settings.inbound.default.key_to == "dst"
    assert settings.path == str(path)


@pytest.mark.parametrize(
    "line, words",
    [
        ('k = a=b', ["'='", "double quotes"]),
        ('k = status=success', ["'='"]),
        ('k = x "y"', ["double quote"]),
        ("k = it's", ["single quote"]),
        ("k = a & b", ["operator"]),
        ("k = a|b", ["operator"]),
        ("k = ~x", ["operator"]),
        ("k = hi!", ["operator"]),
        ("k = (x)", ["operator"]),
        ("k = a^b", ["operator"]),
        ("k = {x}", ["'{'"]),
        ("k = x}", ["'}'"]),
        ('k = "x" y', ["after the closing quote"]),
        ("k = ok yes", ["boolean", "double quotes"]),
        ("k = no thanks", ["boolean"]),
        ('k = "never closed', ["never closed"]),
        ("k = 'never closed", ["never closed"]),
        ("k = ${OPEN", ["closing '}'"]),
        ("k = ${1BAD}", ["not an environment variable name"]),
        ('k = "${}"', ["not an environment variable name"]),
    ],
)
def test_unquoted_specials_are_syntax_errors(line, words):
    with pytest.raises(ConfigError) as caught:
        parse_ini(f"; comment\n[s]\n{line}\n", PATH, {})
    located(caught.value, 3, "k")
    for word in words:
        assert word in caught.value.message


@pytest.mark.parametrize(
    "text, line, key, words",
    [
        ("k = v\n", 1, "k", ["outside any section"]),
        ("[s]\njust a word\n", 2, None, ["expected key = value"]),
        ("[s]\n= v\n", 2, None, ["without a key name"]),
        ("[s]\n[s]\n", 2, None, ["appears again", "line 1"]),
        ("[s] junk\n", 1, None, ["section header"]),
        ("[s\n", 1, None, ["section header"]),
        ('[s]\nk["x"] = v\n', 2, 'k["x"]', ["index"]),
        ("[s]\nk[$x] = v\n", 2, "k[$x]", ["index"]),
    ],
)
def test_line_syntax_errors(text, line, key, words):
    with pytest.raises(ConfigError) as caught:
        parse_ini(text, PATH, {})
    located(caught.value, line, key)
    for word in words:
        assert word in caught.value.message


def test_section_header_may_carry_a_comment():
    assert ini("[ s ]  ; the s section\nk = v\n") == {"s": {"k": "v"}}


# ---------------------------------------------------------------------------------------
# key[index] arrays


def test_append_counts_per_key():
    assert ini(
        """
        [s]
        a [] = a0
        b [] = b0
        a [] = a1
        b[] = b1
        a[ ] = a2
        """
    ) == {"s": {"a": {"0": "a0", "1": "a1", "2": "a2"}, "b": {"0": "b0", "1": "b1"}}}


def test_append_takes_the_largest_integer_index_plus_one():
    assert ini(
        """
        [s]
        k [x] = named
        k [] = first
        k [7] = seven
        k [] = eight
        k [05] = not an integer key
        k [] = nine
        """
    ) == {"s": {"k": {"x": "named", "0": "first", "7": "seven", "8": "eight",
                      "05": "not an integer key", "9": "nine"}}}


def test_index_spacing_and_repeats():
    assert ini(
        """
        [s]
        k   [ api-1 ]   = one
        k[api-2]=two
        k [api-1] = one again
        """
    ) == {"s": {"k": {"api-1": "one again", "api-2": "two"}}}  # position of first kept


def test_a_later_line_of_the_other_form_replaces_the_earlier():
    assert ini(
        """
        [s]
        a = plain
        a [i] = indexed
        b [i] = indexed
        b [j] = also
        b = plain
        c = first
        c = last
        """
    ) == {"s": {"a": {"i": "indexed"}, "b": "plain", "c": "last"}}


def test_replaced_indexes_make_no_interfaces():
    settings = conf(
        """
        [websmsd]
        key_body [gone] = text
        key_body = message
        """
    )
    assert [i.name for i in settings.inbound.interfaces] == [""]
    assert settings.inbound.interfaces[0].key_body == "message"


# ---------------------------------------------------------------------------------------
# Sections and key names


def test_empty_file_gives_every_default():
    settings = conf("")
    assert settings.outbound == OutboundSettings()
    assert settings.inbound == InboundSettings()
    assert settings.astqueue == AstQueueSettings()
    assert settings.daemon == DaemonSettings()
    assert settings.path == PATH
    assert warned(settings, "no [astqueue] section")


def test_empty_sections_give_defaults():
    settings = conf("[websms]\n[websmsd]\n[astqueue]\n[daemon]\n")
    assert settings.inbound == InboundSettings()
    assert settings.astqueue == AstQueueSettings()
    assert settings.daemon == DaemonSettings()
    # Nothing configured, nothing sent: no http://localhost default that a local web
    # server would take for an ITSP (issue #12), and check-config says so as an error.
    assert settings.outbound.interfaces == ()
    assert not [w for w in settings.warnings if "auth_method" in w]
    assert settings.problems == (NO_OUTBOUND,)


def test_unknown_section_is_refused():
    refused("[websms]\n[smpp]\nhost = x\n", 2, None, "unknown section [smpp]")
    refused("[WebSMS]\n", 1, None, "unknown section")  # PHP section names are case-sensitive


@pytest.mark.parametrize(
    "section, key, hint",
    [("websms", "url_hots", "url_host"), ("websmsd", "key_too", "key_to"),
     ("astqueue", "outgoing_dir", "outgoingdir"), ("daemon", "max_bodies", "max_body"),
     ("websms", "Key_To", "key_to"), ("websmsd", "key_echo_x", "key_echo")],
)
def test_unknown_key_is_refused_with_a_hint(section, key, hint):
    refused(f"[{section}]\n\n{key} = v\n", 3, key, f"unknown key in [{section}]", f"did you mean {hint}?")


def test_unknown_indexed_key_is_refused():
    refused("[websmsd]\nkey_to [a] = x\nfoo [a] = y\n", 3, "foo", "unknown key")


@pytest.mark.parametrize(
    "section, old, new, value",
    [
        ("websms", "host", "url_host", "https://a.example"),
        ("websms", "path", "url_path", "/x"),
        ("websms", "auth_passwd", "auth_secret", "pw"),
        ("websms", "response_check", "resp_check", '"a=b"'),
        ("websms", "number_format", "val_numform", "E164"),
        ("websmsd", "report_success", "resp_ack", "OK"),
        ("websmsd", "permit_addr", "remt_addr", "10.0.0.0/8"),
        ("websmsd", "remote_addr", "remt_addr", "10.0.0.0/8"),
        ("websmsd", "request_uri", "url_path", "/in"),
        ("websmsd", "proxy_addr", "prox_addr", "10.0.0.0/8"),
        ("websmsd", "proxy_header", "prox_header", "HTTP_X_REAL_IP"),
    ],
)
def test_older_names_are_aliases_and_may_not_be_mixed_with_current_ones(section, old, new, value):
    extra = "auth_method = none\n" if section == "websms" else ""
    settings = conf(f"[{section}]\n{extra}{old} = {value}\n")
    assert warned(settings, f": {old}: older name of {new}")
    current = conf(f"[{section}]\n{extra}{new} = {value}\n")
    assert (settings.outbound, settings.inbound) == (current.outbound, current.inbound)
    refused(f"[{section}]\n{extra}{new} = {value}\n{old} = {value}\n", 3 + bool(extra), old,
            f"already set by {new}", f"named {new}")
    refused(f"[{section}]\n{extra}{old} = {value}\n{new} = {value}\n", 3 + bool(extra), new,
            f"already set by {old}")


def test_permit_addr_and_remote_addr_together_are_refused():
    refused("[websmsd]\npermit_addr = 10.0.0.1\nremote_addr = 10.0.0.2\n", 3, "remote_addr",
            "already set by permit_addr at line 2")


def test_every_key_under_both_names_means_the_same():
    current = fixture("every-key-current.conf")
    older = fixture("every-key-older.conf")
    assert current.outbound == older.outbound
    assert current.inbound == older.inbound
    interface = current.outbound.interfaces[0]
    assert interface == OutboundInterface(
        name="", url_host="https://sms.example.net:8443", url_path="/api/v1/send",
        auth_method="plain", auth_user="acct-17", auth_secret="s3cr3t-Pa55",
        key_user="username", key_secret="password", key_to="dst", key_from="src",
        key_body="text", resp_check="status=success", val_numform="no+",
        val_static="type=sms,flash=0", val_unicode="unicode=1",
        tls_ca="/etc/websmsd/itsp-ca.pem",
    )
    assert interface.url == "https://sms.example.net:8443/api/v1/send"
    inbound = current.inbound
    assert inbound.default == InboundInterface(
        name="", key_to="to", key_from="from", key_body="message", key_echo="zd_echo",
        resp_ack="<Response></Response>", key_id="message_id",
        remt_addr=(ipaddress.ip_network("185.45.152.42/32"), ipaddress.ip_network("3.104.90.0/24"),
                   ipaddress.ip_network("2001:db8::/32")),
        url_path=("/sms/in", "/sms/in/"),
    )
    assert inbound.interfaces == (inbound.default,)
    assert inbound.prox_addr == (ipaddress.ip_network("10.0.0.0/8"),)
    assert inbound.prox_header == "HTTP_X_REAL_IP"
    assert inbound.proxy_header_name == "X-REAL-IP"
    assert len(current.warnings) == 1  # only: no [astqueue]
    for old in ("host", "path", "auth_passwd", "response_check", "number_format", "report_success",
                "permit_addr", "request_uri", "proxy_addr", "proxy_header"):
        assert warned(older, f": {old}: older name of")
    assert warned(older, ":14: number_format:", "omit+")
    assert warned(older, ":18: charset:", "ignored")
    assert warned(older, ":31: key_account:", "ignored")


def test_ignored_keys_may_be_indexed_too():
    settings = conf("[websmsd]\nkey_account [a] = 1\n")
    assert [i.name for i in settings.inbound.interfaces] == [""]
    assert warned(settings, "key_account", "ignored")


# ---------------------------------------------------------------------------------------
# The guide's examples, verbatim


def test_guide_default_configuration_works_unchanged():
    # The guide writes url_host without a scheme; the PHP's curl took it as http://.
    settings = fixture("guide-default.conf")
    interface = settings.outbound.interfaces[0]
    assert interface.url == "http://api.example.com/sms/send/"
    assert warned(settings, "no scheme", "https://")


def test_readme_default_configuration_with_older_names():
    settings = fixture("readme-default.conf")
    interface = settings.outbound.interfaces[0]
    assert (interface.url, interface.auth_user, interface.auth_secret, interface.auth_method) == (
        "http://api.example.com/sms/send/", "user", "passwd", "basic")
    assert settings.astqueue.channel_context == "dp_entry_channel_open"
    assert settings.astqueue.context == "dp_entry_trunk_texting"
    assert len([w for w in settings.warnings if "older name" in w]) == 3


def test_guide_sections_example():
    settings = fixture("guide-sections.conf")
    interface = settings.outbound.interfaces[0]
    assert (interface.url, interface.auth_user, interface.auth_secret, interface.auth_method) == (
        "https://api.example.com/sms/send/", "id", "secret", "basic")
    inbound = settings.inbound
    assert inbound.remt_addr_plain == tuple(
        ipaddress.ip_network(n) for n in ("185.45.152.42/32", "3.104.90.0/24", "3.1.77.0/24"))
    assert not inbound.remt_addr_indexed
    assert inbound.prox_addr == InboundSettings().prox_addr
    assert inbound.prox_header == "HTTP_X_FORWARDED_FOR"
    assert settings.astqueue.channel_context == "dp_entry_answer"
    assert settings.astqueue.context == "dp_entry_text_in"
    assert settings.warnings == ()
    assert inbound.select("3.104.90.17", "/anything").interface == inbound.default
    assert not inbound.select("3.104.91.17", "/").allowed
    # Behind a proxy in 172.16.0.0/12 the forwarded address is the one checked.
    client = inbound.client_address("172.17.0.2", ["185.45.152.42"])
    assert inbound.select(client, "/").allowed


def guide_two_interfaces():
    return fixture("guide-two-interfaces.conf")


def test_guide_two_interfaces_verbatim_reads_url_host_as_curl_did():
    settings = guide_two_interfaces()
    assert [i.url_host for i in settings.outbound.interfaces] == [
        "http://api.example1.com", "http://api.example2.com"]


def test_guide_two_interfaces_outbound():
    outbound = guide_two_interfaces().outbound
    assert [i.name for i in outbound.interfaces] == ["api-1", "api-2"]
    api1, api2 = outbound.interfaces
    assert (api1.url, api1.auth_user, api1.auth_secret) == (
        "http://api.example1.com/sms/send/", "user1", "secret1")
    assert (api2.url, api2.auth_user, api2.auth_secret) == (
        "http://api.example2.com/sms/send/", "user2", "secret2")
    assert outbound.select("api-2") is api2
    assert outbound.select("") is api1
    assert outbound.select("api-3") is None


def test_guide_two_interfaces_inbound_selection():
    settings = guide_two_interfaces()
    inbound = settings.inbound
    assert [i.name for i in inbound.interfaces] == ["api-1", "api-2"]
    assert inbound.remt_addr_indexed and inbound.url_path_indexed
    assert inbound.remt_addr_plain is None and inbound.url_path_plain is None

    chosen = inbound.select("1.2.3.200", "/incomming1")
    assert chosen.interface.name == "api-1" and chosen.interface.key_body == "Body"
    chosen = inbound.select("5.6.7.9", "/incomming2")
    assert chosen.interface.name == "api-2" and chosen.interface.key_body == "text"
    assert inbound.select("::ffff:5.6.7.8", "/incomming2").interface.name == "api-2"
    # remt_addr chose api-1, so only api-1's url_path counts.
    assert not inbound.select("1.2.3.4", "/incomming2").allowed
    # remt_addr is an allow-list for every request, whatever the path.
    assert not inbound.select("9.9.9.9", "/incomming1").allowed
    assert not inbound.select("5.6.7.10", "/incomming2").allowed
    # 1.2.3.4/24 has host bits set: read as 1.2.3.0/24, with a warning.
    assert warned(settings, "guide-two-interfaces.conf:10: remt_addr[api-1]:", "host bits", "1.2.3.0/24")


def test_guide_positional_example_counts_each_key_on_its_own():
    settings = fixture("guide-positional.conf")
    inbound = settings.inbound
    assert [i.name for i in inbound.interfaces] == ["0", "1"]
    first, second = inbound.interfaces
    assert first.remt_addr == (ipaddress.ip_network("1.2.3.0/24"),)
    assert first.url_path == ("/incomming1",)
    assert second.url_path == ("/incomming2",)
    # `key_body [] = text` is key_body's first [], so index 0, not the second interface
    # the guide meant: PHP behaves so, and so does websmsd.
    assert first.key_body == "text"
    assert second.key_body == "Body"
    assert inbound.select("5.6.7.8", "/incomming2").interface is second
    assert inbound.select("1.2.3.9", "/incomming1").interface is first


# ---------------------------------------------------------------------------------------
# Interfaces: composition and selection


def test_interfaces_are_every_index_in_order_of_first_appearance():
    settings = conf(
        """
        [websms]
        auth_method = none
        key_to [b] = dst
        url_host [a] = https://a.example
        url_host [b] = https://b.example
        key_from [c] = src
        key_to [a] = to
        """
    )
    names = [i.name for i in settings.outbound.interfaces]
    # c has no url_host: it does not exist, and the owner is told.
    assert names == ["b", "a"]
    assert warned(settings, ":6:", "interface 'c'", "no url_host", "sends nothing")
    b, a = settings.outbound.interfaces
    assert (a.url_host, a.key_to, a.key_from) == ("https://a.example", "to", "From")
    assert (b.url_host, b.key_to) == ("https://b.example", "dst")
    # An indexed key that lacks the interface's index gives the key's default, not
    # another index's value.
    assert all(i.auth_method == "none" for i in settings.outbound.interfaces)


def test_positional_indexes_of_different_keys_make_shared_interfaces():
    inbound = conf(
        """
        [websmsd]
        remt_addr [] = 10.0.0.0/8
        url_path [] = /a
        remt_addr [] = 192.168.0.0/16
        url_path [] = /b
        """
    ).inbound
    assert [(i.name, i.url_path) for i in inbound.interfaces] == [("0", ("/a",)), ("1", ("/b",))]


def test_inbound_default_interface_is_made_of_plain_values_only():
    inbound = conf(
        """
        [websmsd]
        key_to = dst
        key_body [x] = text
        url_path [x] = /x
        resp_ack = OK
        """
    ).inbound
    assert inbound.default == InboundInterface(name="", key_to="dst", resp_ack="OK")
    (x,) = inbound.interfaces
    assert x == InboundInterface(name="x", key_to="dst", key_body="text", resp_ack="OK", url_path=("/x",))
    assert inbound.select("10.0.0.1", "/x").interface is x
    assert not inbound.select("10.0.0.1", "/y").allowed


def test_plain_remt_addr_applies_to_every_interface_and_selects_none():
    inbound = conf(
        """
        [websmsd]
        remt_addr = 192.0.2.0/24, 2001:db8::/32
        url_path [a] = /a
        url_path [b] = /b,/c
        """
    ).inbound
    nets = (ipaddress.ip_network("192.0.2.0/24"), ipaddress.ip_network("2001:db8::/32"))
    assert inbound.remt_addr_plain == nets and not inbound.remt_addr_indexed
    assert all(i.remt_addr == nets for i in inbound.interfaces)
    assert inbound.select("192.0.2.1", "/c").interface.name == "b"
    assert inbound.select("2001:db8::1", "/a").interface.name == "a"
    assert not inbound.select("2001:db9::1", "/a").allowed
    assert not inbound.select("192.0.2.1", "/d").allowed


def test_ipv6_remt_addr_selects():
    inbound = conf(
        """
        [websmsd]
        remt_addr [v6] = 2001:db8::/32
        remt_addr [v4] = 198.51.100.7
        """
    ).inbound
    assert inbound.select("2001:db8:1::5", "/").interface.name == "v6"
    assert inbound.select("[2001:db8::5]", "/").interface.name == "v6"
    assert inbound.select("198.51.100.7", "/").interface.name == "v4"
    assert inbound.select("::ffff:198.51.100.7", "/").interface.name == "v4"
    assert not inbound.select("198.51.100.8", "/").allowed
    assert not inbound.select("2001:db9::1", "/").allowed


def test_last_matching_index_wins():
    inbound = conf(
        """
        [websmsd]
        remt_addr [wide] = 10.0.0.0/8
        remt_addr [narrow] = 10.1.0.0/16
        """
    ).inbound
    assert inbound.select("10.1.2.3", "/").interface.name == "narrow"
    assert inbound.select("10.2.2.3", "/").interface.name == "wide"


def test_plain_url_path_only_allows():
    inbound = conf("[websmsd]\nurl_path = /hook, /hook2\n").inbound
    assert inbound.url_path_plain == ("/hook", "/hook2") and not inbound.url_path_indexed
    assert inbound.select("203.0.113.1", "/hook2").interface == inbound.default
    assert not inbound.select("203.0.113.1", "/other").allowed


def test_no_remt_addr_and_no_url_path_allow_everything():
    inbound = conf("[websmsd]\nkey_to = dst\n").inbound
    chosen = inbound.select("203.0.113.1", "/whatever")
    assert chosen.interface == inbound.default and chosen.interface.key_to == "dst"


def test_interface_that_can_never_be_chosen_is_warned_about():
    settings = conf(
        """
        [websmsd]
        remt_addr [a] = 10.0.0.0/8
        url_path [b] = /b
        """
    )
    assert warned(settings, f"{PATH}:3:", "'b'", "never be chosen")
    assert not settings.inbound.select("192.0.2.1", "/b").allowed
    settings = conf("[websmsd]\nremt_addr = 10.0.0.0/8\nkey_body [x] = text\n")
    assert warned(settings, f"{PATH}:3:", "'x'", "never be chosen", "remt_addr[x]")


def test_selection_order_that_php_would_see_differently_is_refused():
    # PHP picks the last match in remt_addr's own order (a, then b); websmsd walks the
    # interfaces in order of first appearance (b, then a).  Both can match 10.1.0.1.
    refused(
        """
        [websmsd]
        key_body [b] = text
        remt_addr [a] = 10.0.0.0/8
        remt_addr [b] = 10.1.0.0/16
        """,
        4, "remt_addr[b]", "name 'a' first",
    )
    refused(
        """
        [websmsd]
        key_body [b] = text
        url_path [a] = /in
        url_path [b] = /in,/b
        """,
        4, "url_path[b]", "PHP would choose 'b'",
    )
    # Lists that cannot both match one request leave no room for a difference.
    inbound = conf(
        """
        [websmsd]
        key_body [b] = text
        remt_addr [a] = 10.0.0.0/8
        remt_addr [b] = 192.168.0.0/16
        """
    ).inbound
    assert inbound.select("192.168.1.1", "/").interface.key_body == "text"


# ---------------------------------------------------------------------------------------
# [websms] values


@pytest.mark.parametrize(
    "host",
    ["https://api.example.com", "http://localhost", "https://api.example.com:8443",
     "HTTPS://API.EXAMPLE.COM", "http://192.0.2.10:8080", "http://[2001:db8::1]",
     "https://[2001:db8::1]:443", "https://sms-gw_1.example.net."],
)
def test_url_host_accepted(host):
    settings = conf(f"[websms]\nauth_method = none\nurl_host = {host}\n")
    assert settings.outbound.interfaces[0].url_host == host


@pytest.mark.parametrize(
    "host, words",
    [
        ("ftp://api.example.com", ["http or https"]),
        ("https://user:pw@api.example.com", ["auth_user"]),
        ("https://api.example.com:0", ["TCP port"]),
        ("https://api.example.com:65536", ["TCP port"]),
        ("https://api.example.com:http", ["TCP port"]),
        ("https://", ["not a host"]),
        ("https://-bad-.example", ["not a host"]),
        ("https://2001:db8::1", ["brackets"]),
        ("https://[2001:db8::1", ["not a host"]),
        ("https://[192.0.2.1]", ["not a host"]),
    ],
)
def test_url_host_refused(host, words):
    refused(f"[websms]\nauth_method = none\nurl_host = {host}\n", 3, "url_host", *words)


def test_url_host_without_scheme_or_with_a_path_works_as_in_php():
    settings = conf("[websms]\nauth_method = none\nurl_host = https://itsp.example\nurl_host = localhost:8080\n")
    assert settings.outbound.interfaces[0].url_host == "http://localhost:8080"
    assert warned(settings, "no scheme")
    settings = conf("[websms]\nauth_method = none\nurl_host = https://itsp.example\nurl_host = https://api.example.com/v1\n"
                    "url_path = /sms\n")
    assert settings.outbound.interfaces[0].url == "https://api.example.com/v1/sms"


def test_url_path_must_start_with_a_slash():
    settings = conf('[websms]\nauth_method = none\nurl_host = https://itsp.example\nurl_path = "/v1/sms?src=pbx"\n')
    assert settings.outbound.interfaces[0].url_path == "/v1/sms?src=pbx"
    refused("[websms]\nauth_method = none\nurl_path = sms/send\n", 3, "url_path", "start with '/'")
    refused("[websms]\nauth_method = none\npath [x] = /a b\n", 3, "path[x]", "spaces")


def test_auth_methods():
    for method in ("none", "plain", "basic", "zadarma"):
        settings = conf(
            f"""
            [websms]
            auth_method = "{method}"
            auth_user = u
            auth_secret = s
            key_user = user
            key_secret = pass
            url_host = https://itsp.example
            """
        )
        assert settings.outbound.interfaces[0].auth_method == method
    refused('[websms]\nauth_method = "Basic"\n', 2, "auth_method", "'Basic'", "lower case")
    refused('[websms]\nauth_method = "digest"\n', 2, "auth_method", "none, plain, basic, zadarma")


@pytest.mark.parametrize("written", ["none", "None", "NONE", '""', "off"])
def test_empty_auth_method_means_none_with_a_warning(written):
    settings = conf(f"[websms]\nauth_method = {written}\nurl_host = https://itsp.example\n")
    assert settings.outbound.interfaces[0].auth_method == "none"
    assert warned(settings, f"{PATH}:2: auth_method:", "read as none")
    assert not any("PHP ini boolean" in w for w in settings.warnings)


@pytest.mark.parametrize(
    "method, given, missing",
    [
        ("basic", "auth_user = u", "auth_secret"),
        ("zadarma", "auth_secret = s", "auth_user"),
        ("plain", "auth_user = u\nauth_secret = s\nkey_user = user", "key_secret"),
        ("plain", "auth_user = u\nauth_secret = s", "key_user, key_secret"),
        # PHP's empty() takes "0" for unset, and so does the sender (http/itsp.py).
        ("basic", "auth_user = u\nauth_secret = 0", "auth_secret"),
    ],
)
def test_auth_method_needs_its_credentials(method, given, missing):
    refused(f"[websms]\nauth_method = {method}\n{given}\n", 2, "auth_method",
            f"auth_method {method} needs", f"missing: {missing}")


def test_default_basic_with_half_the_credentials_is_refused_at_the_credential():
    refused("[websms]\nurl_host = https://a.example\nauth_user = u\n", 3, "auth_user",
            "auth_method basic needs", "missing: auth_secret")


def test_credentials_are_checked_per_interface():
    settings = conf(
        """
        [websms]
        auth_method [a] = plain
        auth_user [a] = u
        auth_secret [a] = s
        key_user [a] = user
        key_secret [a] = pass
        auth_method [b] = "none"
        url_host [a] = https://a.example
        url_host [b] = https://b.example
        url_host [c] = https://c.example
        """
    )
    a, b, c = settings.outbound.interfaces
    assert (a.auth_method, b.auth_method) == ("plain", "none")
    # c names nothing about authentication: it sends none, with a warning.
    assert c.auth_method == "none"
    assert warned(settings, "interface 'c'", "no authentication")
    refused(
        """
        [websms]
        auth_method [a] = zadarma
        auth_user [a] = u
        auth_secret [a] = s
        auth_method [b] = zadarma
        auth_user = shared
        """,
        5, "auth_method[b]", "interface 'b'", "missing: auth_secret",
    )


@pytest.mark.parametrize("value", ["E164", "e164", "E.164", "no+", "NO+", "E.123", "e.123"])
def test_val_numform_accepted(value):
    assert conf(f'[websms]\nauth_method = none\nurl_host = https://itsp.example\nval_numform = "{value}"\n').outbound.interfaces[0].val_numform == value


def test_val_numform_omit_plus_is_no_plus():
    settings = conf('[websms]\nauth_method = none\nurl_host = https://itsp.example\nval_numform = "Omit+"\n')
    assert settings.outbound.interfaces[0].val_numform == "no+"
    assert warned(settings, "omit+", "no+")


@pytest.mark.parametrize("value", ["E164+", "international", "00"])
def test_val_numform_refused(value):
    refused(f'[websms]\nauth_method = none\nval_numform = "{value}"\n', 3, "val_numform", "E164")


def test_val_numform_empty_is_unset():
    assert conf("[websms]\nauth_method = none\nurl_host = https://itsp.example\nval_numform =\n").outbound.interfaces[0].val_numform is None


@pytest.mark.parametrize(
    "value", ["status=success", "/^OK/", "/queued|sent/i", r"/\"id\":\s*\d+/x", "/a/imsxu", "/a\\/b/"]
)
def test_resp_check_accepted(value):
    assert conf(f'[websms]\nauth_method = none\nurl_host = https://itsp.example\nresp_check = "{value}"\n').outbound.interfaces[0].resp_check \
        == value.replace('\\"', '"')


@pytest.mark.parametrize(
    "value, words",
    [
        ("status", ["key=value or /regex/"]),
        ("=success", ["key=value"]),
        ("a=b=c", ["more than one '='"]),
        ("/unclosed", ["must end with '/'"]),
        ("/x/g", ["flag 'g'"]),
        ("/(/", ["does not compile"]),
    ],
)
def test_resp_check_refused(value, words):
    refused(f'[websms]\nauth_method = none\nresp_check [i] = "{value}"\n', 3, "resp_check[i]", *words)


def test_resp_check_pattern():
    assert resp_check_pattern("/^ok$/im").search("x\nOK\n")
    assert resp_check_pattern("/a.b/s").search("a\nb")
    assert resp_check_pattern("/ a b /x").search("ab")
    assert resp_check_pattern(r"/\/send/").search("/send")
    with pytest.raises(ValueError):
        resp_check_pattern("status=ok")


def test_val_static_and_val_unicode():
    interface = conf(
        """
        [websms]
        auth_method = none
        val_static = "type=sms,flash=0,"
        val_unicode = UCS-2
        url_host = https://itsp.example
        """
    ).outbound.interfaces[0]
    assert (interface.val_static, interface.val_unicode) == ("type=sms,flash=0,", "UCS-2")
    assert conf('[websms]\nauth_method = none\nurl_host = https://itsp.example\nval_unicode = "coding=8"\n').outbound.interfaces[0].val_unicode \
        == "coding=8"
    refused('[websms]\nauth_method = none\nval_static = "a=1,b"\n', 3, "val_static", "'b'", "key=value")
    refused('[websms]\nauth_method = none\nval_static = "a=1, b=2"\n', 3, "val_static", "spaces")
    refused('[websms]\nauth_method = none\nval_static = "a=b=c"\n', 3, "val_static", "more than one")
    refused('[websms]\nauth_method = none\nval_unicode = "=x"\n', 3, "val_unicode", "UCS-2 or key=value")
    settings = conf("[websms]\nauth_method = none\nurl_host = https://itsp.example\nval_unicode = UTF-8\n")
    assert settings.outbound.interfaces[0].val_unicode == "UTF-8"
    assert warned(settings, ":4: val_unicode:", "changes nothing")


@pytest.mark.parametrize("key", ["key_to", "key_from", "key_body"])
def test_request_keys_must_not_be_empty(key):
    refused(f"[websms]\nauth_method = none\n{key} =\n", 3, key, "must not be empty")
    refused(f"[websmsd]\n{key} [a] = \"\"\n", 2, f"{key}[a]", "must not be empty")


def test_optional_values_given_empty_are_unset():
    interface = conf('[websms]\nauth_method = none\nurl_host = https://itsp.example\nauth_user = ""\ntls_ca =\nkey_user = none\n').outbound.interfaces[0]
    assert (interface.auth_user, interface.tls_ca, interface.key_user) == (None, None, None)


def test_unquoted_boolean_word_in_a_text_value_is_warned_about():
    settings = conf("[websmsd]\nkey_echo = yes\nresp_ack = no\n")
    assert settings.inbound.default.key_echo == "1"
    assert settings.inbound.default.resp_ack == ""
    assert warned(settings, f"{PATH}:2: key_echo:", 'unquoted yes reads as "1"', "double quotes")
    assert warned(settings, f"{PATH}:3: resp_ack:", 'unquoted no reads as ""')


def test_control_characters_in_single_line_values_are_refused():
    refused('[websms]\nauth_method = none\nkey_to = "a\nb"\n', 3, "key_to", "control characters")
    refused("[websmsd]\nkey_echo = ${V}\n", 2, "key_echo", "control characters", environ={"V": "a\tb"})


# ---------------------------------------------------------------------------------------
# [websmsd] values


def test_cidr_lists():
    inbound = conf(
        """
        [websmsd]
        remt_addr [a] = 192.0.2.1 , 198.51.100.0/24,2001:db8::1, 2001:db8:1::/48
        """
    ).inbound
    assert inbound.interfaces[0].remt_addr == tuple(
        ipaddress.ip_network(n)
        for n in ("192.0.2.1/32", "198.51.100.0/24", "2001:db8::1/128", "2001:db8:1::/48")
    )


@pytest.mark.parametrize(
    "value, words",
    [
        ("10.0.0.0/33", ["'10.0.0.0/33'", "not an IP address or CIDR"]),
        ("10.0.0.256", ["not an IP address"]),
        ("example.com", ["not an IP address"]),
        ("10.0.0.1,,10.0.0.2", ["empty entry"]),
        ("10.0.0.1,", ["empty entry"]),
        ('""', ["is empty", "remove the line"]),
        ("none", ["is empty"]),
    ],
)
def test_bad_remt_addr_is_refused(value, words):
    refused(f"[websmsd]\nremt_addr = {value}\n", 2, "remt_addr", *words)
    refused(f"[websmsd]\n\npermit_addr [x] = {value}\n", 3, "permit_addr[x]", *words)


def test_host_bits_are_accepted_with_a_warning():
    settings = conf("[websmsd]\nremt_addr = 10.0.0.1/8\nprox_addr = 2001:db8::1/32\n")
    assert settings.inbound.remt_addr_plain == (ipaddress.ip_network("10.0.0.0/8"),)
    assert settings.inbound.prox_addr == (ipaddress.ip_network("2001:db8::/32"),)
    assert warned(settings, ":2: remt_addr:", "10.0.0.1/8 has host bits set; read as 10.0.0.0/8")
    assert warned(settings, ":3: prox_addr:", "host bits")


def test_inbound_url_path_entries():
    inbound = conf("[websmsd]\nurl_path [a] = /, /hook/1 ,/hook/2\n").inbound
    assert inbound.interfaces[0].url_path == ("/", "/hook/1", "/hook/2")
    refused("[websmsd]\nurl_path = hook\n", 2, "url_path", "'hook' must start with '/'")
    refused("[websmsd]\nurl_path = /a,,/b\n", 2, "url_path", "must start with '/'")
    refused('[websmsd]\nurl_path = "/hook?token=abc"\n', 2, "url_path", "query string", "never match")
    refused('[websmsd]\nrequest_uri = ""\n', 2, "request_uri", "is empty")


@pytest.mark.parametrize("key", ["prox_addr", "prox_header", "proxy_addr", "proxy_header"])
def test_proxy_settings_cannot_be_indexed(key):
    refused(f"[websmsd]\n{key} [a] = 10.0.0.0/8\n", 2, f"{key}[a]", "cannot be indexed",
            "before an interface is chosen")
    refused(f"[websmsd]\n{key} [] = 10.0.0.0/8\n", 2, f"{key}[0]", "cannot be indexed")


def test_proxy_handling_can_be_turned_off():
    inbound = conf("[websmsd]\nprox_addr =\n").inbound
    assert inbound.prox_addr == ()
    assert inbound.client_address("172.16.0.1", ["203.0.113.9"]) == "172.16.0.1"
    inbound = conf("[websmsd]\nprox_header = none\n").inbound
    assert inbound.prox_header is None and inbound.proxy_header_name is None
    assert inbound.client_address("172.16.0.1", ["203.0.113.9"]) == "172.16.0.1"


def test_proxy_settings_used_by_client_address():
    inbound = conf("[websmsd]\nprox_addr = 10.0.0.0/8\nprox_header = HTTP_X_REAL_IP\nremt_addr = 203.0.113.9\n").inbound
    assert inbound.proxy_header_name == "X-REAL-IP"
    client = inbound.client_address("10.1.1.1", ["203.0.113.9"])
    assert client == "203.0.113.9" and inbound.select(client, "/").allowed
    # The old proxy_addr default (172.16.0.0/12 only) is not what an unset key means.
    assert conf("[websmsd]\n").inbound.prox_addr == InboundSettings().prox_addr
    refused('[websmsd]\nprox_header = "X Forwarded"\n', 2, "prox_header", "header name")


def test_key_id_and_key_echo():
    interface = conf("[websmsd]\nkey_id [a] = sms_id\nkey_echo [a] = zd_echo\nurl_path [a] = /a\n").inbound.interfaces[0]
    assert (interface.key_id, interface.key_echo) == ("sms_id", "zd_echo")


# ---------------------------------------------------------------------------------------
# [astqueue]


def test_astqueue_every_key():
    astqueue = fixture("full.conf").astqueue
    assert astqueue == AstQueueSettings(
        outgoingdir="/srv/asterisk/outgoing", stagingdir="/srv/asterisk/staging",
        waittime="30", maxretries="2", retrytime="60", archive="yes",
        channel_context="dp_entry_answer", context="dp_entry_text_in", priority="2",
        message_encode="rfc3986", account="sms", application="NoOp", data="inbound sms",
        filemode=0o640, fileowner="asterisk:asterisk",
    )


def test_astqueue_unquoted_archive_passes_as_php_reads_it():
    # Unquoted yes/no reach the call file as "1"/"" (Asterisk reads both as booleans).
    settings = conf("[astqueue]\narchive = yes\n")
    assert settings.astqueue.archive == "1"
    assert conf("[astqueue]\narchive = no\n").astqueue.archive == ""
    assert settings.warnings == ()


@pytest.mark.parametrize("key", ["outgoingdir", "waittime", "context", "filemode", "archive"])
def test_astqueue_keys_cannot_be_indexed(key):
    refused(f"[astqueue]\n{key} [a] = 1\n", 2, f"{key}[a]", "cannot be indexed")


@pytest.mark.parametrize(
    "key, value, words",
    [
        ("waittime", "-1", ["whole number"]),
        ("maxretries", "1.5", ["whole number"]),
        ("retrytime", "5m", ["whole number"]),
        ("waittime", '""', ["whole number"]),
        ("priority", "0", ["start at 1"]),
        ("priority", '"a label"', ["priority label"]),
        ("stagingdir", '""', ["must not be empty"]),
        ("filemode", "0648", ["octal"]),
        ("filemode", "rw-r-----", ["octal"]),
        ("fileowner", '"asterisk:asterisk:x"', ["user:group"]),
        ("fileowner", '"ast risk"', ["user:group"]),
        ("context", '""', ["must not be empty"]),
        ("channel_context", "none", ["must not be empty"]),
        ("message_encode", '""', ["must not be empty"]),
    ],
)
def test_astqueue_bad_values(key, value, words):
    refused(f"[astqueue]\n{key} = {value}\n", 2, key, *words)


@pytest.mark.parametrize(
    "key", ["channel_context", "context", "priority", "account", "application", "data", "archive",
            "message_encode"]
)
@pytest.mark.parametrize(
    "value", ['"a;b"', '"#x"', '"a #b"', '"a\nApplication: System"', "${INJECT}"]
)
def test_call_file_values_cannot_break_their_line(key, value):
    with pytest.raises(ConfigError) as caught:
        conf(f"[astqueue]\n{key} = {value}\n", {"INJECT": "x\rData: y"})
    located(caught.value, 2, key)


def test_astqueue_accepted_values():
    astqueue = conf(
        """
        [astqueue]
        priority = sms-in
        waittime = 0
        filemode = 640
        fileowner = 998
        data = "x#not-a-comment"
        account =
        """
    ).astqueue
    assert (astqueue.priority, astqueue.waittime, astqueue.filemode, astqueue.fileowner) == (
        "sms-in", "0", 0o640, "998")
    assert astqueue.data == "x#not-a-comment" and astqueue.account is None


def test_astqueue_staging_and_outgoing_must_differ():
    refused("[astqueue]\noutgoingdir = /spool/out\nstagingdir = /spool/out/\n", 3, "stagingdir", "the same")


def test_message_encode_other_than_rfc3986_is_warned_about():
    settings = conf("[astqueue]\nmessage_encode = raw\n")
    assert settings.astqueue.message_encode == "raw"
    assert warned(settings, ":2: message_encode:", "without encoding")


# ---------------------------------------------------------------------------------------
# [daemon]


def test_daemon_every_key():
    daemon = fixture("full.conf").daemon
    assert daemon == DaemonSettings(
        webhook_listen=("tcp:8080", "ssl:8443:privateKey=/etc/websmsd/key.pem:certKey=/etc/websmsd/cert.pem"),
        agi_listen=("tcp:4574:interface=127.0.0.1",),
        status_listen=(r"tcp6:8480:interface=\:\:1",),
        tls_key="/etc/websmsd/key.pem", tls_cert="/etc/websmsd/cert.pem",
        store="/var/lib/websmsd/messages.sqlite3", max_body=65536, http_timeout=10.0,
        agi_wait=5.0, retry_base=60.0, retry_max=7200.0, max_attempts=20,
        max_age=3 * 86400.0, spool_poll=0.25,
    )


@pytest.mark.parametrize(
    "text, seconds",
    [("90", 90.0), ("90s", 90.0), ("1.5", 1.5), ("2d", 172800.0), ("5m", 300.0), ("1.5h", 5400.0),
     (".5", 0.5), ("3 s", 3.0)],
)
def test_durations(text, seconds):
    assert conf(f"[daemon]\nagi_wait = {text}\n").daemon.agi_wait == seconds


@pytest.mark.parametrize("text", ["0", "0s", "-1", "1w", "s", "1.5.2", "10 minutes", '""'])
def test_bad_durations(text):
    refused(f"[daemon]\nmax_age = {text}\n", 2, "max_age")


@pytest.mark.parametrize("text, size", [("4096", 4096), ("64k", 65536), ("64K", 65536), ("2M", 2 << 20)])
def test_sizes(text, size):
    assert conf(f"[daemon]\nmax_body = {text}\n").daemon.max_body == size


@pytest.mark.parametrize("text", ["0", "1G", "1.5M", "-1", "64kB"])
def test_bad_sizes(text):
    refused(f"[daemon]\nmax_body = {text}\n", 2, "max_body", "size" if text != "0" else "more than 0")


@pytest.mark.parametrize("text", ["0", "-3", "2.5", "ten"])
def test_max_attempts_must_be_positive(text):
    refused(f"[daemon]\nmax_attempts = {text}\n", 2, "max_attempts", "1 or more")


def test_retry_base_may_not_exceed_retry_max():
    refused("[daemon]\nretry_base = 2h\n", 2, "retry_base", "longer than retry_max (3600s)")
    refused("[daemon]\nretry_base = 1m\nretry_max = 30s\n", 2, "retry_base", "(60s)")
    refused("[daemon]\nretry_max = 10s\n", 2, "retry_max", "retry_base (30s)")
    assert conf("[daemon]\nretry_base = 1h\n").daemon.retry_base == 3600.0


def test_daemon_scalar_keys_cannot_be_indexed():
    refused("[daemon]\nstore [a] = /x\n", 2, "store[a]", "cannot be indexed")
    refused('[daemon]\nstore = ""\n', 2, "store", "must not be empty")


def test_listeners_plain_indexed_and_none():
    daemon = conf(
        """
        [daemon]
        agi_listen [] = tcp:4573
        agi_listen [] = none
        agi_listen [v6] = "tcp6:4573:interface=\\:\\:1"
        status_listen = none
        webhook_listen = "none"
        """
    ).daemon
    assert daemon.agi_listen == ("tcp:4573", r"tcp6:4573:interface=\:\:1")
    assert daemon.status_listen == ()
    assert daemon.webhook_listen == ()


@pytest.mark.parametrize(
    "endpoint",
    [
        "tcp:8080", "tcp:port=8080", "tcp:0", "tcp:65535", "tcp:8080:interface=127.0.0.1",
        r"tcp:8080:interface=\:\:1", "tcp:interface=0.0.0.0:8080", "tcp:8080:backlog=10",
        "tcp:8080:127.0.0.1:5", "tcp6:8080", r"tcp6:8080:interface=\:\:", "tcp6:8080:50:\\:\\:1",
        "ssl:8443:privateKey=/k.pem", "ssl:port=8443:privateKey=/k.pem:certKey=/c.pem:extraCertChain=/ch.pem"
        ":dhParameters=/dh.pem:sslmethod=TLSv1_2_METHOD:interface=192.0.2.1:backlog=5",
        "unix:/run/websmsd/agi.sock", "unix:address=/run/x.sock:mode=660:lockfile=0:backlog=5",
        "systemd:domain=INET:index=0", "systemd:INET6:1", "unix:address=/tmp/a\\:b.sock",
    ],
)
def test_endpoints_accepted(endpoint):
    quoted = endpoint.replace("\\", "\\\\")  # PHP keeps \: anyway; \\ is one backslash
    assert conf(f'[daemon]\nagi_listen = "{quoted}"\n').daemon.agi_listen == (endpoint,)


@pytest.mark.parametrize(
    "endpoint, words",
    [
        ("8080", ["not an endpoint", "tcp:8080"]),
        ("http:8080", ["not an endpoint"]),
        ("TCP:8080", ["not an endpoint"]),
        ("tcp", ["needs its port"]),
        ("port=8080", ["not an endpoint"]),
        (":8080", ["not an endpoint"]),
        ("tcp:", ["port ''"]),
        ("tcp:80a", ["not a TCP port"]),
        ("tcp:65536", ["not a TCP port"]),
        ("tcp:-1", ["not a TCP port"]),
        ("tcp:8080:interface=::1", ["interface is given twice", "'\\:'"]),
        ("tcp:8080:127.0.0.1:5:6", ["at most 3", "'\\:'"]),
        ("tcp:8080:interface=localhost", ["not an IP address", "\\:"]),
        ("tcp6:8080:interface=127.0.0.1", ["not an IPv6 address"]),
        ("tcp:8080:bind=1.2.3.4", ["no parameter 'bind'"]),
        ("tcp:8080:port=8081", ["port is given twice"]),
        ("tcp:8080:backlog=1:backlog=2", ["given twice"]),
        ("tcp:8080:backlog=0", ["backlog"]),
        ("tcp:8080:1.2.3.4:5:6", ["at most 3"]),
        ("ssl:8443:privateKey=", ["privateKey is empty"]),
        ("ssl:8443:certificate=/c.pem:privateKey=/k", ["no parameter 'certificate'"]),
        ("unix", ["needs its address"]),
        ("unix:/x.sock:mode=999", ["octal"]),
        ("unix:/x.sock:lockfile=yes", ["0 or 1"]),
        ("systemd:domain=INET", ["needs its index"]),
        ("systemd:domain=IPX:index=0", ["INET, INET6 or UNIX"]),
        ("systemd:domain=INET:index=x", ["index"]),
        ("systemd:domain=INET:index=0:name=web", ["no parameter 'name'"]),
        ("tcp:8080\\\\", ["lone backslash"]),  # "tcp:8080\\" in the file: one backslash
    ],
)
def test_endpoints_refused(endpoint, words):
    refused(f'[daemon]\n\nstatus_listen [web] = "{endpoint}"\n', 3, "status_listen[web]", *words)


def test_unquoted_endpoint_with_keywords_needs_quotes():
    refused("[daemon]\nagi_listen = tcp:4573:interface=127.0.0.1\n", 2, "agi_listen", "'='", "double quotes")


def test_ssl_listener_without_a_key_needs_tls_key():
    refused('[daemon]\nwebhook_listen = "ssl:8443"\n', 2, "webhook_listen", "privateKey", "tls_key")
    daemon = conf('[daemon]\nwebhook_listen = "ssl:8443"\ntls_key = /etc/k.pem\n').daemon
    assert daemon.webhook_listen == ("ssl:8443",) and daemon.tls_key == "/etc/k.pem"
    refused("[daemon]\ntls_cert = /etc/c.pem\n", 2, "tls_cert", "needs a tls_key")


@pytest.mark.parametrize(
    "environ, listen",
    [({}, ()), ({"WEBSMSD_PORT": "80"}, ("tcp:80",)), ({"WEBSMSD_PORT": "8080"}, ("tcp:8080",)),
     ({"WEBSMSD_PORT": ""}, ()), ({"WEBSMSD_PORT": "http"}, ()), ({"WEBSMSD_PORT": " 80"}, ())],
)
def test_websmsd_port_gives_the_webhook_listener(environ, listen):
    settings = conf("[astqueue]\n", environ)
    assert settings.daemon.webhook_listen == listen
    if environ.get("WEBSMSD_PORT", "").strip(" 0123456789"):
        assert warned(settings, "WEBSMSD_PORT", "not a number")


def test_websmsd_port_out_of_range_is_refused():
    refused("[astqueue]\n", None, "WEBSMSD_PORT", "70000", "not a TCP port", environ={"WEBSMSD_PORT": "70000"})
    refused("[astqueue]\n", None, "WEBSMSD_PORT", "not a TCP port", environ={"WEBSMSD_PORT": "0"})


def test_webhook_listen_overrides_websmsd_port():
    settings = conf('[daemon]\nwebhook_listen = "tcp:9000:interface=192.0.2.1"\n', {"WEBSMSD_PORT": "80"})
    assert settings.daemon.webhook_listen == ("tcp:9000:interface=192.0.2.1",)
    assert warned(settings, f"{PATH}:2: WEBSMSD_PORT:", "ignored")
    # An explicit none turns the webhook off even when WEBSMSD_PORT is set.
    assert conf("[daemon]\nwebhook_listen = none\n", {"WEBSMSD_PORT": "80"}).daemon.webhook_listen == ()


# ---------------------------------------------------------------------------------------
# load()


def test_load_errors_name_the_file(tmp_path):
    missing = tmp_path / "missing.conf"
    with pytest.raises(ConfigError) as caught:
        load(missing, environ={})
    assert caught.value.path == str(missing) and caught.value.line is None
    assert str(caught.value).startswith(f"{missing}: cannot read it")
    latin1 = tmp_path / "latin1.conf"
    latin1.write_bytes(b"[websmsd]\n\nresp_ack = \"Merci d\xe9j\xe0\"\n")
    with pytest.raises(ConfigError) as caught:
        load(latin1, environ={})
    assert (caught.value.line, caught.value.message) == (3, "not UTF-8 text")


def test_load_reads_utf8_values(tmp_path):
    path = tmp_path / "websms.conf"
    path.write_text('[websmsd]\nresp_ack = "Спасибо ✓"\n', encoding="utf-8")
    assert load(str(path), environ={}).inbound.default.resp_ack == "Спасибо ✓"


# ---------------------------------------------------------------------------------------
# report()


def test_report_masks_secrets():
    settings = fixture("every-key-current.conf")
    text = report(settings)
    assert "s3cr3t-Pa55" not in text
    assert "auth_secret = ****" in text
    assert "key_secret = ****" in text  # named *secret*: masked even though it is a key name
    assert "auth_user = acct-17" in text
    settings = conf('[websms]\nauth_method = none\nurl_host = https://itsp.example\nval_static = "api_key=abc123,token=t0k,type=sms"\n')
    text = report(settings)
    assert "abc123" not in text and "t0k" not in text
    assert "val_static = api_key=****,token=****,type=sms" in text


def test_report_does_not_reveal_a_boolean_secret_in_warnings():
    settings = conf("[websms]\nauth_user = u\nauth_secret = yes\nurl_host = https://itsp.example\n")
    assert settings.outbound.interfaces[0].auth_secret == "1"
    assert warned(settings, "auth_secret", "an unquoted boolean word")
    assert "auth_secret = ****" in report(settings)


def test_report_shows_every_section_interface_and_warning():
    settings = guide_two_interfaces()
    text = report(settings)
    assert text == report(settings)  # stable
    assert text.startswith(f"websmsd check-config: {FIXTURES / 'guide-two-interfaces.conf'}\n")
    order = [
        "[websms] interface 'api-1'", "[websms] interface 'api-2'",
        "[websmsd] interface 'api-1'", "[websmsd] interface 'api-2'",
        "[websmsd] default interface", "[websmsd] selection", "[astqueue]", "[daemon]", "warnings:",
    ]
    positions = [text.index(title) for title in order]
    assert positions == sorted(positions)
    assert "secret1" not in text and "secret2" not in text
    assert "    url_host = http://api.example1.com\n" in text
    assert "    key_body = text\n" in text
    assert "    remt_addr = 5.6.7.8/32, 5.6.7.9/32\n" in text
    assert "    key_to = To  (default)\n" in text
    assert "remt_addr is per interface" in text
    assert "    webhook_listen = (none)  (default)\n" in text
    for warning in settings.warnings:
        assert f"    {warning}\n" in text


def test_report_of_a_single_interface_file():
    text = report(fixture("full.conf"))
    assert "a-secret" not in text
    assert "    filemode = 0640\n" in text
    assert "    max_age = 259200s\n" in text
    assert "warnings: none\n" in text
    text = report(conf("[websmsd]\nresp_ack = \"<r>\n</r>\"\n"))
    assert "[websmsd] interface '' (the only one)" in text
    assert "[websmsd] default interface" not in text
    assert "    resp_ack = '<r>\\n</r>'\n" in text


# ---------------------------------------------------------------------------------------
# Boundaries


def test_config_imports_nothing_from_twisted():
    code = "import sys, websmsd.config; sys.exit(any(m.split('.')[0] == 'twisted' for m in sys.modules))"
    subprocess.run([sys.executable, "-c", code], check=True, cwd=Path(__file__).parent.parent)


def test_relative_paths_are_relative_to_the_config_file(tmp_path):
    conf = tmp_path / "etc" / "websms.conf"
    conf.parent.mkdir()
    conf.write_text("[astqueue]\noutgoingdir = var/out\nstagingdir = /abs/staging\n"
                    "[daemon]\nstore = ../db.sqlite3\n")
    settings = load(conf, environ={})
    assert settings.astqueue.outgoingdir == str(tmp_path / "etc" / "var" / "out")
    assert settings.astqueue.stagingdir == "/abs/staging"
    assert settings.daemon.store == str(tmp_path / "db.sqlite3")


def test_json_request_shapes_that_cannot_be_built_refuse_to_start():
    with pytest.raises(ConfigError) as caught:
        loads("[websms]\nauth_method = none\nencoding = json\nkey_to = a.b\nkey_from = a\n",
              "x.conf", environ={})
    assert "cannot be built" in str(caught.value) and "already filled" in str(caught.value)
    with pytest.raises(ConfigError) as caught:
        loads('[websms]\nauth_method = none\nencoding = json\nval_static = "flash:=nope"\n',
              "x.conf", environ={})
    assert str(caught.value).startswith("x.conf:4: val_static: the request cannot be built")
    ok = loads("[websms]\nauth_method = none\nencoding = json\nkey_to = messages.0.to\n"
               "key_from = messages.0.from\nkey_body = messages.0.body\n"
               "url_host = https://itsp.example\n", "x.conf", environ={})
    assert ok.outbound.interfaces[0].key_to == "messages.0.to"


# -- channel sections: the registry, unique interface names, [phones] --------------------------


def test_channel_sections_plug_in_and_interface_names_are_unique(monkeypatch):
    from dataclasses import dataclass
    from types import SimpleNamespace
    from typing import Tuple

    import websmsd.config as config
    from websmsd.config.reader import _Key, _keys, _read_interfaces
    from websmsd.config.values import _numbers, _text

    @dataclass(frozen=True)
    class Sim:
        name: str = ""
        host: str = "localhost"
        number: Tuple[str, ...] = ()

    @dataclass(frozen=True)
    class Sims:
        interfaces: Tuple[Sim, ...] = ()

    keys = _keys(_Key("host", _text), _Key("number", _numbers))
    fake = SimpleNamespace(
        NAME="fakesim", KIND="fakesim", KEYS=keys,
        read=lambda section, context: Sims(_read_interfaces(section, context, keys, Sim)),
        interfaces=lambda s: [(i.name, "fakesim", i.number, False) for i in s.interfaces])
    monkeypatch.setattr(config, "CHANNEL_SECTIONS", (fake,))
    monkeypatch.setitem(config.SECTIONS, "fakesim", fake)
    text = ("[websms]\nurl_host [tw] = https://api.example.com\n"
            "[fakesim]\nhost = 192.0.2.1\nnumber [sim1] = +46701234567\nnumber [sim2] = +46701234568\n"
            "[route]\ndefault = sim2, tw\n[astqueue]\n")
    settings = loads(text, "websms.conf")
    assert [i.name for i in settings.channels["fakesim"].interfaces] == ["sim1", "sim2"]
    assert settings.channels["fakesim"].interfaces[0].host == "192.0.2.1"  # plain: every SIM
    assert settings.interfaces() == [("tw", "itsp", (), False),
                                     ("sim1", "fakesim", ("+46701234567",), False),
                                     ("sim2", "fakesim", ("+46701234568",), False)]
    from websmsd.routing import router_for

    assert router_for(settings).outbound("+4412", "+46701234567").routes == (
        "fakesim:sim1", "fakesim:sim2", "itsp:tw")
    assert "[fakesim] interface 'sim1'" in report(settings)
    with pytest.raises(ConfigError) as e:
        loads(text.replace("number [sim2]", "number [tw]"), "websms.conf")
    assert str(e.value) == ("websms.conf:6: interface name 'tw' is used in [websms] and"
                            " [fakesim]: interface names must be unique (WEBSMS_INDEX names one)")


def test_phones_section():
    settings = loads("[phones]\nnumber [john.doe] = +12025550160\nnumber [jane.doe] = +12025550183\n"
                     "number [desk] = +12025550160\nnotify [john.doe] = all\n[astqueue]\n",
                     "websms.conf")
    phones = settings.phones
    assert phones.numbers() == {"john.doe": "+12025550160", "jane.doe": "+12025550183",
                                "desk": "+12025550160"}
    assert phones.endpoints_of("+1 202 555 0160") == ["john.doe", "desk"]
    assert [p.notify for p in phones.interfaces] == ["all", "none", "none"]
    with pytest.raises(ConfigError, match="websms.conf:2: notify\\[x\\]"):
        loads("[phones]\nnotify [x] = sometimes\n[astqueue]\n", "websms.conf")


def test_every_bad_cidr_of_a_line_in_one_message():
    # Item 8 of issue 12: a line with two bad CIDRs named only the first.
    error = refused("[websmsd]\nremt_addr = 10.0.0.0/33, 192.0.2.1, example.com,,300.1.1.1\n",
                    2, "remt_addr")
    assert error.message.endswith(
        "'10.0.0.0/33', 'example.com' and '300.1.1.1' are not IP addresses or CIDRs;"
        " an empty entry in the comma list"
    ), str(error)
    error = refused("[websmsd]\nprox_addr = 10.0.0.0/8, fe80::zz, 10.1.0.0/16/1\n", 2, "prox_addr",
                    "'fe80::zz' and '10.1.0.0/16/1' are not IP addresses or CIDRs")
    assert "'10.0.0.0/8'" not in error.message
    # One bad entry reads as before.
    refused("[websmsd]\nremt_addr [a] = 192.0.2.1, nonsense\n", 2, "remt_addr[a]",
            "'nonsense' is not an IP address or CIDR")
