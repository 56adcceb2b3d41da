"""The Debian package, built, installed and run for real.

packaging/build-deb builds the .deb (lintian must find no errors), apt-get installs it
with Debian's python3-twisted, and the *installed* daemon (`/usr/bin/twistd3 websmsd`,
as the user websmsd, with nothing of this source tree on its path) carries a webhook to
a call file and a FastAGI request to a fake ITSP.  The package is purged at the end.

It installs system packages and creates a user, so it runs only when asked
(CI=true or WEBSMSD_TEST_PACKAGE=1), as root, under Debian's /usr/bin/python3: once, in
the first pass of ./run-tests.
"""

from __future__ import annotations

import grp
import os
import pwd
import re
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from blackbox import ROOT, FakeITSP, curl, free_port, status_and_body, wait_port
from test_daemon import asterisk_env, play_asterisk

DEBIAN = ROOT / "packaging" / "debian"
DIST = ROOT / "dist"
CONF = Path("/etc/websmsd/websms.conf")
PHP_CONF = Path("/etc/asterisk/websms.conf")
UNIT = "/lib/systemd/system/websmsd.service"
PLUGIN = "/usr/lib/python3/dist-packages/twisted/plugins/websmsd_plugin.py"
DROPIN_CACHE = Path("/usr/lib/python3/dist-packages/twisted/plugins/dropin.cache")
# What a service or an admin's shell has: no PYTHONPATH, no virtualenv, no pyenv.
SYSTEM_ENV = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C.UTF-8", "HOME": "/"}
APT_ENV = dict(SYSTEM_ENV, DEBIAN_FRONTEND="noninteractive")

# A websms.conf as the PHP WebSMS service had it, for the postinst to migrate.
PHP_WEBSMS_CONF = """\
[websms]
url_host    = https://api.example.com
url_path    = /sms/send/
auth_user   = user
auth_secret = php-secret

[websmsd]
key_to   = To
key_from = From
key_body = Body

[astqueue]
channel_context = dp_entry_answer
context         = dp_entry_text_in
"""


def package_version() -> str:
    text = (ROOT / "websmsd" / "__init__.py").read_text()
    return re.search(r'^__version__ = "([^"]+)"$', text, re.M).group(1)


def test_changelog_version_is_the_package_version():
    first = (DEBIAN / "changelog").read_text().splitlines()[0]
    m = re.match(r"websmsd \(([^)]+)\) \S+; urgency=\w+$", first)
    assert m, first
    assert m.group(1) == package_version(), "packaging/debian/changelog needs an entry"


def _why_not_run() -> str | None:
    if os.environ.get("CI") != "true" and os.environ.get("WEBSMSD_TEST_PACKAGE") != "1":
        return ("builds and installs the Debian package system-wide: runs only with "
                "CI=true or WEBSMSD_TEST_PACKAGE=1")
    if os.geteuid() != 0:
        return "installs the Debian package: needs root"
    if not sys.executable.startswith("/usr/bin/python3") or sys.prefix != sys.base_prefix:
        return ("runs once, under Debian's /usr/bin/python3 (the first pass of "
                "./run-tests), not under " + sys.executable)
    if not Path("/etc/debian_version").exists() or not shutil.which("apt-get"):
        return "not a Debian system"
    if _dpkg_installed("websmsd"):
        return "websmsd is installed on this machine: the test would purge it"
    if Path("/etc/websmsd").exists():
        return "/etc/websmsd exists on this machine: the test would replace it"
    return None


def _dpkg_installed(package: str) -> bool:
    r = subprocess.run(["dpkg-query", "-W", "-f=${Status}", package],
                       capture_output=True, text=True)
    return r.returncode == 0 and r.stdout.endswith(" installed")


def _exists(getter, name: str) -> bool:
    try:
        getter(name)
        return True
    except KeyError:
        return False


def run(cmd: list, check: bool = True, timeout: float = 240, **kwargs) -> subprocess.CompletedProcess:
    kwargs.setdefault("env", SYSTEM_ENV)
    r = subprocess.run([str(c) for c in cmd], capture_output=True, text=True,
                       timeout=timeout, **kwargs)
    if check and r.returncode != 0:
        raise AssertionError(f"{' '.join(map(str, cmd))} exited {r.returncode}\n"
                             f"{r.stdout[-4000:]}\n{r.stderr[-4000:]}")
    return r


