"""Users of the conversation pages: their passwords, logins, sessions, and what each sees.

The owner's own access (loopback, Basic, the status token) is `OWNER`, and sees every
number.  A user of [web] logs in with a password and gets a session cookie; their
`Viewer` says which own numbers they may read and send from (`Viewer.may`).

    users = Users(settings.web, settings.phones, secret=store_secret, reactor=reactor)
    d = users.login(name, password, source_ip)     # Deferred: cookie value, or None
    request.setHeader(b"Set-Cookie", users.cookie_header(value, request.isSecure()))
    viewer = users.session(request)                # Viewer, or None: not logged in

Passwords are scrypt hashes (`hash_password`, `verify_password`).  Verifying one costs
tens of milliseconds and 16 MiB: it runs in a small thread pool of its own, never on the
reactor thread, and failed logins are throttled per source address and per user name.
The session cookie is signed (HMAC-SHA256) with a secret the store keeps, so sessions
survive a restart; it names the user, when it was issued, a random nonce, and is bound to
the user's password hash, so a password changed in websms.conf ends the old sessions.
Twisted is imported only where a Deferred is made.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import ipaddress
import os
import re
import secrets
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, FrozenSet, Iterable, List, Optional, Tuple

from websmsd.config.phones import PhonesSettings
from websmsd.config.web import (USER_NAME, ScryptHash, WebSettings, WebUser, encode_password_hash,
                                parse_password_hash, user_numbers)
from websmsd.numbers import number_key
from websmsd.text import escape_controls, shorten
from websmsd.record import frozen

__all__ = ["COOKIE", "OWNER", "Users", "Viewer", "hash_password", "verify_password"]

COOKIE = "websmsd_session"
# In the store's channel_state: the sessions' secret, and the sessions signed out (the
# nonce follows the prefix) until they would have ended.
SECRET = "web.secret"
REVOKED = "web.revoked."

# hash_password's parameters: 16 MiB and some 50-100 ms on a Raspberry Pi 4.
SCRYPT_N, SCRYPT_R, SCRYPT_P = 2 ** 14, 8, 1
SALT_BYTES, KEY_BYTES = 16, 32
MIN_PASSWORD = 8  # what `websms passwd` accepts
MAX_PASSWORD = 1024  # longer is not a password someone types; refused without hashing

# Login throttling: after FAILURES failed logins within WINDOW from one source (an IPv6
# /64 counts as one) or for one user name, further attempts fail at once, without a hash,
# for BLOCK seconds, doubling with each failure after that up to MAX_BLOCK.
FAILURES = 5
WINDOW = 15 * 60.0
BLOCK = 60.0
MAX_BLOCK = 3600.0
MAX_TRACKED = 4096  # sources and names remembered at once: memory stays bounded
# Logins being verified at once (each holds 16 MiB while its hash runs); more fail at once.
MAX_PENDING = 8
VERIFY_THREADS = 2

# What an unknown user's password is checked against, so that the answer comes as late
# for an unknown name as for a known one (the key matches no password anyone knows).
_DUMMY_HASH = "scrypt$16384$8$1$47NLMjMlbFGrz82WSMS0gA$Gg3Drg4VlnnvsKUHvVrRGFfQvrzdsXr6oaqclKLG0SI"

_NONCE = re.compile(r"[A-Za-z0-9_-]{16,64}")
_MAC = re.compile(r"[A-Za-z0-9_-]{43}")
_ISSUED = re.compile(r"[1-9][0-9]{0,11}")  # one spelling per time: the MAC covers it
_MAX_COOKIE = 256


# -- passwords ---------------------------------------------------------------------------


def _scrypt(password: bytes, h: ScryptHash, length: int) -> bytes:
    # OpenSSL needs 128 * r * (n + p + 2) bytes; Python's default cap (32 MiB) would refuse
    # some hashes the config accepts.
    maxmem = 128 * h.r * (h.n + h.p + 2) + 65536
    return hashlib.scrypt(password, salt=h.salt, n=h.n, r=h.r, p=h.p, dklen=length,
                          maxmem=maxmem)


def hash_password(password: str, *, n: int = SCRYPT_N, r: int = SCRYPT_R,
                  p: int = SCRYPT_P) -> str:
    """`scrypt$n$r$p$salt$key` for websms.conf (salt and key in base64 without padding):
    a fresh random salt each time.  ValueError for parameters [web] would refuse."""
    if not isinstance(password, str):
        raise TypeError("the password must be text")
    params = ScryptHash(n, r, p, os.urandom(SALT_BYTES), bytes(KEY_BYTES))
    parse_password_hash(encode_password_hash(params))  # the limits [web] reads with
    key = _scrypt(password.encode("utf-8"), params, KEY_BYTES)
    return encode_password_hash(params._replace(key=key))


def verify_password(password: str, stored: str) -> bool:
    """Whether `password` is the one `stored` (a hash_password result) was made from.
    False for anything malformed (a stored value that is no hash, parameters beyond
    [web]'s limits, a password that is not text or too long); never raises."""
    try:
        h = parse_password_hash(stored)
        if not isinstance(password, str) or len(password) > MAX_PASSWORD:
            return False
        candidate = _scrypt(password.encode("utf-8"), h, len(h.key))
        return hmac.compare_digest(candidate, h.key)
    except Exception:  # a hash the limits let through that OpenSSL still refuses, memory
        return False


# -- who sees what -----------------------------------------------------------------------


@frozen
class Viewer:
    name: str  # "owner" for the owner's access, else the user name
    # The own numbers (websmsd.numbers.number_key) this viewer may see and send from;
    # None: every number.
    numbers: Optional[FrozenSet[str]]
    owner: bool  # the owner's access (loopback/Basic/token): also the status page and API

    def may(self, number: str) -> bool:
        """Whether this viewer may see, and send from, own number `number` (any spelling)."""
        if self.numbers is None:
            return True
        if not isinstance(number, str):
            return False
        return number_key(number) in self.numbers


OWNER = Viewer("owner", None, True)


@dataclass
class _Failures:
    """Failed logins of one source or user name."""

    times: List[float] = field(default_factory=list)  # within WINDOW
    strikes: int = 0  # blocks so far
    blocked_until: float = 0.0
    pending: int = 0  # logins being verified now
    told: float = -1.0  # the blocked_until the log has been told of

    def expires(self) -> float:
        return max(self.blocked_until, (self.times[-1] + WINDOW) if self.times else 0.0)


class Users:
    """The [web] users: logins, sessions and what each may see.

    `secret`: the key sessions are signed with (kept by the store, so that sessions
    survive a restart; at least 16 bytes).  `clock`: time.time, or an object with
    seconds() (twisted's task.Clock).  `verify(password, stored)`: a Deferred (or a
    value) saying whether the password matches; by default verify_password runs in a
    thread pool of its own (`pool`, else one made on first use and stopped when the
    reactor shuts down)."""

    def __init__(self, web: WebSettings, phones: PhonesSettings, *, secret: bytes,
                 clock: Any = time.time,
                 verify: Optional[Callable[[str, str], Any]] = None,
                 reactor: Any = None, pool: Any = None):
        if not isinstance(secret, bytes) or len(secret) < 16:
            raise ValueError("the session secret must be at least 16 bytes")
        from twisted.logger import Logger

        self._log = Logger(namespace="websmsd.web")
        self._secret = secret
        self._now: Callable[[], float] = clock.seconds if hasattr(clock, "seconds") else clock
        self._verify = verify if verify is not None else self._verify_in_pool
        self._reactor = reactor
        self._pool = pool
        self._own_pool = False
        self._failures: Dict[str, _Failures] = {}
        self._pending = 0
        self._revoked: Dict[str, float] = {}  # nonce -> when its session ends anyway
        self.update(web, phones)

    def use_secret(self, secret: bytes) -> None:
        """Sign sessions with `secret` from now on (the store's, once it is open): the
        sessions signed with the one before end."""
        if not isinstance(secret, bytes) or len(secret) < 16:
            raise ValueError("the session secret must be at least 16 bytes")
        self._secret = secret

    def update(self, web: WebSettings, phones: PhonesSettings) -> None:
        """New settings (a reloaded websms.conf): sessions of users that are gone, or
        whose password hash changed, end; throttling and logouts are kept."""
        self._web = web
        self._phones = phones
        self._users: Dict[str, WebUser] = {u.name: u for u in web.users}
        self._viewers: Dict[str, Viewer] = {}

    @property
    def enabled(self) -> bool:
        """Whether any user is configured (else only the owner uses the pages)."""
        return bool(self._users)

    @property
    def session_seconds(self) -> float:
        return self._web.session

    def viewer_of(self, name: str) -> Optional[Viewer]:
        """What user `name` sees: `numbers` and the numbers of their `phones`, as keys
        (None when `all = yes`); None when no such user is configured."""
        viewer = self._viewers.get(name)
        if viewer is None:
            user = self._users.get(name)
            if user is None:
                return None
            numbers = None if user.all else frozenset(
                number_key(n) for n in user_numbers(user, self._phones))
            viewer = self._viewers[name] = Viewer(name, numbers, False)
        return viewer

    def numbers_of(self, name: str) -> Tuple[str, ...]:
        """User `name`'s own numbers as websms.conf writes them (`numbers`, then those of
        their `phones`), e.g. for a send form's From choices; () for an unknown user or
        one with `all = yes` (who has every number)."""
        user = self._users.get(name)
        return () if user is None or user.all else user_numbers(user, self._phones)

    # -- logging in ------------------------------------------------------------------------

    def login(self, name: str, password: str, source: str) -> Any:
        """A Deferred firing with the session cookie's value when `password` is user
        `name`'s, else None (unknown user, wrong password, throttled).  Never fails."""
        from twisted.internet import defer
        from twisted.python.failure import Failure

        now = self._now()
        self._forget(now)
        name = name if isinstance(name, str) else ""
        keys = ["source " + _source_key(source), "user " + shorten(name, 64)]
        shown_name, shown_source = _shown(name), _shown(source)
        blocked = [r for r in map(self._failures.get, keys) if r is not None and (
            r.blocked_until > now or (r.pending and len(r.times) + r.pending >= FAILURES))]
        if blocked:
            # Once per block: a guessing script must not flood the log.
            if any(r.told != r.blocked_until for r in blocked):
                self._log.warn("web login refused for {user} from {source}: too many failed"
                               " logins, try later", user=shown_name, source=shown_source)
            for r in blocked:
                r.told = r.blocked_until
            return defer.succeed(None)
        if self._pending >= MAX_PENDING:
            self._log.warn("web login refused for {user} from {source}: too many logins at"
                           " once", user=shown_name, source=shown_source)
            return defer.succeed(None)
        user = self._users.get(name)
        stored = user.password_hash if user is not None else _DUMMY_HASH
        records = [self._record(key) for key in keys]
        for record in records:
            record.pending += 1
        self._pending += 1

        def done(result: Any) -> Optional[str]:
            self._pending -= 1
            for record in records:
                record.pending -= 1
            ok = result is True and user is not None and self._users.get(name) == user
            if isinstance(result, Failure):
                self._log.failure("checking a web password failed", failure=result)
            later = self._now()
            if ok:
                for key in keys:
                    self._failures.pop(key, None)
                self._log.info("web login: {user} from {source}", user=shown_name,
                               source=shown_source)
                return self._issue(user, later)
            for record in records:
                self._fail(record, later)
            self._log.warn("web login failed for {user} from {source}", user=shown_name,
                           source=shown_source)
            return None

        d = defer.maybeDeferred(self._verify, password, stored)
        d.addBoth(done)
        return d

    def _record(self, key: str) -> _Failures:
        record = self._failures.get(key)
        if record is None:
            if len(self._failures) >= MAX_TRACKED:
                # The oldest first: an attacker's flood of names cannot grow this.
                idle = [k for k, r in self._failures.items() if not r.pending]
                if idle:
                    del self._failures[idle[0]]
            record = self._failures[key] = _Failures()
        return record

    def _fail(self, record: _Failures, now: float) -> None:
        record.times = [t for t in record.times if t > now - WINDOW] + [now]
        if len(record.times) >= FAILURES:
            record.strikes += 1
            record.blocked_until = now + min(BLOCK * 2 ** min(record.strikes - 1, 20), MAX_BLOCK)

    def _forget(self, now: float) -> None:
        for key in [k for k, r in self._failures.items() if not r.pending and r.expires() <= now]:
            del self._failures[key]
        for record in self._failures.values():
            record.times = [t for t in record.times if t > now - WINDOW]
        for nonce in [n for n, until in self._revoked.items() if until <= now]:
            del self._revoked[nonce]

    def _verify_in_pool(self, password: str, stored: str) -> Any:
        from twisted.internet.threads import deferToThreadPool

        if self._reactor is None:
            from twisted.internet import reactor

            self._reactor = reactor
        if self._pool is None:
            from twisted.python.threadpool import ThreadPool

            self._pool = ThreadPool(minthreads=0, maxthreads=VERIFY_THREADS,
                                    name="websmsd-passwords")
            self._own_pool = True
            self._pool.start()
            self._reactor.addSystemEventTrigger("during", "shutdown", self.close)
        return deferToThreadPool(self._reactor, self._pool, verify_password, password, stored)

    def close(self) -> None:
        """Stop the thread pool this made (if any)."""
        if self._own_pool and self._pool is not None:
            pool, self._pool, self._own_pool = self._pool, None, False
            pool.stop()

    # -- sessions --------------------------------------------------------------------------

    def _mac(self, name: str, issued: int, nonce: str, user: WebUser) -> str:
        fingerprint = hashlib.sha256(user.password_hash.encode("utf-8")).hexdigest()
        message = f"{name}|{issued}|{nonce}|{fingerprint}".encode("utf-8")
        digest = hmac.new(self._secret, message, hashlib.sha256).digest()
        return base64.urlsafe_b64encode(digest).decode("ascii").rstrip("=")

    def _issue(self, user: WebUser, now: float) -> str:
        issued = int(now)
        nonce = secrets.token_urlsafe(16)
        return f"{user.name}:{issued}:{nonce}:{self._mac(user.name, issued, nonce, user)}"

    def _valid(self, value: Any) -> Optional[Tuple[str, int, str]]:
        """(user, issued, nonce) of a cookie value this issued, still valid; else None."""
        if isinstance(value, bytes):
            try:
                value = value.decode("ascii")
            except UnicodeDecodeError:
                return None
        if not isinstance(value, str) or len(value) > _MAX_COOKIE:
            return None
        parts = value.split(":")
        if len(parts) != 4:
            return None
        name, issued_text, nonce, mac = parts
        if not (USER_NAME.fullmatch(name) and _ISSUED.fullmatch(issued_text)
                and _NONCE.fullmatch(nonce) and _MAC.fullmatch(mac)):
            return None
        user = self._users.get(name)
        if user is None:
            return None
        issued = int(issued_text)
        if not hmac.compare_digest(mac, self._mac(name, issued, nonce, user)):
            return None
        now = self._now()
        # A cookie from the future: the clock was set back; a minute is the leeway.
        if issued > now + 60 or now >= issued + self._web.session:
            return None
        if nonce in self._revoked:
            return None
        return name, issued, nonce

    def session(self, request: Any) -> Optional[Viewer]:
        """The viewer a request's session cookie names, or None: no cookie, a cookie
        this did not sign (or signed for another password), expired, logged out, or its
        user is no longer configured."""
        found = self._valid(_cookie(request))
        return None if found is None else self.viewer_of(found[0])

    def logout(self, request: Any) -> Optional[Tuple[str, float]]:
        """End the session of the request's cookie: (its nonce, when it would have
        ended anyway), for the caller to keep across a restart (`revoked`), or None when
        the request had no valid session."""
        found = self._valid(_cookie(request))
        if found is None:
            return None
        name, issued, nonce = found
        until = issued + self._web.session
        self._revoked[nonce] = until
        self._log.info("web logout: {user}", user=_shown(name))
        return nonce, until

    def restore(self, store: Any) -> Any:
        """At start: sign sessions with the store's secret (made on the first start),
        and keep the sessions signed out before the restart ended.  A Deferred."""
        fresh = os.urandom(32).hex()

        def load(db: Any) -> Tuple[str, List[Tuple[str, float]]]:
            ended = []
            for name, value in db.execute(
                    "SELECT name, value FROM channel_state WHERE name >= ? AND name < ?",
                    (REVOKED, REVOKED[:-1] + chr(ord(REVOKED[-1]) + 1))).fetchall():
                try:
                    until = float(value)
                except ValueError:
                    until = 0.0
                if until <= time.time():
                    db.execute("DELETE FROM channel_state WHERE name = ?", (name,))
                else:
                    ended.append((name[len(REVOKED):], until))
            row = db.execute("SELECT value FROM channel_state WHERE name = ?",
                             (SECRET,)).fetchone()
            if row is not None:
                return row[0], ended
            db.execute("INSERT INTO channel_state (name, value, updated) VALUES (?, ?, ?)",
                       (SECRET, fresh, time.time()))
            return fresh, ended

        def loaded(result: Tuple[str, List[Tuple[str, float]]]) -> None:
            self.use_secret(bytes.fromhex(result[0]))
            self.revoked(result[1])

        return store.write(load).addCallback(loaded)

    def remember_logout(self, store: Any, ended: Tuple[str, float]) -> Any:
        """Keep a signed-out session ended across a restart (until it would have
        ended anyway): a Deferred of the store's write."""
        nonce, until = ended
        return store.write(lambda db: db.execute(
            "INSERT OR REPLACE INTO channel_state (name, value, updated) VALUES (?, ?, ?)",
            (REVOKED + nonce, repr(until), time.time())))

    def revoked(self, ended: Iterable[Tuple[str, float]]) -> None:
        """Sessions that were signed out before (kept in the store across a restart)."""
        now = self._now()
        for nonce, until in ended:
            if until > now and _NONCE.fullmatch(nonce):
                self._revoked[nonce] = until

    def cookie_header(self, value: str, secure: bool) -> bytes:
        """The Set-Cookie header value that hands `value` (from login) to the browser."""
        return _set_cookie(value, int(self._web.session), secure)

    def clear_cookie_header(self, secure: bool) -> bytes:
        """The Set-Cookie header value that makes the browser forget the session."""
        return _set_cookie("", 0, secure)


def _set_cookie(value: str, max_age: int, secure: bool) -> bytes:
    if not re.fullmatch(r"[A-Za-z0-9_.@:-]*", value):
        raise ValueError("not a session cookie value")
    header = f"{COOKIE}={value}; Path=/; HttpOnly; SameSite=Strict; Max-Age={max_age}"
    if secure:
        header += "; Secure"
    return header.encode("ascii")


def _cookie(request: Any) -> Optional[bytes]:
    try:
        return request.getCookie(COOKIE.encode("ascii"))
    except Exception:  # a malformed Cookie header: no session
        return None


def _source_key(source: Any) -> str:
    """Whom throttling counts: an IPv4 address, or an IPv6 /64 (one host has them all)."""
    text = source if isinstance(source, str) else str(source)
    try:
        address = ipaddress.ip_address(text.split("%", 1)[0])
    except ValueError:
        return shorten(text, 64)
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:
            return str(address.ipv4_mapped)
        return str(ipaddress.IPv6Network((address, 64), strict=False))
    return str(address)


def _shown(value: Any) -> str:
    """A user name or address as a log line may show it: one line, short."""
    return escape_controls(shorten(value if isinstance(value, str) else repr(value), 70))
