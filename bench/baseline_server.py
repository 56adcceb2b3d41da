"""The baseline for bench/webhook.py: a bare twisted.web resource, nothing else.

It parses the request the way any twisted.web application would (a form body through
`request.args`, which twisted.web fills in; a JSON body with json.loads), looks up
To/From/Body and answers 200 with an empty body.  No validation, no store, no fsync,
no call file.  Like a daemon started by twistd, it logs to a file (the access log
lines of `Site` included), so that the comparison with websmsd is not one of logging.

    /usr/bin/python3 bench/baseline_server.py --port 8081 --logfile /tmp/bare.log
"""

from __future__ import annotations

import argparse
import json
import sys


def main(argv=None) -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--logfile", default="/dev/null")
    a = p.parse_args(argv)

    from twisted.internet import reactor
    from twisted.logger import globalLogBeginner, textFileLogObserver
    from twisted.web.resource import Resource
    from twisted.web.server import Site

    class Bare(Resource):
        isLeaf = True

        def render_POST(self, request):
            ctype = request.getHeader(b"content-type") or b""
            if ctype.startswith(b"application/json"):
                fields = json.loads(request.content.read())
                to, sender, body = fields.get("To"), fields.get("From"), fields.get("Body")
            else:
                args = request.args
                to, sender, body = args.get(b"To"), args.get(b"From"), args.get(b"Body")
            request.setHeader(b"Content-Type", b"text/html; charset=UTF-8")
            return b"" if to and sender and body is not None else b"missing\n"

    logfile = open(a.logfile, "a")
    globalLogBeginner.beginLoggingTo([textFileLogObserver(logfile)], redirectStandardIO=False)
    reactor.listenTCP(a.port, Site(Bare()), interface="127.0.0.1")
    reactor.run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