def as_websmsd(cmd: list, **kwargs) -> subprocess.CompletedProcess:
    return run(["runuser", "-u", "websmsd", "--", *cmd], **kwargs)


WHY_NOT = _why_not_run()
package = pytest.mark.skipif(WHY_NOT is not None, reason=WHY_NOT or "")


class Installed:
    def __init__(self, build: str, install: str, migrated: bool):
        self.build = build  # packaging/build-deb's output, lintian's included
        self.install = install  # apt-get's output, the postinst's messages included
        self.migrated = migrated  # whether the fixture gave the postinst a PHP config


@pytest.fixture(scope="module")
def installed():
    """Build and install the .deb; purge it and undo everything else afterwards."""
    if WHY_NOT is not None:
        pytest.skip(WHY_NOT)
    user_existed = _exists(pwd.getpwnam, "websmsd")
    group_existed = _exists(grp.getgrnam, "asterisk")
    # A PHP WebSMS config to migrate, unless this machine has an Asterisk of its own.
    make_php_conf = not PHP_CONF.parent.exists()
    try:
        if not group_existed:
            run(["groupadd", "--system", "asterisk"])
        if make_php_conf:
            PHP_CONF.parent.mkdir()
            PHP_CONF.write_text(PHP_WEBSMS_CONF)
        build = run([ROOT / "packaging" / "build-deb", DIST], timeout=240)
        deb = DIST / f"websmsd_{package_version()}_all.deb"
        assert deb.is_file(), build.stdout
        # Debian's python3-twisted, python3-treq... come from the archive.
        install = run(["apt-get", "install", "-y", "--no-install-recommends",
                       "-o", "Dpkg::Options::=--force-confdef",
                       "-o", "Dpkg::Options::=--force-confold", deb], env=APT_ENV)
        yield Installed(build.stdout + build.stderr, install.stdout + install.stderr,
                        make_php_conf)
    finally:
        if _dpkg_installed("websmsd") or Path("/etc/websmsd").exists():
            run(["apt-get", "purge", "-y", "websmsd"], env=APT_ENV, check=False)
        # The postrm keeps the user (Debian policy); the machine is left as found.
        if not user_existed and _exists(pwd.getpwnam, "websmsd"):
            run(["userdel", "websmsd"], check=False)
            if _exists(grp.getgrnam, "websmsd"):
                run(["groupdel", "websmsd"], check=False)
        if not group_existed and _exists(grp.getgrnam, "asterisk"):
            run(["groupdel", "asterisk"], check=False)
        if make_php_conf:
            shutil.rmtree(PHP_CONF.parent, ignore_errors=True)


@package
def test_lintian_finds_no_errors(installed):
    assert "build-deb: lintian: no errors" in installed.build
    assert not re.search(r"^E: ", installed.build, re.M), installed.build


@package
def test_package_contents(installed):
    files = run(["dpkg", "-L", "websmsd"]).stdout.splitlines()
    for path in (UNIT, PLUGIN, "/usr/bin/websms", "/usr/bin/websmsd", str(CONF),
                 "/etc/default/websmsd", "/usr/lib/python3/dist-packages/websmsd/schema/001-initial.sql"):
        assert path in files
    # twisted/plugins belongs to python3-twisted: only our plugin goes there.
    assert [f for f in files if "/twisted/" in f and f.endswith((".py", ".cache"))] == [PLUGIN]
    conffiles = run(["dpkg-query", "-W", "-f=${Conffiles}", "websmsd"]).stdout
    assert str(CONF) in conffiles
    # python3-twisted's trigger rebuilt the plugin cache with our plugin in it.
    assert b"websmsd_plugin" in DROPIN_CACHE.read_bytes()


