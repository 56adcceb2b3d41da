"""The command-line tools: `websms` (send one SMS through the running daemon; `websms
passwd NAME` makes a [web] password line) and `websmsd` (check-config, passwd, and a
shortcut to run the daemon in the foreground)."""

from __future__ import annotations

import argparse
import json
import os
import sys
import urllib.error
import urllib.request
from typing import Any, List, Optional, Tuple

EX_SENT, EX_FAILED, EX_QUEUED = 0, 1, 75  # 75: EX_TEMPFAIL, "accepted, will retry"


def _local_api(config: Optional[str], api: Optional[str]) -> Tuple[str, Optional[str]]:
    """The local API's URL and the token to give it; raises ValueError (with the why)."""
    from websmsd.tap import default_config

    if api is not None:
        return api, None
    from websmsd.config import ConfigError, load
    from websmsd.endpoints import client_address

    try:
        settings = load(config or default_config())
        host, port = client_address(settings.daemon.status_listen[0])
    except (ConfigError, OSError, ValueError, IndexError) as e:
        raise ValueError(f"cannot find the daemon's local API: {e}") from None
    url = f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"
    return url, settings.daemon.status_token


def _post(url: str, path: str, payload: dict, token: Optional[str],
          timeout: float) -> Tuple[int, dict]:
    """POST JSON to the local API: (HTTP status, answer); OSError when unreachable."""
    headers = {"Content-Type": "application/json"}
    if token:  # needed when the local API listens beyond loopback
        headers["Authorization"] = f"Bearer {token}"
    request = urllib.request.Request(url.rstrip("/") + path,
                                     data=json.dumps(payload).encode("utf-8"),
                                     headers=headers, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, json.load(response)
    except urllib.error.HTTPError as e:
        try:
            return e.code, json.load(e)
        except ValueError:
            return e.code, {"error": str(e.reason)}


def websms_main(argv: Optional[List[str]] = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["ussd"]:
        return _ussd_main(argv[1:])
    if argv[:1] == ["passwd"]:
        return passwd_main(argv[1:], "websms passwd")
    parser = argparse.ArgumentParser(
        prog="websms",
        description="Send one SMS through the running websmsd. Exit status: 0 sent, "
        "1 failed (or the daemon is unreachable), 75 queued for retry.",
        epilog="websms ussd INTERFACE CODE: send a USSD code (e.g. '*100#') through a SIM;"
        " websms passwd NAME: the password line of a [web] user")
    parser.add_argument("to")
    parser.add_argument("sender", metavar="from")
    parser.add_argument("body")
    parser.add_argument("index", nargs="?", default="", help="the interface (WEBSMS_INDEX)")
    parser.add_argument("--config", default=None, help="websms.conf (to find the daemon)")
    parser.add_argument("--api", default=None, help="http://host:port of the local API")
    parser.add_argument("--wait", type=float, default=None,
                        help="seconds to wait for the first attempt")
    args = parser.parse_args(argv)
    try:
        url, token = _local_api(args.config, args.api)
    except ValueError as e:
        print(f"websms: {e}", file=sys.stderr)
        return EX_FAILED
    payload = {"to": args.to, "from": args.sender, "body": args.body, "interface": args.index}
    if args.wait is not None:
        payload["wait"] = args.wait
    try:
        code, answer = _post(url, "/api/send", payload, token, timeout=150)
    except (OSError, ValueError) as e:
        print(f"websms: the daemon at {url} is unreachable: {e}", file=sys.stderr)
        return EX_FAILED
    if code != 200:
        print(f"websms: the daemon refused: {answer.get('error')}", file=sys.stderr)
        return EX_FAILED
    status = answer.get("status")
    line = f"{status} {answer.get('id') or '-'}"
    if answer.get("reason"):
        line += f" ({answer['reason']})"
    print(line)
    return {"SENT": EX_SENT, "QUEUED": EX_QUEUED}.get(status, EX_FAILED)


def _ussd_main(argv: List[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="websms ussd", description="Send a USSD code through a SIM of the running "
        "websmsd and print the network's answer. Exit status: 0 answered, 1 not.")
    parser.add_argument("interface", help="the SIM's interface (sim1, tg1...)")
    parser.add_argument("code", help="the code, e.g. '*100#' (quote the # in a shell)")
    parser.add_argument("--config", default=None)
    parser.add_argument("--api", default=None)
    args = parser.parse_args(argv)
    try:
        url, token = _local_api(args.config, args.api)
        code, answer = _post(url, "/api/ussd", {"interface": args.interface, "code": args.code},
                             token, timeout=150)
    except (OSError, ValueError) as e:
        print(f"websms: {e}", file=sys.stderr)
        return EX_FAILED
    if code != 200:
        print(f"websms: USSD {args.code} through {args.interface}: {answer.get('error')}",
              file=sys.stderr)
        return EX_FAILED
    print(answer.get("reply", ""))
    return EX_SENT


def passwd_main(argv: List[str], prog: str = "websms passwd") -> int:
    """Ask for a password (twice, without echo; or one line from stdin) and print the
    `password [NAME] = scrypt$...` line for [web] in websms.conf."""
    from websmsd.config.web import USER_NAME
    from websmsd.http.users import MAX_PASSWORD, MIN_PASSWORD, hash_password

    parser = argparse.ArgumentParser(
        prog=prog, description="Make the password line of a [web] user (a browser login to"
        " the conversation pages) to paste into websms.conf. Only the hash is printed.")
    parser.add_argument("name", help="the user name (letters, digits, _ . @ -)")
    parser.add_argument("--stdin", action="store_true",
                        help="read the password from one line of stdin (also when stdin is"
                        " not a terminal)")
    args = parser.parse_args(argv)
    if not USER_NAME.fullmatch(args.name) or args.name == "owner":
        print(f"{prog}: {args.name!r} cannot be a user name: 1 to 64 letters, digits and"
              " _ . @ - (and not 'owner')", file=sys.stderr)
        return 2
    if args.stdin or not sys.stdin.isatty():
        password = sys.stdin.readline()
        password = password[:-1] if password.endswith("\n") else password
        password = password[:-1] if password.endswith("\r") else password
    else:
        import getpass

        try:
            password = getpass.getpass(f"Password for {args.name}: ")
            again = getpass.getpass("The same again: ")
        except (EOFError, KeyboardInterrupt):
            print(file=sys.stderr)
            return 1
        if password != again:
            print(f"{prog}: the two passwords differ; nothing changed", file=sys.stderr)
            return 1
    if len(password) < MIN_PASSWORD:
        print(f"{prog}: a password needs at least {MIN_PASSWORD} characters", file=sys.stderr)
        return 1
    if len(password) > MAX_PASSWORD:
        print(f"{prog}: a password may have at most {MAX_PASSWORD} characters", file=sys.stderr)
        return 1
    print(f"password [{args.name}] = {hash_password(password)}")
    return 0


def websmsd_main(argv: Optional[List[str]] = None) -> int:
    from websmsd.tap import default_config

    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["websms"]:  # `python3 -m websmsd websms ...` from the source tree
        return websms_main(argv[1:])
    if argv[:1] == ["passwd"]:
        return passwd_main(argv[1:], "websmsd passwd")
    parser = argparse.ArgumentParser(
        prog="websmsd", epilog="websmsd websms TO FROM BODY [INDEX]: the websms command")
    sub = parser.add_subparsers(dest="command", required=True)
    check = sub.add_parser("check-config", help="read websms.conf, print what it means")
    check.add_argument("file", nargs="?", default=None)
    check.add_argument("--route", metavar="NUMBER", default=None,
                       help="print which interface would carry a message to NUMBER, and why")
    check.add_argument("--from", dest="sender", metavar="NUMBER", default="",
                       help="with --route: the sender (a reply leaves the way it came in)")
    check.add_argument("--index", default="", help="with --route: WEBSMS_INDEX")
    sub.add_parser("passwd", help="websmsd passwd NAME [--stdin]: the password line of a"
                   " [web] user, to paste into websms.conf", add_help=False)
    run = sub.add_parser("run", help="run the daemon in the foreground (twistd -n websmsd)")
    run.add_argument("--config", default=None)
    args = parser.parse_args(argv)

    if args.command == "check-config":
        from websmsd.config import ConfigError, load, report

        path = args.file or default_config()
        try:
            settings = load(path)
        except (ConfigError, OSError) as e:
            print(f"websmsd: {e}", file=sys.stderr)
            return 2
        if args.route is not None:
            return _explain_route(settings, args.route, args.sender, args.index)
        print(report(settings), end="")
        spool = _spool_problems(settings)
        print("\n".join(spool))
        return 1 if settings.problems or len(spool) > 1 else 0
    twistd = [sys.executable, "-c", "from twisted.scripts.twistd import run; run()",
              "--nodaemon", "--pidfile=", "websmsd", "--config", args.config or default_config()]
    os.execv(sys.executable, twistd)
    return 1  # not reached


def _spool_problems(settings: Any) -> List[str]:
    """The call-file spool as the daemon would find it, checked by this user (creating
    nothing): a heading, then one line per problem."""
    import pwd

    from websmsd.asterisk.callfile import CallFileSpool

    try:
        who = pwd.getpwuid(os.geteuid()).pw_name
    except KeyError:
        who = str(os.geteuid())
    heading = f"call-file spool (checked as user {who}; the daemon checks again at start"
    heading += ", as the user it runs as): "
    try:
        problems = CallFileSpool(settings.astqueue).check(create=False)
    except (OSError, ValueError) as e:
        problems = [str(e)]
    if not problems:
        return [heading + "ok"]
    return [heading + "problems"] + [f"    {p}" for p in problems]


def _explain_route(settings: Any, to: str, sender: str, index: str) -> int:
    """`websmsd check-config --route NUMBER [--from NUMBER]`: the router's decision, with
    what the store knows of where messages to the sender came in (if it can be read)."""
    from websmsd.routing import router_for

    came_in_on = _came_in_on(settings.daemon.store, sender) if sender else None
    decision = router_for(settings).outbound(to, sender, index or None, came_in_on=came_in_on)
    if decision.route is None:
        print(f"no route for {to}: {decision.reason}")
        return 1
    print(f"{to}" + (f" from {sender}" if sender else "") + f": via {decision.route}")
    for route in decision.fallback:
        print(f"  then {route}")
    print(f"  because: {decision.reason}")
    return 0


def _came_in_on(path: str, number: str) -> Optional[str]:
    """Where the last message to `number` came in, from the store, read-only; None
    when the store cannot be read (not there, no permission)."""
    import sqlite3
    from urllib.parse import quote

    try:
        db = sqlite3.connect("file:" + quote(os.path.abspath(path)) + "?mode=ro", uri=True)
        try:
            row = db.execute("SELECT source FROM messages WHERE direction = 'in' AND recipient = ?"
                             " ORDER BY created DESC LIMIT 1", (number,)).fetchone()
        finally:
            db.close()
    except sqlite3.Error:
        return None
    return row[0] if row else None


if __name__ == "__main__":  # pragma: no cover
    sys.exit(websmsd_main())