@package
def test_user_config_and_state_directory(installed):
    user = pwd.getpwnam("websmsd")
    assert user.pw_dir == "/var/lib/websmsd"
    assert user.pw_shell in ("/usr/sbin/nologin", "/bin/false")
    assert user.pw_uid < 1000
    assert "websmsd" in grp.getgrnam("asterisk").gr_mem
    websmsd_gid = grp.getgrnam("websmsd").gr_gid
    st = CONF.stat()
    assert (st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode)) == (0, websmsd_gid, 0o640)
    st = Path("/var/lib/websmsd").stat()
    assert (st.st_uid, stat.S_IMODE(st.st_mode)) == (user.pw_uid, 0o750)
    if installed.migrated:
        assert CONF.read_text() == PHP_WEBSMS_CONF
        dist = Path(str(CONF) + ".dpkg-dist")
        assert dist.read_text() == (DEBIAN / "websms.conf").read_text()
        st = dist.stat()
        assert (st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode)) == (0, websmsd_gid, 0o640)
        assert f"copied the PHP WebSMS configuration {PHP_CONF}" in installed.install


@package
def test_commands_in_usr_bin(installed):
    r = run(["/usr/bin/websms", "--help"], cwd="/")
    assert r.stdout.startswith("usage: websms")
    # As the daemon's user: the group websmsd may read the config.
    r = as_websmsd(["/usr/bin/websmsd", "check-config", CONF], cwd="/", check=False)
    assert r.stdout.startswith(f"websmsd check-config: {CONF}")
    # Exit 1 only for what is really wrong here: no Asterisk spool on a machine without
    # Asterisk (websmsd may not create /var/spool/asterisk), said with its fix.
    spool_missing = not os.path.isdir("/var/spool/asterisk/outgoing")
    assert r.returncode == (1 if spool_missing else 0), r.stdout + r.stderr
    if spool_missing:
        assert "outgoingdir /var/spool/asterisk/outgoing does not exist, and websmsd could" \
            " not create it" in r.stdout
        assert "errors (" not in r.stdout  # the shipped config has nothing else wrong
    assert "/var/lib/websmsd/websmsd.sqlite3" in r.stdout
    if installed.migrated:
        assert "php-secret" not in r.stdout  # secrets are masked
    # An installed, not a source-tree, websmsd and Twisted.
    r = as_websmsd(["/usr/bin/python3", "-c",
                    "import twisted, websmsd, twisted.plugins.websmsd_plugin as p; "
                    "print(twisted.__file__, websmsd.__file__, p.__file__)"], cwd="/")
    assert all(f.startswith("/usr/lib/python3/dist-packages/") for f in r.stdout.split())


@package
def test_systemd_unit(installed):
    unit = Path(UNIT).read_text()
    assert ("ExecStart=/usr/bin/twistd3 --nodaemon --pidfile= websmsd --config "
            "/etc/websmsd/websms.conf") in unit
    assert "User=websmsd" in unit and "EnvironmentFile=-/etc/default/websmsd" in unit
    if not shutil.which("systemd-analyze"):
        pytest.skip("no systemd-analyze here to verify the unit")
    r = run(["systemd-analyze", "verify", UNIT], check=False)
    problems = [line for line in (r.stdout + r.stderr).splitlines() if "websmsd" in line]
    assert r.returncode == 0 and not problems, r.stdout + r.stderr


@package
def test_installed_daemon_carries_sms_both_ways(installed):
    user = pwd.getpwnam("websmsd")
    itsp = FakeITSP()
    work = Path(tempfile.mkdtemp(prefix="websmsd-package-"))
    proc = None
    try:
        (work / "spool").mkdir()
        for d in (work, work / "spool"):
            os.chown(d, user.pw_uid, user.pw_gid)
        os.chmod(work, 0o750)
        webhook, agi, api = free_port(), free_port(), free_port()
        config = work / "websms.conf"
        config.write_text(
            f"[websms]\nurl_host = {itsp.url}\nurl_path = /send\nauth_method = none\n"
            f"[websmsd]\n"
            f"[astqueue]\noutgoingdir = {work}/spool/outgoing\n"
            f"stagingdir = {work}/spool/staging\n"
            f"[daemon]\n"
            f'webhook_listen = "tcp:{webhook}:interface=127.0.0.1"\n'
            f'agi_listen = "tcp:{agi}:interface=127.0.0.1"\n'
            f'status_listen = "tcp:{api}:interface=127.0.0.1"\n'
            f"store = {work}/websmsd.sqlite3\n")
        os.chown(config, 0, user.pw_gid)
        os.chmod(config, 0o640)
        log = open(work / "twistd.out", "wb")
        # As systemd would start it (ExecStart), minus systemd: none runs in CI.
        proc = subprocess.Popen(
            ["runuser", "-u", "websmsd", "--", "/usr/bin/twistd3", "--nodaemon",
             "--pidfile=", "websmsd", "--config", str(config)],
            cwd=str(work), env=SYSTEM_ENV, stdout=log, stderr=subprocess.STDOUT,
            start_new_session=True)
        log.close()
        try:
            for port in (webhook, agi, api):
                wait_port(port, timeout=30, proc=proc)
        except (RuntimeError, TimeoutError) as e:
            raise AssertionError(f"{e}\n{(work / 'twistd.out').read_text(errors='replace')}")

        # Inbound: a webhook becomes a call file, written by the user websmsd.
        r = curl("-d", "To=%2B12025550160", "-d", "From=%2B15017122661", "-d", "Body=Hello",
                 f"http://127.0.0.1:{webhook}/")
        assert status_and_body(r)[0] == 200, r.stdout + r.stderr
        outgoing = work / "spool" / "outgoing"
        deadline = time.monotonic() + 15
        while not list(outgoing.glob("*.call")) and time.monotonic() < deadline:
            time.sleep(0.05)
        [callfile] = list(outgoing.glob("*.call"))
        assert b"setvar: MESSAGE(body)=Hello\n" in callfile.read_bytes()
        assert callfile.stat().st_uid == user.pw_uid

        # Outbound: the dialplan's FastAGI request reaches the ITSP.
        env = asterisk_env(agi, "+12025550183", "+12025550160", "from the PBX", "")
        got = play_asterisk(agi, env, "from the PBX")
        assert got["WEBSMS_STATUS"] == "SENT", got
        [req] = itsp.wait(1)
        assert req["path"] == "/send"
        assert b"Body=from+the+PBX" in req["body"] or b"Body=from%20the%20PBX" in req["body"]

        # And the websms command from /usr/bin, through the running daemon.
        r = as_websmsd(["/usr/bin/websms", "+1555", "+1666", "by hand", "--config", config],
                       cwd="/", check=False)
        assert r.returncode == 0 and r.stdout.startswith("SENT "), r.stdout + r.stderr
        assert len(itsp.wait(2)) == 2
    finally:
        if proc is not None and proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        itsp.close()
        shutil.rmtree(work, ignore_errors=True)


@package
def test_bad_config_exits_2_so_systemd_does_not_retry(installed):
    # websmsd.service has RestartPreventExitStatus=2.
    bad = Path(tempfile.mkdtemp(prefix="websmsd-package-")) / "websms.conf"
    try:
        bad.write_text("[websms]\nno_such_key = 1\n")
        os.chmod(bad.parent, 0o755)
        os.chmod(bad, 0o644)
        r = as_websmsd(["/usr/bin/twistd3", "--nodaemon", "--pidfile=", "websmsd",
                        "--config", bad], cwd="/", check=False, timeout=60)
        assert r.returncode == 2, r.stdout + r.stderr
        assert f"{bad}:2" in r.stdout + r.stderr
    finally:
        shutil.rmtree(bad.parent, ignore_errors=True)


@package
def test_purge_leaves_nothing(installed):
    # Last: the other tests need the package installed.
    run(["apt-get", "purge", "-y", "websmsd"], env=APT_ENV)
    assert not _dpkg_installed("websmsd")
    for path in ("/etc/websmsd", "/var/lib/websmsd", PLUGIN, UNIT, "/usr/bin/websmsd"):
        assert not Path(path).exists(), path
    # The trigger rebuilt the plugin cache without our plugin.
    assert b"websmsd_plugin" not in DROPIN_CACHE.read_bytes()
    # Debian policy: the system user stays (the fixture removes it afterwards).
    assert _exists(pwd.getpwnam, "websmsd")
